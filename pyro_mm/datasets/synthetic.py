"""Synthetic multimodal mixtures with known ground truth."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np

from ..data.container import MultimodalData
from ..errors import DataValidationError


def make_synthetic(
    num_examples: int = 1000,
    num_clusters: int = 4,
    dims: Mapping[str, int] | None = None,
    signal: Mapping[str, float] | float = 4.0,
    noise: float = 1.0,
    noise_spread: float = 0.0,
    weights: np.ndarray | None = None,
    missing_rate: float = 0.0,
    mirrored: Collection[str] = (),
    seed: int = 0,
) -> MultimodalData:
    """Draw a multimodal Gaussian mixture whose truth is known.

    Example ``i`` belongs to cluster ``c_i ~ Categorical(weights)``; modality ``m`` is
    ``x_im = signal_m * e_{m, c_i} + noise * s_{m, c_i} * eps`` with cluster centres
    ``e_{m, c}`` drawn from a standard normal, ``eps`` standard normal and per-component,
    per-feature scales ``s`` drawn log-uniformly in ``[exp(-noise_spread), exp(noise_spread)]``.
    So ``signal_m`` sets how informative modality ``m`` is: ``0`` makes it pure noise
    (useless), a small value makes it weak but informative.

    Args:
        num_examples: ``N``.
        num_clusters: true number of clusters; also the number of classes.
        dims: ``name -> features`` (default ``{"a": 8, "b": 8}``).
        signal: one value for every modality or ``name -> value``.
        noise: within-cluster standard deviation.
        noise_spread: log-range of per-component scales (0: all equal to ``noise``).
        weights: cluster probabilities (default uniform).
        missing_rate: probability that a modality is missing for an example (at least
            one modality is always kept).
        mirrored: modalities whose features are multiplied by a random sign per
            example, so each cluster appears as two mirror images ``+-e_{m, c}``. The
            label is then not linearly decodable from the raw features (a linear probe
            is near chance) although it is fully identifiable: an informative modality
            that is slow to learn, the usual weak modality of imbalance studies.
        seed: seed of the NumPy generator.

    Returns:
        :class:`MultimodalData` whose labels are the true clusters, with
        ``metadata`` holding ``"centres"``, ``"scales"`` and ``"weights"``.
    """
    dims = dict(dims or {"a": 8, "b": 8})
    if num_examples < 1 or num_clusters < 1:
        raise DataValidationError("num_examples and num_clusters: must be >= 1")
    if not 0.0 <= missing_rate < 1.0:
        raise DataValidationError(f"missing_rate: must be in [0, 1), got {missing_rate}")
    if not isinstance(signal, Mapping):
        signal = {name: float(signal) for name in dims}
    mirrored = [mirrored] if isinstance(mirrored, str) else list(mirrored)
    for what, names in (("signal", signal), ("mirrored", mirrored)):
        unknown = set(names) - set(dims)
        if unknown:
            raise DataValidationError(f"{what}: modalities {sorted(unknown)} are not in dims")
    rng = np.random.default_rng(seed)
    if weights is None:
        weights = np.full(num_clusters, 1.0 / num_clusters)
    weights = np.asarray(weights, dtype=float)
    if weights.shape != (num_clusters,) or (weights < 0).any():
        raise DataValidationError(f"weights: expected {num_clusters} non-negative values")
    weights = weights / weights.sum()
    clusters = rng.choice(num_clusters, size=num_examples, p=weights)
    features, masks, centres, scales = {}, {}, {}, {}
    for name, d in dims.items():
        centres[name] = rng.standard_normal((num_clusters, d)) * signal.get(name, 0.0)
        scales[name] = noise * np.exp(rng.uniform(-noise_spread, noise_spread,
                                                  (num_clusters, d)))
        eps = rng.standard_normal((num_examples, d))
        features[name] = centres[name][clusters] + scales[name][clusters] * eps
        masks[name] = rng.random(num_examples) >= missing_rate
    for name in dims:  # no draw unless asked, so other data sets stay as they were
        if name in mirrored:
            features[name] = features[name] * rng.choice([-1.0, 1.0], size=(num_examples, 1))
    if missing_rate > 0:
        observed = np.stack(list(masks.values()), axis=1)
        empty = ~observed.any(axis=1)
        keep = rng.integers(0, len(dims), size=num_examples)
        for j, name in enumerate(dims):
            masks[name] = masks[name] | (empty & (keep == j))
    return MultimodalData(
        features,
        labels=clusters,
        masks=masks,
        num_classes=num_clusters,
        metadata={"name": "synthetic", "centres": centres,
                  "scales": scales, "weights": weights, "signal": dict(signal),
                  "mirrored": sorted(mirrored)},
    )
