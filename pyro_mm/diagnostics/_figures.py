"""Shared figure helpers of the diagnostics plots: make a figure, then lay it out and
save it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def _finish(fig, path) -> "Figure":
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def _figure(nrows=1, ncols=1, width=5.0, height=3.4, **kwargs):
    # matplotlib is heavy and only needed for figures: imported when one is made.
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             squeeze=False, **kwargs)
    return fig, axes
