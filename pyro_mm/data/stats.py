"""Per-feature statistics of a :class:`~pyro_mm.data.container.MultimodalData` in one streaming
pass over blocks of rows, for data that does not fit in memory (a Zarr store opened
with :meth:`~pyro_mm.data.container.MultimodalData.open_zarr`).

Each block's count, mean and sum of squared deviations are merged into the running ones
with Chan, Golub and LeVeque's pairwise update (in float64), which is as accurate as the
two-pass formula and never forms the ill-conditioned ``sum x^2 - n mean^2``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .container import MultimodalData

#: Rows per block of the streaming pass.
STREAM_ROWS = 8192


def row_blocks(num_examples: int, block_rows: int = STREAM_ROWS) -> Iterator[np.ndarray]:
    """Consecutive ``(B,)`` row ranges of at most ``block_rows`` covering ``0..N-1``."""
    if int(block_rows) < 1:
        raise ValueError(f"block_rows: must be a positive integer, got {block_rows!r}")
    for start in range(0, num_examples, block_rows):
        yield np.arange(start, min(start + block_rows, num_examples))


def merge_moments(a: tuple[int, np.ndarray, np.ndarray],
                  b: tuple[int, np.ndarray, np.ndarray]) -> tuple[int, np.ndarray, np.ndarray]:
    """Merge two ``(count, mean (d,), M2 (d,))`` summaries (``M2``: the sum of squared
    deviations from the mean) into that of the union (Chan et al.)."""
    (na, mean_a, m2_a), (nb, mean_b, m2_b) = a, b
    if na == 0:
        return b
    if nb == 0:
        return a
    n = na + nb
    delta = mean_b - mean_a
    return n, mean_a + delta * (nb / n), m2_a + m2_b + delta**2 * (na * nb / n)


def feature_moments(data: MultimodalData, block_rows: int = STREAM_ROWS
                    ) -> dict[str, tuple[int, np.ndarray, np.ndarray]]:
    """``name -> (count, mean (d,), variance (d,))`` over each modality's observed rows,
    float64, reading ``block_rows`` examples of every modality at a time (one pass).
    The variance divides by ``count`` (NumPy's ``std`` default)."""
    masks = data.masks
    running = {m: (0, np.zeros(d), np.zeros(d)) for m, d in data.dims.items()}
    for rows in row_blocks(len(data), block_rows):
        block = data.read_rows(rows)
        for m, x in block.items():
            x = x[masks[m][rows]].astype(np.float64)
            if len(x):
                mean = x.mean(0)
                part = (len(x), mean, ((x - mean) ** 2).sum(0))
                running[m] = merge_moments(running[m], part)
    return {m: (n, mean, m2 / max(n, 1)) for m, (n, mean, m2) in running.items()}


__all__ = ["STREAM_ROWS", "feature_moments", "merge_moments", "row_blocks"]
