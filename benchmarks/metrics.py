"""Held-out classification metrics and their summaries over seeds.

Every metric takes test-set class probabilities ``probs (N, C)`` and true labels
``labels (N,)`` (ints in ``0..C-1``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

#: Probabilities are clipped at this floor inside the log only (NLL).
LOG_FLOOR = 1e-12
#: Equal-width bins of the max probability for the expected calibration error.
ECE_BINS = 15


def check_probs(probs, num_examples: int, num_classes: int, name: str = "probs"
                ) -> np.ndarray:
    """``probs`` as float64 after checking it is ``(num_examples, num_classes)``, finite,
    non-negative, and each row sums to 1 (to 1e-6).

    Raises:
        ValueError: naming what is wrong.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (num_examples, num_classes):
        raise ValueError(f"{name}: expected shape {(num_examples, num_classes)}, "
                         f"got {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(f"{name}: has non-finite or negative entries")
    worst = float(np.abs(probs.sum(1) - 1).max()) if len(probs) else 0.0
    if worst > 1e-6:
        raise ValueError(f"{name}: rows must sum to 1 (worst is off by {worst:.3g})")
    return probs


def accuracy(probs, labels) -> float:
    """Fraction of rows whose most probable class is the label."""
    return float((np.asarray(probs).argmax(1) == np.asarray(labels)).mean())


def nll(probs, labels) -> float:
    """Mean ``-log p(true class)`` in nats, ``p`` clipped at :data:`LOG_FLOOR` inside
    the log (a zero probability on the truth costs ``-log 1e-12 = 27.6``)."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, LOG_FLOOR, None)).mean())


def ece(probs, labels, bins: int = ECE_BINS) -> float:
    """Expected calibration error: rows binned by their max probability into ``bins``
    equal-width bins ``(0, 1/bins], (1/bins, 2/bins], ...``; the sum over bins of
    ``(rows in bin / N) * |accuracy in bin - mean max probability in bin|``."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    confidence = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    # Right-closed bins so that a confidence of exactly 1 lands in the last one.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        here = which == b
        if here.any():
            total += here.mean() * abs(correct[here].mean() - confidence[here].mean())
    return float(total)


METRICS = {"accuracy": accuracy, "nll": nll, "ece": ece}


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample sd / sqrt(n); 0 for a single value)."""
    values = list(values)
    if not values:
        raise ValueError("mean_se: no values")
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), sd / math.sqrt(len(values))


def paired_differences(rows: Sequence[dict], method: str, reference: str, metric: str
                       ) -> list[float]:
    """``metric`` of ``method`` minus that of ``reference``, seed by seed, over the
    seeds both have in ``rows`` (dicts with ``method``, ``seed`` and ``metric``)."""
    ref = {r["seed"]: r[metric] for r in rows if r["method"] == reference}
    return [r[metric] - ref[r["seed"]] for r in rows
            if r["method"] == method and r["seed"] in ref]


def fmt(mean: float, se: float, signed: bool = False) -> str:
    """``"0.9650 ± 0.0031"`` (``+`` sign with ``signed``)."""
    return (f"{mean:+.4f}" if signed else f"{mean:.4f}") + f" ± {se:.4f}"
