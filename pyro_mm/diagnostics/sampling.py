"""Drawing from the variational posterior, for :func:`~pyro_mm.diagnostics.to_datatree`
and :func:`~pyro_mm.diagnostics.pareto_k`.

How the draws are made, and what each pointwise log-likelihood means, is described in
:mod:`pyro_mm.diagnostics.datatree`; this module makes them: a plan of what to compute
(:func:`make_plan`), draws of the global posterior
(:meth:`pyro_mm.model.posterior.Posterior.draws`: a guide's, or posterior samples) and
the loop over draws and chunks of examples (:func:`sample_draws`), which fills preallocated
NumPy arrays.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
import torch
from pyro import poutine

from ..data.container import MultimodalData, TensorBatch
from ..model.dp_mixture import MultimodalDPMixture
from ..model.params import MixtureParams
from ..model.posterior import Posterior, as_posterior, seeded, site_log_prob
from ..runtime.modes import evaluation_mode

#: Default cap on the number of replicated feature values kept in
#: ``posterior_predictive`` when ``predictive_features`` is ``None`` (about 200 MB in
#: float32).
MAX_PREDICTIVE_VALUES = 50_000_000


def _in_data_plate(site) -> bool:
    return any(frame.name == "data" for frame in site["cond_indep_stack"])


def _feature_stats(model: MultimodalDPMixture, m: str) -> tuple[torch.Tensor, torch.Tensor]:
    return model.standardization.statistics(m)


def label_log_prob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` ``log p(y_i | logits_i)`` in float64, as ``-log1p(sum_{j != y}
    exp(l_j - l_y))``: exact even when the classifier is nearly certain (a float32
    ``log_softmax`` rounds those to exactly 0, and PSIS cannot fit a tail of equal
    values)."""
    logits = logits.double()
    diff = logits - logits.gather(-1, labels[:, None])
    own = torch.zeros_like(diff, dtype=torch.bool).scatter_(-1, labels[:, None], True)
    return -torch.log1p(diff.masked_fill(own, -math.inf).exp().sum(-1))


@dataclasses.dataclass
class Plan:
    """What the sampling loop computes, decided once from the model and the data."""

    latent: bool
    labelled: np.ndarray | None        # (N,) bool: examples with a label (y likelihood)
    ll_vars: dict[str, np.ndarray]     # variable -> (N,) bool where it is observed
    pp_labels: bool
    pp_features: bool
    responsibilities_shape: tuple[int, ...]


def make_plan(model: MultimodalDPMixture, batch: TensorBatch,
               predictive_features: bool | None, num_samples: int, predictive: bool
               ) -> Plan:
    n = batch.size
    latent = model.representation == "latent"
    masks = batch.masks.cpu().numpy()
    ll_vars: dict[str, np.ndarray] = {}
    labelled = None
    if model.classifier is not None and batch.labels is not None:
        labelled = batch.label_mask.cpu().numpy()
    if not latent:
        ll_vars["x"] = np.ones(n, dtype=bool)
    else:
        if labelled is not None and labelled.any():
            ll_vars["y"] = labelled
        if model.reconstruct:
            for j, m in enumerate(model.modalities):
                if masks[:, j].any():
                    ll_vars[f"x_{m}"] = masks[:, j].copy()
    has_feature_site = (not latent) or model.reconstruct
    num_values = num_samples * n * sum(model.dims.values())
    if not predictive or not has_feature_site:
        pp_features = False
    elif predictive_features is None:
        pp_features = num_values <= MAX_PREDICTIVE_VALUES
        if not pp_features:
            warnings.warn(
                f"to_datatree: leaving the replicated features out of posterior_predictive "
                f"({num_samples} draws x {n} examples x {sum(model.dims.values())} features "
                f"= {num_values:.3g} values); pass predictive_features=True to keep them, "
                "or use fewer draws or examples", stacklevel=3)
    else:
        pp_features = bool(predictive_features)
    K, M = model.num_components, len(model.modalities)
    resp_shape = (n, K) if model.mixture == "joint" else (n, M, K)
    return Plan(latent, labelled, ll_vars, predictive and model.classifier is not None,
                 pp_features, resp_shape)


