"""DP Gaussian mixture: ours (``representation="observed"``) against scikit-learn.

Data: a known 8-component mixture in d = 32 (two modalities of 16 features, diagonal
scales that differ by component), N = 2,000, 20,000 and 200,000 training examples and a
separate held-out set. Both fit a Dirichlet-process mixture truncated at 20 components
with diagonal covariances; we compare held-out log-likelihood per example, effective
number of components, adjusted Rand index against the truth, and wall time (same CPU,
same thread count, measured in the same run). Our default model has the inverse-gamma
prior on the component variances; the previous prior without a floor
(``scale_prior="lognormal", scale_floor=0``) beside it.

Second table: real data sets that ship with scikit-learn or with pyro_mm (pixel-like
integers, dense tabular measurements, mfeat's views concatenated and alone), several
unstratified random 75/25 splits, and the mean held-out log-likelihood per example of
scikit-learn's BayesianGaussianMixture and of ours (the previous default: lognormal
scale prior and a floor of 0.05 training standard deviations; the default: the
inverse-gamma prior on the variances), each at several training lengths: a density
that changes with training length is not converged. For data with integer features
(digits, mfeat's pixel, profile and morphological views) a third table scores the same
fits by the probability of the recorded values, their features' densities for the others
(:func:`binned_log_likelihood`), the likelihood that quantised data have: a continuous
density of them is unbounded wherever a component's members all share one value.

    python -m benchmarks.dpgmm [--tiny] [--sizes 2000 20000 200000]
        [--real-epochs 100 1000] [--real-data digits wine ...] [--split-seeds 0 1 2 3 4]
        [--real-only]
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy.special import log_ndtr, logsumexp

import pyro_mm as pm
from pyro_mm.predictive.metrics import adjusted_rand_index

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


def run_ours(train, test, steps: int | None, batch_size: int, **model_args) -> dict:
    """Our fit: ``steps`` SVI steps of ``batch_size`` (lr 0.02), or with ``steps=None``
    ``pm.fit``'s own defaults (its training length, batch size and learning rate)."""
    n = len(train)
    batch_size = min(batch_size, n)
    epochs = None if steps is None else max(1, round(steps * batch_size / n))
    model = pm.MultimodalDPMixture(train.dims, num_components=TRUNCATION,
                                   representation="observed", **model_args)
    fixed = {} if steps is None else dict(batch_size=batch_size, learning_rate=0.02)
    start = time.perf_counter()
    result = pm.fit(model, train, num_epochs=epochs, device="cpu", seed=0, progress=False,
                    **fixed)
    seconds = time.perf_counter() - start
    metrics = pm.evaluate(result, test)
    return {"seconds": seconds, "log_likelihood": metrics["log_likelihood"],
            "effective_components": metrics["effective_components"],
            "ari": metrics["ari"], "epochs": result.config["epochs_run"],
            "batch_size": result.config["batch_size"], "steps": len(result.history.steps),
            "closed_form": result.config.get("closed_form")}


def repeated(run, repeats: int) -> dict:
    """``run()`` ``repeats`` times (both fits are seeded, so only the time varies): the
    first run's results, with ``seconds`` the median and ``all_seconds`` every time."""
    runs = [run() for _ in range(repeats)]
    times = [r["seconds"] for r in runs]
    return {**runs[0], "seconds": float(np.median(times)), "all_seconds": times}


#: Our variants on real data: the previous default, the default.
VARIANTS = {"previous default (lognormal, floor 0.05)":
            {"scale_prior": "lognormal", "scale_floor": 0.05, "resolution_floor": False},
            "default (inverse-gamma prior)": {}}

#: Name -> what kind of data it is; ``mfeat_<view>``: that view of mfeat alone.
REAL_DATA = {"digits": "8x8 pixel intensities, integers 0-16, many always 0 in a class",
             "breast_cancer": "30 dense continuous measurements",
             "wine": "13 dense chemical measurements, N = 178",
             "mfeat": "6 views concatenated: 649 features",
             "mfeat_fou": "76 Fourier coefficients", "mfeat_pix": "240 pixel averages, 0-6",
             "mfeat_kar": "64 Karhunen-Loeve coefficients", "mfeat_fac": "216 profile "
             "correlations", "mfeat_zer": "47 Zernike moments", "mfeat_mor": "6 morphological"}


