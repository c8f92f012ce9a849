"""Practitioners' baselines with few labels, on mfeat and TCGA BRCA.

The setting of :mod:`benchmarks.baselines_run` (stratified 80/20 split per seed, views
hidden at random on train and test), at 0 % and 50 % of the views missing; then 2 %,
10 % or 100 % of each class's training labels kept (at least one per class), the rest
set to -1. The supervised baselines (a)-(d) fit on the labelled rows only; label
spreading (e) and self-training (f) also use the unlabelled training rows. Scored on
the whole (labelled) test split.

    python -m benchmarks.few_labels [--tiny] [--seeds 5] [--datasets mfeat brca]
"""

from __future__ import annotations

import time

from . import baselines, baselines_run
from .common import parser

LABELS_KEPT = (0.02, 0.1, 1.0)
MISSING = (0.0, 0.5)
DATASETS = ("mfeat", "brca")


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS),
                   choices=list(baselines_run.DATASETS))
    baselines_run.add_merge_option(p)
    p.add_argument("--pyro-mm", action="store_true",
                   help=f"also run {baselines_run.PYRO_MM!r}")
    p.add_argument("--recipe", action="store_true",
                   help=f"also run {baselines_run.PYRO_MM_RECIPE!r}")
    p.add_argument("--only-pyro-mm", action="store_true",
                   help="run the pyro_mm rows alone")
    p.add_argument("--missing", nargs="+", type=float, default=list(MISSING))
    p.add_argument("--labels-kept", nargs="+", type=float, default=None)
    args = p.parse_args(argv)
    if args.merge:
        return baselines_run.merge(args.merge, args.out, name="few_labels")
    seeds = range(1 if args.tiny else args.seeds)
    kept = args.labels_kept or ((0.1, 1.0) if args.tiny else LABELS_KEPT)
    methods = baselines_run.with_pyro_mm(
        {k: baselines_run.from_arrays(f)
         for k, f in {**baselines.SUPERVISED, **baselines.SEMI_SUPERVISED}.items()}, args)
    start = time.perf_counter()
    rows, skipped = baselines_run.run_benchmark(
        methods, args.datasets, seeds, {k: tuple(args.missing) for k in args.datasets}, kept,
        subset=baselines_run.tiny_subset if args.tiny else None)
    notes = (f"{len(seeds)} seeds. Labels kept per class: round(fraction * class size), at "
             "least 1, at random (seeded); the rest -1. Standardisation, KNNImputer, "
             "label spreading and self-training use every training row's features; the "
             "logistic regressions' and the MLP's fits and their CV use the labelled rows "
             "only (with few labels the CV has fewer folds: as many as the largest "
             "class's labels allow, at least 2). Label spreading: kNN kernel on the "
             f"mean-imputed features, n_neighbors from {list(baselines.NEIGHBOURS)} by CV; "
             "self-training: scikit-learn's SelfTrainingClassifier (threshold 0.75) around "
             "the CV-tuned logistic regression. Otherwise as in the baselines section.")
    baselines_run.record("few_labels", "Practitioners' baselines with few labels (mfeat, "
                         "TCGA BRCA)", rows, skipped, notes, start, args)


if __name__ == "__main__":
    main()
