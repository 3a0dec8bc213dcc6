"""The commented example cohort spec that ``senca-platform init`` writes (and examples/cohort.yaml holds)."""

from __future__ import annotations

EXAMPLE_TEMPLATE = """\
# SENCA-st cohort spec: `senca-platform validate {filename}` checks it, `senca-platform run {filename}` runs it.
# Every relative path is relative to THIS file's folder. Unknown keys are errors (typos are caught).

name: {name}                      # cohort name: also the MLflow experiment and registered model name
output_dir: {output_dir}         # run outputs: h5ad per slide, tables, region maps, mlflow.db, cohort_summary.json

# ray:                            # absent: an embedded local Ray (its dashboard on 127.0.0.1 for several slides)
#   address: ray://head:10001     # an existing cluster
#   num_cpus: 2                   # embedded Ray only (default: all cores)

patients:                         # one or more patients, each with one or more slides
  - id: A                         # ids: letters, digits, '.', '_', '-'; slide ids unique across the cohort
    slides:
      - id: A1
        reader: legacy_st         # legacy_st | visium | h5ad
        counts: {root}/counts/A1.tsv.gz          # spots x genes raw counts (gzip TSV)
        spots: {root}/spots/A1_selection.tsv     # spot selection file (x y ... pixel_x pixel_y)
        labels: {root}/labels/A1_labeled_coordinates.tsv   # optional pathologist labels (scored: ARI/NMI)
        image: {root}/images/A1_HE_dark_2000px.png         # optional H&E image
        image_scale: 0.28760431   # image_xy = spot pixel_xy * image_scale (2000 / 6954 here)
  - id: B
    slides:
      - id: B1                    # no image: the model's image branch is skipped for this slide
        reader: legacy_st
        counts: {root}/counts/B1.tsv.gz
        spots: {root}/spots/B1_selection.tsv
        labels: {root}/labels/B1_labeled_coordinates.tsv
  - id: C
    slides:
      - id: C1
        reader: legacy_st
        counts: {root}/counts/C1.tsv.gz
        spots: {root}/spots/C1_selection.tsv
        labels: {root}/labels/C1_labeled_coordinates.tsv
  # - id: D
  #   slides:
  #     - {{id: D1, reader: visium, path: visium/D1/outs}}   # Space Ranger outs/ (image, labels optional)
  #     - {{id: D2, reader: h5ad, path: d2.h5ad}}           # an AnnData in the senca_core contract

preprocess:                       # per slide on Ray Data; a shared gene panel and PCA basis across the cohort
  genes: spatial                  # spatial: genes by spatial autocorrelation (Moran's I) | variable: seurat_v3 HVGs
  # n_top_genes: 2000             # genes per slide (default 2000 spatial, 3000 variable; pooled over the cohort)
  n_pca: 30                       # shared PCA basis size (the model's expression input)
  patch_size: 64                  # histology patch side (px)
  patch_context: 2.0              # patch side in spot diameters
  encoder: morphology             # morphology | cnn | vit (cnn/vit need encoder_weights: a local file)
  # concurrency: 2                # slides at once (default: CPUs); memory per worker ~ one slide

model:                            # senca_core.model.SencaConfig settings (defaults when absent)
  hidden: 128                     # 64: half the training time (DLPFC 151673: 26 s, not 49), weaker regions
  embed_dim: 32
  lr: 0.002
  # n_models: 3                   # an ensemble, 3x the training time: steadier on HER2ST A1, level elsewhere
  # snapshots: 3                  # the network's last 3 states 25 epochs apart: no extra training, steadier on DLPFC
  # precision: auto               # auto: bfloat16 products on a CPU that has them (DLPFC epochs -20 %) | float32 | bfloat16

training:                         # Ray Train: TorchTrainer, DDP over slides (each worker a shard of slides)
  epochs: {epochs}                   # full passes over the slides (200: chosen by leave-one-section-out)
  num_workers: 2                  # at most; never more than the slides, nor one per min_spots_per_worker spots
  min_spots_per_worker: 5000      # 0: always num_workers; one worker runs as one Ray task (no worker group)
  min_spot_epochs_per_worker: 1500000  # nor one per this many spots x epochs: short trainings on one task (0: off)
  use_gpu: false
  resources_per_worker: {{CPU: 1}}
  seed: 0
  max_failures: 1                 # restarts from the last checkpoint
  checkpoint_every_epochs: 10     # a checkpoint every N epochs, at most one per checkpoint_interval_s, + the last
  checkpoint_interval_s: 30

tuning:                           # Ray Tune around the trainer (enabled: false = train once with `model:`)
  enabled: {tuning}
  num_samples: 2
  scheduler: asha                 # asha | fifo
  metric: auto                    # auto (= reconstruction, no labels) | stability | silhouette | loss | ari
  epochs: {tune_epochs}           # epochs per trial
  grace_period: 2
  keep: checkpoint                # checkpoint: keep the best trial's model | retrain: train its config again
  search_space:
    lr: {{type: loguniform, low: 0.0005, high: 0.005}}
    w_neigh: {{type: choice, values: [0.25, 0.5, 1.0]}}

clustering:                       # regions; region ids mean the same tissue state in every slide
  cut_by: auto                    # auto: slide when k is auto, cohort when k is a number | cohort: one cut of the
  #                               # pooled spots | slide: each slide cut alone, its regions matched across slides
  restarts: 3                     # gmm: the cut from 3 clustering seeds, the one the others agree with most (1: one)
  k: auto                         # an integer, or auto (no labels: from the embedding and the spots' neighbours)
  method: gmm                     # gmm | kmeans | leiden
  refine: true                    # spatial smoothing of the labels
  align: matched                  # matched | centre | none: the pooled cut removes each slide's offset first
  spatial_prior: 16               # gmm: a spot leans towards its neighbours' region (Potts prior; 0: off)
  consensus: true                 # gmm: the regions two HMRF-EM cuts agree on (~2x one cut's seconds); false: one cut
  prior_em_rounds: 0              # with consensus: false only: HMRF-EM rounds of the one cut

tracking:                         # MLflow; default: a local store sqlite:///<output_dir>/mlflow.db
  # uri: http://mlflow:5000       # never put passwords here: use MLFLOW_TRACKING_USERNAME/PASSWORD env vars
  # experiment: my-cohort         # default: the cohort name
  # model_name: my-cohort         # default: the cohort name
  alias: champion

# paths:                          # where input paths may point
#   confine_to_spec_dir: true     # refuse input paths outside this file's folder (default false: '../' allowed)
"""


def example_yaml(*, filename: str = "cohort.yaml", name: str = "her2st-example", output_dir: str = "senca_out",
                 root: str = "data/her2st", epochs: int = 200, tuning: bool = False, tune_epochs: int = 20) -> str:
    """The commented example spec (HER2ST A1 with image, B1 and C1 without)."""
    return EXAMPLE_TEMPLATE.format(filename=filename, name=name, output_dir=output_dir, root=root, epochs=epochs,
                                   tuning="true" if tuning else "false", tune_epochs=tune_epochs)
