"""Clustering with a fitted mixture: which component each example belongs to, without
being told the number of clusters.

The truncation ``K`` is an upper bound; the Dirichlet-process prior leaves the
components the data do not need (nearly) empty, so the number of clusters is read off
the fit: a component is **occupied** when it is the most responsible one for at least
``min_members`` examples of ``data`` (default 1). Assignments come from the plug-in
posterior (global parameters at their point estimate):
``p(c_i = k | x_i) ∝ pi_k prod_{m present} N(r_im; mu_mk, sigma_mk)``, where ``r_im`` is
modality ``m``'s representation (its features, or its encoder's posterior mean); factor
components replace the product by the Gaussian density of the present views together
(:mod:`pyro_mm.model.factor_analysis`). Only the modalities present in example ``i``
count, so an example with views missing is clustered on the ones it has (a missing view's fill-in is a function of the present
ones and would count them twice). With ``mixture="independent"`` each modality has its
own component; the example's cluster is then the component that explains all its
present modalities at once (the formula above), the joint reading of the same
parameters.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.container import MultimodalData
from ..runtime.modes import evaluation_mode

if TYPE_CHECKING:  # pragma: no cover
    from ..runs.result import FitResult


@dataclasses.dataclass
class Clustering:
    """What :func:`cluster` returns.

    Attributes:
        assignments: ``(N,)`` int, the most responsible component of each example
            (component indices ``0..K-1`` of the model, not renumbered).
        probabilities: ``(N, K)`` float, ``p(c_i = k | present modalities of x_i)``;
            rows sum to 1.
        num_occupied: components holding at least ``min_members`` assignments.
        occupied: ``(K,)`` bool, which components those are.
        min_members: the threshold used.
    """

    assignments: np.ndarray
    probabilities: np.ndarray
    num_occupied: int
    occupied: np.ndarray
    min_members: int


@torch.no_grad()
def cluster_probabilities(model, guide, batch, chunk_size: int = 4096) -> torch.Tensor:
    """``(N, K)`` assignment probabilities of a prepared ``batch`` (module docstring)."""
    globals_ = guide.point_estimate()
    params = model.params_from_sites(globals_)
    out = []
    with evaluation_mode(model, guide):
        for part in map(batch.index, batch.chunk_indices(chunk_size)):
            if model.representation == "latent":
                value, _ = guide.encode_present(part)
                stacked = True
            else:
                value, stacked = part.concatenated(model.modalities), False
            mixture = params.mixture("joint", mask=part.masks, batch_size=part.size,
                                     stacked=stacked)
            out.append(mixture.responsibilities(value))
    return torch.cat(out)


def cluster(result: "FitResult", data: MultimodalData, min_members: int = 1,
            chunk_size: int = 4096) -> Clustering:
    """Cluster ``data`` with a fitted model (module docstring).

    Args:
        result: a fitted model (:func:`pyro_mm.fit` or :func:`pyro_mm.load`).
        data: ``N`` examples; views may be missing (each example needs one present).
        min_members: a component is occupied when it is the most responsible one for
            at least this many examples of ``data``.
        chunk_size: examples scored at once.

    Returns:
        a :class:`Clustering`.
    """
    if isinstance(min_members, bool) or not isinstance(min_members, int) or min_members < 1:
        raise ValueError(f"min_members: must be a positive integer, got {min_members!r}")
    model, guide = result.model, result.guide
    batch = model.prepare(data)
    probs = cluster_probabilities(model, guide, batch, chunk_size).cpu().double().numpy()
    assignments = probs.argmax(-1)
    counts = np.bincount(assignments, minlength=probs.shape[1])
    occupied = counts >= min_members
    return Clustering(assignments=assignments, probabilities=probs,
                      num_occupied=int(occupied.sum()), occupied=occupied,
                      min_members=min_members)


__all__ = ["Clustering", "cluster", "cluster_probabilities"]
