"""Is the variational posterior trustworthy, and what does the fitted model say?

* :func:`pareto_k`: Pareto-smoothed importance sampling (PSIS) diagnostic of the
  variational approximation (Yao, Vehtari, Simpson and Gelman, 2018, "Yes, but did it
  work?"): draw ``(theta_s, z_s) ~ q``, compute the log importance ratios
  ``log r_s = log p(theta_s, z_s, data) - log q(theta_s, z_s)`` (the per-draw ELBO
  integrand over the whole data set) and fit a generalised Pareto distribution to the
  largest ratios. Its shape ``k`` says how heavy the right tail of the ratios is, i.e.
  how much of the true posterior ``q`` misses. ArviZ's thresholds apply (``k`` below
  ``min(1 - 1/log10(S), 0.7)``: good; up to 1: bad; above 1: very bad). The estimate
  is arviz-stats' PSIS (``array_stats.psislw``). Where one draw's ratio exceeds all
  the others' together, the tail is that one draw and the fit is degenerate (it has
  returned NaN, and also k = 0.12 beside an importance-sampling ESS of 1.0): ``k`` is
  then reported as ``inf``, the heaviest tail.

  For ``representation="observed"`` the ratio is over the global parameters only. For
  latent models it is over the globals *and* every example's representation ``z_i``
  (``N x M x D`` more dimensions), because ``p(theta | data)`` itself is intractable
  there; importance sampling in that many dimensions almost always gives ``k > 0.7``
  on real data sets, so for latent models read ``k`` as a warning about the joint
  approximation rather than about the globals alone.
* :func:`loo`: PSIS-LOO (``arviz.loo``) of each variable of the tree's
  ``log_likelihood`` group (labels ``"y"``, features ``"x"`` / ``"x_<m>"``).
* :func:`effective_components`: the perplexity ``exp(H(pi))`` of the mixture weights
  over posterior draws, with a credible interval.
* :func:`responsibility_ari`: adjusted Rand index between the most responsible
  component and the labels.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.container import MultimodalData
from ..model.posterior import as_posterior
from ..predictive.metrics import adjusted_rand_index
from ..predictive.predict import predict
from .sampling import importance_log_ratios, require_log_q

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr


def _is_tree(obj) -> bool:
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, xr.DataTree)


#: Fewest draws for which a Pareto tail is fitted (PSIS needs 5 tail draws, S / 5).
MIN_DRAWS = 25


def good_k_threshold(num_samples: int) -> float:
    """ArviZ's sample-size dependent threshold ``min(1 - 1/log10(S), 0.7)``."""
    if num_samples <= 10:
        return 0.0
    return min(1.0 - 1.0 / math.log10(num_samples), 0.7)


def pareto_k_verdict(k: float, num_samples: int) -> tuple[str, str]:
    """``(label, sentence)`` for a Pareto-k value: ``"good"``, ``"bad"``, ``"very
    bad"`` (ArviZ's thresholds) or ``"undefined"``."""
    good = good_k_threshold(num_samples)
    if num_samples < MIN_DRAWS:
        return ("undefined", f"no Pareto k: {num_samples} draws are too few for a tail fit "
                f"(need at least {MIN_DRAWS}; a few hundred are better)")
    if math.isnan(k):
        return ("undefined", "no Pareto k: the draws do not vary (a MAP/point guide), so "
                "there is no posterior spread to check")
    if k < good:
        return ("good", f"good (k = {k:.2f} < {good:.2f}): the variational posterior "
                "covers the true posterior well; its means and intervals can be trusted, "
                "and importance weighting could refine them")
    if k < 1.0:
        return ("bad", f"bad ({good:.2f} <= k = {k:.2f} < 1): the variational posterior "
                "misses part of the true posterior (its tails are too light or it sits "
                "in the wrong place); treat its uncertainty as too small, train longer or "
                "use a richer guide")
    return ("very bad", f"very bad (k = {k:.2f} >= 1): the variational posterior is far "
            "from the true posterior; its summaries are unreliable and importance "
            "sampling cannot repair them")


@dataclasses.dataclass
class ParetoK:
    """Result of :func:`pareto_k`.

    Attributes:
        k: the Pareto shape of the importance ratios (NaN when the draws do not vary
            or are too few; ``inf`` when the ratios are so spread out that the tail
            fit underflows, i.e. one draw holds all the weight).
        label: ``"good"``, ``"bad"``, ``"very bad"`` or ``"undefined"``.
        verdict: the plain-words reading of ``k``.
        threshold: ArviZ's good-k threshold for this many draws.
        num_samples: ``S``.
        ess: effective sample size of the Pareto-smoothed importance weights (out of
            ``S``).
        elbo: mean log ratio over the draws: a Monte Carlo ELBO of the whole data set.
        log_ratios: ``(S,)`` the log importance ratios.
        includes_locals: ``True`` for latent models (the ratio includes every ``z_i``).
    """

    k: float
    label: str
    verdict: str
    threshold: float
    num_samples: int
    ess: float
    elbo: float
    log_ratios: np.ndarray = dataclasses.field(repr=False)
    includes_locals: bool = False

    def __str__(self) -> str:
        return f"Pareto k = {self.k:.3f} ({self.label}); {self.verdict}"

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "label": self.label, "verdict": self.verdict,
                "threshold": self.threshold, "num_samples": self.num_samples,
                "ess": self.ess, "elbo": self.elbo, "includes_locals": self.includes_locals}