class _Sampler:
    """The output arrays of the sampling loop (leading draw axis), filled draw by draw
    and, within a draw, chunk by chunk."""

    def __init__(self, posterior: Posterior, batch: TensorBatch, plan: Plan,
                 num_samples: int, per_example: bool):
        model = posterior.model
        self.model, self.posterior, self.batch, self.plan = model, posterior, batch, plan
        self.per_example = per_example
        self.out = _allocate(model, batch.size, plan, num_samples, per_example)
        self.ll_index = {v: np.cumsum(mask) - 1 for v, mask in plan.ll_vars.items()}
        mods = model.modalities
        self.jac = {m: -_feature_stats(model, m)[1].log().sum() for m in mods}
        self.x_loc = torch.cat([_feature_stats(model, m)[0] for m in mods])
        self.x_scale = torch.cat([_feature_stats(model, m)[1] for m in mods])

    def store(self, s: int, var: str, rows: np.ndarray, value: torch.Tensor) -> None:
        """Pointwise log-likelihoods of ``rows``, kept where ``var`` is observed."""
        keep = self.plan.ll_vars[var][rows]
        self.out["ll"][var][s, self.ll_index[var][rows[keep]]] = value.cpu().numpy()[keep]

    def draw(self, s: int, global_trace: "poutine.Trace", log_q_global: float,
             batch_size: int) -> None:
        """Draw ``s``: its global values, then every chunk of the data."""
        model, out = self.model, self.out
        out["log_q"][s] = log_q_global
        globals_ = {name: global_trace.nodes[name]["value"]
                    for name in self.posterior.global_sites}
        params = model.params_from_sites(globals_)
        out["sticks"][s] = params.sticks.cpu().numpy()
        out["log_weights"][s] = params.log_weights.double().cpu().numpy()
        out["alpha"][s] = float(params.alpha)
        if params.df is not None:
            out["df"][s] = [float(v) for v in params.df]
        for j, m in enumerate(model.modalities):
            out["locs"][m][s] = params.locs[j].cpu().numpy()
            out["scales"][m][s] = params.scales[j].cpu().numpy()
        plan = self.plan
        for first, idx in enumerate(self.batch.chunk_indices(batch_size)):
            guide_trace = self.chunk_densities(s, global_trace, globals_, idx, first == 0)
            if (self.per_example or plan.pp_labels or plan.pp_features
                    or "y" in plan.ll_vars):
                self.chunk_predictions(s, params, guide_trace, idx)

    def chunk_densities(self, s: int, global_trace: "poutine.Trace", globals_,
                        idx: torch.Tensor, first: bool) -> "poutine.Trace":
        """Draw the chunk's ``z`` from the local guide (latent models), replay the model
        on the draw; add their log densities (global terms on the ``first`` chunk only)
        and store the feature log-likelihoods."""
        model, batch, plan, out = self.model, self.batch, self.plan, self.out
        if plan.latent:
            guide_trace = poutine.trace(self.posterior.local_guide).get_trace(
                batch, idx, globals_)
            for name, node in global_trace.nodes.items():
                guide_trace.add_node(name, **node)
        else:  # the guide of an observed model is its global part
            guide_trace = global_trace
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)
                                    ).get_trace(batch, idx, 1.0)
        model.pop_records()
        rows = idx.cpu().numpy()
        if plan.latent:
            for site in guide_trace.nodes.values():
                if site["type"] == "sample" and _in_data_plate(site):
                    out["log_q"][s] += float(site_log_prob(site).double().sum())
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            local = _in_data_plate(site)
            if not local and not first:
                continue
            log_prob = site_log_prob(site)
            out["lp"][s] += float(log_prob.double().sum())
            if not local or name not in plan.ll_vars or name == "y":
                continue
            value = log_prob.double()
            if name == "x":
                value = value + model.feature_log_jacobian(batch.masks[idx]).double()
            else:
                value = value + self.jac[name[2:]].double()
            self.store(s, name, rows, value)
        return guide_trace

    def chunk_predictions(self, s: int, params: MixtureParams,
                          guide_trace: "poutine.Trace", idx: torch.Tensor) -> None:
        """Label log-likelihoods, responsibilities and class probabilities, and the
        replicated labels and features of one chunk."""
        model, plan, out = self.model, self.plan, self.out
        part = self.batch.index(idx)
        rows = idx.cpu().numpy()
        if plan.latent:
            inputs = guide_trace.nodes["z"]["value"]
            mixture = params.mixture(model.mixture, batch_size=part.size)
        else:
            inputs = part.concatenated(model.modalities)
            mixture = params.mixture(model.mixture, mask=part.masks,
                                     batch_size=part.size, stacked=False)
        logits = None
        if model.classifier is not None:
            logits = model.class_logits(inputs, params, part.masks)
        if "y" in plan.ll_vars:
            self.store(s, "y", rows, label_log_prob(logits, part.labels))
        if self.per_example:
            out["responsibilities"][rows] += mixture.responsibilities(
                inputs).double().cpu().numpy()
            if logits is not None:
                out["class_probs"][rows] += torch.softmax(logits, -1).double().cpu().numpy()
        if plan.pp_labels:
            out["pp_y"][s, rows] = torch.distributions.Categorical(
                logits=logits).sample().cpu().numpy()
        if plan.pp_features:
            self.replicate_features(s, params, inputs, part.size, rows)

    def replicate_features(self, s: int, params: MixtureParams, inputs: torch.Tensor,
                           size: int, rows: np.ndarray) -> None:
        """Replicated features on the original scale: from the decoders at ``z``
        (latent) or from the mixture (observed)."""
        model, out = self.model, self.out
        if self.plan.latent:
            for j, m in enumerate(model.modalities):
                loc, scale = model.decoders[m](inputs[..., j, :])
                x = loc + scale * torch.randn_like(loc)
                x_m_loc, x_m_scale = _feature_stats(model, m)
                out["pp_x"][m][s, rows] = (x * x_m_scale + x_m_loc).cpu().numpy()
        else:
            free = params.mixture(model.mixture, batch_size=size, stacked=False)
            x = free.sample()
            out["pp_x"][s, rows] = (x * self.x_scale + self.x_loc).cpu().numpy()


