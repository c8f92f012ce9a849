"""Diagnostic figures (matplotlib). Every function returns the figure and, given
``path``, also saves it there (format from the extension).

* :func:`plot_history`: the ELBO and every value the factors logged, over training;
* :func:`plot_weights`: posterior of the sorted mixture weights and of the effective
  number of components;
* :func:`plot_responsibilities`: mean responsibilities by true class (heatmap);
* :func:`plot_modality_contributions`: ARM's per-modality contributions over training
  (history keys ``arm/phi/<modality>``);
* :func:`plot_pmrl_spectrum`: singular values of each example's unit-normalised
  ``D x M`` representation matrix (what PMRL aligns);
* :func:`plot_ppc`: posterior predictive check of one feature (or of the labels);
* :func:`plot_importance_ratios`: the log importance ratios behind Pareto k.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.container import MultimodalData
from ..predictive.metrics import adjusted_rand_index
from ..predictive.predict import predict
from .reliability import ParetoK, effective_components, pareto_k

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr
    from matplotlib.figure import Figure

    from ..runs.result import FitResult, History


def _finish(fig, path) -> "Figure":
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def _figure(nrows=1, ncols=1, width=5.0, height=3.4, **kwargs):
    # matplotlib is heavy and only needed for figures: imported when one is made.
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             squeeze=False, **kwargs)
    return fig, axes


def _history(source) -> "History":
    history = getattr(source, "history", source)
    if not hasattr(history, "steps"):
        raise TypeError("expected a FitResult or a History")
    return history


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or values.size < window:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def history_keys(source) -> list[str]:
    """The logged values of a history besides the loss (factor components, ...)."""
    history = _history(source)
    skip = {"step", "epoch", "loss"}
    keys: dict[str, None] = {}
    for row in history.steps:
        for key, value in row.items():
            if key not in skip and isinstance(value, (int, float)):
                keys.setdefault(key)
    return list(keys)


def plot_history(source, path=None, smooth: int | None = None, ncols: int = 3
                 ) -> "Figure":
    """ELBO (per example) over training and every value logged by factors.

    Args:
        source: a :class:`~pyro_mm.train.fit.FitResult` or its ``history``.
        path: save the figure here.
        smooth: moving-average window over steps (default: about 1% of the steps).
        ncols: panels per row.
    """
    history = _history(source)
    if not history.steps:
        raise ValueError("plot_history: the history has no SVI steps (a fit of 0 epochs: "
                         "for a conjugate model, the closed form of "
                         "result.config['closed_form'])")
    keys = ["loss"] + history_keys(history)
    n = len(keys)
    cols = min(ncols, n)
    rows = -(-n // cols)
    fig, axes = _figure(rows, cols, width=4.2, height=3.0)
    flat = axes.ravel()
    window = smooth if smooth is not None else max(1, len(history.steps) // 100)
    for ax, key in zip(flat, keys):
        steps = np.array([r["step"] for r in history.steps if key in r])
        values = np.array([r[key] for r in history.steps if key in r], dtype=float)
        if key == "loss":
            values = -values
            ax.plot(steps, values, color="0.75", lw=0.7, label="per step")
            ax.plot(steps, _smooth(values, window), color="C0", lw=1.5,
                    label=f"moving mean ({window})" if window > 1 else None)
            if history.epochs and "val_loss" in history.epochs[-1]:
                last_step = {}
                for r in history.steps:
                    last_step[r["epoch"]] = r["step"]
                ep = [(last_step.get(e["epoch"]), -e["val_loss"]) for e in history.epochs
                      if "val_loss" in e and e["epoch"] in last_step]
                if ep:
                    ax.plot(*zip(*ep), "o-", color="C1", ms=3, lw=1, label="validation")
            ax.set_title("ELBO per example")
            low = np.nanpercentile(values, 5)
            high = np.nanmax(values)
            if np.isfinite(low) and high > low:
                ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
            ax.legend(fontsize=7)
        else:
            ax.plot(steps, values, color="0.75", lw=0.7)
            ax.plot(steps, _smooth(values, window), color="C2", lw=1.5)
            ax.set_title(key)
        ax.set_xlabel("SVI step")
    for ax in flat[n:]:
        ax.set_visible(False)
    return _finish(fig, path)


def plot_modality_contributions(source, path=None, prefix: str = "arm/phi/",
                                smooth: int | None = None) -> "Figure":
    """ARM's conditional contribution ``phi_m`` of each modality over training (the
    history keys ``<prefix><modality>``, plus ``arm/phi_mi`` / ``arm/loss``-style
    keys of the same factor in a second panel when present).

    Raises:
        ValueError: when the history has no such keys (ARM did not run).
    """
    history = _history(source)
    keys = [k for k in history_keys(history) if k.startswith(prefix)]
    if not keys:
        raise ValueError(f"plot_modality_contributions: no history keys starting with "
                         f"{prefix!r} (did ARM run?)")
    root = prefix.split("/")[0] + "/"
    others = [k for k in history_keys(history) if k.startswith(root) and k not in keys]
    window = smooth if smooth is not None else max(1, len(history.steps) // 100)
    fig, axes = _figure(1, 2 if others else 1, width=5.0)
    ax = axes[0, 0]
    for i, key in enumerate(keys):
        steps = np.array([r["step"] for r in history.steps if key in r])
        values = np.array([r[key] for r in history.steps if key in r], dtype=float)
        ax.plot(steps, _smooth(values, window), color=f"C{i}", lw=1.5,
                label=key[len(prefix):])
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("SVI step")
    ax.set_ylabel("phi_m (nats)")
    ax.set_title("Per-modality contribution to the labels")
    ax.legend(fontsize=7)
    if others:
        ax = axes[0, 1]
        for i, key in enumerate(others):
            steps = np.array([r["step"] for r in history.steps if key in r])
            values = np.array([r[key] for r in history.steps if key in r], dtype=float)
            ax.plot(steps, _smooth(values, window), color=f"C{i}", lw=1.5, label=key)
        ax.set_xlabel("SVI step")
        ax.set_title("Other ARM terms")
        ax.legend(fontsize=7)
    return _finish(fig, path)


def _weight_draws(source) -> np.ndarray:
    post = source["posterior"]
    return np.asarray(post["weights"]).reshape(-1, post.sizes["component"])


def plot_weights(tree: "xr.DataTree", path=None, ci_prob: float | None = None,
                 max_components: int | None = None) -> "Figure":
    """Posterior of the mixture weights sorted by size (each draw sorted, then the
    median and an equal-tailed interval per rank), next to the posterior of the
    effective number of components ``exp(H(pi))``."""
    w = np.sort(_weight_draws(tree), axis=-1)[:, ::-1]
    ec = effective_components(tree, ci_prob)
    ci = ec["ci_prob"]
    K = w.shape[1] if max_components is None else min(max_components, w.shape[1])
    lo, med, hi = np.quantile(w[:, :K], [(1 - ci) / 2, 0.5, (1 + ci) / 2], axis=0)
    fig, axes = _figure(1, 2, width=4.6)
    ax = axes[0, 0]
    ranks = np.arange(1, K + 1)
    ax.bar(ranks, med, color="C0", alpha=0.7, label="median")
    ax.errorbar(ranks, med, yerr=np.clip([med - lo, hi - med], 0, None), fmt="none",
                ecolor="k", lw=1, capsize=2, label=f"{ci:.0%} interval")
    if K <= 30:
        ax.set_xticks(ranks)
    ax.set_xlabel("component, by decreasing weight")
    ax.set_ylabel("weight")
    ax.set_title("Posterior of the sorted weights")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    ax.hist(ec["draws"], bins=30, color="C1", alpha=0.8)
    for value, style in ((ec["mean"], "-"), (ec["lower"], "--"), (ec["upper"], "--")):
        ax.axvline(value, color="k", ls=style, lw=1)
    ax.set_xlabel("exp(entropy of the weights)")
    ax.set_title(f"Effective components: {ec['mean']:.2f} "
                 f"[{ec['lower']:.2f}, {ec['upper']:.2f}]")
    return _finish(fig, path)


def plot_responsibilities(source, data: MultimodalData | None = None, path=None,
                          min_share: float = 0.005) -> "Figure":
    """Heatmap of the mean responsibility of each component (columns, by decreasing
    total responsibility; those below ``min_share`` of the mass are pooled) for each
    true class (rows), with the adjusted Rand index in the title.

    Args:
        source: a fitted result with ``data`` (plug-in responsibilities, as
            :func:`pyro_mm.predict`) or a tree (its ``per_example`` posterior means).
    """
    if hasattr(source, "model"):
        if data is None:
            raise ValueError("plot_responsibilities: pass the data with a fitted result")
        resp = predict(source, data)["responsibilities"]
        labels = data.labels
    else:
        resp = np.asarray(source["per_example"]["responsibilities"])
        labels = (np.asarray(source["observed_data"]["y"])
                  if "y" in source["observed_data"] else None)
    if labels is None or not (labels >= 0).any():
        raise ValueError("plot_responsibilities: needs labels")
    if resp.ndim == 3:
        resp = resp.mean(-2)
    keep = labels >= 0
    resp, labels = resp[keep], labels[keep]
    classes = np.unique(labels)
    table = np.stack([resp[labels == c].mean(0) for c in classes])      # (C, K)
    mass = resp.sum(0)
    order = np.argsort(-mass)
    major = order[mass[order] >= min_share * mass.sum()]
    minor = order[mass[order] < min_share * mass.sum()]
    columns = [str(k) for k in major]
    shown = table[:, major]
    if minor.size:
        shown = np.concatenate([shown, table[:, minor].sum(1, keepdims=True)], axis=1)
        columns.append("rest")
    ari = adjusted_rand_index(labels, resp.argmax(-1))
    fig, axes = _figure(1, 1, width=max(4.0, 0.45 * len(columns) + 2),
                        height=max(3.0, 0.35 * len(classes) + 1.5))
    ax = axes[0, 0]
    image = ax.imshow(shown, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(columns)), columns, fontsize=7)
    ax.set_yticks(range(len(classes)), [str(c) for c in classes], fontsize=7)
    ax.set_xlabel("component (by total responsibility)")
    ax.set_ylabel("true class")
    ax.set_title(f"Mean responsibility by class (ARI {ari:.3f})")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _finish(fig, path)


def singular_values(latent: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``(N, M)`` singular values (decreasing) of each example's ``D x M`` matrix of
    unit-normalised representations, from ``latent (N, M, D)``; ``sum s^2 = M``."""
    z = np.asarray(latent, dtype=np.float64)
    z = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), eps)
    return np.linalg.svd(np.swapaxes(z, -1, -2), compute_uv=False)


