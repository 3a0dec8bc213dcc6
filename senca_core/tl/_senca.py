"""``tl.senca``: fit SENCA-st on one or more slides and write the fused embedding."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from anndata import AnnData

if TYPE_CHECKING:
    from ..model import SencaConfig, SencaModel

# ``..model`` (torch) loads inside the two verbs: ``import senca_core.tl`` for clustering and summaries (the
# platform's driver, a notebook reading results) then does not pay torch's import (~2 s of CPU)


def senca(adatas: AnnData | Sequence[AnnData], config: SencaConfig | None = None, *,
          key_added: str = "X_senca", callback=None) -> SencaModel:
    """Train SENCA-st (self-supervised) on the slides and write, on each slide,

    - ``obsm[key_added + "_latent"]``: the fused embedding ``z`` (n, embed_dim);
    - ``obsm[key_added]``: the region readout ``[x, D_e(z)]`` that :func:`cluster` uses (see ``model._readout``);
    - ``uns["senca"]["readout_blocks"]``: ``{key_added: n}``, how many networks' readouts it holds side by side
      (``config.n_models``).

    Every slide must already be preprocessed (``pp.preprocess``; ``hist.patch_features`` where there is an image).
    Returns the model.
    """
    from ..model import fit

    slides = [adatas] if isinstance(adatas, AnnData) else list(adatas)
    model, history = fit(slides, config, callback=callback)
    apply(model, slides, key_added=key_added)
    for a in slides:
        a.uns.setdefault("senca", {})["train_loss"] = float(history[-1]["loss"])
    return model


def apply(model: SencaModel, adatas: AnnData | Sequence[AnnData], *, key_added: str = "X_senca") -> None:
    """Write a trained model's embedding and region readout on slides (no training): ``predict`` uses this."""
    from ..model import readout, readout_blocks

    slides = [adatas] if isinstance(adatas, AnnData) else list(adatas)
    blocks = readout_blocks(model)
    for a in slides:
        a.obsm[key_added + "_latent"], a.obsm[key_added] = readout(model, a)
        a.uns.setdefault("senca", {}).setdefault("readout_blocks", {})[key_added] = blocks