def _allocate(model: MultimodalDPMixture, n: int, plan: Plan, S: int,
              per_example: bool) -> dict[str, Any]:
    """The sampling loop's preallocated NumPy outputs."""
    K, mods, sizes = model.num_components, model.modalities, model.site_sizes
    out: dict[str, Any] = {
        "sticks": np.empty((S, K - 1), np.float32),
        "log_weights": np.empty((S, K), np.float64),
        "locs": {m: np.empty((S, K, sizes[m]), np.float32) for m in mods},
        "scales": {m: np.empty((S, K, sizes[m]), np.float32) for m in mods},
        "alpha": np.empty(S, np.float32),
        "df": np.empty((S, len(mods)), np.float32),
        "lp": np.zeros(S, np.float64),
        "log_q": np.zeros(S, np.float64),
        "ll": {v: np.empty((S, int(mask.sum())), np.float64)
               for v, mask in plan.ll_vars.items()},
    }
    if plan.pp_labels:
        out["pp_y"] = np.empty((S, n), np.int64)
    if plan.pp_features:
        if plan.latent:
            out["pp_x"] = {m: np.empty((S, n, model.dims[m]), np.float32) for m in mods}
        else:
            out["pp_x"] = np.empty((S, n, sum(model.dims.values())), np.float32)
    if per_example:
        out["responsibilities"] = np.zeros(plan.responsibilities_shape, np.float64)
        if model.classifier is not None:
            out["class_probs"] = np.zeros((n, model.num_classes), np.float64)
    return out


@torch.no_grad()
def sample_draws(posterior: Posterior, batch: TensorBatch, plan: Plan, num_samples: int,
                 batch_size: int, progress: bool, per_example: bool = True
                 ) -> dict[str, Any]:
    """The sampling loop (module docstring of :mod:`pyro_mm.diagnostics.datatree`) over
    the ``num_samples`` draws of ``posterior`` (as many as it has). Returns NumPy arrays
    with a leading draw axis."""
    # tqdm is only the progress bar: imported when a loop starts, not with the package.
    from tqdm.auto import tqdm

    sampler = _Sampler(posterior, batch, plan, num_samples, per_example)
    with evaluation_mode(*posterior.modules()):
        bar = tqdm(total=num_samples, desc="posterior draws", unit="draw",
                   disable=not progress)
        for draw in posterior.draws(batch, num_samples):
            bar.update(1)
            sampler.draw(draw.index, draw.trace, draw.log_q, batch_size)
        bar.close()
    out = sampler.out
    if per_example:
        out["responsibilities"] /= num_samples
        if "class_probs" in out:
            out["class_probs"] /= num_samples
    return out


def importance_log_ratios(result, data: MultimodalData, num_samples: int = 1000,
                          batch_size: int = 2048, seed: int | None = None,
                          progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(lp, log_q)``, each ``(num_samples,)``: ``log p(theta_s, z_s, data)`` and
    ``log q(theta_s, z_s)`` for draws from the guide (the ``sample_stats`` of
    :func:`to_datatree`, without the rest). Their difference is the per-draw ELBO
    integrand, the log importance ratio whose Pareto-k :func:`pyro_mm.diagnostics.pareto_k`
    reports. ``result``: a posterior with a density (a guide, not samples: see
    :func:`~pyro_mm.model.posterior.as_posterior`)."""
    posterior = as_posterior(result)
    require_log_q(posterior, "importance_log_ratios")
    model = posterior.model
    batch = model.prepare(data)
    num_samples = posterior.num_draws(num_samples)
    plan = make_plan(model, batch, False, num_samples, predictive=False)
    with seeded(seed, batch.device):
        out = sample_draws(posterior, batch, plan, num_samples, batch_size, progress,
                           per_example=False)
    return out["lp"], out["log_q"]


def require_log_q(posterior: Posterior, what: str) -> None:
    """Refuse a posterior without a density ``q`` (samples) where ``log q`` is needed."""
    if not posterior.has_log_q:
        raise TypeError(
            f"{what}: posterior samples (e.g. from MCMC) have no density q, so there are "
            "no importance ratios p / q to fit a Pareto tail to; check MCMC with "
            "arviz.rhat / arviz.ess on pyro_mm.to_datatree(samples, data) instead")


__all__ = ["MAX_PREDICTIVE_VALUES", "Plan", "importance_log_ratios", "label_log_prob",
           "make_plan", "require_log_q", "sample_draws"]
