"""Scale: data-parallel training (2 processes against 1) and training from disk.

**Data-parallel**, at one thread each.

Every run trains the same model on the same synthetic data for one epoch on the CPU:
2 processes (gloo) at batch B each, 1 process at batch 2B (the same minibatches: the
same steps and the same fit are expected), 1 process at batch B (twice the steps) and
two independent 1-process runs at batch B side by side (the ceiling).
Every run is a fresh set of processes started the same way
(``torch.multiprocessing.spawn``; the 1-process run does not use torch.distributed), and
only the epoch is timed (through the trainer's phases), so import, start-up and
initialisation are left out: its wall-clock time, and each process's CPU time.
Reported: examples per second both ways, their ratios, and the held-out log-likelihood
after the epoch (mean and spread over the repeats, which use different seeds), to show
that the data-parallel epoch fits as well as one process on the same minibatches.

On a shared 2-core machine the ratio is noisy and bounded by 2; other work on the
machine lowers it.

**Out of core** (results ``scale_disk``): an 8 GiB Zarr store of float32 features, one
epoch from disk against the same model in memory on a subset; see
:mod:`benchmarks.out_of_core` for what is timed.

    python -m benchmarks.scale [--tiny] [--repeats 3] [--part all|parallel|disk]
                              [--batches 1024,4096]
"""

from __future__ import annotations

import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import pyro
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyro_mm as pm
from pyro_mm.runtime import distributed as ddp
from pyro_mm.train.trainer import Settings, Trainer

from . import out_of_core
from .common import markdown_table, parser, write_results

#: Seconds a run may take before its processes are killed.
DEADLINE = 900


def synthetic_split(num_examples: int, seed: int):
    """The data-parallel benchmarks' synthetic data (8 clusters, two 32-feature
    modalities), split 80 / 20 into training and held-out sets."""
    data = pm.datasets.make_synthetic(num_examples=num_examples, num_clusters=8,
                                      dims={"a": 32, "b": 32}, seed=seed)
    return data.split(test_fraction=0.2, seed=seed, stratify=True)


def scale_model(train) -> pm.MultimodalDPMixture:
    """The data-parallel benchmarks' model: unsupervised (so the held-out
    log-likelihood is that of the features), latent 8, K 10, hidden 64."""
    return pm.MultimodalDPMixture(train.dims, latent_dim=8, num_components=10, hidden=(64,))


def _worker(rank: int, world: int, folder: str, config: dict) -> None:
    """One epoch through the trainer's phases, timing the epoch alone: its wall-clock
    time and this process's CPU time (which another user's load does not inflate)."""
    torch.set_num_threads(1)
    if config.get("independent"):  # side by side, each its own one-process fit
        world = 1
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{folder}/rdzv", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=120))
    train, test = synthetic_split(config["num_examples"], config["seed"])
    pyro.set_rng_seed(config["seed"])
    model = scale_model(train)
    trainer = Trainer(model, Settings(num_epochs=1, batch_size=config["batch_size"],
                                      device="cpu", seed=config["seed"], progress=False,
                                      distributed=world > 1))
    with ddp.active(trainer.group):
        trainer.prepare(train)
        trainer.build_optimizer()
        minibatches, _ = trainer.minibatches(0)
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.epoch_losses(minibatches)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        result = trainer.finish(stopped_early=False)
    out = {"seconds": wall, "cpu_seconds": cpu, "steps": len(result.history.steps),
           "examples_per_second": len(train) / wall}
    if world > 1:  # what one step's gradient all-reduce costs alone, on this transport
        grads = torch.zeros(sum(p.numel() for p in trainer.params))
        for _ in range(10):
            dist.all_reduce(grads)
        start = time.perf_counter()
        for _ in range(100):
            dist.all_reduce(grads)
        out["allreduce_ms"] = (time.perf_counter() - start) * 10.0
        out["num_parameters"] = grads.numel()
    if rank == 0:
        out["log_likelihood"] = pm.evaluate(result, test)["log_likelihood"]
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(out))
    if world > 1:
        dist.destroy_process_group()


def spawn_and_wait(worker, args: tuple, nprocs: int) -> list[int | None]:
    """``torch.multiprocessing.spawn`` of ``worker(rank, *args)``, joined until
    :data:`DEADLINE` at most (then killed); the exit codes."""
    context = mp.spawn(worker, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + DEADLINE
    for process in context.processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in context.processes:
        if process.is_alive():
            process.kill()
    return [process.exitcode for process in context.processes]


def run_once(world: int, config: dict) -> dict:
    """One epoch on ``world`` fresh processes: rank 0's measurements, and the largest
    CPU time of any rank."""
    with tempfile.TemporaryDirectory() as folder:
        codes = spawn_and_wait(_worker, (world, folder, config), world)
        paths = [Path(folder) / f"rank{r}.json" for r in range(world)]
        if not all(path.is_file() for path in paths):
            raise RuntimeError(f"{world}-process run failed (exit codes {codes})")
        ranks = [json.loads(path.read_text()) for path in paths]
        return {**ranks[0], "cpu_seconds": max(r["cpu_seconds"] for r in ranks)}


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=lambda text: tuple(int(b) for b in text.split(",")),
                   default=(1024, 4096), help="batch sizes per process, comma-separated")
    p.add_argument("--part", choices=["all", "parallel", "disk"], default="all")
    p.add_argument("--tmp", default=None, help="where the store is written (default: the "
                                                "system's temporary directory)")
    args = p.parse_args(argv)
    if args.part in ("all", "parallel"):
        parallel(args)
    if args.part in ("all", "disk"):
        disk(args)