def load_real(name: str, tiny: bool = False) -> np.ndarray:
    """``(N, d)`` features of a real data set (``tiny``: the first 150 rows)."""
    from sklearn import datasets

    if name.startswith("mfeat"):
        data = pm.datasets.load_mfeat()
        views = data.modalities if name == "mfeat" else [name.split("_", 1)[1]]
        x = np.concatenate([data.features[m] for m in views], axis=1)
    else:
        x = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer,
             "wine": datasets.load_wine}[name]().data
    x = x.astype(np.float64)
    return x[:150] if tiny else x


def random_split(x: np.ndarray, seed: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An unstratified random 75/25 split, standardised on the training part, with the
    training split's constant columns dropped (no density can score a test value of a
    feature that never varied). Returns ``(train, test, scale, keep)``: ``scale`` the
    kept columns' training standard deviations, ``keep`` which columns of ``x`` were
    kept."""
    perm = np.random.default_rng(seed).permutation(len(x))
    test, train = x[perm[: len(x) // 4]], x[perm[len(x) // 4:]]
    keep = train.std(0) > 1e-8 * np.maximum(1.0, np.abs(train.mean(0)))
    train, test = train[:, keep], test[:, keep]
    loc, scale = train.mean(0), train.std(0)
    return (train - loc) / scale, (test - loc) / scale, scale, keep


def binned_log_likelihood(x: np.ndarray, weights: np.ndarray, locs: np.ndarray,
                          scales: np.ndarray, step: np.ndarray) -> np.ndarray:
    """``(N,)`` log-probability that a diagonal Gaussian mixture puts on the recording
    bins of ``x (N, D)``: ``log sum_k w_k prod_d P(x_d - step_d/2 < X_d < x_d +
    step_d/2 | k)``, for ``weights (K,)``, ``locs``, ``scales (K, D)``, ``step (D,)``;
    a feature with ``step_d = 0`` (continuous) contributes its density instead, so
    data that mix integer and continuous features get their mixed likelihood.

    For quantised data (integers) this is the likelihood of what was recorded. A
    continuous density has no such bound: a component whose members all share one value
    can take a variance near zero and a density without limit at that value, so held-out
    densities of quantised data reward near-singular components that happen to meet
    the same value again. The probability of a bin is at most 1."""
    upper = (x[:, None, :] + step / 2 - locs) / scales
    lower = (x[:, None, :] - step / 2 - locs) / scales
    # Phi(u) - Phi(l), in the tail where both are small (l > 0: use the upper tail).
    flip = lower > 0
    high, low = np.where(flip, -lower, upper), np.where(flip, -upper, lower)
    log_high, log_low = log_ndtr(high), log_ndtr(low)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = log_high + np.log1p(-np.exp(np.minimum(log_low - log_high, -1e-300)))
    # A feature without a step (continuous) keeps its density.
    z = (x[:, None, :] - locs) / scales
    density = -0.5 * z ** 2 - np.log(scales) - 0.5 * np.log(2 * np.pi)
    per = np.where(step > 0, per, density)
    return logsumexp(np.log(weights) + per.sum(-1), axis=1)


def _ours_binned(result, test: np.ndarray, step: np.ndarray) -> np.ndarray:
    """:func:`binned_log_likelihood` of our fit at its point estimate, on the scale the
    model standardised to."""
    model = result.model
    params = model.params_from_sites(result.guide.point_estimate())
    loc, scale = (t.double().cpu().numpy() for t in model.standardization.statistics("x"))
    return binned_log_likelihood(
        (test - loc) / scale, params.log_weights.exp().double().cpu().numpy(),
        params.locs[0].double().cpu().numpy(),
        params.effective_scales[0].double().cpu().numpy(), step / scale)


def _per_example(ll: np.ndarray) -> dict:
    return {"mean": float(ll.mean()), "median": float(np.median(ll)), "worst": float(ll.min())}


def run_split(x: np.ndarray, seed: int, epochs: list[int]) -> dict:
    """Held-out per-example log-likelihoods of one split: scikit-learn, then each of our
    variants at each training length."""
    from sklearn.mixture import BayesianGaussianMixture

    train, test, scale, keep = random_split(x, seed)
    reference = BayesianGaussianMixture(
        n_components=TRUNCATION, covariance_type="diag", max_iter=500, random_state=0,
        weight_concentration_prior_type="dirichlet_process").fit(train)
    out = {"sklearn": _per_example(reference.score_samples(test))}
    # Integer features: also the probability of the recorded values (bins of width 1;
    # the density of the other features).
    integer = (x == np.round(x)).all(0)[keep]
    step = np.where(integer, 1.0 / scale, 0.0) if integer.any() else None
    if step is not None:
        out["binned"] = {"sklearn": _per_example(binned_log_likelihood(
            test, reference.weights_, reference.means_, np.sqrt(reference.covariances_),
            step))}
    train_data, test_data = pm.MultimodalData({"x": train}), pm.MultimodalData({"x": test})
    for i, (label, args) in enumerate(VARIANTS.items()):
        # The previous default at the first length only: it is the reference, not the
        # question (and the grid has to fit a shared CPU).
        for n in (epochs if i else epochs[:1]):
            model = pm.MultimodalDPMixture(train_data.dims, num_components=TRUNCATION,
                                           representation="observed", **args)
            start = time.perf_counter()
            result = pm.fit(model, train_data, num_epochs=n, batch_size=128, device="cpu",
                            seed=0, progress=False)
            n = "auto" if n is None else n
            seconds = time.perf_counter() - start
            ll = pm.log_likelihood(result.model, result.guide,
                                   result.model.prepare(test_data)).cpu().numpy()
            if step is not None:
                out["binned"][f"{label} @{n}"] = _per_example(_ours_binned(result, test, step))
            out[f"{label} @{n}"] = {**_per_example(ll), "seconds": seconds,
                                    "steps": len(result.history.steps)}
    return out


def _summary(per_split: list[dict], key: str) -> str:
    means = np.array([r[key]["mean"] for r in per_split])
    return f"{means.mean():.1f} / {np.median(means):.1f} / {means.min():.1f}"


def _summary_row(info: list, per_split: list[dict]) -> tuple[list[str], list]:
    """``(keys, row)``: ``info`` then each key's mean / median / worst split, then how
    many splits it scored at least scikit-learn's mean."""
    keys = list(per_split[0])
    wins = {k: sum(r[k]["mean"] >= r["sklearn"]["mean"] for r in per_split) for k in keys[1:]}
    return keys, [*info, *(_summary(per_split, k) for k in keys),
                  *(f"{wins[k]}/{len(per_split)}" for k in keys[1:])]