def plot_pmrl_spectrum(source, data: MultimodalData | None = None, path=None
                       ) -> "Figure":
    """Singular-value spectrum of the held-out representations (what PMRL aligns).

    Each example's representations ``pm.predict(result, data)["latent_mean"]`` are
    unit-normalised and stacked as the columns of a ``D x M`` matrix; its singular
    values ``s_1 >= ... >= s_M`` satisfy ``sum s^2 = M``, and ``s_1 = sqrt(M)`` exactly
    when all modalities point the same way. Left: the mean spectrum with its spread;
    right: the distribution of ``s_1`` between 1 (orthogonal) and ``sqrt(M)``.

    Args:
        source: a fitted latent model with ``data``, or an ``(N, M, D)`` array of
            representations.
    """
    if hasattr(source, "model"):
        if data is None:
            raise ValueError("plot_pmrl_spectrum: pass the data with a fitted result")
        if source.model.representation != "latent":
            raise ValueError("plot_pmrl_spectrum: needs a latent model")
        latent = predict(source, data)["latent_mean"]
    else:
        latent = np.asarray(source)
    if latent.ndim != 3 or latent.shape[1] < 2:
        raise ValueError("plot_pmrl_spectrum: needs representations (N, M >= 2, D)")
    s = singular_values(latent)
    M = s.shape[1]
    fig, axes = _figure(1, 2, width=4.6)
    ax = axes[0, 0]
    idx = np.arange(1, M + 1)
    lo, med, hi = np.quantile(s, [0.1, 0.5, 0.9], axis=0)
    ax.bar(idx, s.mean(0), color="C0", alpha=0.7, label="mean")
    ax.errorbar(idx, med, yerr=np.clip([med - lo, hi - med], 0, None), fmt="o", color="k",
                ms=3, lw=1, capsize=2, label="median, 10-90%")
    ax.axhline(1.0, color="0.5", ls=":", lw=1)
    ax.set_xticks(idx)
    ax.set_xlabel("singular value index")
    ax.set_title("Spectrum of the normalised representations")
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    ax.hist(s[:, 0], bins=30, range=(1.0, np.sqrt(M)), color="C2", alpha=0.8)
    ax.axvline(np.sqrt(M), color="k", ls="--", lw=1, label=f"sqrt(M) = {np.sqrt(M):.2f}")
    ax.set_xlabel("leading singular value s_1")
    ax.set_title(f"Alignment: mean s_1 = {s[:, 0].mean():.3f}")
    ax.legend(fontsize=7)
    return _finish(fig, path)


