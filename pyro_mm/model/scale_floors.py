"""Scale floors of the mixture components: the recording resolution (and an optional
fixed floor) fitted from the training data, and kept when a state saved before they
existed is loaded.

A component's scale is ``sqrt(sigma^2 + f^2)``. Since the inverse-gamma prior on
``sigma^2`` (:mod:`pyro_mm.model.dp_mixture`) keeps components from collapsing, the
default floor is only the recording resolution of observed features, ``q / sqrt(12)``
(``q``: the smallest gap between distinct training values; ``q^2 / 12`` is the variance
of uniform dequantisation), so a held-out value one step from every training value of a
component costs a few nats, not hundreds. ``scale_floor`` adds a fixed floor in
quadrature (a fraction of the training standard deviation; of ``s1`` for latent
representations): the previous default (0.05, with the lognormal prior) is what a
config saved before the prior rebuilds with.
"""

from __future__ import annotations

import numpy as np


def recording_resolution(x: np.ndarray) -> np.ndarray:
    """``(d,)``: each column's smallest gap between distinct values of ``x (N, d)`` (its
    quantisation step: 1 for integer pixels or counts, 0.01 for values recorded to two
    decimals, ~0 for continuous data); 0 for a constant column. Gaps below ``1e-9`` of
    the column's range are rounding noise and ignored."""
    out = np.zeros(x.shape[1])
    for j in range(x.shape[1]):
        gaps = np.diff(np.unique(x[:, j]))
        gaps = gaps[gaps > 1e-9 * (gaps.sum() if gaps.size else 0.0)]
        if gaps.size:
            out[j] = gaps.min()
    return out


def feature_floor(x: np.ndarray, scale: np.ndarray, scale_floor: float,
                  resolution_floor: bool) -> np.ndarray:
    """``(d,)`` floor of observed features on the standardised scale: ``scale_floor``
    standard deviations, in quadrature with the recording resolution ``q / sqrt(12)``
    (the spread of uniform dequantisation) when ``resolution_floor``.

    Args:
        x: ``(N, d)`` observed training rows, original scale.
        scale: ``(d,)`` the standardisation's scale.
    """
    floor = np.full_like(scale, scale_floor, dtype=np.float64)
    if resolution_floor:
        step = recording_resolution(x) / scale
        floor = np.sqrt(floor**2 + step**2 / 12.0)
    return floor


def keep_missing_floors(module, state_dict, prefix, *args) -> None:
    """Load-state pre-hook: a state saved before the scale floors existed keeps the
    floors this module was built with (zero for a config without ``scale_floor``)."""
    for name, buffer in module.named_buffers(recurse=False):
        if name.startswith("component_scale_floor_") or name in ("component_df", "df_prior"):
            state_dict.setdefault(prefix + name, buffer.detach().clone())
