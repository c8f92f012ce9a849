"""Training and prediction throughput on the CPU, this code against an earlier commit.

"Before" is the package at ``--base-rev`` (extracted with ``git archive`` and imported
as ``pyro_mm_base``), "after" the working tree, both in one process. Training: one
:class:`~pyro_mm.train.trainer.Trainer` per code on the same data, their steps interleaved
(before, after, before, ...), so load from other work on a shared machine hits both
alike; examples per second = examples stepped / the sum of that code's step times, at
batch 128 and 1,024. Prediction: ``predict`` and ``evaluate`` of each code's trained
model on the training set, alternated, median of seven. Data:

* synthetic: two modalities (64 and 32 features), ``N = 200,000``, 10 clusters, one
  epoch; the model has latent size 16, 20 components and a classifier;
* mfeat: six views, 2,000 examples, several epochs (an epoch is 16 steps at batch 128).

Same results: each code also fits mfeat's first half alone (batch 128, 5 epochs,
seeds 0-4) and is scored on the other half; the same-seed differences are compared with
the spread over seeds.

    python -m benchmarks.throughput [--tiny] [--base-rev 7146b83]
"""

from __future__ import annotations

import importlib
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch

import pyro_mm as pm

from .common import HERE, markdown_table, parser, write_results

ROOT = HERE.parent
BATCH_SIZES = (128, 1024)


def synthetic_set(num_examples: int, package=pm):
    """The synthetic data of this benchmark (and of ``benchmarks.overhead``): two
    modalities of 64 and 32 features, 10 clusters, seed 0."""
    return package.datasets.make_synthetic(num_examples, num_clusters=10,
                                           dims={"a": 64, "b": 32}, seed=0)


