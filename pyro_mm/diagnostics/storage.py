"""Writing and reading a diagnostics tree (:func:`~pyro_mm.diagnostics.to_datatree`):
netCDF through h5netcdf, or Zarr for a path ending in ``.zarr``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr


def _engine(path: Path, engine: str | None) -> str:
    if engine is not None:
        return engine
    return "zarr" if path.suffix == ".zarr" else "h5netcdf"


def save_datatree(tree: "xr.DataTree", path: str | Path, engine: str | None = None) -> Path:
    """Write ``tree`` to netCDF (``engine="h5netcdf"``, the default) or Zarr (a path
    ending in ``.zarr``, or ``engine="zarr"``; needs the ``zarr`` package)."""
    path = Path(path)
    engine = _engine(path, engine)
    path.parent.mkdir(parents=True, exist_ok=True)
    if engine == "zarr":
        tree.to_zarr(path, mode="w")
    else:
        tree.to_netcdf(path, engine=engine, mode="w")
    return path


def load_datatree(path: str | Path, engine: str | None = None) -> "xr.DataTree":
    """Read a tree written by :func:`save_datatree` fully into memory (the file is
    closed afterwards)."""
    # xarray is imported when used, so that importing pyro_mm does not pay for it.
    import xarray as xr

    path = Path(path)
    engine = _engine(path, engine)
    with xr.open_datatree(path, engine=engine) as tree:
        return tree.load().copy()


__all__ = ["load_datatree", "save_datatree"]
