"""The data container: named modalities sharing one example axis.

:class:`MultimodalData` is what every public function takes. It validates at the
boundary (so the model never sees NaN, a ragged example axis or an impossible label),
copies what it is given (so user arrays are never mutated) and converts to tensors on a
chosen device with :meth:`MultimodalData.to_tensors`. The checks themselves are in
:mod:`pyro_mm.data.checks`, the file formats (xarray, netCDF, ``.npz``) in
:mod:`pyro_mm.data.formats`.

The features are held by a backend (:mod:`pyro_mm.data.backends`): in memory, or on
disk in a Zarr store (:meth:`MultimodalData.open_zarr`, layout in
:mod:`pyro_mm.data.store`) or a lazily opened xarray dataset, read a block of rows at a
time. Every method here works the same on each; masks and labels are always in memory.

Conventions
-----------
* ``features[name]`` has shape ``(N, d_name)``, float32.
* ``masks[name]`` has shape ``(N,)``, bool: ``True`` where the modality is observed.
  Entries of an unobserved row may hold anything (NaN included); they are replaced by
  zeros in the stored copy and never reach a likelihood.
* ``labels`` has shape ``(N,)``, int64, with ``-1`` for a missing label.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import DataValidationError
from .backends import FeatureBackend, InMemoryFeatures, StoredFeatures
from .batch import TensorBatch
from .checks import MISSING_LABEL, check_labels, check_masks
from .formats import read_file, read_xarray
from .store import DEFAULT_CHUNK_ROWS, StoreWriter, XarrayArrays, open_store


class MultimodalData:
    """Named modalities with a shared example axis, optional labels and masks.

    Args:
        features: ``name -> array (N, d_name)``. Arrays or tensors; copied to float32.
            Or a :class:`~pyro_mm.data.backends.FeatureBackend` (what
            :meth:`open_zarr` and ``from_xarray(..., lazy=True)`` pass: features left
            on disk, whose values are checked as they are read).
        labels: optional ``(N,)`` integer labels; ``-1`` (or NaN in a float array)
            marks a missing label.
        masks: optional ``name -> (N,)`` bool, ``True`` where observed. Modalities not
            named are fully observed.
        num_classes: number of classes; inferred from the labels when omitted.
        metadata: free-form information (citation, descriptions, ground truth).

    Raises:
        DataValidationError: naming the modality and the problem, for an empty set,
            a rank other than 2, example counts that disagree, NaN/inf in an observed
            entry, labels out of range, or masks of the wrong shape.
    """

    def __init__(
        self,
        features: Mapping[str, Any] | FeatureBackend,
        labels: Any = None,
        masks: Mapping[str, Any] | None = None,
        num_classes: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ):
        backend = (features if isinstance(features, FeatureBackend)
                   else InMemoryFeatures(features))
        self._features, self._masks, self._num_examples = backend.checked(masks)
        self._labels, self._num_classes = check_labels(labels, num_classes,
                                                       self._num_examples)
        self.metadata: dict[str, Any] = dict(metadata or {})

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(
        cls,
        features: Mapping[str, Any],
        labels: Any = None,
        masks: Mapping[str, Any] | None = None,
        num_classes: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> "MultimodalData":
        """Build from a dict ``name -> (N, d)`` of NumPy arrays or tensors."""
        return cls(features, labels=labels, masks=masks, num_classes=num_classes,
                   metadata=metadata)

    @classmethod
    def from_xarray(
        cls,
        dataset,
        example_dim: str = "example",
        label: str | None = None,
        modalities: Sequence[str] | None = None,
        mask_suffix: str = "_mask",
        num_classes: int | None = None,
        lazy: bool = False,
    ) -> "MultimodalData":
        """Build from an ``xarray.Dataset`` whose variables share ``example_dim``.

        Every variable with two dims, one of them ``example_dim``, is a modality (or
        only those named in ``modalities``); ``label`` names a 1-D label variable; a
        1-D boolean variable ``<modality><mask_suffix>`` is that modality's mask.

        ``lazy=True`` (for a dataset opened lazily, e.g. ``xr.open_zarr``): the
        features are never loaded whole but read by rows as for :meth:`open_zarr`;
        masks and labels are loaded.
        """
        args = read_xarray(dataset, example_dim=example_dim, label=label,
                           modalities=modalities, mask_suffix=mask_suffix,
                           num_classes=num_classes, lazy=lazy)
        if lazy:
            dims = {m: dataset[m].sizes[d] for m in args["features"]
                    for d in dataset[m].dims if d != example_dim}
            source = XarrayArrays(dataset, dims, example_dim)
            args["masks"] = check_masks(args["masks"], dims, source.num_examples)
            args["features"] = StoredFeatures(source)
        return cls(**args)

    @classmethod
    def open_zarr(cls, path: str) -> "MultimodalData":
        """Open a Zarr store written by :meth:`to_zarr` (or
        :class:`~pyro_mm.data.store.StoreWriter`) without reading its features: they
        stay on disk and are read a block of rows at a time (:meth:`read_rows`,
        :meth:`to_tensors` with ``rows``), validated as they are read. Masks and labels
        are read now, and the store is checked to be complete (every chunk file
        there). ``fit``, ``predict``, ``evaluate`` and ``impute`` stream such data
        (``guides/gpu-and-scale.md``).

        Raises:
            DataValidationError: not a store of ours, an interrupted write, a chunk
                missing, or arrays of the wrong shape or dtype
                (:func:`~pyro_mm.data.store.open_store`).
        """
        spec = open_store(path)
        masks = check_masks(spec["masks"], spec["features"].dims, spec["num_examples"])
        return cls(StoredFeatures(spec["features"]), labels=spec["labels"],
                   masks=masks, num_classes=spec["num_classes"],
                   metadata=spec["metadata"])

    @classmethod
    def load(cls, path: str, label: str | None = "labels", example_dim: str = "example"
             ) -> "MultimodalData":
        """Read a ``.npz`` (arrays by modality name, optional ``labels`` and
        ``<name>_mask``) or a netCDF ``.nc`` file (see :meth:`from_xarray`); open a
        directory, or a missing path ending in ``.zarr``, as a Zarr store
        (:meth:`open_zarr`: its features stay on disk; a write of it that was
        interrupted is named so)."""
        if os.path.isdir(path) or (not os.path.exists(path)
                                   and str(path).rstrip("/").endswith(".zarr")):
            return cls.open_zarr(path)
        return cls(**read_file(path, label=label, example_dim=example_dim))

    # ------------------------------------------------------------------ properties

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self._masks)

    @property
    def dims(self) -> dict[str, int]:
        """``name -> number of features``, in modality order."""
        return self._features.dims

    @property
    def num_examples(self) -> int:
        return self._num_examples

    def __len__(self) -> int:
        return self._num_examples

    @property
    def features(self) -> dict[str, np.ndarray]:
        """Read-only views of the feature arrays; for data on disk, the read-only
        ``zarr.Array`` of each modality (nothing read), which a subset cannot give."""
        return self._features.arrays()

    @property
    def masks(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._masks.items()}

    @property
    def labels(self) -> np.ndarray | None:
        return None if self._labels is None else self._labels.copy()

    @property
    def has_labels(self) -> bool:
        return self._labels is not None and bool((self._labels != MISSING_LABEL).any())

    @property
    def num_classes(self) -> int | None:
        return self._num_classes

    def __repr__(self) -> str:
        views = ", ".join(f"{k}: {d}" for k, d in self.dims.items())
        observed = "" if self._labels is None else (
            f", labelled={int((self._labels != MISSING_LABEL).sum())}"
        )
        return f"MultimodalData(N={self._num_examples}, {{{views}}}{observed})"

    # ------------------------------------------------------------------ selection
    def read_rows(self, rows: np.ndarray | Sequence[int]) -> dict[str, np.ndarray]:
        """``name -> (len(rows), d_name)`` float32 copies of examples ``rows`` (in that
        order), zeros where unobserved. Data on disk is read in sorted order (contiguous
        reads) and checked for NaN/inf in observed rows as it is read; an error names
        the store's own rows, for a subset too."""
        rows = np.asarray(rows, dtype=np.int64)
        return self._features.read(rows, {k: v[rows] for k, v in self._masks.items()})

    def subset(self, index: Iterable[int] | np.ndarray) -> "MultimodalData":
        """Examples ``index`` (integer positions or a boolean mask), as a new object
        (still on disk for data on disk: only the row map is kept)."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = index.astype(np.int64)
        return MultimodalData(
            self._features.take(index),
            labels=None if self._labels is None else self._labels[index],
            masks={k: v[index] for k, v in self._masks.items()},
            num_classes=self._num_classes,
            metadata=self.metadata,
        )

    def select(self, modalities: Sequence[str]) -> "MultimodalData":
        """Only the named modalities, in the given order."""
        missing = [m for m in modalities if m not in self._masks]
        if missing:
            raise DataValidationError(
                f"modalities {missing}: not in this data set (have {list(self.modalities)})"
            )
        if len(modalities) == 0:
            raise DataValidationError("modalities: select at least one")
        return MultimodalData(
            self._features.select(list(modalities)),
            labels=self._labels,
            masks={k: self._masks[k] for k in modalities},
            num_classes=self._num_classes,
            metadata=self.metadata,
        )

    def split(self, test_fraction: float = 0.2, seed: int = 0, stratify: bool = True
              ) -> tuple["MultimodalData", "MultimodalData"]:
        """Random train/test split, stratified by label when labels are present."""
        if not 0.0 < test_fraction < 1.0:
            raise DataValidationError(
                f"test_fraction: must be strictly between 0 and 1, got {test_fraction}"
            )
        rng = np.random.default_rng(seed)
        n = self._num_examples
        if stratify and self._labels is not None:
            test = []
            for value in np.unique(self._labels):
                members = np.flatnonzero(self._labels == value)
                rng.shuffle(members)
                test.append(members[: int(round(test_fraction * members.size))])
            test = np.sort(np.concatenate(test))
        else:
            test = np.sort(rng.permutation(n)[: int(round(test_fraction * n))])
        is_test = np.zeros(n, dtype=bool)
        is_test[test] = True
        if is_test.all() or not is_test.any():
            raise DataValidationError(
                f"test_fraction={test_fraction}: leaves an empty train or test set "
                f"for {n} examples"
            )
        return self.subset(~is_test), self.subset(is_test)

    def mask_at_random(self, fraction: float, seed: int = 0, keep_at_least: int = 1
                       ) -> "MultimodalData":
        """A new data set with (example, modality) cells hidden completely at random.

        Exactly ``round(fraction * N * M)`` cells are missing afterwards, cells that
        were already missing included. Cells to hide are visited in a uniformly random
        order and hidden unless that would leave their example fewer than
        ``keep_at_least`` observed modalities, so the choice never depends on feature
        values or labels (MCAR); the per-example floor makes it not exactly uniform over
        cells at high ``fraction``. An example that already has fewer observed
        modalities than ``keep_at_least`` is left as it is. ``self`` is not changed.

        Raises:
            DataValidationError: ``fraction`` outside ``[0, 1]``, below the fraction
                already missing, or above what ``keep_at_least`` allows; or
                ``keep_at_least`` outside ``1..M``.
        """
        names = self.modalities
        if not 1 <= int(keep_at_least) <= len(names):
            raise DataValidationError(
                f"keep_at_least: must be between 1 and {len(names)} (the number of "
                f"modalities), got {keep_at_least}")
        if not 0.0 <= fraction <= 1.0:
            raise DataValidationError(f"fraction: must be in [0, 1], got {fraction}")
        observed = np.stack([self._masks[m] for m in names], axis=1)        # (N, M)
        target = int(round(fraction * observed.size))
        already = int((~observed).sum())
        spare = np.maximum(observed.sum(1) - int(keep_at_least), 0)          # (N,)
        if target < already:
            raise DataValidationError(
                f"fraction={fraction}: {already / observed.size:.3f} of the cells are "
                "missing already; cells cannot be un-hidden")
        if target > already + spare.sum():
            raise DataValidationError(
                f"fraction={fraction}: at most {(already + spare.sum()) / observed.size:.3f}"
                f" of the cells can be missing with keep_at_least={keep_at_least}")
        rng = np.random.default_rng(seed)
        cells = rng.permutation(np.flatnonzero(observed.ravel()))
        rows = cells // len(names)
        # Rank of each cell among its example's cells in the random order: the first
        # `spare` of them may be hidden (a vectorised greedy pass).
        by_row = np.argsort(rows, kind="stable")
        starts = np.searchsorted(rows[by_row], rows[by_row])
        rank = np.empty_like(cells)
        rank[by_row] = np.arange(cells.size) - starts
        hide = cells[rank < spare[rows]][: target - already]
        masks = observed.ravel().copy()
        masks[hide] = False
        masks = masks.reshape(observed.shape)
        return MultimodalData(
            self._features, labels=self._labels,
            masks={m: masks[:, j] for j, m in enumerate(names)},
            num_classes=self._num_classes, metadata=self.metadata)

    # ------------------------------------------------------------------ conversion
    def to_tensors(self, device: torch.device | str = "cpu",
                   modalities: Sequence[str] | None = None, rows=None) -> TensorBatch:
        """Tensors on ``device`` (features as stored: not standardised) of every
        example, or of examples ``rows`` (``(B,)`` positions, in that order)."""
        names = list(modalities or self.modalities)
        read = np.arange(self._num_examples) if rows is None else np.asarray(rows)
        # Only the modalities asked for are read; reads are copies, so a caller writing
        # to the tensors cannot reach our arrays.
        block = self._features.select(names).read(read, {k: self._masks[k][read]
                                                          for k in names})
        features = {k: torch.from_numpy(block[k]).to(device) for k in names}
        pick = slice(None) if rows is None else rows
        masks = torch.tensor(np.stack([self._masks[k][pick] for k in names], axis=1),
                             device=device)
        labels = label_mask = None
        if self._labels is not None:
            raw = self._labels[pick]
            label_mask = torch.as_tensor(raw != MISSING_LABEL, device=device)
            labels = torch.as_tensor(np.maximum(raw, 0), device=device)
        return TensorBatch(features, masks, labels, label_mask)

    def to_xarray(self, example_dim: str = "example"):
        """An ``xarray.Dataset``: one variable per modality (dims ``example``,
        ``<name>_feature``), ``<name>_mask`` variables and ``labels``."""
        import xarray as xr

        variables = {}
        for name, array in self._features.loaded("to_xarray").items():
            variables[name] = ((example_dim, f"{name}_feature"), array)
            variables[f"{name}_mask"] = ((example_dim,), self._masks[name])
        if self._labels is not None:
            variables["labels"] = ((example_dim,), self._labels)
        attrs = {k: v for k, v in self.metadata.items() if isinstance(v, (str, int, float))}
        return xr.Dataset(variables, coords={example_dim: np.arange(self._num_examples)},
                          attrs=attrs)

    # ------------------------------------------------------------------ on disk
    def to_zarr(self, path: str, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                overwrite: bool = False, checksums: bool = True) -> None:
        """Write a Zarr store (layout in :mod:`pyro_mm.data.store`), ``chunk_rows``
        examples at a time, into a temporary directory renamed to ``path`` when complete.
        ``checksums``: a CRC32C per chunk, checked on every read. Metadata entries JSON
        cannot hold are not written."""
        with StoreWriter(path, self.dims, self._num_examples,
                         labels=self._labels is not None, num_classes=self._num_classes,
                         metadata=self.metadata, chunk_rows=chunk_rows,
                         overwrite=overwrite, checksums=checksums) as writer:
            for start in range(0, self._num_examples, chunk_rows):
                rows = np.arange(start, min(start + chunk_rows, self._num_examples))
                writer.write(start, self.read_rows(rows),
                             {m: v[rows] for m, v in self._masks.items()},
                             None if self._labels is None else self._labels[rows])

    @property
    def on_disk(self) -> bool:
        """Whether the features stay on disk (:meth:`open_zarr`, lazy :meth:`from_xarray`)."""
        return self._features.on_disk

    @property
    def store_path(self) -> str | None:
        """The Zarr store holding the features (``None`` in memory)."""
        return self._features.path

    def store_chunks(self) -> np.ndarray:
        """``(N,)`` int64: the chunk of the store holding each example (data on disk)."""
        return self._features.chunk_of()
