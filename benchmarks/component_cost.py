"""What a component family costs per SVI step: the observed mixture with diagonal
Gaussian, Student-t and factor (low-rank-plus-diagonal, rank 5 and 10) components.

One step as :func:`pyro_mm.fit` runs it (its trainer: the model, the library's guide,
``ClippedAdam``), on the synthetic mixture of :mod:`benchmarks.dpgmm` (d = 32, two views)
and on mfeat (six views, 649 features), complete and with 50 % of the views hidden (a
factor component's capacitance is then one per example instead of one per component),
at batch 256 and 2,048. Variants alternate within each round on one warm process and
the table reports each one's median over rounds and its ratio to the diagonal
components': timings on a shared machine drift, ratios measured side by side do not.

    python -m benchmarks.component_cost [--tiny] [--rounds 15] [--steps 5]
"""

from __future__ import annotations

import statistics
import time

import pyro

import pyro_mm as pm
from pyro_mm.train.trainer import Settings, Trainer

from . import dpgmm
from .common import markdown_table, parser, write_results
from .lockstep import Stepper

VARIANTS = {"normal": {}, "studentt": {"component": "studentt"},
            "factor, rank 5": {"component": "factor", "rank": 5},
            "factor, rank 10": {"component": "factor", "rank": 10}}


def stepper(data: pm.MultimodalData, batch_size: int, **options) -> Stepper:
    """A warm trainer of the observed mixture on ``data`` (``options``: the model's)."""
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(data.dims, representation="observed", **options)
    trainer = Trainer(model, Settings(batch_size=batch_size, device="cpu", seed=0,
                                      progress=False))
    trainer.prepare(data)
    trainer.build_optimizer()
    trainer.model.train()
    trainer.guide.train()
    return Stepper(trainer)


def time_variants(data, batch_size: int, rounds: int, steps: int) -> dict[str, float]:
    """``variant -> median seconds per step`` over ``rounds`` alternating rounds."""
    steppers = {name: stepper(data, batch_size, **options)
                for name, options in VARIANTS.items()}
    times = {name: [] for name in steppers}
    for step in steppers.values():  # warm-up
        step()
    for _ in range(rounds):
        for name, step in steppers.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    rounds, steps, batches = args.rounds, args.steps, (256, 2048)
    synthetic, _ = dpgmm.make_data(20000, 10, seed=0)
    sets = {"synthetic, d = 32": synthetic, "mfeat, d = 649": pm.datasets.load_mfeat()}
    if args.tiny:
        rounds, steps, batches = 1, 1, (64,)
        sets = {k: v.subset(list(range(200))) for k, v in sets.items()}
    rows, raw = [], []
    for name, full in sets.items():
        for views, data in (("complete", full), ("50 % hidden", full.mask_at_random(0.5))):
            for batch in batches:
                if batch > len(data):
                    continue
                medians = time_variants(data, batch, rounds, steps)
                base = medians["normal"]
                raw.append({"data": name, "views": views, "batch": batch, "ms": {
                    k: 1e3 * v for k, v in medians.items()}})
                rows.append([name, views, batch, *(f"{1e3 * v:.1f} ({v / base:.2f}x)"
                                                   for v in medians.values())])
                print(rows[-1], flush=True)
    table = markdown_table(["data", "views", "batch", *(f"{k}: ms per step (ratio)"
                                                        for k in VARIANTS)], rows)
    notes = (f"Median over {rounds} alternating rounds of {steps} steps each, one "
             "process, the trainer pm.fit uses; ratios to the diagonal components' step "
             "in the same round set.")
    write_results("component_cost", {"title": "Cost of a step per component family",
                                     "rows": raw, "notes": notes}, table, args.out,
                  record=not args.tiny)


if __name__ == "__main__":
    main()
