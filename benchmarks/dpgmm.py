"""DP Gaussian mixture: ours (``representation="observed"``) against scikit-learn.

Data: a known 8-component mixture in d = 32 (two modalities of 16 features, diagonal
scales that differ by component), N = 2,000, 20,000 and 200,000 training examples and a
separate held-out set. Both fit a Dirichlet-process mixture truncated at 20 components
with diagonal covariances; we compare held-out log-likelihood per example, effective
number of components, adjusted Rand index against the truth, and wall time (same CPU,
same thread count, measured in the same run).

    python -m benchmarks.dpgmm [--tiny] [--sizes 2000 20000 200000]
"""

from __future__ import annotations

import time

import numpy as np
import torch

import pyro_mm as pm
from pyro_mm.metrics import adjusted_rand_index

from .common import markdown_table, parser, write_results

TRUE_K, TRUNCATION, HALF_D = 8, 20, 16


def make_data(n_train: int, n_test: int, seed: int):
    data = pm.datasets.make_synthetic(
        num_examples=n_train + n_test, num_clusters=TRUE_K,
        dims={"left": HALF_D, "right": HALF_D}, signal=1.0, noise=0.5, noise_spread=0.3,
        seed=seed)
    is_test = np.zeros(len(data), dtype=bool)
    is_test[np.random.default_rng(seed).permutation(len(data))[:n_test]] = True
    return data.subset(~is_test), data.subset(is_test)


def stack(data) -> np.ndarray:
    return np.concatenate([data.features[m] for m in data.modalities], axis=1)


def run_sklearn(train, test) -> dict:
    from sklearn.mixture import BayesianGaussianMixture

    model = BayesianGaussianMixture(
        n_components=TRUNCATION, covariance_type="diag", max_iter=500, random_state=0,
        weight_concentration_prior_type="dirichlet_process")
    start = time.perf_counter()
    model.fit(stack(train))
    seconds = time.perf_counter() - start
    weights = model.weights_
    return {"seconds": seconds,
            "log_likelihood": float(model.score(stack(test))),
            "effective_components": float(np.exp(-(weights * np.log(weights)).sum())),
            "ari": adjusted_rand_index(test.labels, model.predict(stack(test))),
            "converged": bool(model.converged_), "iterations": int(model.n_iter_)}


def run_ours(train, test, steps: int, batch_size: int) -> dict:
    n = len(train)
    batch_size = min(batch_size, n)
    epochs = max(1, round(steps * batch_size / n))
    model = pm.MultimodalDPMixture(train.dims, num_components=TRUNCATION,
                                   representation="observed")
    start = time.perf_counter()
    result = pm.fit(model, train, num_epochs=epochs, batch_size=batch_size,
                    learning_rate=0.02, device="cpu", seed=0, progress=False)
    seconds = time.perf_counter() - start
    metrics = pm.evaluate(result, test)
    return {"seconds": seconds, "log_likelihood": metrics["log_likelihood"],
            "effective_components": metrics["effective_components"],
            "ari": metrics["ari"], "epochs": epochs, "batch_size": batch_size,
            "steps": len(result.history.steps)}


def repeated(run, repeats: int) -> dict:
    """``run()`` ``repeats`` times (both fits are seeded, so only the time varies): the
    first run's results, with ``seconds`` the median and ``all_seconds`` every time."""
    runs = [run() for _ in range(repeats)]
    times = [r["seconds"] for r in runs]
    return {**runs[0], "seconds": float(np.median(times)), "all_seconds": times}


def _spread(r: dict) -> str:
    times = r["all_seconds"]
    return f"{r['seconds']:.2f} ({min(times):.2f}-{max(times):.2f})"


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 200000])
    p.add_argument("--steps", type=int, default=600, help="SVI steps for our model")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3, help="timed fits of each method")
    args = p.parse_args(argv)
    repeats = 1 if args.tiny else args.repeats
    sizes = [300] if args.tiny else args.sizes
    steps = 20 if args.tiny else args.steps
    torch.manual_seed(0)
    rows, raw = [], []
    for n in sizes:
        train, test = make_data(n, 200 if args.tiny else 10000, seed=0)
        theirs = repeated(lambda: run_sklearn(train, test), repeats)
        ours = repeated(lambda: run_ours(train, test, steps, args.batch_size), repeats)
        gap = (ours["log_likelihood"] - theirs["log_likelihood"]) / abs(theirs["log_likelihood"])
        speedup = theirs["seconds"] / ours["seconds"]
        raw.append({"n": n, "ours": ours, "sklearn": theirs, "relative_ll_gap": gap,
                    "speedup": speedup})
        rows.append([n, ours["log_likelihood"], theirs["log_likelihood"], f"{100 * gap:+.2f}%",
                     ours["effective_components"], theirs["effective_components"],
                     ours["ari"], theirs["ari"], _spread(ours), _spread(theirs),
                     f"{speedup:.2g}x"])
        print(rows[-1], flush=True)
    table = markdown_table(
        ["N train", "held-out LL ours", "held-out LL sklearn", "LL gap", "eff. K ours",
         "eff. K sklearn", "ARI ours", "ARI sklearn", "time ours (s)", "time sklearn (s)",
         "sklearn time / ours (medians)"], rows)
    notes = (f"Truth: {TRUE_K} components, d = {2 * HALF_D}; truncation {TRUNCATION}. "
             f"Ours: minibatch SVI, {steps} steps of batch {args.batch_size} (fewer epochs "
             "as N grows), ClippedAdam lr 0.02. scikit-learn: BayesianGaussianMixture, "
             "dirichlet_process prior, diag covariance, max_iter 500. Held-out set: 10,000 "
             "examples. Log-likelihood is per example on the original feature scale (nats). "
             f"Times: median (min-max) of {repeats} fits of each, in the same run; "
             "both fits are seeded, so the other columns do not vary.")
    write_results("dpgmm", {"title": "DP Gaussian mixture vs scikit-learn", "rows": raw,
                            "notes": notes}, table, args.out, record=not args.tiny)


if __name__ == "__main__":
    main()
