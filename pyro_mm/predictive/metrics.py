"""Plain metrics (NumPy/PyTorch only, no scikit-learn at run time)."""

from __future__ import annotations

import numpy as np
import torch


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Adjusted Rand index (Hubert and Arabie, 1985) between two labelings.

    1.0 for identical partitions (up to relabelling), about 0.0 for independent ones.
    """
    a = np.asarray(labels_true).ravel()
    b = np.asarray(labels_pred).ravel()
    if a.shape != b.shape:
        raise ValueError(f"labelings have different lengths: {a.shape} and {b.shape}")
    n = a.size
    if n < 2:
        return 1.0
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)

    def pairs(x):
        x = x.astype(np.float64)
        return (x * (x - 1) / 2).sum()

    index = pairs(table)
    rows, cols = pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / (n * (n - 1) / 2)
    maximum = (rows + cols) / 2
    if maximum == expected:  # both partitions trivial in the same way
        return 1.0
    return float((index - expected) / (maximum - expected))


def weights_perplexity(weights: torch.Tensor) -> torch.Tensor:
    """Perplexity ``exp(H(pi))`` of mixture weights ``(..., K)``: the effective number
    of components of one set of weights (for its posterior over draws, see
    :func:`pyro_mm.diagnostics.effective_components`).

    Equals the number of components when the used ones have equal weight; a component
    holding a negligible share contributes almost nothing.
    """
    w = weights / weights.sum(-1, keepdim=True)
    entropy = -(w * w.clamp_min(torch.finfo(w.dtype).tiny).log()).sum(-1)
    return entropy.exp()
