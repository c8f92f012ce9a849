"""Zarr stores of :class:`~pyro_mm.data.container.MultimodalData`: data larger than memory.

Layout of a store (a Zarr v3 group, one directory)::

    STORE.zarr/
        zarr.json            attributes: format, version, modalities, num_examples,
                             num_classes, metadata, checksums, complete
        features/<name>      (N, d_name) float32, chunked along the examples
        masks/<name>         (N,) bool, True where observed
        labels               (N,) int64, -1 for a missing label (optional)

Features are never read whole: :class:`StoreArrays` reads the rows asked for. Masks
and labels, ``(N,)`` each, are read into memory when the store is opened.

A store cannot pass off damage as data (layout version 3):

* every feature chunk is written, with a NaN fill value: a chunk file missing is found
  when the store is opened, and one deleted later reads as NaN, which the reader
  rejects in an observed row, then names as the missing chunk;
* each chunk ends with its CRC32C (``checksums``, the default), checked on every read;
  a chunk that fails it, or fails to decode, is an error naming the modality, the
  chunk and its rows (in the store's own numbering);
* the masks' and labels' chunk files are written whatever they hold: one missing is
  found when the store is opened, never read as "every row observed" or "no label";
* ``complete`` is written last, just before the store is renamed into place: a store
  without it was not finished.

Stores of version 2 (masks and labels equal to their fill value not written) open
without the check of those files; stores of version 1 (zero fill value, chunks equal to
it not written, no checksums, no marker) open and read as before, without any of these
checks.

:class:`StoreWriter` writes a store chunk by chunk (so a store can be larger than
memory) into a temporary directory beside the target and renames it into place on
success: a reader never sees a half-written store.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataValidationError

#: The ``format`` attribute of a store written here, and its layout version.
STORE_FORMAT = "pyro_mm.multimodal"
STORE_VERSION = 3
#: Rows per chunk unless told otherwise: ~4 MB for 1000 float32 features.
DEFAULT_CHUNK_ROWS = 1024


def _zarr():
    # zarr is imported when used, so that importing pyro_mm does not pay for it.
    import zarr

    return zarr


class StoreArrays:
    """The feature arrays of a store, opened on first use in each process, read by
    store rows: every row number in its errors is the store's own.

    Pickling keeps the path only, so a ``DataLoader`` worker opens the store once,
    itself, instead of receiving open handles.

    Args:
        path: the store's directory.
        dims: ``name -> d_name`` of the modalities to read.
        num_examples: ``N``, the store's rows.
        checked: whether every chunk is known to be written (stores of layout version
            2), so that a chunk file found absent is damage, not rows left at the fill
            value.
    """

    def __init__(self, path: str | Path, dims: Mapping[str, int], num_examples: int,
                 checked: bool = True):
        self.path = str(path)
        self.dims, self.num_examples, self.checked = dict(dims), int(num_examples), checked
        self._arrays: dict[str, Any] | None = None

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}

    @property
    def arrays(self) -> dict[str, Any]:
        """``name -> zarr.Array`` ``(N, d_name)``, opened read-only."""
        if self._arrays is None:
            group = _zarr().open_group(self.path, mode="r")
            self._arrays = {m: group["features"][m] for m in self.dims}
        return self._arrays

    @property
    def chunk_rows(self) -> int:
        """Examples per chunk (of the first modality: a minibatch's reads follow it)."""
        return int(next(iter(self.arrays.values())).chunks[0])

    def select(self, names) -> "StoreArrays":
        """Only modalities ``names``."""
        return StoreArrays(self.path, {m: self.dims[m] for m in names}, self.num_examples,
                           self.checked)

    def read(self, name: str, positions: np.ndarray) -> np.ndarray:
        """``(len(positions), d_name)`` float32: rows ``positions`` (sorted, unique).

        Raises:
            DataValidationError: a chunk that fails its checksum or cannot be decoded,
                naming the modality, the chunk and its rows.
        """
        array = self.arrays[name]
        if positions.size == 0:
            return np.zeros((0, self.dims[name]), dtype=np.float32)
        try:
            first, last = int(positions[0]), int(positions[-1])
            if last - first + 1 == positions.size:  # a contiguous run: one slice
                return np.asarray(array[first : last + 1])
            return np.asarray(array.get_orthogonal_selection((positions, slice(None))))
        except Exception:
            # Only the failure path pays for finding the chunk: one read per chunk.
            for chunk in np.unique(positions // self.chunk_rows):
                self._read_chunk(name, int(chunk))
            raise

    def _read_chunk(self, name: str, chunk: int) -> None:
        rows = self._chunk_rows(chunk)
        try:
            self.arrays[name][rows.start : rows.stop]
        except Exception as exc:
            if isinstance(exc, ValueError) and "checksum" in str(exc).lower():
                problem = ("fails its checksum: its bytes are not those written (the "
                           "file was changed or damaged)")
            else:
                problem = f"cannot be decoded ({type(exc).__name__}: {exc})"
            raise DataValidationError(
                f"{self._describe(name, chunk)} {problem}; write the store again") from exc

    def check_chunks(self, name: str, positions: np.ndarray | None = None) -> None:
        """That the chunk files holding rows ``positions`` (``None``: every row) exist;
        a store of layout version 1 is not checked (its chunks equal to the fill value
        were never written).

        Raises:
            DataValidationError: naming the modality, the first chunk missing and its
                rows.
        """
        if not self.checked:
            return
        rows = self.chunk_rows
        chunks = (range(-(-self.num_examples // rows)) if positions is None
                  else np.unique(np.asarray(positions) // rows).tolist())
        metadata = self.arrays[name].metadata
        base = Path(self.path) / "features" / name
        missing = [c for c in chunks
                   if not (base / metadata.encode_chunk_key((int(c), 0))).is_file()]
        if missing:
            more = f" ({len(missing)} chunks missing in all)" if len(missing) > 1 else ""
            raise DataValidationError(
                f"{self._describe(name, int(missing[0]))} is missing (deleted or never "
                f"written){more}; its rows cannot be read: write the store again")

    def _chunk_rows(self, chunk: int) -> range:
        rows = self.chunk_rows
        return range(chunk * rows, min((chunk + 1) * rows, self.num_examples))

    def _describe(self, name: str, chunk: int) -> str:
        rows = self._chunk_rows(chunk)
        key = self.arrays[name].metadata.encode_chunk_key((chunk, 0))
        return (f"data store {self.path!r}: modality {name!r}, chunk {chunk} (rows "
                f"{rows.start}-{rows.stop - 1}, file features/{name}/{key})")


class XarrayArrays:
    """The modalities of a lazily opened ``xarray.Dataset`` (e.g. ``xr.open_zarr``),
    read by rows like :class:`StoreArrays`: xarray's lazy indexing reads only the
    chunks holding the rows asked for.

    Args:
        dataset: the dataset (pickled with it: xarray reopens its files on unpickling).
        dims: ``name -> d_name``.
        example_dim: the example dimension.
    """

    path = None

    def __init__(self, dataset, dims: Mapping[str, int], example_dim: str):
        self.dataset, self.dims, self.example_dim = dataset, dict(dims), example_dim
        self.num_examples = int(dataset.sizes[example_dim])

    def check_chunks(self, name: str, positions: np.ndarray | None = None) -> None:
        """Nothing to check: xarray keeps the files, and reads an absent chunk as its
        variable's fill value (NaN for floats by default), which the reader rejects in
        an observed row."""

    @property
    def arrays(self) -> dict[str, Any]:
        """``name -> xarray.DataArray`` (lazy), examples first."""
        return {m: self.dataset[m].transpose(self.example_dim, ...) for m in self.dims}

    @property
    def chunk_rows(self) -> int:
        first = self.dataset[next(iter(self.dims))]
        chunks = first.encoding.get("chunks") or first.encoding.get("preferred_chunks")
        if isinstance(chunks, dict):
            return int(chunks.get(self.example_dim, 1))
        return int(chunks[first.dims.index(self.example_dim)]) if chunks else 1

    def select(self, names) -> "XarrayArrays":
        return XarrayArrays(self.dataset, {m: self.dims[m] for m in names}, self.example_dim)

    def read(self, name: str, positions: np.ndarray) -> np.ndarray:
        var = self.arrays[name].isel({self.example_dim: positions})
        values = np.asarray(var.values)
        if not np.issubdtype(values.dtype, np.floating):
            raise DataValidationError(
                f"modality {name!r}: expected floating-point features, got dtype "
                f"{values.dtype}")
        return values.astype(np.float32, copy=False)


def open_store(path: str | Path) -> dict[str, Any]:
    """Open a store: ``features`` (a :class:`StoreArrays`), ``masks`` (``name -> (N,)``
    bool), ``labels`` (``(N,)`` or ``None``), ``num_classes``, ``metadata`` and
    ``num_examples``. Reads no feature chunk, but checks that every chunk file is there
    (the feature chunks from layout version 2, the masks' and labels' from version 3;
    version 1 stores open as before).

    Raises:
        DataValidationError: naming what is wrong: not a store written by pyro_mm, a
            store whose writing was interrupted, a modality missing, features that are
            not 2-D float32 with ``N`` rows, a chunk file missing, masks or labels of
            the wrong shape or dtype.
    """
    zarr = _zarr()
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise DataValidationError(f"data store {str(path)!r}: {_why_absent(path)}")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr's own errors vary by version; keep its message
        raise DataValidationError(f"data store {str(path)!r}: cannot be opened ({exc})"
                                  ) from exc
    attrs = dict(group.attrs)
    version = _check_attributes(path, attrs)
    n, modalities = int(attrs["num_examples"]), list(attrs["modalities"])
    dims, masks = {}, {}
    for m in modalities:
        dims[m] = _check_feature_array(path, group, m, n)
        masks[m] = _read_small(path, group, f"masks/{m}", n, "b", version >= 3)
    labels = None
    if "labels" in group:
        labels = _read_small(path, group, "labels", n, "i", version >= 3)
    features = StoreArrays(path, dims, n, checked=version >= 2)
    for m in modalities:
        features.check_chunks(m)
    return dict(features=features, masks=masks, labels=labels,
                num_classes=attrs.get("num_classes"), metadata=attrs.get("metadata", {}),
                num_examples=n)


def _why_absent(path: Path) -> str:
    """Why ``path`` holds no store: an interrupted write (its temporary directory, or
    a replaced store moved aside, beside it) or nothing of ours at all."""
    aside = sorted(p.name for p in path.parent.glob(f".{path.name}.*-*") if p.is_dir())
    temps = [p for p in aside if ".tmp-" in p]
    olds = [p for p in aside if ".old-" in p]
    if not path.exists() and (temps or olds):
        said = "its writing was interrupted"
        if olds:
            said += f"; the store it was replacing is in {olds[0]!r} beside it"
        if temps:
            said += f"; the incomplete store {temps[0]!r} beside it can be deleted"
        return f"does not exist: {said}; write it again"
    if not path.exists():
        return "does not exist"
    return ("not a Zarr store (no zarr.json in it); write one with "
            "MultimodalData.to_zarr(path)")


def _check_attributes(path: Path, attrs: Mapping[str, Any]) -> int:
    """The store's layout version, once its attributes say it is a complete store of
    ours."""
    if attrs.get("format") != STORE_FORMAT:
        raise DataValidationError(
            f"data store {str(path)!r}: not written by pyro_mm (attribute format="
            f"{attrs.get('format')!r}, expected {STORE_FORMAT!r})")
    version = attrs.get("version")
    if version not in (1, 2, STORE_VERSION):
        raise DataValidationError(
            f"data store {str(path)!r}: layout version {version!r}, this pyro_mm reads "
            f"versions 1 to {STORE_VERSION} (a newer pyro_mm wrote it?)")
    if version >= 2 and attrs.get("complete") is not True:
        raise DataValidationError(
            f"data store {str(path)!r}: incomplete: its writing was interrupted before "
            "it finished (no completion marker); write it again")
    return int(version)


def _check_feature_array(path: Path, group, name: str, n: int) -> int:
    key = f"features/{name}"
    if key not in group:
        raise DataValidationError(
            f"data store {str(path)!r}: modality {name!r} is listed but {key} is missing")
    array = group[key]
    if array.ndim != 2 or array.shape[0] != n:
        raise DataValidationError(
            f"data store {str(path)!r}: modality {name!r} has shape {array.shape}, "
            f"expected ({n}, d)")
    if np.dtype(array.dtype) != np.float32:
        raise DataValidationError(
            f"data store {str(path)!r}: modality {name!r} has dtype {array.dtype}, "
            "expected float32 (rewrite it with MultimodalData.to_zarr)")
    return int(array.shape[1])


def _read_small(path: Path, group, key: str, n: int, kind: str,
                check_chunk: bool) -> np.ndarray:
    """A mask or the labels, ``(n,)``, one chunk. ``check_chunk`` (stores of layout
    version 3, which write that chunk whatever it holds): its file must exist, else
    zarr would read the fill value (every row observed, every label missing)."""
    if key not in group:
        raise DataValidationError(f"data store {str(path)!r}: {key} is missing")
    array = group[key]
    if array.shape != (n,) or np.dtype(array.dtype).kind != kind:
        expected = "bool" if kind == "b" else "int64"
        raise DataValidationError(
            f"data store {str(path)!r}: {key} has shape {array.shape} and dtype "
            f"{array.dtype}, expected ({n},) {expected}")
    chunk = f"{key}/{array.metadata.encode_chunk_key((0,))}"
    if check_chunk and n > 0 and not (path / chunk).is_file():
        raise DataValidationError(
            f"data store {str(path)!r}: {key} (rows 0-{n - 1}, file {chunk}) is missing "
            "(deleted or never written); write the store again")
    return np.asarray(array[...])


class StoreWriter:
    """Write a store row block by row block; renamed into place on success.

    Use as a context manager::

        with StoreWriter(path, {"a": 16, "b": 8}, num_examples=N) as writer:
            for start in range(0, N, 10_000):
                writer.write(start, {"a": xa, "b": xb}, masks=None, labels=y)

    Rows not written stay zero and observed; leaving the block on an exception
    deletes the temporary directory and leaves ``path`` as it was. A process killed
    while writing leaves only the temporary directory, which :func:`open_store` calls
    incomplete (its completion marker is written last).

    Args:
        path: the store to create (a directory; conventionally ``*.zarr``).
        dims: ``name -> d_name``.
        num_examples: ``N``.
        labels: whether the store has labels (``-1`` until written).
        num_classes, metadata: stored as attributes (``metadata`` must be JSON).
        chunk_rows: rows per chunk of the feature arrays.
        overwrite: replace an existing store at ``path`` (only once the new one is
            complete); otherwise an existing ``path`` is an error.
        compress: compress the feature chunks (Zarr's default codec); ``False`` for
            features that do not compress (noise-like floats), to save the CPU time.
        checksums: end every feature chunk with its CRC32C (Zarr's ``crc32c`` codec),
            checked whenever the chunk is read, so that changed bytes are an error
            rather than wrong features.
    """

    def __init__(self, path: str | Path, dims: Mapping[str, int], num_examples: int,
                 labels: bool = False, num_classes: int | None = None,
                 metadata: Mapping[str, Any] | None = None,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, overwrite: bool = False,
                 compress: bool = True, checksums: bool = True):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path}: exists; pass overwrite=True to replace it")
        if int(chunk_rows) < 1:
            raise ValueError(f"chunk_rows: must be a positive integer, got {chunk_rows!r}")
        self.dims, self.num_examples = dict(dims), int(num_examples)
        self.labels, self.num_classes, self.chunk_rows = labels, num_classes, int(chunk_rows)
        self.metadata = _json_metadata(metadata or {})
        self.temp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        self.overwrite, self.compress, self.checksums = overwrite, compress, checksums
        self.group = None
        self.arrays: dict[str, Any] = {}
        self._written: list[tuple[int, int]] = []   # row ranges written, for the gaps

    def __enter__(self) -> "StoreWriter":
        zarr, n = _zarr(), self.num_examples
        self.group = group = zarr.open_group(str(self.temp), mode="w-")
        group.attrs.update({
            "format": STORE_FORMAT, "version": STORE_VERSION,
            "modalities": list(self.dims), "num_examples": n,
            "num_classes": None if self.num_classes is None else int(self.num_classes),
            "metadata": self.metadata, "checksums": "crc32c" if self.checksums else None})
        rows = min(self.chunk_rows, max(n, 1))
        # Written through the arrays made here: ``write_empty_chunks`` is a setting of
        # the array object, not of the store, and an array reopened by name forgets it.
        empty = {"write_empty_chunks": True}
        self.arrays = arrays = {}
        for m, d in self.dims.items():
            # A NaN fill value and every chunk written (even one equal to the fill):
            # an absent chunk is then damage, found on opening, and never read as data.
            arrays[f"features/{m}"] = group.create_array(
                f"features/{m}", shape=(n, d), chunks=(rows, d), dtype="float32",
                fill_value=np.nan, compressors=self._codecs(), config=empty)
            # Written whole now, even when equal to the fill (every row observed): a
            # deleted mask or label chunk is then damage found on opening, not "all
            # observed" or "all unlabelled".
            arrays[f"masks/{m}"] = group.create_array(
                f"masks/{m}", shape=(n,), chunks=(max(n, 1),), dtype="bool",
                fill_value=True, config=empty)
            arrays[f"masks/{m}"][:] = np.ones(n, dtype=bool)
        if self.labels:
            arrays["labels"] = group.create_array(
                "labels", shape=(n,), chunks=(max(n, 1),), dtype="int64", fill_value=-1,
                config=empty)
            arrays["labels"][:] = np.full(n, -1, dtype=np.int64)
        return self

    def _codecs(self) -> list:
        from zarr.codecs import Crc32cCodec, ZstdCodec

        # The checksum comes last, so it covers the compressed bytes as stored and is
        # checked before decompression.
        return (([ZstdCodec()] if self.compress else [])
                + ([Crc32cCodec()] if self.checksums else []))

    def write(self, start: int, features: Mapping[str, np.ndarray],
              masks: Mapping[str, np.ndarray] | None = None, labels=None) -> None:
        """Rows ``start : start + B``: ``features`` ``name -> (B, d_name)`` (every
        modality), optional ``masks`` ``name -> (B,)`` and ``labels`` ``(B,)``."""
        missing = set(self.dims) - set(features)
        if missing:
            raise DataValidationError(f"write: modalities {sorted(missing)} missing")
        for m, x in features.items():
            x = np.asarray(x, dtype=np.float32)
            if x.ndim != 2 or x.shape[1] != self.dims[m]:
                raise DataValidationError(
                    f"modality {m!r}: expected (B, {self.dims[m]}), got {x.shape}")
            self.arrays[f"features/{m}"][start : start + len(x)] = x
            self._written.append((int(start), min(int(start) + len(x), self.num_examples)))
        for m, o in (masks or {}).items():
            o = np.asarray(o, dtype=bool)
            self.arrays[f"masks/{m}"][start : start + len(o)] = o
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            self.arrays["labels"][start : start + len(labels)] = labels

    def _zero_unwritten(self) -> None:
        """Zeros in the rows never written (else they would hold the NaN fill)."""
        done = 0
        for start, stop in sorted(self._written) + [(self.num_examples,) * 2]:
            for gap in range(done, start, self.chunk_rows):
                stop_gap = min(gap + self.chunk_rows, start)
                for m, d in self.dims.items():
                    self.arrays[f"features/{m}"][gap:stop_gap] = np.zeros(
                        (stop_gap - gap, d), dtype=np.float32)
            done = max(done, stop)

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            shutil.rmtree(self.temp, ignore_errors=True)
            return
        self._zero_unwritten()
        self.group.attrs["complete"] = True   # last: a store without it is incomplete
        old = None
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(self.path, old)
        os.replace(self.temp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _json_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``metadata`` that JSON can hold (arrays become lists)."""
    out = {}
    for key, value in metadata.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[str(key)] = value
    return out


__all__ = ["DEFAULT_CHUNK_ROWS", "STORE_FORMAT", "StoreArrays", "StoreWriter",
           "XarrayArrays", "open_store"]
