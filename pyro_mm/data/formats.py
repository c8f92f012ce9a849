"""File formats of :class:`~pyro_mm.data.container.MultimodalData`: ``xarray.Dataset`` (and
netCDF ``.nc`` files) and ``.npz`` archives.

The readers return the container's constructor arguments (``features``, ``labels``,
``masks``, ``num_classes``, ``metadata``), so the container, one module up, builds and
validates the object (:meth:`~pyro_mm.data.container.MultimodalData.to_xarray` goes the other way).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DataValidationError


def read_xarray(dataset, example_dim: str = "example", label: str | None = None,
                modalities: Sequence[str] | None = None, mask_suffix: str = "_mask",
                num_classes: int | None = None, lazy: bool = False) -> dict[str, Any]:
    """Constructor arguments from an ``xarray.Dataset`` (see
    :meth:`~pyro_mm.data.container.MultimodalData.from_xarray`); with ``lazy``, the features are
    the names of the modalities, not their values."""
    if example_dim not in dataset.dims:
        raise DataValidationError(
            f"example_dim: {example_dim!r} is not a dimension of the dataset "
            f"(dims: {list(dataset.dims)})"
        )
    if label is not None and label not in dataset.data_vars:
        raise DataValidationError(f"label: no variable {label!r} in the dataset")
    if modalities is None:
        modalities = [
            name for name, var in dataset.data_vars.items()
            if name != label and var.ndim == 2 and example_dim in var.dims
        ]
    features, masks = {}, {}
    for name in modalities:
        if name not in dataset.data_vars:
            raise DataValidationError(f"modality {name!r}: no such variable")
        var = dataset[name]
        if example_dim not in var.dims or var.ndim != 2:
            raise DataValidationError(
                f"modality {name!r}: expected dims ({example_dim!r}, <features>), "
                f"got {var.dims}"
            )
        features[str(name)] = None if lazy else var.transpose(example_dim, ...).values
        mask_name = f"{name}{mask_suffix}"
        if mask_name in dataset.data_vars:
            masks[str(name)] = dataset[mask_name].values
    labels = None if label is None else dataset[label].values
    return dict(features=features, labels=labels, masks=masks, num_classes=num_classes,
                metadata=dict(dataset.attrs))


def read_file(path: str, label: str | None = "labels", example_dim: str = "example"
              ) -> dict[str, Any]:
    """Constructor arguments from a ``.npz`` or ``.nc`` file (see
    :meth:`~pyro_mm.data.container.MultimodalData.load`)."""
    path = str(path)
    if not os.path.isfile(path):
        raise DataValidationError(f"data file {path!r}: not found")
    if path.endswith(".nc"):
        # xarray is imported when used, so that importing pyro_mm does not pay for it.
        import xarray as xr

        with xr.open_dataset(path) as ds:
            ds = ds.load()
        return read_xarray(ds, example_dim=example_dim,
                           label=label if label in ds.data_vars else None)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
        labels = arrays.pop(label, None) if label else None
        masks = {k[: -len("_mask")]: arrays.pop(k) for k in list(arrays)
                 if k.endswith("_mask")}
        return dict(features=arrays, labels=labels, masks=masks)
    raise DataValidationError(f"data file {path!r}: expected a .npz or .nc file")


__all__ = ["read_file", "read_xarray"]
