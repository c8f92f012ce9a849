"""The part of :class:`~pyro_mm.data.container.MultimodalData` that keeps the features on disk:
opening and writing Zarr stores, reading rows, and the map from a subset's rows to the
store's (the layout and the arrays are in :mod:`pyro_mm.data.store`).

An object on disk holds a :class:`~pyro_mm.data.store.StoreArrays` (or
:class:`~pyro_mm.data.store.XarrayArrays`) in ``_store`` and, for a subset, the store
positions of its rows in ``_rows``; masks and labels are in memory as always.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataValidationError
from .checks import check_features, check_labels, check_rows
from .store import DEFAULT_CHUNK_ROWS, StoreWriter, XarrayArrays, open_store

if TYPE_CHECKING:  # pragma: no cover
    from .container import MultimodalData


class OnDisk:
    """Mixin of :class:`~pyro_mm.data.container.MultimodalData` (which provides ``_masks``,
    ``_labels``, ``_num_examples``, ``_num_classes``, ``metadata``, ``dims`` and
    ``read_rows``)."""

    @classmethod
    def _on_disk(cls, store, masks, labels, num_classes, metadata,
                 rows: np.ndarray | None) -> "MultimodalData":
        """Features left in ``store`` (rows ``rows`` of it, ``None``: all); masks and
        labels in memory, already checked."""
        self = cls.__new__(cls)
        self._features, self._store, self._rows = {}, store, rows
        self._masks = {m: np.asarray(masks[m], dtype=bool) for m in store.dims}
        self._num_examples = len(next(iter(self._masks.values())))
        self._labels, self._num_classes = labels, num_classes
        self.metadata = dict(metadata or {})
        return self

    @classmethod
    def _from_lazy_xarray(cls, dataset, args, example_dim: str):
        """:meth:`from_xarray` with ``lazy=True``: ``args`` from
        :func:`~pyro_mm.data.formats.read_xarray` (features by name only)."""
        n = dataset.sizes[example_dim]
        store = XarrayArrays(dataset, {m: dataset[m].sizes[d] for m in args["features"]
                                       for d in dataset[m].dims if d != example_dim},
                             example_dim)
        masks = {m: args["masks"].get(m, np.ones(n, dtype=bool)) for m in store.dims}
        check_features({m: np.zeros((n, 1)) for m in masks}, masks)
        labels, num_classes = check_labels(args["labels"], args["num_classes"], n)
        return cls._on_disk(store, masks, labels, num_classes, args["metadata"], None)

    @classmethod
    def open_zarr(cls, path: str) -> "MultimodalData":
        """Open a Zarr store written by :meth:`to_zarr` (or
        :class:`~pyro_mm.data.store.StoreWriter`) without reading its features: they
        stay on disk and are read a block of rows at a time (:meth:`read_rows`,
        :meth:`to_tensors` with ``rows``), validated as they are read. Masks and labels
        are read now. ``fit``, ``predict``, ``evaluate`` and ``impute`` stream such
        data (``guides/gpu-and-scale.md``)."""
        spec = open_store(path)
        labels, num_classes = check_labels(spec["labels"], spec["num_classes"],
                                           spec["num_examples"])
        check_features({m: np.zeros((spec["num_examples"], 1)) for m in spec["masks"]},
                       spec["masks"])  # the masks' own checks (an example with none)
        return cls._on_disk(spec["features"], spec["masks"], labels, num_classes,
                            spec["metadata"], None)

    def to_zarr(self, path: str, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                overwrite: bool = False) -> None:
        """Write a Zarr store (layout in :mod:`pyro_mm.data.store`), ``chunk_rows``
        examples at a time, into a temporary directory renamed to ``path`` when complete.
        Metadata entries JSON cannot hold are not written."""
        with StoreWriter(path, self.dims, self._num_examples,
                         labels=self._labels is not None, num_classes=self._num_classes,
                         metadata=self.metadata, chunk_rows=chunk_rows,
                         overwrite=overwrite) as writer:
            for start in range(0, self._num_examples, chunk_rows):
                rows = np.arange(start, min(start + chunk_rows, self._num_examples))
                writer.write(start, self.read_rows(rows),
                             {m: v[rows] for m, v in self._masks.items()},
                             None if self._labels is None else self._labels[rows])

    @property
    def on_disk(self) -> bool:
        """Whether the features stay in a Zarr store (:meth:`open_zarr`)."""
        return self._store is not None

    @property
    def store_path(self) -> str | None:
        """The Zarr store holding the features (``None`` in memory)."""
        return None if self._store is None else self._store.path

    def store_chunks(self) -> np.ndarray:
        """``(N,)`` int64: the chunk of the store holding each example (data on disk)."""
        if self._store is None:
            raise DataValidationError("store_chunks: the data is in memory, not in a store")
        positions = np.arange(self._num_examples) if self._rows is None else self._rows
        return positions // self._store.chunk_rows

    def _read_stored_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`read_rows` of data on disk: unique store positions in sorted order
        (contiguous reads, each row once), then put back in the order of ``rows``."""
        if rows.size and (rows.min() < 0 or rows.max() >= self._num_examples):
            raise IndexError(f"rows: out of range for {self._num_examples} examples")
        positions = rows if self._rows is None else self._rows[rows]
        unique, inverse = np.unique(positions, return_inverse=True)
        out = {}
        for m in self._masks:
            block = self._store.read(m, unique)[inverse]
            out[m] = check_rows(m, block, self._masks[m][rows], rows)
        return out


__all__ = ["OnDisk"]