def _summary_table(keys: list[str], rows: list[list]) -> str:
    return markdown_table(["data set", "kind", "N x d",
                           *(f"{k}: mean / median / worst split" for k in keys),
                           *(f"{k}: splits >= scikit-learn" for k in keys[1:])], rows)


def real_data_table(names: list[str], seeds: list[int], epochs: list[int], tiny: bool
                    ) -> tuple[str, dict]:
    """The second table (module docstring), the quantised data's binned log-probabilities
    after it, and their raw results."""
    raw, rows, binned_rows = {}, [], []
    for name in names:
        x = load_real(name, tiny)
        raw[name] = per_split = [run_split(x, seed, epochs) for seed in seeds]
        info = [name, REAL_DATA[name], f"{x.shape[0]} x {x.shape[1]}"]
        keys, row = _summary_row(info, [{k: v for k, v in r.items() if k != "binned"}
                                        for r in per_split])
        rows.append(row)
        print(row, flush=True)
        if "binned" in per_split[0]:
            binned_keys, row = _summary_row(info, [r["binned"] for r in per_split])
            binned_rows.append(row)
            print(row, flush=True)
    table = _summary_table(keys, rows)
    if binned_rows:
        table += ("\n\nData with integer features, scored as the log-probability of the "
                  "recorded values (each integer feature's bin of width 1 on the original "
                  "scale, at most 0 per feature; the density of the other features; "
                  "benchmarks.dpgmm.binned_log_likelihood):\n\n"
                  + _summary_table(binned_keys, binned_rows))
    return table, raw


