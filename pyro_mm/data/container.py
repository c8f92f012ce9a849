"""The data container: named modalities sharing one example axis.

:class:`MultimodalData` is what every public function takes. It validates at the
boundary (so the model never sees NaN, a ragged example axis or an impossible label),
copies what it is given (so user arrays are never mutated) and converts to tensors on a
chosen device with :meth:`MultimodalData.to_tensors`. The checks themselves are in
:mod:`pyro_mm.data.checks`, the file formats (xarray, netCDF, ``.npz``) in
:mod:`pyro_mm.data.formats`.

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
from .batch import TensorBatch
from .checks import MISSING_LABEL, check_features, check_labels
from .disk import OnDisk
from .formats import read_file, read_xarray


class MultimodalData(OnDisk):
    """Named modalities with a shared example axis, optional labels and masks.

    Args:
        features: ``name -> array (N, d_name)``. Arrays or tensors; copied to float32.
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
        features: Mapping[str, Any],
        labels: Any = None,
        masks: Mapping[str, Any] | None = None,
        num_classes: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ):
        self._features, self._masks, self._num_examples = check_features(features, masks)
        self._labels, self._num_classes = check_labels(labels, num_classes,
                                                       self._num_examples)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._store = None   # features on disk (open_zarr): a StoreArrays
        self._rows: np.ndarray | None = None     # this object's rows of the store

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
        if not lazy:
            return cls(**args)
        return cls._from_lazy_xarray(dataset, args, example_dim)

    @classmethod
    def load(cls, path: str, label: str | None = "labels", example_dim: str = "example"
             ) -> "MultimodalData":
        """Read a ``.npz`` (arrays by modality name, optional ``labels`` and
        ``<name>_mask``) or a netCDF ``.nc`` file (see :meth:`from_xarray`); open a
        directory as a Zarr store (:meth:`open_zarr`: its features stay on disk)."""
        if os.path.isdir(path):
            return cls.open_zarr(path)
        return cls(**read_file(path, label=label, example_dim=example_dim))

    # ------------------------------------------------------------------ properties

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self._masks)

    @property
    def dims(self) -> dict[str, int]:
        """``name -> number of features``, in modality order."""
        if self._store is not None:
            return dict(self._store.dims)
        return {k: v.shape[1] for k, v in self._features.items()}

    @property
    def num_examples(self) -> int:
        return self._num_examples

    def __len__(self) -> int:
        return self._num_examples

    @property
    def features(self) -> dict[str, np.ndarray]:
        """Read-only views of the feature arrays; for data on disk, the read-only
        ``zarr.Array`` of each modality (nothing read), which a subset cannot give."""
        if self._store is not None:
            if self._rows is not None:
                raise DataValidationError(
                    "features: a subset of a Zarr store has no array of its own; read "
                    "rows with read_rows(rows)")
            return dict(self._store.arrays)
        out = {}
        for k, v in self._features.items():
            view = v.view()
            view.flags.writeable = False
            out[k] = view
        return out

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
        reads) and checked for NaN/inf in observed rows as it is read."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._store is None:
            return {k: v[rows] for k, v in self._features.items()}
        return self._read_stored_rows(rows)

    def subset(self, index: Iterable[int] | np.ndarray) -> "MultimodalData":
        """Examples ``index`` (integer positions or a boolean mask), as a new object
        (still on disk for data on disk: only the row map is kept)."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        if self._store is not None:
            index = index.astype(np.int64)
            rows = index if self._rows is None else self._rows[index]
            return type(self)._on_disk(
                self._store, {k: v[index] for k, v in self._masks.items()},
                None if self._labels is None else self._labels[index],
                self._num_classes, self.metadata, rows)
        return MultimodalData(
            {k: v[index] for k, v in self._features.items()},
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
        if self._store is not None:
            store = self._store.select(modalities)
            return type(self)._on_disk(store, {m: self._masks[m] for m in modalities},
                                           self._labels, self._num_classes,
                                           self.metadata, self._rows)
        return MultimodalData(
            {k: self._features[k] for k in modalities},
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
        if self._store is not None:
            return type(self)._on_disk(
                self._store, {m: masks[:, j] for j, m in enumerate(names)}, self._labels,
                self._num_classes, self.metadata, self._rows)
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
        if rows is None and self._store is None:
            # torch.tensor copies: a caller writing to the tensors cannot reach our arrays.
            features = {k: torch.tensor(self._features[k], device=device) for k in names}
        else:
            rows = np.arange(self._num_examples) if rows is None else np.asarray(rows)
            block = self.read_rows(rows)  # already copies
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

        if self._store is not None:
            raise DataValidationError(
                "to_xarray: the features are in a Zarr store; open it with "
                "xarray.open_zarr or read rows with read_rows")
        variables = {}
        for name, array in self._features.items():
            variables[name] = ((example_dim, f"{name}_feature"), array)
            variables[f"{name}_mask"] = ((example_dim,), self._masks[name])
        if self._labels is not None:
            variables["labels"] = ((example_dim,), self._labels)
        attrs = {k: v for k, v in self.metadata.items() if isinstance(v, (str, int, float))}
        return xr.Dataset(variables, coords={example_dim: np.arange(self._num_examples)},
                          attrs=attrs)
