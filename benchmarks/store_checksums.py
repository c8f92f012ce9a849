"""The cost of a Zarr store's per-chunk checksums (CRC32C) when its rows are read.

Two stores of the same synthetic features (float32, ``chunk_rows`` examples a chunk)
are written, one with ``checksums=True`` (every chunk ends with its CRC32C, checked
whenever it is read), one without; for compressed (Zstd) and uncompressed chunks. Then,
in one process, the same reads are timed on each, alternating between
the two stores within every repeat (so drifts of a shared machine fall on both):

* **sequential**: every row in blocks of 8,192 (the streaming standardisation pass);
* **minibatch**: 64 minibatches of 1,024 rows drawn uniformly (a training epoch's
  reads: each touches most chunks, and a chunk is decoded, and verified, whole).

The files are in the OS page cache after writing: the reads measure the CPU cost of
decoding and verifying, which a slower disk would only hide. Reported: MB/s of
features read with and without checksums, and their ratio of times (median over the
repeats of the per-repeat ratio; 1.00 = free).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import markdown_table, parser, write_results

#: (examples, features, rows per chunk, repeats).
FULL = (65536, 256, 1024, 15)
TINY = (4096, 16, 256, 3)


def _write(path: Path, x: np.ndarray, chunk_rows: int, compress: bool, checksums: bool):
    from pyro_mm.data.store import StoreWriter

    with StoreWriter(path, {"a": x.shape[1]}, len(x), chunk_rows=chunk_rows,
                     compress=compress, checksums=checksums) as writer:
        for start in range(0, len(x), 8192):
            writer.write(start, {"a": x[start : start + 8192]})


def _reads(num_examples: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    batch = min(1024, num_examples // 4)
    return {"sequential": [np.arange(s, min(s + 8192, num_examples))
                           for s in range(0, num_examples, 8192)],
            "minibatch": [np.sort(rng.choice(num_examples, batch, replace=False))
                          for _ in range(64)]}


def _time(data, blocks) -> float:
    start = time.perf_counter()
    for rows in blocks:
        data.read_rows(rows)
    return time.perf_counter() - start


def run(sizes=FULL) -> list[dict]:
    """Write the stores, time the reads, delete the stores."""
    from pyro_mm.data.container import MultimodalData

    num_examples, dims, chunk_rows, repeats = sizes
    x = np.random.default_rng(0).normal(size=(num_examples, dims)).astype(np.float32)
    x = np.round(x, 2)   # two decimals: something for Zstd to compress
    root = Path(tempfile.mkdtemp(prefix="pyro-mm-crc-"))
    rows = []
    try:
        for compress in (True, False):
            stores = {}
            for checksums in (False, True):
                path = root / f"c{int(compress)}s{int(checksums)}.zarr"
                _write(path, x, chunk_rows, compress, checksums)
                stores[checksums] = MultimodalData.open_zarr(path)
            for access, blocks in _reads(num_examples).items():
                rows.append(_measure(stores, blocks, repeats, compress, access))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def _measure(stores, blocks, repeats: int, compress: bool, access: str) -> dict:
    times = {False: [], True: []}
    _time(stores[False], blocks), _time(stores[True], blocks)   # warm-up
    for r in range(repeats):
        for checksums in ((False, True) if r % 2 == 0 else (True, False)):
            times[checksums].append(_time(stores[checksums], blocks))
    megabytes = sum(len(b) for b in blocks) * next(iter(stores[False].dims.values())) * 4e-6
    return {"compress": compress, "access": access, "megabytes": megabytes,
            "seconds_plain": statistics.median(times[False]),
            "seconds_checksums": statistics.median(times[True]),
            "ratio": statistics.median(t / p for p, t in zip(times[False], times[True]))}


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    rows = run(TINY if args.tiny else FULL)
    table = markdown_table(
        ["chunks", "reads", "MB/s without", "MB/s with checksums", "time ratio"],
        [["zstd" if r["compress"] else "raw", r["access"],
          r["megabytes"] / r["seconds_plain"], r["megabytes"] / r["seconds_checksums"],
          f"{r['ratio']:.3f}x"] for r in rows])
    num_examples, dims, chunk_rows, repeats = TINY if args.tiny else FULL
    write_results("store_checksums", {
        "title": "Store checksums: read cost of a CRC32C per chunk", "rows": rows,
        "sizes": {"num_examples": num_examples, "dims": dims, "chunk_rows": chunk_rows,
                  "repeats": repeats}}, table, out=args.out, record=not args.tiny)


if __name__ == "__main__":  # pragma: no cover
    main()