def disk(args) -> None:
    """The out-of-core part: writes ``scale_disk`` results (beside ``--out`` if given)."""
    r = out_of_core.run(out_of_core.TINY if args.tiny else out_of_core.FULL, args.tmp)
    rows = []
    for run in (r["disk"], r["memory"]):
        rows.append([run["where"], run["num_examples"], run["steps"], run["examples_timed"],
                     round(run["examples_per_second"]), run["stats_seconds"],
                     run["prepare_seconds"], run["peak_rss_gb"], run["worker_peak_rss_gb"]])
    table = markdown_table(
        ["data", "examples", "steps timed", "examples timed", "examples/s",
         "standardisation pass (s)", "prepare (s)", "peak RSS, training process (GB)",
         "peak RSS, largest child (GB)"], rows)
    ratio = r["disk"]["examples_per_second"] / r["memory"]["examples_per_second"]
    table += (f"\n\nFrom disk / in memory: **{ratio:.2f}x** the examples per second; "
              f"store {r['store_bytes'] / 1e9:.2f} GB on disk ({r['feature_bytes'] / 1e9:.2f}"
              f" GB of float32 features), written in {r['write_seconds']:.0f} s.")
    dims = " + ".join(f"{d}" for d in r["dims"].values())
    notes = (f"Synthetic store: {r['num_examples']} examples, two modalities ({dims} "
             "float32 features, 8 clusters, uncompressed), chunks of "
             f"{r['chunk_rows']} rows, under /tmp "
             "and deleted afterwards. Model: latent, unsupervised, latent_dim 8, 10 "
             f"components, encoders with one hidden layer of 64; batch {r['batch_size']}; "
             "one torch thread. Each row is a fresh process. 'disk': the store opened with "
             "MultimodalData.open_zarr, the OS asked to drop its pages from the page cache "
             "first (posix_fadvise DONTNEED, which keeps pages not yet written back; with "
             "23 GB of RAM the cache can hold the whole store, so most reads may come "
             "from memory: this measures the loader's and Zarr's costs more than the "
             "disk's bandwidth); the standardisation statistics in one streaming pass "
             "(timed alone), then fit's phases (prepare, which starts the DataLoader's "
             f"{r['num_workers']} forked workers and initialises the guide on 20000 random "
             "rows, timed as 'prepare'), then the epoch in disk_order="
             f"'{r['disk_order']}' (each minibatch a random draw from a window of 4 "
             "chunks): every minibatch read by the "
             "workers (sorted indices), standardised and stepped; 'examples/s' is the "
             "examples of the timed steps over the epoch's wall-clock time. 'memory': the "
             "same model and settings (uniform minibatches) on the store's first "
             "examples read into a "
             "MultimodalData, one epoch. Peak RSS is ru_maxrss of the training process "
             "and the largest of its children (the loader's workers, which fork from it "
             "and share its pages); the OS page cache is not in it. The machine has 2 "
             "cores shared with other work, so the loader's workers compete with the "
             "training process and with other users for CPU.")
    out = None if args.out is None else str(Path(args.out).with_name(
        Path(args.out).stem + "_disk.json"))
    write_results("scale_disk", {"title": "Training from disk (Zarr) vs in memory",
                                 "rows": [r["disk"], r["memory"]], "store": r,
                                 "notes": notes},
                  table, out=out, record=not args.tiny, module="scale")


