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


#: Bins of :func:`expected_calibration_error`.
ECE_BINS = 15


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor,
                               bins: int = ECE_BINS) -> float:
    """Expected calibration error of class probabilities ``probs (N, C)`` against
    ``labels (N,)``: rows binned by their top probability into ``bins`` equal-width,
    right-closed bins ``(0, 1/bins], (1/bins, 2/bins], ...``; the sum over bins of
    ``(rows in bin / N) * |accuracy in bin - mean top probability in bin|``. In
    ``[0, 1]``; 0 for a calibrated predictor."""
    if probs.dim() != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"expected probs (N, C) and labels (N,), got {tuple(probs.shape)} "
                         f"and {tuple(labels.shape)}")
    if probs.shape[0] == 0:
        raise ValueError("expected_calibration_error: no rows to score")
    confidence, predicted = probs.double().max(-1)
    correct = (predicted == labels).double()
    # right-closed, so that a confidence of exactly 1 lands in the last bin
    which = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    count = torch.zeros(bins, dtype=torch.float64, device=probs.device)
    count.index_add_(0, which, torch.ones_like(confidence))
    gap = torch.zeros_like(count).index_add_(0, which, correct - confidence)
    return float(gap.abs().sum() / probs.shape[0])
