"""A prepared data set whose features stay on disk: what
:meth:`~pyro_mm.model.dp_mixture.MultimodalDPMixture.prepare` returns for data opened with
:meth:`~pyro_mm.data.container.MultimodalData.open_zarr`.

:class:`StoreBatch` stands where a :class:`~pyro_mm.data.container.TensorBatch` of all ``N``
examples would: ``size`` is ``N``, the small ``(N,)`` and ``(N, M)`` tensors (masks,
labels) are on the device, and :meth:`StoreBatch.index` reads and standardises the rows
asked for. So the model's data plate still sees the full ``N`` and the minibatch's
indices (the ELBO is scaled by ``N / B`` exactly as in memory), and the chunked loops of
prediction, evaluation, imputation and ARM's re-weighting stream without change.

A training minibatch read ahead by a ``DataLoader`` (:mod:`pyro_mm.data.loader`) is
attached with :meth:`StoreBatch.with_rows`; the plate's ``index`` call then returns it
without touching the disk.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import DataValidationError
from .batch import RowsOnDevice, TensorBatch

#: The most rows :attr:`StoreBatch.features` reads at once (validation sets and the
#: guide's initialisation, which read at most this many examples anyway).
WHOLE_ROWS = 20000


class StoreBatch(RowsOnDevice):
    """``N`` prepared examples read on demand.

    Args:
        read: ``rows (B,) int64 array -> TensorBatch`` of those rows, in that order,
            standardised and on ``device``.
        masks: ``(N, M)`` bool on ``device``.
        labels, label_mask: ``(N,)`` on ``device``, or ``None``.
        rows: a minibatch read ahead: ``(indices (B,), TensorBatch)``.
    """

    def __init__(self, read: Callable[[np.ndarray], TensorBatch], masks: torch.Tensor,
                 labels: torch.Tensor | None, label_mask: torch.Tensor | None,
                 rows: tuple[torch.Tensor, TensorBatch] | None = None):
        self.read = read
        self.masks, self.labels, self.label_mask = masks, labels, label_mask
        self._rows = rows
        self._whole: TensorBatch | None = None

    def with_rows(self, indices: torch.Tensor, rows: TensorBatch) -> "StoreBatch":
        """The same data with minibatch ``indices`` already read as ``rows``."""
        return StoreBatch(self.read, self.masks, self.labels, self.label_mask,
                          (indices, rows))

    def index(self, idx: torch.Tensor) -> TensorBatch:
        """Rows ``idx`` (a 1-D index tensor), read unless they were read ahead."""
        if self._rows is not None:
            indices, rows = self._rows
            if idx is indices or (idx.shape == indices.shape and bool((idx == indices).all())):
                return rows
        return self.read(idx.detach().cpu().numpy().astype(np.int64))

    def summary(self, features: dict[str, torch.Tensor]) -> TensorBatch:
        """A :class:`TensorBatch` with this data's masks and labels and ``features`` in
        place of the rows (what data-parallel ranks compare: they cannot compare every
        feature of a store, but each computed its standardisation from its own copy)."""
        return TensorBatch(features, self.masks, self.labels, self.label_mask)

    def whole(self) -> TensorBatch:
        """Every row as one :class:`TensorBatch` (read once, then kept); refused above
        :data:`WHOLE_ROWS` examples, since the point of a store is not to do that."""
        if self._whole is None:
            if self.size > WHOLE_ROWS:
                raise DataValidationError(
                    f"{self.size} examples on disk: too many to read at once (at most "
                    f"{WHOLE_ROWS}); read them in chunks with index(chunk)")
            self._whole = self.read(np.arange(self.size))
        return self._whole

    @property
    def features(self) -> dict[str, torch.Tensor]:
        """Every row's features (:meth:`whole`)."""
        return self.whole().features

    def concatenated(self, modalities) -> torch.Tensor:
        """``(N, sum d_m)`` (:meth:`whole`)."""
        return self.whole().concatenated(modalities)


__all__ = ["WHOLE_ROWS", "StoreBatch"]
