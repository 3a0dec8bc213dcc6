"""Thin Ray programs over senca_core, one per stage: ``preprocess`` (Ray Data), ``train`` (Ray Train),
``tune`` (Ray Tune), ``infer`` (embeddings, cohort-wide regions, summaries) and ``pipeline`` (the driver).

They take plain data (the resolved cohort spec as dicts) and never import the control plane (senca_platform).
"""
