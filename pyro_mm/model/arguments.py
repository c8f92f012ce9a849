"""Checks of :class:`~pyro_mm.model.dp_mixture.MultimodalDPMixture`'s constructor arguments, each
error naming the argument and what was wrong."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .fusion import POOLS


def check_arguments(*, dims, num_classes, latent_dim, num_components, mixture,
                    representation, reconstruct, fusion, factors, alpha, modality_dropout,
                    prior_loc_scale, prior_scale, prior_scale_spread, scale_floor,
                    component, df, classifier_prior_scale=None, scale_prior="inverse_gamma",
                    scale_pseudo_count=2.0,
                    experts_pool="product", rank=1, private_rank=0) -> None:
    """Raise ``ValueError`` for the first argument the model cannot be built with (see
    the model's docstring for their meaning; ``reconstruct`` already resolved)."""
    if not isinstance(dims, Mapping) or not dims:
        raise ValueError("dims: need a mapping 'modality -> number of features'")
    for name, d in dims.items():
        if not isinstance(d, (int, np.integer)) or d < 1:
            raise ValueError(f"dims[{name!r}]: must be a positive integer, got {d!r}")
    if num_classes is not None and int(num_classes) < 2:
        raise ValueError(f"num_classes: must be >= 2 or None, got {num_classes}")
    if int(latent_dim) < 1:
        raise ValueError(f"latent_dim: must be >= 1, got {latent_dim}")
    if int(num_components) < 2:
        raise ValueError(f"num_components: must be >= 2, got {num_components}")
    if mixture not in ("joint", "independent"):
        raise ValueError(f"mixture: expected 'joint' or 'independent', got {mixture!r}")
    if representation not in ("latent", "observed"):
        raise ValueError(
            f"representation: expected 'latent' or 'observed', got {representation!r}")
    if representation == "observed" and reconstruct:
        raise ValueError("reconstruct: not available with representation='observed'")
    if representation == "observed" and fusion == "dp":
        raise ValueError("fusion: 'dp' needs representation='latent' (it gates z)")
    if representation == "observed" and factors:
        raise ValueError("factors: need representation='latent' (they act on z)")
    if alpha != "learned" and not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ValueError(f"alpha: expected a positive number or 'learned', got {alpha!r}")
    if not 0.0 <= modality_dropout < 1.0:
        raise ValueError(f"modality_dropout: must be in [0, 1), got {modality_dropout!r}")
    for arg, value in (("prior_loc_scale", prior_loc_scale), ("prior_scale", prior_scale),
                       ("prior_scale_spread", prior_scale_spread)):
        if not value > 0:
            raise ValueError(f"{arg}: must be positive, got {value!r}")
    if not (isinstance(scale_floor, (int, float)) and scale_floor >= 0):
        raise ValueError(f"scale_floor: must be a number >= 0, got {scale_floor!r}")
    if scale_prior not in ("inverse_gamma", "lognormal"):
        raise ValueError("scale_prior: expected 'inverse_gamma' or 'lognormal', got "
                         f"{scale_prior!r}")
    if not (isinstance(scale_pseudo_count, (int, float)) and not isinstance(
            scale_pseudo_count, bool) and scale_pseudo_count > 0):
        raise ValueError(f"scale_pseudo_count: must be a positive number, got "
                         f"{scale_pseudo_count!r}")
    if component not in ("normal", "studentt", "factor"):
        raise ValueError("component: expected 'normal', 'studentt' or 'factor', got "
                         f"{component!r}")
    if component == "factor" and representation != "observed":
        raise ValueError("component: 'factor' needs representation='observed' (latent "
                         "representations are already low-dimensional)")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"rank: must be a positive integer, got {rank!r}")
    if (isinstance(private_rank, bool) or not isinstance(private_rank, (int, np.integer))
            or private_rank < 0):
        raise ValueError(f"private_rank: must be an integer >= 0, got {private_rank!r}")
    if df != "learned" and not (isinstance(df, (int, float)) and df > 0):
        raise ValueError(f"df: expected a positive number or 'learned', got {df!r}")
    if classifier_prior_scale is not None and not (
            isinstance(classifier_prior_scale, (int, float)) and classifier_prior_scale > 0):
        raise ValueError("classifier_prior_scale: must be a positive number or None, got "
                         f"{classifier_prior_scale!r}")
    if experts_pool not in POOLS:
        raise ValueError(f"experts_pool: expected one of {POOLS}, got {experts_pool!r}")
