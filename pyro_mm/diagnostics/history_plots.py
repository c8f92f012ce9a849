"""Figures of the training history: the ELBO and every value the factors logged
(:func:`plot_history`), and ARM's per-modality contributions over training
(:func:`plot_modality_contributions`). Re-exported by :mod:`pyro_mm.diagnostics.plots`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._figures import _figure, _finish

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from ..result import History


def _history(source) -> "History":
    history = getattr(source, "history", source)
    if not hasattr(history, "steps"):
        raise TypeError("expected a FitResult or a History")
    return history


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < window:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def history_keys(source) -> list[str]:
    """The logged values of a history besides the loss (factor components, ...)."""
    history = _history(source)
    skip = {"step", "epoch", "loss"}
    keys: dict[str, None] = {}
    for row in history.steps:
        for key, value in row.items():
            if key not in skip and isinstance(value, (int, float)):
                keys.setdefault(key)
    return list(keys)


def plot_history(source, path=None, smooth: int | None = None, ncols: int = 3
                 ) -> "Figure":
    """ELBO (per example) over training and every value logged by factors.

    Args:
        source: a :class:`~pyro_mm.training.FitResult` or its ``history``.
        path: save the figure here.
        smooth: moving-average window over steps (default: about 1% of the steps).
        ncols: panels per row.
    """
    history = _history(source)
    if not history.steps:
        raise ValueError("plot_history: the history has no steps")
    keys = ["loss"] + history_keys(history)
    n = len(keys)
    cols = min(ncols, n)
    rows = -(-n // cols)
    fig, axes = _figure(rows, cols, width=4.2, height=3.0)
    flat = axes.ravel()
    window = smooth if smooth is not None else max(1, len(history.steps) // 100)
    for ax, key in zip(flat, keys):
        steps = np.array([r["step"] for r in history.steps if key in r])
        values = np.array([r[key] for r in history.steps if key in r], dtype=float)
        if key == "loss":
            values = -values
            ax.plot(steps, values, color="0.75", lw=0.7, label="per step")
            ax.plot(steps, _smooth(values, window), color="C0", lw=1.5,
                    label=f"moving mean ({window})" if window > 1 else None)
            if history.epochs and "val_loss" in history.epochs[-1]:
                last_step = {}
                for r in history.steps:
                    last_step[r["epoch"]] = r["step"]
                ep = [(last_step.get(e["epoch"]), -e["val_loss"]) for e in history.epochs
                      if "val_loss" in e and e["epoch"] in last_step]
                if ep:
                    ax.plot(*zip(*ep), "o-", color="C1", ms=3, lw=1, label="validation")
            ax.set_title("ELBO per example")
            low = np.nanpercentile(values, 5)
            high = np.nanmax(values)
            if np.isfinite(low) and high > low:
                ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
            ax.legend(fontsize=7)
        else:
            ax.plot(steps, values, color="0.75", lw=0.7)
            ax.plot(steps, _smooth(values, window), color="C2", lw=1.5)
            ax.set_title(key)
        ax.set_xlabel("SVI step")
    for ax in flat[n:]:
        ax.set_visible(False)
    return _finish(fig, path)


def plot_modality_contributions(source, path=None, prefix: str = "arm/phi/",
                                smooth: int | None = None) -> "Figure":
    """ARM's conditional contribution ``phi_m`` of each modality over training (the
    history keys ``<prefix><modality>``, plus ``arm/phi_mi`` / ``arm/loss``-style
    keys of the same factor in a second panel when present).

    Raises:
        ValueError: when the history has no such keys (ARM did not run).
    """
    history = _history(source)
    keys = [k for k in history_keys(history) if k.startswith(prefix)]
    if not keys:
        raise ValueError(f"plot_modality_contributions: no history keys starting with "
                         f"{prefix!r} (did ARM run?)")
    root = prefix.split("/")[0] + "/"
    others = [k for k in history_keys(history) if k.startswith(root) and k not in keys]
    window = smooth if smooth is not None else max(1, len(history.steps) // 100)
    fig, axes = _figure(1, 2 if others else 1, width=5.0)
    ax = axes[0, 0]
    for i, key in enumerate(keys):
        steps = np.array([r["step"] for r in history.steps if key in r])
        values = np.array([r[key] for r in history.steps if key in r], dtype=float)
        ax.plot(steps, _smooth(values, window), color=f"C{i}", lw=1.5,
                label=key[len(prefix):])
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("SVI step")
    ax.set_ylabel("phi_m (nats)")
    ax.set_title("Per-modality contribution to the labels")
    ax.legend(fontsize=7)
    if others:
        ax = axes[0, 1]
        for i, key in enumerate(others):
            steps = np.array([r["step"] for r in history.steps if key in r])
            values = np.array([r[key] for r in history.steps if key in r], dtype=float)
            ax.plot(steps, _smooth(values, window), color=f"C{i}", lw=1.5, label=key)
        ax.set_xlabel("SVI step")
        ax.set_title("Other ARM terms")
        ax.legend(fontsize=7)
    return _finish(fig, path)


__all__ = ["history_keys", "plot_history", "plot_modality_contributions"]
