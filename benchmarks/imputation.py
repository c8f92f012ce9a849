"""Imputation of hidden views on real multi-view data: pyro_mm against KNN, iterative
regression and the column mean.

For each data set, missing level and seed: the stratified 80/20 split and the masks of
:func:`benchmarks.baselines_run.setting` (``mask_at_random`` on train and test, at least
one view kept per example), so the cells hidden here are those of the classification
tables. Every method sees the training split with its hidden views and the test split
with its own; it fills the test split's hidden cells, which are scored against their
true values on the training split's standardised scale (per feature: mean 0, sd 1 over
the observed training cells), so the mean imputation scores about 1.

Methods:

* ``mean``: the training column mean (0 on this scale);
* ``KNNImputer``: scikit-learn's, 5 neighbours, fitted on the training rows;
* ``IterativeImputer``: scikit-learn's round-robin ``BayesianRidge`` regressions
  (:data:`ITERATIVE`: each feature regressed on 100 others, drawn with probability
  proportional to their absolute correlation with it, at most 10 rounds; regressing on
  all 649-700 features would take tens of minutes per fit here), as it comes and with
  its imputations clipped to each feature's training range (:data:`CLIPPED`), as a
  practitioner would after seeing it diverge on mfeat's collinear views;
* pyro_mm, ``pm.impute``'s posterior mean (100 global draws) and its 90 % interval
  (quantiles 0.05 and 0.95 of the predictive), for

  * the observed-feature mixture, ``MultimodalDPMixture(dims, representation="observed")``
    fitted by ``pm.fit(num_epochs=None)`` (its closed-form fit: no SVI step), and the
    same followed by :data:`OBSERVED_SVI_EPOCHS` epochs of SVI, to show the fit does not
    drift with training;
  * the observed mixture with factor components (``component="factor"``, rank 10:
    each component's covariance low-rank-plus-diagonal, its factors shared by the
    views), ``fit(num_epochs=None)`` (SVI from the closed-form start, stopped on a
    held-out split) and at three times the epochs it ran (``--latent-seeds`` seeds);
  * the default (latent) model with a classifier, ``MultimodalDPMixture(dims,
    num_classes=C)``, at its own training length (``num_epochs=None``) and at three
    times the epochs it ran (``--latent-seeds`` seeds only: these fits are the slow part).

``--methods pyro_mm_factor`` runs the factor rows alone (``pyro_mm``: all of ours).

Reported per method: RMSE over the hidden test cells, the coverage of the 90 % interval
(pyro_mm only), the largest absolute imputed value on that scale (an imputation far
outside the training data's range shows there), and the seconds to fit and impute.

    python -m benchmarks.imputation [--tiny] [--seeds 5] [--latent-seeds 3]
        [--datasets mfeat brca kipan] [--methods ...] [--out JSON] [--merge JSON ...]
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pyro

import pyro_mm as pm

from . import baselines, real_data
from .baselines import training_stats
from .baselines_run import add_merge_option, merge, record, setting, tiny_subset
from .common import markdown_table, parser

LEVELS = {"mfeat": (0.3, 0.5, 0.7), "brca": (0.3, 0.5), "kipan": (0.3, 0.5)}
LOADERS = {"mfeat": pm.datasets.load_mfeat, "brca": real_data.load_brca,
           "kipan": real_data.load_kipan}
#: IterativeImputer's options (module docstring).
ITERATIVE = dict(max_iter=10, n_nearest_features=100)
#: SVI epochs run after the observed model's closed-form fit (its "long" row).
OBSERVED_SVI_EPOCHS = 300
NUM_SAMPLES = 100
CLIPPED = "IterativeImputer, clipped to the training range"
OBSERVED = "pyro_mm observed, fit(num_epochs=None)"
OBSERVED_LONG = f"pyro_mm observed, + {OBSERVED_SVI_EPOCHS} SVI epochs"
FACTOR = "pyro_mm observed, component='factor', fit(num_epochs=None)"
FACTOR_LONG = "pyro_mm observed, component='factor', 3x its epochs"
LATENT = "pyro_mm default (latent), fit(num_epochs=None)"
LATENT_LONG = "pyro_mm default (latent), 3x its epochs"


def pyro_mm_impute(result, test: pm.MultimodalData, stats, num_samples: int = NUM_SAMPLES):
    """``pm.impute``'s posterior mean and 90 % interval of every test cell, standardised
    by ``stats`` (:func:`benchmarks.baselines.training_stats`) and concatenated over
    views: three ``(N, sum d)`` arrays, NaN where the view is present."""
    out = pm.impute(result, test, num_samples=num_samples, quantiles=(0.05, 0.95))
    parts = {"mean": [], "low": [], "high": []}
    for m in test.modalities:
        loc, sd = stats[m]
        q = out[f"{m}_quantiles"].values
        for key, value in (("mean", out[f"{m}_mean"].values), ("low", q[0]), ("high", q[1])):
            parts[key].append((value - loc) / sd)
    return tuple(np.hstack(parts[k]) for k in ("mean", "low", "high"))


def scores(truth: np.ndarray, hidden: np.ndarray, mean: np.ndarray, low=None, high=None
           ) -> dict[str, float]:
    """RMSE, largest absolute value and (with an interval) coverage over ``hidden``."""
    if not np.isfinite(mean[hidden]).all():
        raise ValueError("an imputation left a hidden cell non-finite")
    out = {"rmse": float(np.sqrt(((mean[hidden] - truth[hidden]) ** 2).mean())),
           "max_abs": float(np.abs(mean[hidden]).max())}
    if low is not None:
        inside = (truth[hidden] >= low[hidden]) & (truth[hidden] <= high[hidden])
        out["coverage"] = float(inside.mean())
    return out


#: The scikit-learn rows and the mean (``--methods`` names; :func:`sklearn_imputers`).
SKLEARN = ("mean", "KNNImputer", "IterativeImputer", CLIPPED)


def sklearn_imputers(xs: np.ndarray, xt: np.ndarray, seed: int, names=SKLEARN
                     ) -> dict[str, tuple]:
    """``name -> (imputed test x, seconds)`` of the scikit-learn imputers and the mean
    named in ``names``. :data:`CLIPPED` is ``IterativeImputer`` with every imputation
    clipped to its feature's range over the observed training cells (its ``min_value``
    and ``max_value``): unclipped, its regressions on collinear features can diverge."""
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer

    imputers = {
        "mean": None, "KNNImputer": lambda: KNNImputer(n_neighbors=5),
        "IterativeImputer": lambda: IterativeImputer(random_state=seed, **ITERATIVE),
        CLIPPED: lambda: IterativeImputer(random_state=seed, min_value=np.nanmin(xs, 0),
                                          max_value=np.nanmax(xs, 0), **ITERATIVE)}
    out = {}
    for name in names:
        if name == "mean":
            out[name] = (np.nan_to_num(xt, nan=0.0), 0.0)
            continue
        start = time.perf_counter()
        out[name] = (imputers[name]().fit(xs).transform(xt), time.perf_counter() - start)
    return out


def pyro_mm_fits(train, test, stats, seed: int, latent: bool, num_samples: int,
                 methods=("pyro_mm",)):
    """``name -> (mean, low, high, seconds, info)`` of the pyro_mm rows (module
    docstring); the latent rows and the factor model's long row only when ``latent``;
    only the factor rows unless ``"pyro_mm"`` is in ``methods``."""
    def run(model, **fit):
        pyro.set_rng_seed(seed)
        start = time.perf_counter()
        result = pm.fit(model, train, seed=seed, progress=False, **fit)
        imputed = pyro_mm_impute(result, test, stats, num_samples)
        return (*imputed, time.perf_counter() - start,
                {"epochs_run": result.config["epochs_run"]}), result

    def observed():
        return pm.MultimodalDPMixture(train.dims, representation="observed")

    def latent_model():
        return pm.MultimodalDPMixture(train.dims, num_classes=train.num_classes)

    def factor_model():
        return pm.MultimodalDPMixture(train.dims, representation="observed",
                                      component="factor")

    out = {}
    out[FACTOR], result = run(factor_model(), num_epochs=None)
    if latent:
        out[FACTOR_LONG] = run(factor_model(),
                               num_epochs=3 * result.config["epochs_run"])[0]
    if "pyro_mm" not in methods:
        return out
    out[OBSERVED] = run(observed(), num_epochs=None)[0]
    out[OBSERVED_LONG] = run(observed(), num_epochs=OBSERVED_SVI_EPOCHS)[0]
    if latent:
        out[LATENT], result = run(latent_model(), num_epochs=None)
        out[LATENT_LONG] = run(latent_model(),
                               num_epochs=3 * result.config["epochs_run"])[0]
    return out


def run_one(name: str, data, seed: int, missing: float, latent: bool, num_samples: int,
            methods=SKLEARN + ("pyro_mm",)) -> list[dict]:
    """The ``methods`` (:data:`SKLEARN` names and ``"pyro_mm"`` for all our rows) on one
    data set, level and seed: one row each."""
    train, test = setting(data, seed, missing)
    full_test = setting(data, seed, 0.0)[1]
    xs, xt = baselines.standardise(train, test)
    truth = baselines.standardise(train, full_test)[1].x
    hidden = np.isnan(xt.x)
    meta = {"dataset": name, "missing": missing, "seed": seed,
            "hidden_cells": int(hidden.sum())}
    rows = [{**meta, "method": k, "seconds": s, **scores(truth, hidden, x)}
            for k, (x, s) in sklearn_imputers(
                xs.x, xt.x, seed, [m for m in SKLEARN if m in methods]).items()]
    ours = (pyro_mm_fits(train, test, training_stats(train), seed, latent, num_samples,
                         methods)
            if {"pyro_mm", "pyro_mm_factor"} & set(methods) else {})
    for k, (mean, low, high, s, info) in ours.items():
        rows.append({**meta, "method": k, "seconds": s, "info": info,
                     **scores(truth, hidden, mean, low, high)})
    for r in rows:
        print(f"{name} {missing:.0%} seed {seed} {r['method']}: RMSE {r['rmse']:.4f}, "
              f"coverage {r.get('coverage', float('nan')):.3f}, max |x| "
              f"{r['max_abs']:.1f}, {r['seconds']:.1f} s", flush=True)
    return rows


def _cell(values, digits=3):
    mean = statistics.mean(values)
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {se:.{digits}f} ({len(values)})"


def tables(rows: list[dict]) -> str:
    """One row per data set, level and method: mean ± s.e. over seeds (their count in
    brackets) of RMSE and coverage, the worst seed's largest imputed value, median
    seconds."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out = []
    for key in dict.fromkeys((r["dataset"], r["missing"]) for r in rows):
        picked = [r for r in rows if (r["dataset"], r["missing"]) == key]
        for method in methods:
            got = [r for r in picked if r["method"] == method]
            if not got:
                continue
            cov = [r["coverage"] for r in got if "coverage" in r]
            out.append([key[0], f"{key[1]:.0%}", method, _cell([r["rmse"] for r in got]),
                        _cell(cov) if cov else "-",
                        f"{max(r['max_abs'] for r in got):.1f}",
                        f"{statistics.median(r['seconds'] for r in got):.1f}"])
    return markdown_table(["data", "missing", "method", "RMSE (seeds)",
                           "90 % coverage (seeds)", "max |imputed|", "seconds"], out)


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--latent-seeds", type=int, default=3,
                   help="seeds (the first ones) that also run the latent model's rows")
    p.add_argument("--datasets", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    p.add_argument("--methods", nargs="+", default=list(SKLEARN) + ["pyro_mm"],
                   choices=list(SKLEARN) + ["pyro_mm", "pyro_mm_factor"],
                   help="run these rows only (pyro_mm: all of ours; pyro_mm_factor: the "
                        "factor model's)")
    add_merge_option(p)
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out, name="imputation", table=tables)
    seeds, levels, num_samples = range(args.seeds), LEVELS, NUM_SAMPLES
    if args.tiny:
        seeds, levels, num_samples = range(1), {k: (0.5,) for k in LEVELS}, 10
    start, rows, skipped = time.perf_counter(), [], {}
    for name, data in real_data.loaded(args.datasets, LOADERS, skipped):
        data = tiny_subset(data) if args.tiny else data
        for seed in seeds:
            for missing in levels[name]:
                rows += run_one(name, data, seed, missing, seed < args.latent_seeds,
                                num_samples, args.methods)
    notes = (f"{len(seeds)} seeds ({args.latent_seeds} for the latent rows); split and "
             "masks of benchmarks.baselines_run.setting (factor rows at 3x: the same "
             "first seeds); RMSE over the hidden test cells "
             "on the training split's standardised scale; coverage of pm.impute's 90 % "
             f"interval ({num_samples} global draws); IterativeImputer {ITERATIVE}. Data: "
             f"mfeat (bundled), TCGA BRCA and KIPAN ({real_data.LICENCE}; read from the "
             "package, not copied). MOFA+ (mofapy2) is not a row: it is not installed "
             "here and would add a dependency for one comparison.")
    record("imputation", "Imputation of hidden views (mfeat, TCGA BRCA, TCGA KIPAN)",
           rows, skipped, notes, start, args, module="imputation", table=tables(rows))


if __name__ == "__main__":
    main()
