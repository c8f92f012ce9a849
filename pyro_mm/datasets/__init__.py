"""Bundled and synthetic data sets, each returned as a :class:`~pyro_mm.data.container.MultimodalData`."""

from .mfeat import MFEAT_VIEWS, load_mfeat
from .synthetic import make_synthetic

__all__ = ["MFEAT_VIEWS", "load_mfeat", "make_synthetic"]
