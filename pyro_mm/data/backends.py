"""Where the features of a :class:`~pyro_mm.data.container.MultimodalData` live: in
memory (:class:`InMemoryFeatures`) or on disk, read by rows (:class:`StoredFeatures`,
over a Zarr store or a lazily opened ``xarray.Dataset``).

The container holds one of these and asks it, whatever it is, for the same few things
(:class:`FeatureBackend`); masks and labels stay in the container, in memory. A backend
never holds a mask: the container passes the masks of the rows it reads, so that
hiding cells (``mask_at_random``) or taking a subset needs no new file and no copy of
the features on disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import DataValidationError
from .checks import check_features, check_masks, check_rows


@runtime_checkable
class FeatureBackend(Protocol):
    """What :class:`~pyro_mm.data.container.MultimodalData` asks of its features.

    Rows are this backend's own positions ``0..N-1`` (a subset's, after :meth:`take`);
    ``masks`` arguments are ``name -> (B,)`` bool for the rows concerned.
    """

    #: Whether the features stay on disk, and the store holding them (``None``: none).
    on_disk: bool
    path: str | None

    @property
    def dims(self) -> dict[str, int]:
        """``name -> d_name``, in modality order."""

    def checked(self, masks: Mapping[str, Any] | None
                ) -> tuple["FeatureBackend", dict[str, np.ndarray], int]:
        """The backend ready for ``masks`` (``name -> (N,)``; one not named: fully
        observed), the checked masks and ``N``; raises DataValidationError for values
        or masks that are wrong (values on disk are checked as they are read)."""

    def read(self, rows: np.ndarray, masks: Mapping[str, np.ndarray]
             ) -> dict[str, np.ndarray]:
        """``name -> (B, d_name)`` float32 copies of rows ``rows`` (``(B,)``, in that
        order), zeros where unobserved."""

    def select(self, names: Sequence[str]) -> "FeatureBackend":
        """Only modalities ``names``, in that order."""

    def take(self, index: np.ndarray) -> "FeatureBackend":
        """Rows ``index`` (``(B,)`` int64 positions), as a backend of ``B`` rows."""

    def arrays(self) -> dict[str, Any]:
        """``name -> (N, d_name)`` array-likes, read-only (nothing read from disk)."""

    def loaded(self, what: str) -> dict[str, np.ndarray]:
        """``name -> (N, d_name)`` NumPy copies, for ``what`` that needs every value in
        memory and hands them on; refused (DataValidationError naming ``what``) for
        features on disk."""

    def chunk_of(self) -> np.ndarray:
        """``(N,)`` int64: the store chunk holding each row (refused in memory)."""


class InMemoryFeatures:
    """Features as NumPy arrays ``name -> (N, d_name)``, validated by :meth:`checked`
    (which the container always calls: arrays given here are not yet checked)."""

    on_disk = False
    path = None

    def __init__(self, arrays: Mapping[str, Any]):
        self._arrays = dict(arrays)

    @property
    def dims(self) -> dict[str, int]:
        return {k: v.shape[1] for k, v in self._arrays.items()}

    def checked(self, masks):
        # Checked float32 copies, zeros where unobserved: the caller's arrays are never
        # kept, nor mutated.
        arrays, masks, n = check_features(self._arrays, masks)
        return InMemoryFeatures(arrays), masks, n

    def read(self, rows, masks):
        return {k: v[rows] for k, v in self._arrays.items()}  # already zero where unobserved

    def select(self, names):
        return InMemoryFeatures({k: self._arrays[k] for k in names})

    def take(self, index):
        return InMemoryFeatures({k: v[index] for k, v in self._arrays.items()})

    def arrays(self):
        out = {}
        for k, v in self._arrays.items():
            view = v.view()
            view.flags.writeable = False
            out[k] = view
        return out

    def loaded(self, what):
        return {k: v.copy() for k, v in self._arrays.items()}

    def chunk_of(self):
        raise DataValidationError("store_chunks: the data is in memory, not in a store")


class StoredFeatures:
    """Features read by rows from ``source`` (a :class:`~pyro_mm.data.store.StoreArrays`
    or :class:`~pyro_mm.data.store.XarrayArrays`), ``rows`` of it (``None``: all):
    a subset is only this row map, and every row number in an error is mapped back to
    the source's own (the rows the user wrote).

    Rows are read in sorted order (contiguous reads, each row once) and checked: NaN/inf
    in an observed row is an error, and so is a chunk found missing or damaged.
    """

    on_disk = True

    def __init__(self, source, rows: np.ndarray | None = None):
        self.source, self.rows = source, rows

    @property
    def path(self) -> str | None:
        return self.source.path

    @property
    def dims(self) -> dict[str, int]:
        return dict(self.source.dims)

    @property
    def num_examples(self) -> int:
        return self.source.num_examples if self.rows is None else len(self.rows)

    def checked(self, masks):
        # Not that every example observes a modality: the data set opened from disk was
        # checked so (open_zarr, from_xarray), and a selection of its modalities may
        # keep examples whose only views it dropped, as it always has.
        masks = check_masks(masks, self.source.dims, self.num_examples, every_example=False)
        return self, masks, self.num_examples

    def read(self, rows, masks):
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_examples):
            raise IndexError(f"rows: out of range for {self.num_examples} examples")
        positions = self._positions(rows)
        unique, inverse = np.unique(positions, return_inverse=True)
        out = {}
        for m in self.source.dims:
            block = self.source.read(m, unique)[inverse]
            try:
                out[m] = check_rows(m, block, masks[m], positions)
            except DataValidationError:
                # A chunk deleted since opening reads as the NaN fill: name it as such.
                self.source.check_chunks(m, unique)
                raise
        return out

    def select(self, names):
        return StoredFeatures(self.source.select(names), self.rows)

    def take(self, index):
        return StoredFeatures(self.source, self._positions(index))

    def arrays(self):
        if self.rows is not None:
            raise DataValidationError(
                "features: a subset of a Zarr store has no array of its own; read "
                "rows with read_rows(rows)")
        return dict(self.source.arrays)

    def loaded(self, what):
        raise DataValidationError(
            f"{what}: the features are in a Zarr store; open it with xarray.open_zarr "
            "or read rows with read_rows")

    def chunk_of(self):
        return self._positions(np.arange(self.num_examples)) // self.source.chunk_rows

    def _positions(self, rows: np.ndarray) -> np.ndarray:
        """The source's rows of our rows ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        return rows if self.rows is None else self.rows[rows]


__all__ = ["FeatureBackend", "InMemoryFeatures", "StoredFeatures"]