def _feature_variables(tree) -> list[str]:
    pp = tree["posterior_predictive"] if "posterior_predictive" in tree else {}
    return [v for v in ("x", *sorted(str(n) for n in getattr(pp, "data_vars", {})))
            if v in getattr(pp, "data_vars", {}) and v != "y" and v in tree["observed_data"]]


def plot_ppc(tree: "xr.DataTree", feature: Any = None, variable: str | None = None,
             path=None, num_draws: int = 50, bins: int = 40) -> "Figure":
    """Posterior predictive check: the observed values of one feature against its
    replications (histograms of ``num_draws`` replicated data sets as thin lines, the
    observed data as bars). ``variable="y"`` compares class frequencies instead.

    Args:
        tree: from :func:`~pyro_mm.diagnostics.to_datatree` (with replicated features).
        feature: a coordinate of the feature dimension (e.g. ``"a[0]"`` or ``0``);
            default: the first.
        variable: ``"x"``, ``"x_<m>"`` or ``"y"``; default: the first feature variable.
    """
    if "posterior_predictive" not in tree:
        raise ValueError("plot_ppc: the tree has no posterior_predictive group")
    pp = tree["posterior_predictive"]
    if variable is None:
        candidates = _feature_variables(tree)
        variable = candidates[0] if candidates else "y"
    if variable not in pp.data_vars:
        raise ValueError(f"plot_ppc: no variable {variable!r} in posterior_predictive "
                         f"(have {list(pp.data_vars)})")
    replicated = pp[variable].stack(sample=("chain", "draw"))
    observed = tree["observed_data"][variable]
    rng = np.random.default_rng(0)
    total = replicated.sizes["sample"]
    pick = rng.choice(total, size=min(num_draws, total), replace=False)
    fig, axes = _figure(1, 1, width=5.0)
    ax = axes[0, 0]
    if variable == "y":
        obs = np.asarray(observed)
        obs = obs[obs >= 0]
        classes = np.arange(int(max(obs.max(), np.asarray(replicated).max())) + 1)
        freq = np.stack([(np.asarray(replicated.isel(sample=int(i))) == c).mean()
                         for i in pick for c in classes]).reshape(len(pick), -1)
        ax.bar(classes, [(obs == c).mean() for c in classes], color="C0", alpha=0.6,
               label="observed")
        lo, mid, hi = np.quantile(freq, [0.05, 0.5, 0.95], axis=0)
        ax.errorbar(classes, mid, yerr=np.clip([mid - lo, hi - mid], 0, None),
                    fmt="o", color="k", ms=3, capsize=2, label="replicated (median, 90%)")
        ax.set_xlabel("class")
        ax.set_ylabel("frequency")
        ax.set_title("Posterior predictive check: labels")
    else:
        dim = [d for d in observed.dims if d != "example"][0]
        if feature is None:
            feature = observed[dim].values[0]
        obs = np.asarray(observed.sel({dim: feature}))
        obs = obs[np.isfinite(obs)]
        rep = np.asarray(replicated.sel({dim: feature}).isel(sample=pick))  # (N, draws)
        low, high = np.nanpercentile(np.concatenate([obs, rep.ravel()]), [0.5, 99.5])
        edges = np.linspace(low, high, bins + 1)
        centres = 0.5 * (edges[1:] + edges[:-1])
        for j in range(rep.shape[-1]):
            counts, _ = np.histogram(rep[:, j], bins=edges, density=True)
            ax.plot(centres, counts, color="C1", alpha=0.15, lw=0.8,
                    label="replicated" if j == 0 else None)
        ax.hist(obs, bins=edges, density=True, color="C0", alpha=0.5, label="observed")
        ax.set_xlabel(f"{variable} [{feature}] (original scale)")
        ax.set_ylabel("density")
        ax.set_title("Posterior predictive check")
    ax.legend(fontsize=7)
    return _finish(fig, path)


