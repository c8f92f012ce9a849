"""The prepared data the model runs on, on one device in the model's order
(:meth:`pyro_mm.model.dp_mixture.MultimodalDPMixture.prepare` makes them):

* :class:`TensorBatch`: every feature, mask and label as tensors on the device;
* :class:`StoreBatch`: what ``prepare`` gives for data on disk
  (:meth:`~pyro_mm.data.container.MultimodalData.open_zarr`): it stands where a
  :class:`TensorBatch` of all ``N`` examples would (``size`` is ``N``, masks and labels
  are on the device) but reads and standardises only the rows it is indexed with. So
  the model's data plate still sees the full ``N`` and the minibatch's indices (the
  ELBO is scaled by ``N / B`` exactly as in memory), and the chunked loops of
  prediction, evaluation, imputation and ARM's re-weighting stream without change. A
  training minibatch read ahead by a ``DataLoader`` (:mod:`pyro_mm.data.loader`) is
  attached with :meth:`StoreBatch.with_rows`; the plate's ``index`` call then returns
  it without touching the disk;
* :class:`PreparedBatch`: what both share (masks ``(N, M)`` on the device: the size,
  the device, index chunks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np
import torch

from ..errors import DataValidationError

#: The most rows :attr:`StoreBatch.features` reads at once (validation sets and the
#: guide's initialisation, which read at most this many examples anyway).
WHOLE_ROWS = 20000


class PreparedBatch:
    """What every prepared batch shares (``masks (N, M)`` on one device, whether or
    not its features are there too): its size, its device and index chunks over its
    rows."""
    masks: torch.Tensor

    @property
    def size(self) -> int:
        return self.masks.shape[0]

    @property
    def device(self) -> torch.device:
        return self.masks.device

    def chunk_indices(self, size: int) -> Iterator[torch.Tensor]:
        """Consecutive 1-D index tensors of at most ``size`` rows covering the batch,
        on its device (for work that must not hold every row at once; on disk, reads
        of contiguous rows)."""
        for start in range(0, self.size, size):
            yield torch.arange(start, min(start + size, self.size), device=self.device)


@dataclasses.dataclass(frozen=True)
class TensorBatch(PreparedBatch):
    """Tensors of a :class:`MultimodalData` on one device, in the model's order.

    Attributes:
        features: ``name -> (N, d_name)`` float tensors (standardised when produced by
            :meth:`pyro_mm.model.dp_mixture.MultimodalDPMixture.prepare`).
        masks: ``(N, M)`` bool, column ``j`` for the ``j``-th modality.
        labels: ``(N,)`` int64 with missing labels replaced by 0, or ``None``.
        label_mask: ``(N,)`` bool, ``True`` where a label is observed, or ``None``.
    """

    features: dict[str, torch.Tensor]
    masks: torch.Tensor
    labels: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None
    #: The last :meth:`index` call's ``(idx, idx version, rows)``: a step's model and
    #: guide ask for the same rows, and the gather is not free at large batches.
    _last_rows: tuple | None = dataclasses.field(default=None, init=False, repr=False,
                                                 compare=False)

    def concatenated(self, modalities) -> torch.Tensor:
        """``(N, sum d_m)``: the features of ``modalities``, in that order, side by side
        (what the observed-representation mixture and its classifier read)."""
        return torch.cat([self.features[m] for m in modalities], dim=-1)

    def index(self, idx: torch.Tensor) -> "TensorBatch":
        """Rows ``idx`` of every tensor (``idx`` is a 1-D index tensor). Asked again for
        the same, unmodified ``idx`` tensor, it returns the same rows without copying."""
        last = self._last_rows
        if last is not None and last[0] is idx and last[1] == idx._version:
            return last[2]
        rows = TensorBatch(
            features={k: v[idx] for k, v in self.features.items()},
            masks=self.masks[idx],
            labels=None if self.labels is None else self.labels[idx],
            label_mask=None if self.label_mask is None else self.label_mask[idx],
        )
        object.__setattr__(self, "_last_rows", (idx, idx._version, rows))
        return rows



class StoreBatch(PreparedBatch):
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


__all__ = ["WHOLE_ROWS", "PreparedBatch", "StoreBatch", "TensorBatch"]