def _spread(r: dict) -> str:
    times = r["all_seconds"]
    return f"{r['seconds']:.2f} ({min(times):.2f}-{max(times):.2f})"


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 200000])
    p.add_argument("--steps", type=int, default=600, help="SVI steps for our model")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3, help="timed fits of each method")
    p.add_argument("--real-epochs", nargs="+", default=["auto", 100, 1000],
                   type=lambda v: None if v == "auto" else int(v),
                   help="training lengths on real data ('auto': pm.fit's own)")
    p.add_argument("--real-data", nargs="+", default=list(REAL_DATA), choices=list(REAL_DATA))
    p.add_argument("--split-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--real-only", action="store_true", help="skip the synthetic table")
    args = p.parse_args(argv)
    repeats = 1 if args.tiny else args.repeats
    sizes = [300] if args.tiny else args.sizes
    steps = 20 if args.tiny else args.steps
    torch.manual_seed(0)
    rows, raw = [], []
    for n in ([] if args.real_only else sizes):
        train, test = make_data(n, 200 if args.tiny else 10000, seed=0)
        theirs = repeated(lambda: run_sklearn(train, test), repeats)
        default = repeated(lambda: run_ours(train, test, None, args.batch_size), repeats)
        svi = repeated(lambda: run_ours(train, test, steps, args.batch_size), repeats)
        gap = ((default["log_likelihood"] - theirs["log_likelihood"])
               / abs(theirs["log_likelihood"]))
        raw.append({"n": n, "ours_default": default, "ours_svi": svi, "sklearn": theirs,
                    "relative_ll_gap": gap,
                    "time_ratio_to_sklearn": default["seconds"] / theirs["seconds"]})
        rows.append([n, default["log_likelihood"], svi["log_likelihood"],
                     theirs["log_likelihood"], f"{100 * gap:+.2f}%",
                     default["effective_components"], theirs["effective_components"],
                     default["ari"], theirs["ari"], default["steps"], _spread(default),
                     _spread(svi), _spread(theirs),
                     f"{default['seconds'] / theirs['seconds']:.2g}x"])
        print(rows[-1], flush=True)
    table = markdown_table(
        ["N train", "held-out LL, pm.fit default", f"held-out LL, {steps} SVI steps",
         "held-out LL sklearn", "LL gap (default vs sklearn)", "eff. K default",
         "eff. K sklearn", "ARI default", "ARI sklearn", "SVI steps of the default",
         "time default (s)", f"time {steps} SVI steps (s)", "time sklearn (s)",
         "default time / sklearn's (medians)"], rows)
    real_epochs = [None, 3] if args.tiny else args.real_epochs
    names = ["wine"] if args.tiny else args.real_data
    seeds = args.split_seeds[:2] if args.tiny else args.split_seeds
    real_table, real_raw = real_data_table(names, seeds, real_epochs, args.tiny)
    notes = (f"Truth: {TRUE_K} components, d = {2 * HALF_D}; truncation {TRUNCATION}. "
             "Ours, default: pm.fit(model) as a user calls it (num_epochs=None: on this "
             "conjugate model the closed-form variational posterior the guide starts "
             "from, no SVI; pyro_mm.model.conjugate). Ours, SVI: the guide's same start, "
             f"then minibatch SVI, {steps} steps of batch {args.batch_size} (fewer epochs "
             "as N grows), ClippedAdam lr 0.02. scikit-learn: BayesianGaussianMixture, "
             "dirichlet_process prior, diag covariance, max_iter 500. Held-out set: 10,000 "
             "examples. Log-likelihood is per example on the original feature scale (nats). "
             f"Times: median (min-max) of {repeats} fits of each, in the same run; "
             "every fit is seeded, so the other columns do not vary; the first of the "
             "repeats includes the process's first-call costs for each method.")
    real_notes = (
        "Real data: per-example mean held-out log-likelihood (nats, on the training "
        "split's standardised scale, constant training columns dropped), summarised over "
        f"unstratified random 75/25 splits (seeds {seeds}): mean / median / worst split "
        "of the per-split means; the last columns count the splits where the variant's "
        f"mean is at least scikit-learn's. Truncation {TRUNCATION}; scikit-learn as above "
        "(diag, dirichlet_process, max_iter 500); ours: pm.fit defaults (Adam lr 0.01, "
        "batch 128, meanfield guide), '@n' = n epochs, '@auto' = num_epochs=None (the "
        "package's length: the closed form alone where the model is conjugate, else SVI "
        "from it with early stopping on an internal split).")
    table = f"{table}\n\n{notes}\n\n### Real data: held-out log-likelihood\n\n{real_table}"
    write_results("dpgmm", {"title": "DP Gaussian mixture vs scikit-learn", "rows": raw,
                            "real_data": real_raw, "notes": real_notes}, table, args.out,
                  record=not args.tiny)


if __name__ == "__main__":
    main()
