"""The SENCA-st model (see ``_network`` for the documented interpretation of the paper)."""

from ._batch import SlideBatch, make_batch
from ._config import ABLATIONS, SencaConfig
from ._heldout import heldout_r2
from ._io import load_model, save_model
from ._network import NeighbourhoodCrossAttention, SencaModel
from ._readout import readout
from ._train import (build_model, embed, fit, init_prototypes, make_optimizer, prototype_warmup, run_epoch,
                     seed_everything, train_step)

__all__ = ["ABLATIONS", "SencaConfig", "SencaModel", "SlideBatch", "NeighbourhoodCrossAttention", "make_batch",
           "build_model", "make_optimizer", "run_epoch", "seed_everything", "train_step", "fit", "embed",
           "save_model", "load_model", "readout", "heldout_r2", "prototype_warmup", "init_prototypes"]
