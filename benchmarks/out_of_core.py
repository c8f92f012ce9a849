"""Training from a Zarr store larger than memory, against the same model in memory.

The out-of-core part of ``python -m benchmarks.scale``. A synthetic store (8 clusters,
two modalities, float32, uncompressed since noise does not compress) is written under
a temporary directory chunk by chunk, and deleted at the end. Then, each in a fresh
process (``spawn``), with one thread:

* **disk**: ``fit``'s phases on the whole store: the streaming standardisation pass
  (timed on its own), the guide's initialisation, then one epoch (or its first
  ``steps`` minibatches) read by the ``DataLoader`` (``num_workers`` processes), in
  ``disk_order="chunks"`` (a minibatch from a window of 4 chunks of 256 examples: with
  uniform draws every minibatch would touch nearly every chunk of the store). The
  store's pages are dropped from the OS page cache first (``posix_fadvise``), so the
  first reads come from the disk.
* **memory**: the same model on the store's first ``memory_rows`` examples loaded into a
  :class:`~pyro_mm.data.container.MultimodalData`: one epoch, timed the same way.

Reported for each: examples per second over the timed steps, and the peak resident
memory of the training process (``ru_maxrss``) and of its largest loader worker.
"""

from __future__ import annotations

import gc
import itertools
import json
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

#: Seconds a run may take before its process is killed.
DEADLINE = 3000
#: Examples per chunk of the store: a window of CHUNK_WINDOW chunks is one minibatch.
CHUNK_ROWS = 256


def write_store(path: Path, num_examples: int, dims: dict[str, int], seed: int = 0,
                block: int = 16384, chunk_rows: int = CHUNK_ROWS) -> float:
    """A synthetic store: ``x = mean[label] + noise`` per modality; returns seconds."""
    from pyro_mm.data.store import StoreWriter

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    means = {m: 3.0 * rng.standard_normal((8, d), dtype=np.float32) for m, d in dims.items()}
    with StoreWriter(path, dims, num_examples, labels=True, num_classes=8,
                     chunk_rows=chunk_rows, compress=False) as writer:
        for start in range(0, num_examples, block):
            b = min(block, num_examples - start)
            labels = rng.integers(0, 8, b)
            features = {m: means[m][labels] + rng.standard_normal((b, d), dtype=np.float32)
                        for m, d in dims.items()}
            writer.write(start, features, labels=labels)
    return time.perf_counter() - started


def drop_page_cache(path: Path) -> None:
    """Ask the OS to forget the cached pages of every file of the store."""
    for file in path.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _train(config: dict, out: str) -> None:
    """One run in this (fresh) process; writes its measurements to ``out``."""
    import pyro
    import torch

    import pyro_mm as pm
    from pyro_mm.train.trainer import Settings, Trainer

    torch.set_num_threads(1)
    # The loader's workers start as they would under `pyro-mm train` on Linux (fork),
    # not as this spawned process was started.
    mp.set_start_method("fork", force=True)
    data = pm.MultimodalData.open_zarr(config["store"])
    if config["where"] == "memory":
        rows = np.arange(config["memory_rows"])
        part = data.subset(rows)
        data = pm.MultimodalData(part.read_rows(rows), labels=part.labels, num_classes=8)
    else:
        drop_page_cache(Path(config["store"]))
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(data.dims, latent_dim=8, num_components=10, hidden=(64,))
    trainer = Trainer(model, Settings(num_epochs=1, batch_size=config["batch_size"],
                                      device="cpu", seed=0, progress=False,
                                      num_workers=config["num_workers"],
                                      disk_order=config["disk_order"]))
    started = time.perf_counter()
    model.fit_standardization(data)
    stats_seconds = time.perf_counter() - started
    prepare_seconds = time.perf_counter()
    trainer.prepare(data)  # starts the loader's workers too
    trainer.build_optimizer()
    prepare_seconds = time.perf_counter() - prepare_seconds
    minibatches, _ = trainer.minibatches(0)
    steps = config["steps"]
    if steps is not None:
        minibatches = itertools.islice(minibatches, steps)
    wall = time.perf_counter()
    losses = trainer.epoch_losses(minibatches)
    wall = time.perf_counter() - wall
    done = len(trainer.history.steps)
    examples = min(len(data), done * trainer.minibatch_size)
    del minibatches, trainer  # shuts the loader's workers down, so they are reaped
    gc.collect()
    result = {"where": config["where"], "num_examples": len(data), "steps": done,
              "examples_timed": examples, "seconds": wall,
              "examples_per_second": examples / wall, "stats_seconds": stats_seconds,
              "prepare_seconds": prepare_seconds,
              "final_loss": losses[-1] if losses else float("nan"),
              "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              "worker_peak_rss_gb":
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20}
    Path(out).write_text(json.dumps(result))


def run_child(config: dict) -> dict:
    """:func:`_train` in a fresh process; its result."""
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "result.json")
        process = mp.get_context("spawn").Process(target=_train, args=(config, out))
        process.start()
        process.join(DEADLINE)
        if process.is_alive():
            process.kill()
        if not Path(out).is_file():
            raise RuntimeError(f"{config['where']} run failed (exit code {process.exitcode})")
        return json.loads(Path(out).read_text())


#: (examples, dims, batch, in-memory examples, steps from disk: None = the epoch).
FULL = (2**21, {"a": 512, "b": 512}, 1024, 2**17, None)  # 2^21 x 1024 float32 = 8 GiB
TINY = (4096, {"a": 16, "b": 16}, 256, 2048, None)


def run(sizes=FULL, folder: str | None = None, num_workers: int = 2,
        disk_order: str = "chunks") -> dict:
    """Write the store, train from disk and in memory (each in a fresh process),
    delete the store."""
    num_examples, dims, batch, memory_rows, steps = sizes
    root = Path(tempfile.mkdtemp(prefix="pyro-mm-ooc-", dir=folder))
    store = root / "data.zarr"
    try:
        write_seconds = write_store(store, num_examples, dims)
        size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
        common = {"store": str(store), "batch_size": batch, "num_workers": num_workers,
                  "memory_rows": memory_rows, "disk_order": disk_order}
        disk = run_child({**common, "where": "disk", "steps": steps})
        memory = run_child({**common, "where": "memory", "steps": None})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"num_examples": num_examples, "dims": dims, "batch_size": batch,
            "num_workers": num_workers, "disk_order": disk_order,
            "chunk_rows": CHUNK_ROWS, "store_bytes": size,
            "feature_bytes": num_examples * sum(dims.values()) * 4,
            "write_seconds": write_seconds, "disk": disk, "memory": memory}


__all__ = ["FULL", "TINY", "drop_page_cache", "run", "run_child", "write_store"]
