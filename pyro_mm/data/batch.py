"""The prepared tensors a model reads: :class:`TensorBatch`, the rows of a
:class:`~pyro_mm.data.container.MultimodalData` on one device in the model's order
(:meth:`pyro_mm.model.dp_mixture.MultimodalDPMixture.prepare` makes one), and what it shares with
the disk-backed :class:`~pyro_mm.data.store_batch.StoreBatch` (:class:`RowsOnDevice`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch


class RowsOnDevice:
    """What every prepared batch shares (``masks (N, M)`` on one device): its size, its
    device and index chunks over its rows."""

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
class TensorBatch(RowsOnDevice):
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


__all__ = ["RowsOnDevice", "TensorBatch"]