def parallel(args) -> None:
    """The data-parallel part: writes ``scale`` results."""
    repeats = 1 if args.tiny else args.repeats
    num_examples = 2_000 if args.tiny else 400_000
    batches = (128,) if args.tiny else args.batches
    # Per batch B: 2 x B against 1 x 2B (the same minibatches, so the same fit expected)
    # and against 1 x B (the same work per process and step).
    # And 1 x B twice side by side, not communicating ("1+1"): what two processes on this
    # machine slow each other down by (shared caches and memory), the ratio's ceiling.
    settings = list(dict.fromkeys(
        s for b in batches for s in ((1, 2 * b), (1, b), (2, b), ("1+1", b))))
    runs: dict[tuple[int | str, int], list[dict]] = {s: [] for s in settings}
    for repeat in range(repeats):  # alternate, so drifting machine load hits all
        for world, batch_size in settings:
            config = {"num_examples": num_examples, "batch_size": batch_size,
                      "seed": repeat, "independent": world == "1+1"}
            runs[world, batch_size].append(run_once(2 if world == "1+1" else world, config))
            print(world, "x", batch_size, runs[world, batch_size][-1], flush=True)
    summary = {key: _summary(key, results) for key, results in runs.items()}
    rows = [[w, b, runs[w, b][0]["steps"], round(r["examples_per_second"]),
             round(r["examples_per_cpu_second"]), r["ll_mean"], r["ll_sd"]]
            for (w, b), r in summary.items()]
    ratios, lines = {}, []
    for b in batches:
        ratios[b] = {key: {"same_minibatches": summary[2, b][key] / summary[1, 2 * b][key],
                           "same_batch_per_process": summary[2, b][key] / summary[1, b][key]}
                     for key in ("examples_per_second", "examples_per_cpu_second")}
        wall, cpu = ratios[b]["examples_per_second"], ratios[b]["examples_per_cpu_second"]
        ceiling = 2 * summary["1+1", b]["examples_per_second"] / summary[1, b]["examples_per_second"]
        ratios[b]["ceiling"] = ceiling
        lines.append(f"- batch {b} per process: **{wall['same_batch_per_process']:.2f}x** "
                     f"wall-clock against 1 x {b} ({cpu['same_batch_per_process']:.2f}x by "
                     f"CPU time); {wall['same_minibatches']:.2f}x against 1 x {2 * b}, the "
                     f"same minibatches ({cpu['same_minibatches']:.2f}x by CPU time); two "
                     f"independent 1 x {b} runs side by side: {ceiling:.2f}x, the ceiling.")
    table = markdown_table(
        ["processes", "batch per process", "steps per epoch", "examples/s (wall, median)",
         "examples/s (CPU of busiest process)", "held-out log-lik. after 1 epoch (mean)",
         "sd over repeats"], rows)
    table += "\n\nThroughput ratio, 2 processes / 1:\n\n" + "\n".join(lines)
    ddp_runs = [r for (w, _), rs in runs.items() if w == 2 for r in rs]
    allreduce = statistics.median(r["allreduce_ms"] for r in ddp_runs)
    table += (f"\n\nOne all-reduce of the gradients ({ddp_runs[0]['num_parameters']:,} "
              f"floats) alone, gloo on this machine: {allreduce:.2f} ms (median over runs).")
    notes = _parallel_notes(num_examples, repeats)
    write_results("scale", {"title": "Data-parallel training: 2 processes vs 1",
                            "rows": list(summary.values()),
                            "runs": {f"{w}x{b}": r for (w, b), r in runs.items()},
                            "ratios": {str(b): r for b, r in ratios.items()},
                            "notes": notes},
                  table, out=args.out, record=not args.tiny)


def _parallel_notes(num_examples: int, repeats: int) -> str:
    """What the data-parallel table measures, for RESULTS.md."""
    return (f"{num_examples * 4 // 5} training examples (synthetic, 8 clusters, two "
            "32-feature modalities), unsupervised latent model (log-likelihood of the "
            "features, nats per example), one thread per process, gloo, "
            f"{repeats} alternating repeats with seeds 0..{repeats - 1}. "
            "Wall-clock figures depend on what else runs: on a 2-core machine shared "
            "with other work the two ranks share what is left, so the wall-clock ratio "
            "is noisy and cannot exceed 2. The CPU-time column divides by the busiest "
            "process's CPU time: what the run would reach with a free core per process. "
            "A step has a fixed cost (Pyro's tracing, a few milliseconds, paid by every "
            "rank) besides the per-example work, so 2 x B gains over 1 x 2B only as far "
            "as the per-example work dominates. Row '1+1': two independent one-process "
            "runs side by side (no communication); twice its examples/s over the 1 x B "
            "row is the most two processes can reach here, since they share caches and "
            "memory. What data parallelism adds to a rank's "
            "step: DDP's gradient all-reduce (one bucket for this model) and the wait "
            "for the slower rank; the loss is averaged over ranks once per epoch, and "
            "DDP does not search the graph for unused parameters when the warm-up shows "
            "there are none. Each setting runs in fresh processes at its own time, and "
            "this machine's speed drifts between runs; benchmarks.lockstep compares the "
            "same steps interleaved in the same processes, beside a plain-PyTorch "
            "reference.")


def _summary(key: tuple[int | str, int], results: list[dict]) -> dict:
    """Medians over the repeats of one (processes, batch per process) setting."""
    world, batch_size = key
    lls = [r["log_likelihood"] for r in results]
    return {"processes": world, "batch_per_process": batch_size,
            "examples_per_second": statistics.median(r["examples_per_second"]
                                                     for r in results),
            # Examples per second if every process had a core to itself: the epoch's
            # examples over the busiest process's CPU time.
            "examples_per_cpu_second": statistics.median(
                r["examples_per_second"] * r["seconds"] / r["cpu_seconds"]
                for r in results),
            "ll_mean": statistics.fmean(lls),
            "ll_sd": statistics.stdev(lls) if len(lls) > 1 else float("nan")}


if __name__ == "__main__":
    main()
