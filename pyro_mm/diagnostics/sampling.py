"""Drawing from the variational posterior, for :func:`~pyro_mm.diagnostics.to_datatree`
and :func:`~pyro_mm.diagnostics.pareto_k`.

How the draws are made, and what each pointwise log-likelihood means, is described in
:mod:`pyro_mm.diagnostics.datatree`; this module makes them: a plan of what to compute
(:func:`make_plan`), draws of the global posterior
(:meth:`pyro_mm.model.posterior.Posterior.draw_blocks`: a guide's, or posterior samples)
and the loop over passes of draws and chunks of examples (:func:`sample_draws`), which
fills preallocated NumPy arrays.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from pyro import poutine

from ..data.container import MultimodalData, TensorBatch
from ..model.dp_mixture import MultimodalDPMixture
from ..model.params import MixtureParams
from ..model.posterior import (DrawBlock, Posterior, as_posterior, draws_per_pass, seeded,
                               site_log_prob)
from ..predictive.predict import draw_passes
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
    """``(*L, B)`` ``log p(y_i | logits_i)`` from logits ``(*L, B, C)`` (``L``: draw
    dims, if any) and labels ``(B,)``, in float64, as ``-log1p(sum_{j != y}
    exp(l_j - l_y))``: exact even when the classifier is nearly certain (a float32
    ``log_softmax`` rounds those to exactly 0, and PSIS cannot fit a tail of equal
    values)."""
    logits = logits.double()
    labels = labels.expand(logits.shape[:-1])[..., None]
    diff = logits - logits.gather(-1, labels)
    own = torch.zeros_like(diff, dtype=torch.bool).scatter_(-1, labels, True)
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
    """The output arrays of the sampling loop (leading draw axis), filled a block of
    draws at a time and, within a block, chunk by chunk.

    A block of ``S`` draws is evaluated in one pass: the global values carry a leading
    draw dimension (``(S, 1, *event)`` in the model, left of its data plate, as
    ``Predictive(parallel=True)`` gives them), ``z`` is ``(S, B, M, D)``, and every
    log-density comes out ``(S, B)``. A model with auxiliary factors is evaluated one
    draw at a time: a factor is any user code, and nothing says it takes draw dims.
    """

    #: Evaluate blocks of draws in one pass where the model allows it (``False``: one
    #: draw at a time everywhere, the reference the tests compare the passes with).
    vectorise = True

    def __init__(self, posterior: Posterior, batch: TensorBatch, plan: Plan,
                 num_samples: int, per_example: bool):
        model = posterior.model
        self.model, self.posterior, self.batch, self.plan = model, posterior, batch, plan
        self.per_example = per_example
        self.vectorised = self.vectorise and not len(model.factors)
        self.out = _allocate(model, batch.size, plan, num_samples, per_example)
        self.ll_index = {v: np.cumsum(mask) - 1 for v, mask in plan.ll_vars.items()}
        mods = model.modalities
        self.jac = {m: -_feature_stats(model, m)[1].log().sum() for m in mods}
        self.x_loc = torch.cat([_feature_stats(model, m)[0] for m in mods])
        self.x_scale = torch.cat([_feature_stats(model, m)[1] for m in mods])

    def passes(self, block: DrawBlock, batch_size: int):
        """``(draws, values, params, log_q)`` per pass of the block (``draws``: their
        slice of the output): as many at once as
        :func:`~pyro_mm.model.posterior.draws_per_pass` allows when vectorised
        (:func:`~pyro_mm.predictive.predict.draw_passes`), else one draw at a time with
        the values of that draw alone (no draw dim)."""
        model = self.model
        if self.vectorised:
            per_pass = draws_per_pass(model, min(batch_size, self.batch.size))
            pieces = draw_passes(model, block.values, block.size, per_pass)
        else:
            pieces = ((values, model.params_from_sites(values), 1) for values in
                      ({k: v[i] for k, v in block.values.items()} for i in range(block.size)))
        start = 0
        for values, params, size in pieces:
            yield (slice(block.start + start, block.start + start + size), values, params,
                   block.log_q[start:start + size])
            start += size

    def draws(self, draws: slice, values: dict[str, torch.Tensor], params: MixtureParams,
              log_q: torch.Tensor, batch_size: int) -> None:
        """The draws ``draws`` (their global ``values`` and ``params``): their global
        values, then every chunk of the data."""
        self.out["log_q"][draws] = log_q.double().cpu().numpy()
        self.store_globals(draws, params)
        plan = self.plan
        for first_chunk, idx in enumerate(self.batch.chunk_indices(batch_size)):
            part = self.batch.index(idx)
            inputs, trace = self.chunk_densities(draws, values, idx, part, first_chunk == 0)
            if (self.per_example or plan.pp_labels or plan.pp_features
                    or "y" in plan.ll_vars):
                self.chunk_predictions(draws, params, inputs, trace, idx, part)

    def store_globals(self, draws: slice, params: MixtureParams) -> None:
        """The global values of ``draws`` (sticks, weights, alpha, df, components)."""
        out, S = self.out, draws.stop - draws.start
        out["sticks"][draws] = _per_draw(params.sticks, S, 1)
        out["log_weights"][draws] = _per_draw(params.log_weights.double(), S, 1)
        out["alpha"][draws] = _per_draw(torch.as_tensor(params.alpha), S, 0)
        if params.df is not None:
            out["df"][draws] = np.stack([_per_draw(torch.as_tensor(v), S, 0)
                                         for v in params.df], 1)
        for j, m in enumerate(self.model.modalities):
            out["locs"][m][draws] = _per_draw(params.locs[j], S, 2)
            out["scales"][m][draws] = _per_draw(params.scales[j], S, 2)
            if params.loadings is not None:
                out["loadings"][m][draws] = _per_draw(params.loadings[j], S, 3)

    def store(self, draws: slice, var: str, rows: np.ndarray, value: torch.Tensor) -> None:
        """Pointwise log-likelihoods ``(S, B)`` of ``rows``, kept where ``var`` is
        observed."""
        keep = self.plan.ll_vars[var][rows]
        value = value.expand(draws.stop - draws.start, len(rows)).cpu().numpy()
        self.out["ll"][var][draws, self.ll_index[var][rows[keep]]] = value[:, keep]

    def local_draws(self, values, part: TensorBatch, S: int):
        """``z ~ q(z | x, theta)`` of the chunk ``part``, ``(S, B, M, D)``, and its log
        density ``(S, B)`` (``(B, M, D)`` and ``(B,)`` one draw at a time)."""
        if self.vectorised:
            loc, scale = self.posterior.encode_draws(part, values, S)
        else:
            loc, scale = self.posterior.encode(part, values)
        q = dist.Normal(loc, scale).to_event(2)
        z = q.sample()
        return z, q.log_prob(z)

    def chunk_densities(self, draws: slice, values, idx: torch.Tensor, part: TensorBatch,
                        first: bool):
        """Draw the chunk's ``z`` (latent models), run the model conditioned on the
        draws; add the log densities (global terms on the ``first`` chunk only) and
        store the feature log-likelihoods. ``part``: the chunk, the rows ``idx`` of the
        data. Returns the classifier's inputs and the model's trace."""
        model, batch, plan, out = self.model, self.batch, self.plan, self.out
        S, rows = draws.stop - draws.start, idx.cpu().numpy()
        condition = {k: v[:, None] if self.vectorised else v for k, v in values.items()}
        if plan.latent:
            z, log_q_z = self.local_draws(values, part, S)
            out["log_q"][draws] += _per_draw(log_q_z.double(), S, 1).sum(-1)
            condition["z"] = inputs = z
        else:
            inputs = part.concatenated(model.modalities)
        trace = poutine.trace(poutine.condition(model, data=condition)).get_trace(
            batch, idx, 1.0)
        model.pop_records()
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            local = _in_data_plate(site)
            if not local and not first:
                continue
            log_prob = site_log_prob(site).double()
            if not self.vectorised or log_prob.dim() >= 2:
                log_prob = log_prob.reshape(S, -1)
            else:  # the same for every draw (no draw dim)
                log_prob = log_prob.reshape(1, -1).expand(S, -1)
            out["lp"][draws] += log_prob.sum(-1).cpu().numpy()
            if not local or name not in plan.ll_vars or name == "y":
                continue
            if name == "x":
                log_prob = log_prob + model.feature_log_jacobian(part.masks).double()
            else:
                log_prob = log_prob + self.jac[name[2:]].double()
            self.store(draws, name, rows, log_prob)
        return inputs, trace

    def chunk_predictions(self, draws: slice, params: MixtureParams, inputs: torch.Tensor,
                          trace: "poutine.Trace", idx: torch.Tensor, part: TensorBatch
                          ) -> None:
        """Label log-likelihoods, responsibilities and class probabilities, and the
        replicated labels and features of one chunk (``part``, the rows ``idx``)."""
        model, plan, out = self.model, self.plan, self.out
        S, rows = draws.stop - draws.start, idx.cpu().numpy()
        if plan.latent:
            mixture = params.mixture(model.mixture, batch_size=part.size)
        else:
            mixture = params.mixture(model.mixture, mask=part.masks,
                                     batch_size=part.size, stacked=False)
        logits = None
        if model.classifier is not None:
            logits = _with_draws(model.class_logits(inputs, params, part.masks), S, 2)
        if "y" in plan.ll_vars:
            self.store(draws, "y", rows, label_log_prob(logits, part.labels))
        if self.per_example:
            core = 2 if model.mixture == "joint" else 3
            resp = _with_draws(mixture.responsibilities(inputs), S, core)
            out["responsibilities"][rows] += resp.double().sum(0).cpu().numpy()
            if logits is not None:
                probs = torch.softmax(logits, -1).double().sum(0)
                out["class_probs"][rows] += probs.cpu().numpy()
        if plan.pp_labels:
            out["pp_y"][draws, rows] = torch.distributions.Categorical(
                logits=logits).sample().cpu().numpy()
        if plan.pp_features:
            self.replicate_features(draws, params, trace, part.size, rows)

    def replicate_features(self, draws: slice, params: MixtureParams, trace, size: int,
                           rows: np.ndarray) -> None:
        """Replicated features on the original scale: from the decoders' likelihoods in
        the model's trace (latent; nothing is decoded twice) or from the mixture
        (observed)."""
        model, out, S = self.model, self.out, draws.stop - draws.start
        if self.plan.latent:
            for m in model.modalities:
                x = _with_draws(trace.nodes[f"x_{m}"]["fn"].sample(), S, 2)
                x_m_loc, x_m_scale = _feature_stats(model, m)
                out["pp_x"][m][draws, rows] = (x * x_m_scale + x_m_loc).cpu().numpy()
        else:
            free = params.mixture(model.mixture, batch_size=size, stacked=False)
            x = _with_draws(free.sample(), S, 2)
            out["pp_x"][draws, rows] = (x * self.x_scale + self.x_loc).cpu().numpy()


def _with_draws(value: torch.Tensor, S: int, core: int) -> torch.Tensor:
    """``value`` with a leading draw dim of ``S``: as it is if it has one, expanded if
    it does not depend on the draw (``core``: its dims without the draw dim)."""
    return value if value.dim() > core else value.expand((S,) + value.shape)


def _per_draw(value: torch.Tensor, S: int, core: int) -> np.ndarray:
    """``(S, ...)`` NumPy values of a per-draw quantity ``value`` (``core`` dims per
    draw)."""
    return _with_draws(value.detach(), S, core).cpu().numpy()


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
        "loadings": ({m: np.empty((S, K, sizes[m], model.rank + model.private_rank),
                                  np.float32) for m in mods}
                     if model.component == "factor" else {}),
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
        for block in posterior.draw_blocks(batch, num_samples):
            for draws, values, params, log_q in sampler.passes(block, batch_size):
                sampler.draws(draws, values, params, log_q, batch_size)
                bar.update(len(log_q))
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
