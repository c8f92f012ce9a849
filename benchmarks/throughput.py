"""Training and prediction throughput on the CPU, this code against an earlier commit.

Examples per second of one training epoch as ``pm.fit`` runs it (the epoch's own time,
without the one-off standardisation and guide initialisation), at batch 128 and 1,024,
and of ``pm.predict`` and ``pm.evaluate`` on the training set, for two data sets:

* synthetic: two modalities (64 and 32 features), ``N = 200,000``, 10 clusters; the
  model has latent size 16, 20 components and a classifier;
* mfeat: six views, 2,000 examples (an epoch is 16 steps at batch 128, so each
  measurement runs several epochs).

"Before" is the package at ``--base-rev`` (extracted with ``git archive`` into a
temporary folder), "after" the working tree. Each measurement runs in its own process,
the two alternating (before, after, before, ...), so a machine shared with other work
slows both alike; the table gives medians and the spread over ``--repeats`` pairs. One
thread per process. With the same seed both fit the same model, so the held-out
accuracy and label log-likelihood after training (second half of the data, which the
model never saw) show whether the results changed.

    python -m benchmarks.throughput [--tiny] [--repeats 3] [--base-rev 7146b83]
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import HERE, markdown_table, parser, write_results

ROOT = HERE.parent
BATCH_SIZES = (128, 1024)


def _data(pm, name: str, num_examples: int):
    """``(train, held_out, num_classes, epochs)`` for one data set."""
    if name == "mfeat":
        data = pm.datasets.load_mfeat()
        if 2 * num_examples < len(data):
            data = data.subset(range(2 * num_examples))
        classes, epochs = 10, 5
    else:
        data = pm.datasets.make_synthetic(2 * num_examples, num_clusters=10,
                                          dims={"a": 64, "b": 32}, seed=0)
        classes, epochs = 10, 1
    order = list(range(0, len(data), 2)) if name == "mfeat" else list(range(num_examples))
    rest = sorted(set(range(len(data))) - set(order))
    return data.subset(order), data.subset(rest), classes, epochs


def _fit(pm, train, classes, epochs, batch_size, seed):
    import pyro

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = pm.MultimodalDPMixture(train.dims, num_classes=classes, latent_dim=16,
                                   num_components=20)
    return pm.fit(model, train, num_epochs=epochs, batch_size=batch_size, device="cpu",
                  progress=False, seed=seed)


def _held_out(pm, result, held_out) -> dict:
    return {f"held_out_{k}": v for k, v in pm.evaluate(result, held_out).items()
            if k in ("accuracy", "log_likelihood")}


def worker(name: str, num_examples: int, seeds: int = 1) -> dict:
    """One process's measurements of the ``pyro_mm`` it imports (see the docstring);
    with ``seeds > 1`` also the held-out metrics of seeds ``1 .. seeds - 1`` at batch
    128 (untimed): the seed noise the before/after difference is compared with."""
    import torch

    import pyro_mm as pm

    torch.set_num_threads(1)
    train, held_out, classes, epochs = _data(pm, name, num_examples)
    out = {"package": str(Path(pm.__file__).parent), "num_train": len(train)}
    for batch_size in BATCH_SIZES:
        result = _fit(pm, train, classes, epochs, batch_size, seed=0)
        seconds = sum(row["seconds"] for row in result.history.epochs)
        row = {"train_per_s": epochs * len(train) / seconds,
               "first_losses": [s["loss"] for s in result.history.steps[:5]]}
        if batch_size == BATCH_SIZES[0]:
            row.update(_prediction(pm, result, train))
        row.update(_held_out(pm, result, held_out))
        out[str(batch_size)] = row
    out["seeds"] = [out["128"]] + [
        _held_out(pm, _fit(pm, train, classes, epochs, BATCH_SIZES[0], seed), held_out)
        for seed in range(1, seeds)]
    return out


def _prediction(pm, result, data) -> dict:
    start = time.perf_counter()
    pm.predict(result, data)
    predict = time.perf_counter() - start
    start = time.perf_counter()
    pm.evaluate(result, data)
    evaluate = time.perf_counter() - start
    return {"predict_per_s": len(data) / predict, "evaluate_per_s": len(data) / evaluate}


def _run(package_root: Path, name: str, num_examples: int, seeds: int) -> dict:
    code = (f"import sys, json; sys.path[:0] = [{str(package_root)!r}, {str(ROOT)!r}]; "
            "from benchmarks.throughput import worker; "
            f"print('RESULT', json.dumps(worker({name!r}, {num_examples}, {seeds})))")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=tempfile.gettempdir(), check=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _seed_noise(runs, seeds: int) -> str:
    """The mfeat held-out metrics over seeds, before and after, and the largest
    same-seed difference: whether the results changed beyond seed noise."""
    parts = []
    for key, label in (("held_out_accuracy", "accuracy"),
                       ("held_out_log_likelihood", "label log-lik.")):
        stats = {w: [s[key] for s in runs["mfeat", w][0]["seeds"]] for w in ("before", "after")}
        spread = {w: statistics.stdev(v) if len(v) > 1 else math.nan for w, v in stats.items()}
        paired = max(abs(a - b) for a, b in zip(stats["before"], stats["after"]))
        parts.append(f"{label} before {statistics.mean(stats['before']):.4f} ± "
                     f"{spread['before']:.4f}, after {statistics.mean(stats['after']):.4f} ± "
                     f"{spread['after']:.4f}, largest same-seed |difference| {paired:.4f}")
    return (f"Seed noise, mfeat held-out, batch 128, seeds 0-{seeds - 1} (mean ± sd over "
            "seeds): " + "; ".join(parts) + ".")


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--base-rev", default="7146b83")
    p.add_argument("--num-examples", type=int, default=200_000)
    args = p.parse_args(argv)
    repeats = 1 if args.tiny else args.repeats
    sizes = {"synthetic": 3000 if args.tiny else args.num_examples,
             "mfeat": 300 if args.tiny else 1000}
    seeds = {"synthetic": 1, "mfeat": 2 if args.tiny else 5}
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.base_rev, "pyro_mm"], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        runs = {(name, which): [] for name in sizes for which in ("before", "after")}
        for name, n in sizes.items():
            for repeat in range(repeats):
                for which, root in (("before", Path(tmp)), ("after", ROOT)):
                    # the seed-noise fits once per code, in the first pair
                    runs[name, which].append(_run(root, name, n,
                                                  seeds[name] if repeat == 0 else 1))
                    print(name, which, runs[name, which][-1], flush=True)
    rows = []
    raw = [{"data": k[0], "code": k[1], "runs": v} for k, v in runs.items()]
    for name in sizes:
        for which in ("before", "after"):
            r = runs[name, which]
            rows.append([name, which] + [_summary([x[str(b)]["train_per_s"] for x in r])
                                         for b in BATCH_SIZES]
                        + [_summary([x["128"][k] for x in r])
                           for k in ("predict_per_s", "evaluate_per_s")]
                        + [f"{statistics.mean(x[str(b)]['held_out_accuracy'] for x in r):.3f}"
                           for b in BATCH_SIZES])
        ratios = [statistics.median(a[str(b)]["train_per_s"] / c[str(b)]["train_per_s"]
                                    for a, c in zip(runs[name, "after"], runs[name, "before"]))
                  for b in BATCH_SIZES]
        rows.append([name, "after / before"] + [f"{x:.2f}x" for x in ratios]
                    + ["", "", "", ""])
    noise = _seed_noise(runs, seeds["mfeat"])
    table = markdown_table(
        ["data", "code", "train ex/s, batch 128", "train ex/s, batch 1024",
         "predict ex/s", "evaluate ex/s", "held-out acc. (b128)", "held-out acc. (b1024)"],
        rows)
    notes = (f"Median (min-max) over {repeats} alternating before/after process pairs, one "
             f"thread each; before = `git archive {args.base_rev}`, after = this tree. "
             f"Training: synthetic {sizes['synthetic']:,} examples, 1 epoch; mfeat: every "
             "second example (1,000), 5 epochs; latent 16, K 20, classifier, default "
             "settings of `pm.fit` and the model. Prediction: `pm.predict` / `pm.evaluate` "
             "on the training set after the batch-128 fit (evaluate includes the label "
             "log-likelihood pass). 'after / before' is the median of the per-pair ratios. "
             "Held-out accuracy is on the examples not trained on, same seed. " + noise)
    write_results("throughput", {"title": "Training and prediction throughput (CPU)",
                                 "rows": raw, "notes": notes}, table, args.out,
                  record=not args.tiny)


if __name__ == "__main__":
    main()
