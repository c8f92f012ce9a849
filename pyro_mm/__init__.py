"""pyro_mm: Pyro models for multimodal learning.

A multimodal Dirichlet-process Gaussian mixture (:class:`MultimodalDPMixture`) with
amortised guides (:class:`MultimodalGuide`), auxiliary multimodal factors
(:mod:`pyro_mm.factors`), SVI training (:func:`fit`) and held-out evaluation
(:func:`predict`, :func:`evaluate`), imputation of missing modalities (:func:`impute`), clustering
(:func:`cluster`), posterior diagnostics (:func:`to_datatree`,
:func:`summary`, :mod:`pyro_mm.diagnostics`).

Importing the package needs only torch, pyro-ppl, numpy and xarray (the latter only
when used); ArviZ and matplotlib are imported by the diagnostics that need them.
"""

from . import datasets, diagnostics, factors
from ._version import __version__
from .data.batch import TensorBatch
from .data.container import MultimodalData
from .diagnostics import summary, to_datatree
from .errors import (CheckpointError, DataValidationError, DistributedError,
                     TrainingDivergedError)
from .factors import modality_contributions
from .model.dp_mixture import MultimodalDPMixture
from .model.guide import MultimodalGuide
from .model.params import MixtureParams
from .predictive.cluster import Clustering, cluster
from .predictive.impute import impute
from .predictive.predict import evaluate, log_likelihood, predict
from .runs import FitResult, History, load
from .runtime.devices import resolve_device
from .train import fit

__all__ = [
    "CheckpointError",
    "Clustering",
    "DataValidationError",
    "DistributedError",
    "FitResult",
    "History",
    "MixtureParams",
    "MultimodalData",
    "MultimodalDPMixture",
    "MultimodalGuide",
    "TensorBatch",
    "TrainingDivergedError",
    "cluster",
    "datasets",
    "diagnostics",
    "evaluate",
    "factors",
    "fit",
    "impute",
    "load",
    "log_likelihood",
    "modality_contributions",
    "predict",
    "resolve_device",
    "summary",
    "to_datatree",
]
