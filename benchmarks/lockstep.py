"""Data-parallel steps against one process, interleaved, beside a plain-PyTorch reference.

``benchmarks.scale`` times whole epochs, each setting in fresh processes; on a shared
virtual machine whose speed drifts by tens of per cent between runs, its 2-vs-1 ratio
moves with the drift. Here two gloo processes take turns, in rounds, between:

* ``solo``: rank 0 steps a one-process :class:`~pyro_mm.train.trainer.Trainer` while rank 1
  waits at a barrier (the one-process baseline);
* ``pair``: both ranks step their own one-process trainers, no communication (what two
  processes sharing this machine reach: the ceiling);
* ``ddp``: both ranks step the data-parallel trainer (DDP's gradient all-reduce);
* the same three for a **plain-PyTorch reference** step: fixed arithmetic (matrix
  products, calibrated to take as long as the ``solo`` step) and, in ``ref sync``, one
  gloo all-reduce of as many floats as the model's gradients. No Pyro, no pyro_mm: what
  any synchronous data-parallel loop with that much work per step reaches here.

Every mode gets the same number of steps per round, and the order of the modes turns
from round to round, so drift and cold caches hit all alike. While rank 0 steps alone,
rank 1 waits, idle, at a barrier. Reported per batch
size: rank 0's mean step time per mode and the ratios ``2 x solo / mode`` (examples per
second of two processes over one). The model and data are ``benchmarks.scale``'s.

    python -m benchmarks.lockstep [--tiny] [--rounds 30] [--steps 10]
                                  [--batches 1024,4096,16384]
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

from pyro_mm.runtime import distributed as ddp
from pyro_mm.train.trainer import Settings, Trainer

from .common import markdown_table, parser, write_results
from .scale import scale_model, spawn_and_wait, synthetic_split

MODES = ("solo", "pair", "ddp", "ref solo", "ref pair", "ref sync")


class Stepper:
    """Steps one trainer through its minibatches, epoch after epoch."""

    def __init__(self, trainer: Trainer):
        self.trainer, self.epoch, self.queue = trainer, 0, []

    def __call__(self) -> None:
        if not self.queue:
            self.trainer.epoch = self.epoch
            self.queue = list(self.trainer.minibatches(self.epoch)[0])
            self.epoch += 1
        with ddp.active(self.trainer.group):
            self.trainer.step(self.queue.pop(0))


def _trainer(train, batch_size: int, distributed: bool) -> Trainer:
    pyro.set_rng_seed(0)
    settings = Settings(batch_size=batch_size, device="cpu", seed=0, progress=False,
                        distributed=distributed)
    trainer = Trainer(scale_model(train), settings)
    with ddp.active(trainer.group):
        trainer.prepare(train)
        trainer.build_optimizer()
    trainer.model.train()
    trainer.guide.train()
    return trainer


def _reference(seconds: float, num_floats: int):
    """A plain-PyTorch step of about ``seconds`` of arithmetic (the same on every rank:
    rank 0 calibrates), and its all-reduce of ``num_floats`` floats."""
    a, b = torch.randn(512, 256), torch.randn(256, 256)
    start, trials = time.perf_counter(), 50
    for _ in range(trials):
        a @ b
    reps = torch.tensor([max(1, round(seconds * trials / (time.perf_counter() - start)))])
    dist.broadcast(reps, 0)
    grads = torch.zeros(num_floats)

    def work():
        for _ in range(int(reps)):
            a @ b

    def sync():
        work()
        dist.all_reduce(grads)

    return work, sync, int(reps)


def _worker(rank: int, folder: str, config: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rdzv", rank=rank,
                            world_size=2, timeout=datetime.timedelta(seconds=120))
    train, _ = synthetic_split(config["num_examples"], 0)
    solo = Stepper(_trainer(train, config["batch_size"], False))
    data_parallel = Stepper(_trainer(train, config["batch_size"], True))
    for _ in range(config["warmup"]):
        solo()
        data_parallel()
    warm = []
    for _ in range(config["warmup"]):
        start = time.perf_counter()
        solo()
        warm.append(time.perf_counter() - start)
    num_floats = sum(p.numel() for p in data_parallel.trainer.params)
    work, sync, reps = _reference(statistics.median(warm), num_floats)
    steps = {"solo": solo, "pair": solo, "ddp": data_parallel, "ref solo": work,
             "ref pair": work, "ref sync": sync}
    times = {mode: [] for mode in MODES}
    for round_ in range(config["rounds"]):
        # Each round starts the model's modes and the reference's at a different one, so
        # none is always the first after a switch (when caches hold the other's data).
        turn = round_ % 3
        for mode in MODES[turn:3] + MODES[:turn] + MODES[3 + turn:] + MODES[3:3 + turn]:
            dist.barrier()
            # In the solo modes rank 1 goes straight on to the next barrier, where gloo
            # waits without spinning (15 ms of CPU time in a 3 s wait, measured).
            if rank == 0 or not mode.endswith("solo"):
                for _ in range(config["steps"]):
                    start = time.perf_counter()
                    steps[mode]()
                    times[mode].append(time.perf_counter() - start)
    dist.barrier()
    if rank == 0:
        out = {"step_ms": {m: 1000 * statistics.fmean(t) for m, t in times.items()},
               "median_step_ms": {m: 1000 * statistics.median(t) for m, t in times.items()},
               "reference_matmuls": reps, "num_parameters": num_floats}
        (Path(folder) / "result.json").write_text(json.dumps(out))
    dist.destroy_process_group()


def run(config: dict) -> dict:
    """One lockstep measurement in two fresh processes: rank 0's step times."""
    with tempfile.TemporaryDirectory() as folder:
        codes = spawn_and_wait(_worker, (folder, config), 2)
        path = Path(folder) / "result.json"
        if not path.is_file():
            raise RuntimeError(f"lockstep run failed (exit codes {codes})")
        return json.loads(path.read_text())


