"""GPU throughput: training examples per second on CUDA, in memory and streamed from a
Zarr store, against the CPU; and a one-GPU data-parallel (NCCL) smoke run.

Batch 1,024 and 8,192 on mfeat (2,000 examples, six views) and on 100,000 synthetic
examples (two modalities); each timed over whole epochs after one warm-up epoch, in the
same run on both devices, with the device name recorded. "From disk" writes the data set
to a temporary Zarr store and trains from it (``num_workers=2`` loader processes, pinned
memory); its timed fit includes starting the loader's workers (seconds), so on small
data it understates the streaming rate. The smoke run starts one process, joins an NCCL process group (file
rendezvous) and trains one epoch with ``fit(distributed=True)``.

``torch.compile`` is not a row: on the CPU it made the step slower and hit Dynamo's
recompile limit (the networks share one code object; ``benchmarks/RESULTS.md``,
throughput), and ``pm.fit`` does not compile.

Without CUDA the script says so and exits cleanly (status 0) without touching the
recorded results; ``--cpu-dry-run`` runs every part on the CPU (gloo for the smoke run)
at tiny sizes without recording, so the code paths are tested where no GPU is.

    python -m benchmarks.gpu [--tiny] [--epochs 3] [--cpu-dry-run]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pyro
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyro_mm as pm

from .common import markdown_table, parser, write_results

#: Seconds the data-parallel smoke run may take before it counts as failed.
SMOKE_TIMEOUT = 300


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def throughput(data, device: str, batch_size: int, epochs: int, **fit_options) -> float:
    """Examples per second of ``pm.fit`` over ``epochs`` epochs (after a warm-up epoch)."""
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(data.dims, num_classes=data.num_classes, latent_dim=16,
                                   num_components=20)
    result = pm.fit(model, data, num_epochs=1, batch_size=batch_size, device=device,
                    progress=False, **fit_options)
    _sync(device)
    start = time.perf_counter()
    pm.fit(result.model, data, guide=result.guide, num_epochs=epochs,
           batch_size=batch_size, device=device, progress=False, **fit_options)
    _sync(device)
    return epochs * len(data) / (time.perf_counter() - start)


def _smoke_rank(rank: int, folder: str, backend: str, device: str) -> None:
    dist.init_process_group(backend, init_method=f"file://{folder}/rendezvous",
                            rank=rank, world_size=1)
    try:
        data = pm.datasets.make_synthetic(num_examples=2048, num_clusters=4,
                                          dims={"a": 16, "b": 8}, seed=0)
        model = pm.MultimodalDPMixture(data.dims, num_classes=data.num_classes,
                                       latent_dim=4, num_components=6)
        result = pm.fit(model, data, num_epochs=1, batch_size=256, device=device,
                        distributed=True, progress=False)
        loss = result.history.epochs[-1]["loss"]
        Path(folder, "loss").write_text(repr(float(loss)))
    finally:
        dist.destroy_process_group()


def ddp_smoke(backend: str, device: str) -> dict:
    """One process, one process group, one epoch: did it train (finite loss), how long."""
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        context = mp.spawn(_smoke_rank, args=(folder, backend, device), nprocs=1,
                           join=False)
        while not context.join(timeout=1):
            if time.perf_counter() - start > SMOKE_TIMEOUT:
                for process in context.processes:
                    process.kill()
                return {"backend": backend, "ok": False, "error": "timed out"}
        loss = float(Path(folder, "loss").read_text())
    return {"backend": backend, "ok": loss == loss and abs(loss) != float("inf"),
            "loss": loss, "seconds": time.perf_counter() - start}


def measure(sets, device: str, batch_sizes, epochs: int) -> list[dict]:
    """Every data set and batch size: on ``device`` in memory and from a store, and on
    the CPU in memory."""
    raw = []
    with tempfile.TemporaryDirectory() as folder:
        for label, data in sets.items():
            path = str(Path(folder) / f"{len(raw)}.zarr")
            data.to_zarr(path)
            store = pm.MultimodalData.open_zarr(path)
            for batch_size in batch_sizes:
                row = {"data": label, "batch_size": batch_size}
                row["memory"] = throughput(data, device, batch_size, epochs)
                row["disk"] = throughput(store, device, batch_size, epochs, num_workers=2)
                row["cpu"] = throughput(data, "cpu", batch_size,
                                        1 if len(data) > 10_000 else epochs)
                raw.append(row)
                print(row, flush=True)
    return raw


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cpu-dry-run", action="store_true",
                   help="run every part on the CPU at tiny sizes; record nothing")
    args = p.parse_args(argv)
    dry = args.cpu_dry_run
    if not (dry or torch.cuda.is_available()):
        print("benchmarks.gpu: no CUDA device here; nothing to measure (results unchanged).")
        return 0
    device = "cpu" if dry else "cuda"
    name = "CPU (dry run)" if dry else torch.cuda.get_device_name(0)
    small = args.tiny or dry
    sets = {"mfeat (2,000 x 6 views)": pm.datasets.load_mfeat(),
            "synthetic (100,000 x 2 modalities)": pm.datasets.make_synthetic(
                num_examples=2000 if small else 100_000, num_clusters=8,
                dims={"a": 64, "b": 32}, seed=0)}
    if dry:
        sets = {"synthetic (2,000 x 2 modalities)": sets.popitem()[1]}
    raw = measure(sets, device, (256,) if dry else (1024, 8192), 1 if small else args.epochs)
    smoke = ddp_smoke("gloo" if dry else "nccl", device)
    print("data-parallel smoke run:", smoke, flush=True)
    rows = [[r["data"], r["batch_size"], f"{r['memory']:,.0f}", f"{r['disk']:,.0f}",
             f"{r['cpu']:,.0f}", f"{r['memory'] / r['cpu']:.1f}x"] for r in raw]
    table = markdown_table(["data", "batch", f"examples/s on {name}, in memory",
                            f"examples/s on {name}, from a Zarr store", "examples/s on CPU",
                            "GPU / CPU (memory)"], rows)
    table += (f"\n\nOne-GPU data-parallel smoke run ({smoke['backend']}): "
              + ("trained one epoch, loss {:.1f}, {:.0f} s".format(smoke["loss"],
                                                                    smoke["seconds"])
                 if smoke["ok"] else f"FAILED ({smoke.get('error', 'non-finite loss')})"))
    write_results("gpu", {"title": "GPU training throughput", "device": name, "rows": raw,
                          "ddp_smoke": smoke},
                  table, args.out, record=not small)
    return 0 if smoke["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
