"""Minibatches read from disk by a ``torch.utils.data.DataLoader`` with worker
processes, for training on a Zarr store (:meth:`~pyro_mm.data.container.MultimodalData.open_zarr`).

* The trainer decides every epoch's minibatch indices as in memory (same permutation,
  or ARM's weighted draw; each rank its shard) and hands them to :class:`EpochBatches`,
  the loader's sampler; each element is one minibatch's indices.
* :class:`RowReader` (the loader's dataset) reads one minibatch: in sorted order, so
  the reads of a chunk are contiguous and each chunk is read once, then put back in
  the minibatch's order (so a minibatch equals its in-memory counterpart row for row).
  It pickles the store's path, not open handles: each worker opens the store once.
* Workers are persistent (started with the loader, once per training run) and read
  ``prefetch`` minibatches ahead; with a CUDA target the batches are put in pinned
  memory, so the copy to the GPU can overlap with compute (``non_blocking``).

Rows come back as stored (not standardised); the trainer standardises them on the
device (:meth:`~pyro_mm.model.dp_mixture.MultimodalDPMixture.standardize`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataValidationError
from .batch import TensorBatch
from .container import MultimodalData


def chunk_local(order: torch.Tensor, chunk_of: torch.Tensor, window: int,
                generator: torch.Generator) -> torch.Tensor:
    """``order`` (``(L,)`` example indices: a permutation or a weighted draw) rearranged
    so that consecutive stretches come from few chunks of the store: chunks are visited
    in a random order, ``window`` at a time, and the examples of a window are shuffled
    among themselves. A minibatch no larger than a window then touches at most
    ``2 * window`` chunks (it may straddle two windows) instead of nearly all of them;
    every example keeps its number of draws.

    Args:
        chunk_of: ``(N,)`` the store chunk of each example.
    """
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window: must be a positive integer, got {window!r}")
    chunks = chunk_of[order]
    visit = torch.randperm(int(chunk_of.max()) + 1, generator=generator)[chunks]
    order, visit = order[torch.argsort(visit, stable=True)], visit.sort().values
    noise = torch.rand(len(order), generator=generator, dtype=torch.float64)
    return order[torch.argsort((visit // window).double() + noise)]


class RowReader(Dataset):
    """``indices (B,) -> dict`` of raw CPU tensors of those rows (``features``,
    ``masks`` ``(B, M)``, ``labels`` and ``label_mask`` ``(B,)`` when present), or
    ``{"error": message}`` for rows that fail their checks."""

    def __init__(self, data: MultimodalData, modalities: Sequence[str]):
        self.data = data.select(list(modalities))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices) -> dict:
        rows = np.asarray(indices, dtype=np.int64)
        try:
            batch = self.data.to_tensors("cpu", rows=rows)
        except DataValidationError as exc:
            # Carried back as a value: torch would re-raise it with the worker's
            # traceback pasted into the message, which the command line prints.
            return {"error": str(exc)}
        out = {"features": batch.features, "masks": batch.masks}
        if batch.labels is not None:
            out["labels"], out["label_mask"] = batch.labels, batch.label_mask
        return out


class EpochBatches(Sampler):
    """The loader's sampler: this epoch's minibatch index arrays, set by the trainer
    before each pass (a persistent loader asks its sampler anew for every pass)."""

    def __init__(self):
        self.batches: list[np.ndarray] = []

    def set(self, batches: Sequence[np.ndarray]) -> None:
        self.batches = list(batches)

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class RowLoader:
    """A ``DataLoader`` over a store's rows for one training run.

    Args:
        data: data on disk (any :class:`MultimodalData` works; in memory it only copies).
        modalities: the model's modalities, in its order.
        device: where the rows go (pinned memory when it is a CUDA device).
        num_workers: reading processes (0: read in the training process).
        prefetch: minibatches each worker reads ahead.
    """

    def __init__(self, data: MultimodalData, modalities: Sequence[str],
                 device: torch.device, num_workers: int = 2, prefetch: int = 4):
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers: must be a non-negative integer, got "
                             f"{num_workers!r}")
        self.device = torch.device(device)
        self.sampler = EpochBatches()
        # "spawn": forking a process that already runs torch's threads can deadlock the
        # child (Python warns so since 3.12); workers start once per run, so its cost
        # (importing torch in each) is paid once.
        extra = ({"persistent_workers": True, "prefetch_factor": prefetch,
                  "multiprocessing_context": "spawn"} if num_workers else {})
        self.loader = DataLoader(RowReader(data, modalities), batch_size=None,
                                 sampler=self.sampler, num_workers=num_workers,
                                 pin_memory=self.device.type == "cuda",
                                 # Its own generator: a loader otherwise draws its
                                 # workers' seed from torch's global one, shifting the
                                 # guide's noise away from the in-memory run's.
                                 generator=torch.Generator().manual_seed(0), **extra)
        # Start the workers now (an empty pass): a start-up under ``spawn`` imports torch
        # in every worker, seconds that belong to preparation, not to the first epoch.
        self._workers = iter(self.loader) if num_workers else None

    def epoch(self, batches: Sequence[torch.Tensor]) -> Iterator[tuple[torch.Tensor,
                                                                        TensorBatch]]:
        """``(indices, raw rows on the device)`` for each of ``batches`` (index tensors
        on any device), read ahead by the workers."""
        self.sampler.set([b.detach().cpu().numpy() for b in batches])
        for indices, item in zip(batches, self.loader):
            yield indices, self._to_device(item)

    def _to_device(self, item: dict) -> TensorBatch:
        if "error" in item:
            raise DataValidationError(item["error"])

        def move(t):
            return None if t is None else t.to(self.device, non_blocking=True)

        return TensorBatch({m: move(x) for m, x in item["features"].items()},
                           move(item["masks"]), move(item.get("labels")),
                           move(item.get("label_mask")))


__all__ = ["EpochBatches", "RowLoader", "RowReader", "chunk_local"]