def plot_importance_ratios(source, path=None) -> "Figure":
    """The log importance ratios ``log p - log q`` behind Pareto k (histogram, relative
    to their maximum) and the largest normalised weights: a few dominant weights mean
    ``q`` misses mass that the true posterior has.

    Args:
        source: a tree from :func:`~pyro_mm.diagnostics.to_datatree` or a
            :class:`~pyro_mm.diagnostics.reliability.ParetoK`.
    """
    pk = source if isinstance(source, ParetoK) else pareto_k(source)
    r = pk.log_ratios - pk.log_ratios.max()
    w = np.exp(r) / np.exp(r).sum()
    fig, axes = _figure(1, 2, width=4.6)
    ax = axes[0, 0]
    ax.hist(r, bins=40, color="C0", alpha=0.8)
    ax.set_xlabel("log p - log q (minus its maximum)")
    ax.set_title(f"Pareto k = {pk.k:.2f} ({pk.label})")
    ax = axes[0, 1]
    top = np.sort(w)[::-1][:20]
    ax.bar(np.arange(1, top.size + 1), top, color="C3", alpha=0.8)
    ax.axhline(1.0 / w.size, color="k", ls=":", lw=1, label="uniform 1/S")
    ax.set_xlabel("largest importance weights (rank)")
    ax.set_title(f"ESS {pk.ess:.1f} of {pk.num_samples}")
    ax.legend(fontsize=7)
    return _finish(fig, path)