def _table(rows: list[dict]) -> str:
    return markdown_table(
        ["batch per process", "solo step ms", "pair step ms", "DDP step ms",
         "**2 / 1, DDP**", "2 / 1, pair (ceiling)", "reference solo step ms",
         "reference: 2 / 1 with one all-reduce", "reference: 2 / 1, pair"],
        [[r["batch_per_process"], r["step_ms"]["solo"], r["step_ms"]["pair"],
          r["step_ms"]["ddp"], f"{r['ratio']['ddp']:.2f}x", f"{r['ratio']['pair']:.2f}x",
          r["step_ms"]["ref solo"], f"{r['ratio']['ref sync']:.2f}x",
          f"{r['ratio']['ref pair']:.2f}x"] for r in rows])


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--steps", type=int, default=10, help="steps per mode and round")
    p.add_argument("--batches", type=lambda text: tuple(int(b) for b in text.split(",")),
                   default=(1024, 4096, 16384),
                   help="batch sizes per process, comma-separated")
    args = p.parse_args(argv)
    tiny = args.tiny
    config = {"num_examples": 3_000 if tiny else 200_000, "rounds": 2 if tiny else args.rounds,
              "steps": 2 if tiny else args.steps, "warmup": 2 if tiny else 5}
    rows = []
    for batch_size in (256,) if tiny else args.batches:
        result = run({**config, "batch_size": batch_size})
        ms = result["step_ms"]
        ratio = {mode: 2 * ms["solo" if not mode.startswith("ref") else "ref solo"] / ms[mode]
                 for mode in ("pair", "ddp", "ref pair", "ref sync")}
        rows.append({"batch_per_process": batch_size, **result, "ratio": ratio})
        print(rows[-1], flush=True)
    table = _table(rows)
    notes = (f"{config['rounds']} rounds of {config['steps']} steps per mode, after "
             f"{config['warmup']} warm-up steps; mean step time of rank 0; one thread per "
             "process, gloo. '2 / 1' = twice the solo step time over the mode's (examples "
             "per second of two processes at batch B each over one at B). Reference: "
             "plain PyTorch, matrix products calibrated on rank 0 to about the solo step's "
             "time (from its warm-up steps; the column shows what it took), then "
             f"(sync) one all-reduce of {rows[0]['num_parameters']:,} floats, the model's "
             "gradient size. Model and data as in the data-parallel scale benchmark.")
    write_results("lockstep", {"title": "Data-parallel steps interleaved with one-process "
                                         "steps, and a plain-PyTorch reference",
                               "rows": rows, "notes": notes},
                  table, out=args.out, record=not tiny)


if __name__ == "__main__":
    main()