def psis(log_ratios: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed, normalised log importance weights and ``k`` (arviz-stats'
    ``psislw`` with ``r_eff = 1``: the draws are independent)."""
    from arviz_stats.base import array_stats

    log_ratios = np.asarray(log_ratios, dtype=np.float64).ravel()
    # psislw smooths the weights of leave-one-out ratios -log_lik, so it takes the
    # negated log ratios.
    log_weights, k = array_stats.psislw(-log_ratios, r_eff=1.0)
    log_weights = np.asarray(log_weights, dtype=np.float64)
    log_weights = log_weights - np.logaddexp.reduce(log_weights)
    return log_weights, float(k)


def _one_draw_dominates(log_ratios: np.ndarray) -> bool:
    """Whether one draw's importance ratio exceeds the sum of all the others. For a tail
    with ``k < 1`` (a finite mean) that is all but impossible among a hundred or more
    draws, so a smaller fitted ``k`` there is the fit failing, not the tail."""
    order = np.sort(log_ratios)
    return bool(order[-1] > np.logaddexp.reduce(order[:-1]))


def pareto_k(source, data: MultimodalData | None = None, num_samples: int = 1000,
             batch_size: int = 2048, seed: int | None = None, progress: bool = True
             ) -> ParetoK:
    """Pareto-k diagnostic of the variational posterior (module docstring).

    Args:
        source: a tree from :func:`~pyro_mm.diagnostics.to_datatree` (its
            ``sample_stats`` hold ``lp`` and ``log_q``), or a posterior with a density
            (a ``FitResult``, ``(model, guide)`` with any Pyro guide: see
            :func:`~pyro_mm.model.posterior.as_posterior`) with ``data``, for which
            only the importance ratios are computed. Posterior samples (MCMC) have no
            ``log q`` and are refused with a ``TypeError``.
        data: the data set the ratio is computed on (the training data answers "did
            the fit work"; required with a result).
        num_samples, batch_size, seed, progress: as in
            :func:`~pyro_mm.diagnostics.to_datatree` (with a result only).

    Returns:
        :class:`ParetoK`.
    """
    includes_locals = False
    if _is_tree(source):
        if "sample_stats" not in source or "lp" not in source["sample_stats"]:
            raise ValueError("pareto_k: the tree has no sample_stats lp/log_q; make it with "
                             "pyro_mm.diagnostics.to_datatree")
        stats = source["sample_stats"]
        if "log_q" not in stats:
            raise TypeError("pareto_k: the tree was made from posterior samples (e.g. "
                            "MCMC), which have no density q and so no importance ratios; "
                            "check them with arviz.rhat / arviz.ess instead")
        lp = np.asarray(stats["lp"]).ravel()
        log_q = np.asarray(stats["log_q"]).ravel()
        includes_locals = source.attrs.get("representation") == "latent"
    else:
        if data is None:
            raise ValueError("pareto_k: pass the data the ratios are computed on")
        posterior = as_posterior(source)
        require_log_q(posterior, "pareto_k")
        model = posterior.model
        includes_locals = model.representation == "latent"
        lp, log_q = importance_log_ratios(posterior, data, num_samples, batch_size, seed,
                                          progress)
    log_ratios = lp - log_q
    S = log_ratios.size
    if not np.all(np.isfinite(log_ratios)):
        raise ValueError("pareto_k: non-finite log importance ratios (a draw with zero "
                         "density under the model)")
    k, ess = math.nan, float(S)
    if S >= MIN_DRAWS and np.ptp(log_ratios) > 0.0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            log_weights, k = psis(log_ratios)
        if not np.isfinite(k) or (k < 1.0 and _one_draw_dominates(log_ratios)):
            # The ratios span so many nats that the tail is one draw: the tail fit fails
            # (NaN) or returns anything at all (k = 0.12 beside an ESS of 1.0 was seen
            # on a latent model). Either way it is the heaviest tail there is.
            k = math.inf
        if not np.all(np.isfinite(log_weights)):
            log_weights = log_ratios - np.logaddexp.reduce(log_ratios)
        ess = float(1.0 / np.exp(2 * log_weights).sum())
    label, verdict = pareto_k_verdict(k, S)
    return ParetoK(k=k, label=label, verdict=verdict, threshold=good_k_threshold(S),
                   num_samples=S, ess=ess, elbo=float(log_ratios.mean()),
                   log_ratios=log_ratios, includes_locals=includes_locals)


def loo(tree: "xr.DataTree", var_names=None, pointwise: bool = True,
        quiet: bool = True) -> dict[str, Any]:
    """PSIS-LOO (``arviz.loo``) of each ``log_likelihood`` variable.

    Args:
        tree: from :func:`~pyro_mm.diagnostics.to_datatree`.
        var_names: which variables (default: all, e.g. ``"y"`` and ``"x"``).
        pointwise: keep the pointwise ``elpd_i`` and ``pareto_k``.
        quiet: silence ArviZ's high-k warnings (the counts are in the result).

    Returns:
        ``variable -> arviz ELPDData`` (``elpd``, ``se``, ``p``, ``pareto_k``, ...).
    """
    import arviz

    if "log_likelihood" not in tree:
        return {}
    names = list(tree["log_likelihood"].data_vars) if var_names is None else list(var_names)
    sizes = tree["log_likelihood"].sizes
    if sizes.get("chain", 1) * sizes.get("draw", 1) < MIN_DRAWS:
        warnings.warn(f"loo: fewer than {MIN_DRAWS} draws, PSIS-LOO skipped", stacklevel=2)
        return {}
    out = {}
    for name in names:
        failure = None
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            try:
                out[name] = arviz.loo(tree, var_name=name, pointwise=pointwise)
            except ValueError as exc:  # e.g. a PSIS tail of equal values
                failure = exc
        if failure is not None:
            warnings.warn(f"loo: PSIS-LOO of {name!r} failed ({failure}); left out",
                          stacklevel=2)
    return out


def effective_components(tree: "xr.DataTree", ci_prob: float | None = None
                         ) -> dict[str, Any]:
    """Effective number of components ``exp(H(pi))`` over the posterior draws.

    Returns:
        dict with ``mean``, ``median``, ``lower``, ``upper`` (equal-tailed interval of
        probability ``ci_prob``, ArviZ's default when ``None``), ``ci_prob`` and
        ``draws`` (``(S,)``).
    """
    if ci_prob is None:
        try:
            from arviz_base import rcParams

            ci_prob = float(rcParams["stats.ci_prob"])
        except Exception:  # pragma: no cover
            ci_prob = 0.89
    post = tree["posterior"]
    if "effective_components" in post:
        values = np.asarray(post["effective_components"]).ravel()
    else:
        w = np.asarray(post["weights"]).reshape(-1, post.sizes["component"])
        w = w / w.sum(-1, keepdims=True)
        values = np.exp(-(w * np.log(np.clip(w, 1e-300, None))).sum(-1))
    lo, hi = np.quantile(values, [(1 - ci_prob) / 2, (1 + ci_prob) / 2])
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "lower": float(lo), "upper": float(hi), "ci_prob": ci_prob, "draws": values}


def _hard_assignments(responsibilities: np.ndarray) -> np.ndarray:
    resp = np.asarray(responsibilities)
    if resp.ndim == 3:  # independent: average the modalities' assignments
        resp = resp.mean(-2)
    return resp.argmax(-1)


def responsibility_ari(source, data: MultimodalData | None = None
                       ) -> dict[str, Any] | None:
    """Most responsible component against the labels.

    Args:
        source: a posterior (with ``data``: plug-in responsibilities at its point
            estimate, the same as :func:`pyro_mm.evaluate`), or a tree
            (posterior-mean responsibilities of its ``per_example`` group against its
            observed labels).

    Returns:
        ``None`` without labels; else a dict with ``ari``, ``components_used`` (distinct
        most-responsible components), ``assignments`` and ``labels`` (labelled
        examples only).
    """
    if _is_tree(source):
        if "per_example" not in source or "y" not in source.get("observed_data", {}):
            return None
        resp = np.asarray(source["per_example"]["responsibilities"])
        labels = np.asarray(source["observed_data"]["y"])
    else:
        if data is None:
            raise ValueError("responsibility_ari: pass the data with a fitted result")
        resp = predict(source, data)["responsibilities"]
        labels = data.labels
    if labels is None:
        return None
    keep = labels >= 0
    if not keep.any():
        return None
    assignments = _hard_assignments(resp)[keep]
    return {"ari": adjusted_rand_index(labels[keep], assignments),
            "components_used": int(np.unique(assignments).size),
            "assignments": assignments, "labels": labels[keep]}


__all__ = ["MIN_DRAWS", "ParetoK", "effective_components", "good_k_threshold", "loo", "pareto_k",
           "pareto_k_verdict", "psis", "responsibility_ari"]
