"""``tl.senca``: fit SENCA-st on one or more slides and write the fused embedding."""

from __future__ import annotations

from typing import Sequence

from anndata import AnnData

from ..model import SencaConfig, SencaModel, embed, fit


def senca(adatas: AnnData | Sequence[AnnData], config: SencaConfig | None = None, *,
          key_added: str = "X_senca", callback=None) -> SencaModel:
    """Train SENCA-st (self-supervised) on the slides and write ``obsm[key_added]`` on each. Returns the model.

    Every slide must already be preprocessed (``pp.preprocess``; ``hist.patch_features`` where there is an image).
    """
    slides = [adatas] if isinstance(adatas, AnnData) else list(adatas)
    model, history = fit(slides, config, callback=callback)
    for a in slides:
        a.obsm[key_added] = embed(model, a)
        a.uns.setdefault("senca", {})["train_loss"] = float(history[-1]["loss"])
    return model