def load_base(rev: str, folder: str):
    """The package at git revision ``rev`` as module ``pyro_mm_base`` (its imports are
    relative), with Pyro names that cannot collide with this process's modules."""
    archive = subprocess.run(["git", "archive", rev, "pyro_mm"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    (Path(folder) / "pyro_mm").rename(Path(folder) / "pyro_mm_base")
    sys.path.insert(0, folder)
    base = importlib.import_module("pyro_mm_base")
    base._naming._COUNTER = itertools.count(10**6)
    return base


def _as(package, data):
    """``data`` as ``package``'s own :class:`MultimodalData` (its type checks)."""
    return package.MultimodalData(data.features, labels=data.labels, masks=data.masks,
                                  num_classes=data.num_classes, metadata=data.metadata)


def _trainer(package, data, batch_size: int, seed: int = 0):
    data = _as(package, data)
    pyro.set_rng_seed(seed)
    model = package.MultimodalDPMixture(data.dims, num_classes=10, latent_dim=16,
                                        num_components=20)
    trainer = package.trainer.Trainer(model, package.trainer.Settings(
        batch_size=batch_size, device="cpu", seed=seed, progress=False))
    trainer.prepare(data)
    trainer.build_optimizer()
    return trainer


def interleaved_training(packages: dict, data, batch_size: int, epochs: int) -> dict:
    """``which -> {"per_s", "step_ms"}``: every code's trainer, steps interleaved."""
    trainers = {w: _trainer(p, data, batch_size) for w, p in packages.items()}
    times = {w: [] for w in packages}
    examples = 0
    for epoch in range(epochs):
        batches = {}
        for w, tr in trainers.items():
            tr.epoch = epoch
            batches[w] = tr.minibatches(epoch)[0]
            tr.model.train()
            tr.guide.train()
        for i in range(len(batches["after"])):
            examples += len(batches["after"][i].indices)
            for w, tr in trainers.items():
                start = time.perf_counter()
                tr.step(batches[w][i])
                times[w].append(time.perf_counter() - start)
    for tr in trainers.values():
        tr.model.eval()
        tr.guide.eval()
    out = {w: {"per_s": examples / sum(t), "step_ms": 1000 * statistics.median(t)}
           for w, t in times.items()}
    out["step_ratio"] = statistics.median(b / a for a, b in zip(times["after"],
                                                                 times["before"]))
    out["trainers"] = trainers
    return out


def interleaved_prediction(packages: dict, trainers: dict, data, repeats: int = 7
                           ) -> dict:
    times = {(w, f): [] for w in packages for f in ("predict", "evaluate")}
    for _ in range(repeats):
        for w, package in packages.items():
            for f in ("predict", "evaluate"):
                start = time.perf_counter()
                getattr(package, f)(trainers[w].result, _as(package, data))
                times[w, f].append(time.perf_counter() - start)
    return {f"{w}/{f}": len(data) / statistics.median(t) for (w, f), t in times.items()}


def seed_noise(packages: dict, data, seeds: int, epochs: int) -> dict:
    """Held-out accuracy and label log-likelihood of each code, fitted alone on the
    even-numbered examples with seeds ``0 .. seeds - 1``, scored on the odd ones."""
    train, test = data.subset(range(0, len(data), 2)), data.subset(range(1, len(data), 2))
    out = {}
    for w, package in packages.items():
        out[w] = []
        train, test = _as(package, train), _as(package, test)
        for seed in range(seeds):
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            model = package.MultimodalDPMixture(train.dims, num_classes=10, latent_dim=16,
                                                num_components=20)
            result = package.fit(model, train, num_epochs=epochs, batch_size=128,
                                 device="cpu", progress=False, seed=seed)
            metrics = package.evaluate(result, test)
            out[w].append({k: metrics[k] for k in ("accuracy", "log_likelihood")})
    return out


def _noise_note(noise: dict) -> str:
    parts = []
    for key in ("accuracy", "log_likelihood"):
        v = {w: [r[key] for r in rows] for w, rows in noise.items()}
        sd = {w: statistics.stdev(x) if len(x) > 1 else float("nan") for w, x in v.items()}
        paired = max(abs(a - b) for a, b in zip(v["before"], v["after"]))
        parts.append(f"{key.replace('_', '-')}: before {statistics.mean(v['before']):.4f} "
                     f"± {sd['before']:.4f}, after {statistics.mean(v['after']):.4f} ± "
                     f"{sd['after']:.4f}, largest same-seed |difference| {paired:.4f}")
    return "; ".join(parts)


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--base-rev", default="7146b83")
    p.add_argument("--num-examples", type=int, default=200_000)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    mfeat = pm.datasets.load_mfeat()
    synthetic = synthetic_set(3000 if args.tiny else args.num_examples)
    sets = {"synthetic": (synthetic, {128: 1, 1024: 1}),
            "mfeat": (mfeat.subset(range(0, 2000, 5)) if args.tiny else mfeat,
                      {128: 1, 1024: 2} if args.tiny else {128: 5, 1024: 20})}
    seeds, seed_epochs = (2, 1) if args.tiny else (5, 5)
    with tempfile.TemporaryDirectory() as tmp:
        packages = {"before": load_base(args.base_rev, tmp), "after": pm}
        rows, raw = [], []
        for name, (data, epochs) in sets.items():
            result = {b: interleaved_training(packages, data, b, epochs[b])
                      for b in BATCH_SIZES}
            speed = interleaved_prediction(packages, result[128]["trainers"], data)
            entry = {"data": name, "num_examples": len(data), "epochs": epochs,
                     "prediction_per_s": speed}
            for b in BATCH_SIZES:
                result[b].pop("trainers")
                entry[str(b)] = result[b]
            raw.append(entry)
            for w in ("before", "after"):
                rows.append([name, w] + [f"{result[b][w]['per_s']:,.0f}" for b in BATCH_SIZES]
                            + [f"{result[b][w]['step_ms']:.1f}" for b in BATCH_SIZES]
                            + [f"{speed[f'{w}/{f}']:,.0f}" for f in ("predict", "evaluate")])
            rows.append([name, "after / before"]
                        + [f"{result[b]['after']['per_s'] / result[b]['before']['per_s']:.2f}x"
                           for b in BATCH_SIZES]
                        + [f"{result[b]['step_ratio']:.2f}x" for b in BATCH_SIZES]
                        + [f"{speed['after/' + f] / speed['before/' + f]:.2f}x"
                           for f in ("predict", "evaluate")])
            print(rows[-3:], flush=True)
        noise = seed_noise(packages, sets["mfeat"][0], seeds, seed_epochs)
    table = markdown_table(
        ["data", "code", "train ex/s, batch 128", "train ex/s, batch 1024",
         "step ms (median), 128", "step ms (median), 1024", "predict ex/s",
         "evaluate ex/s"], rows)
    notes = (f"Before = `git archive {args.base_rev}`, after = this tree, one process, one "
             "thread, the two trainers' steps interleaved; examples/s = examples stepped / "
             "sum of that code's step times (what an epoch of pm.fit spends in its steps); "
             "the 'after / before' row gives that ratio for the examples/s columns and the "
             "median of the per-step ratios for the step columns. Training: synthetic "
             f"{len(synthetic):,} examples, 1 epoch; mfeat {len(sets['mfeat'][0]):,} examples, "
             f"{sets['mfeat'][1][128]} epochs at batch 128 and {sets['mfeat'][1][1024]} at "
             "1,024; latent 16, K 20, classifier, pm.fit's defaults (the two trainers share "
             "torch's random stream, so their trajectories are not the seed-0 ones); "
             "'after' flushes subnormal floats to zero in its steps (pm.fit does; "
             "'before' did not), which restores the interleaved 'before' step's own mode. "
             "Prediction: predict / evaluate of the batch-128 model on the training set, "
             "median of 7 alternated calls (evaluate includes the label log-likelihood). "
             f"Same results, mfeat held-out half, {seeds} seeds, {seed_epochs} epochs at "
             f"batch 128, mean ± sd over seeds: {_noise_note(noise)}.")
    write_results("throughput", {"title": "Training and prediction throughput (CPU)",
                                 "rows": raw, "seed_noise": noise, "notes": notes}, table,
                  args.out, record=not args.tiny)


if __name__ == "__main__":
    main()