def diagnostic_plots(result: "FitResult", data: MultimodalData, tree: "xr.DataTree",
                     folder, fmt: str = "png") -> dict[str, Path]:
    """Every plot that applies to this run, saved in ``folder``; returns
    ``name -> path``. Figures are closed after saving."""
    # matplotlib is heavy and only needed for figures: imported when they are made.
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    model = result.model
    history = result.history
    keys = history_keys(history) if history.steps else []
    jobs: list[tuple[str, Any]] = []
    if history.steps:
        jobs.append(("history", lambda p: plot_history(history, p)))
    jobs.append(("weights", lambda p: plot_weights(tree, p)))
    jobs.append(("importance_ratios", lambda p: plot_importance_ratios(tree, p)))
    if data.labels is not None and data.has_labels:
        jobs.append(("responsibilities", lambda p: plot_responsibilities(result, data, p)))
    if any(k.startswith("arm/phi/") for k in keys):
        jobs.append(("modality_contributions", lambda p: plot_modality_contributions(
            history, p)))
    pmrl_ran = any(k.startswith("pmrl/") for k in keys) or any(
        type(f).__name__ == "PMRL" for f in getattr(model, "factors", []))
    if pmrl_ran and model.representation == "latent" and len(model.modalities) >= 2:
        jobs.append(("pmrl_spectrum", lambda p: plot_pmrl_spectrum(result, data, p)))
    if "posterior_predictive" in tree:
        for var in _feature_variables(tree)[:1]:
            jobs.append((f"ppc_{var}", lambda p, v=var: plot_ppc(tree, variable=v, path=p)))
        if "y" in tree["posterior_predictive"].data_vars and "y" in tree["observed_data"]:
            jobs.append(("ppc_y", lambda p: plot_ppc(tree, variable="y", path=p)))
    for name, job in jobs:
        path = folder / f"{name}.{fmt}"
        fig = job(path)
        plt.close(fig)
        made[name] = path
    return made


__all__ = ["diagnostic_plots", "history_keys", "plot_history", "plot_importance_ratios",
           "plot_modality_contributions", "plot_pmrl_spectrum", "plot_ppc",
           "plot_responsibilities", "plot_weights", "singular_values"]
