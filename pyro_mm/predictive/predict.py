"""Predictions and held-out metrics from a fitted model.

By default predictions are plug-in: the global parameters at their posterior medians
(AutoNormal) or MAP values, and each representation at its posterior mean.
``predict(..., num_samples=S)`` instead averages over ``S`` draws of the global
posterior (Bayesian model averaging) and reports the spread across draws. The feature
log-likelihood of a latent model without a classifier is an importance-sampled estimate
over ``z`` (see :func:`log_likelihood`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro.distributions as dist
import torch

from ..data.batch import TensorBatch
from ..data.container import MultimodalData
from ..model.dp_mixture import MultimodalDPMixture
from ..model.params import MixtureParams
from ..model.posterior import Posterior, as_posterior, draws_per_pass
from ..runtime.modes import evaluation_mode
from .metrics import adjusted_rand_index, expected_calibration_error, weights_perplexity

if TYPE_CHECKING:  # pragma: no cover
    from ..runs.result import FitResult


@torch.no_grad()
def predict_batch(model: MultimodalDPMixture, guide, batch: TensorBatch,
                  chunk_size: int = 4096, num_samples: int | None = None,
                  log_probs: bool = False) -> dict[str, torch.Tensor]:
    """:func:`predict` on an already prepared batch; returns tensors. ``guide``: the
    model's posterior, anything :func:`~pyro_mm.model.posterior.as_posterior` accepts
    with ``model`` (a guide, samples, an MCMC object, a :class:`Posterior`).
    ``log_probs`` (plug-in only) also returns ``"log_probs"`` ``(N, C)``, the
    classifier's log-softmax, from which :func:`evaluate` reads the label
    log-likelihood without a second pass."""
    posterior = as_posterior(guide, model=model)
    with evaluation_mode(*posterior.modules()):
        if num_samples is None:
            return _predict_batch(posterior, batch, chunk_size, log_probs=log_probs)
        draws = _predict_draws(posterior, batch, chunk_size, num_samples)
    out = {}
    for key, stacked in draws.items():
        out[key] = stacked.mean(0)
        if key != "latent_mean":
            out[f"{key}_sd"] = stacked.std(0, correction=0)
    return out


def _predict_draws(posterior: Posterior, batch, chunk_size, num_samples
                   ) -> dict[str, torch.Tensor]:
    """``key -> (S, N, ...)``: every draw's prediction, the draws evaluated a block
    at a time in one batched pass (blocks sized by
    :func:`~pyro_mm.model.posterior.draws_per_pass` on ``chunk_size`` examples)."""
    model = posterior.model
    block = draws_per_pass(model, min(chunk_size, batch.size))
    pieces: dict[str, list[torch.Tensor]] = {}
    for drawn in posterior.draw_blocks(batch, num_samples):
        for draw in draw_passes(model, drawn.values, drawn.size, block):
            for key, value in _predict_batch(posterior, batch, chunk_size, draw).items():
                pieces.setdefault(key, []).append(value)
    return {key: torch.cat(value) for key, value in pieces.items()}


def draw_passes(model: MultimodalDPMixture, values: Mapping[str, torch.Tensor], size: int,
                per_pass: int, params: MixtureParams | None = None
                ) -> Iterator[tuple[Mapping[str, torch.Tensor], MixtureParams, int]]:
    """``size`` draws (``values``: ``site -> (size, *event)``, e.g. a
    :class:`~pyro_mm.model.posterior.DrawBlock`'s) in passes of at most ``per_pass``
    draws (:func:`~pyro_mm.model.posterior.draws_per_pass`): ``(values, params,
    size)`` each, ``params`` from the model's ``params_from_sites``. ``params``: those
    of all ``size`` draws if already built, reused when they fit in one pass."""
    if size <= per_pass:
        yield values, model.params_from_sites(values) if params is None else params, size
        return
    for start in range(0, size, per_pass):
        piece = {k: v[start:start + per_pass] for k, v in values.items()}
        yield piece, model.params_from_sites(piece), min(per_pass, size - start)


def _predict_batch(posterior: Posterior, batch, chunk_size, draw=None, log_probs=False):
    """The prediction of one draw (``draw=(values, params)``; ``None``: the point
    estimate), each output ``(N, ...)``, or of ``size`` draws in one pass
    (``draw=(values, params, size)``, values ``(size, *event)``), each ``(size, N,
    ...)`` (examples ``chunk_size`` at a time: the second axis)."""
    model = posterior.model
    if draw is None:
        point = posterior.point_estimate(batch)
        draw = point, model.params_from_sites(point)
    globals_, params, size = draw if len(draw) == 3 else (*draw, None)
    axis = 0 if size is None else 1

    def lead(t: torch.Tensor, core: int) -> torch.Tensor:
        # A draw-independent output (e.g. z with every modality present) for each draw
        return t if size is None else t.expand((size,) + t.shape[t.dim() - core:])

    out: dict[str, list[torch.Tensor]] = {"responsibilities": [], "probs": [],
                                          "latent_mean": [], "log_probs": []}
    for part in map(batch.index, batch.chunk_indices(chunk_size)):
        if model.representation == "latent":
            if size is None:
                z, _ = posterior.encode(part, globals_)
            else:
                z, _ = posterior.encode_draws(part, globals_, size)
            mixture = params.mixture(model.mixture, batch_size=part.size)
            out["latent_mean"].append(z)
        else:
            z = part.concatenated(model.modalities)
            mixture = params.mixture(model.mixture, mask=part.masks, batch_size=part.size,
                                     stacked=False)
        resp = mixture.responsibilities(z)
        out["responsibilities"].append(lead(resp, 3 if model.mixture == "independent"
                                            else 2))
        if model.classifier is not None:
            logits = lead(model.class_logits(z, params, part.masks), 2)
            out["probs"].append(torch.softmax(logits, -1))
            if log_probs:
                out["log_probs"].append(torch.log_softmax(logits, -1))
    return {k: torch.cat(v, axis) for k, v in out.items() if v}


def predict(result: "FitResult | Any", data: MultimodalData, chunk_size: int = 4096,
            num_samples: int | None = None) -> dict[str, np.ndarray]:
    """Predictions for ``data``.

    Args:
        result: a posterior: a :class:`~pyro_mm.runs.result.FitResult`, ``(model,
            guide)`` with the library's or any Pyro guide (``(model, guide, local)``
            for a latent model with a guide of the globals only), ``(model,
            samples)``, a ``pyro.infer.MCMC``: see
            :func:`~pyro_mm.model.posterior.as_posterior`.
        num_samples: ``None`` (default): plug-in, the global parameters at their point
            estimate (posterior median, or MAP; the rule for guides without one and
            for samples is in :mod:`pyro_mm.model.posterior`). ``S``: Bayesian model
            averaging (with samples of ``C`` chains, ``S`` a multiple of ``C``: evenly
            spaced draws of each chain), the
            mean over ``S`` draws of the global posterior of everything below, plus its
            standard deviation across the draws (``"probs_sd"``,
            ``"responsibilities_sd"``): how much the prediction depends on the
            uncertain global parameters (zero for a MAP guide, whose posterior is a
            point). Local representations stay at their posterior means either way.

    Returns:
        dict with ``"responsibilities"`` (``(N, K)`` for ``joint``; ``(N, M, K)`` for
        ``independent``), ``"probs"`` (``(N, C)``, models with a classifier) and
        ``"latent_mean"`` (``(N, M, D)``, latent models); with ``num_samples``, also
        ``"responsibilities_sd"`` and ``"probs_sd"`` (same shapes).
    """
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise ValueError(f"num_samples: must be a positive integer or None, got "
                         f"{num_samples!r}")
    posterior = as_posterior(result)
    batch = posterior.model.prepare(data)
    with torch.no_grad():
        out = predict_batch(posterior.model, posterior, batch, chunk_size, num_samples)
    return {k: v.cpu().numpy() for k, v in out.items()}


@torch.no_grad()
def log_likelihood(model: MultimodalDPMixture, guide, batch: TensorBatch,
                   num_samples: int = 32, chunk_size: int = 4096) -> torch.Tensor:
    """Held-out log predictive density per example, ``(N,)`` nats, at the posterior's
    point estimate. ``guide``: the model's posterior, anything
    :func:`~pyro_mm.model.posterior.as_posterior` accepts with ``model`` (the library's
    or any Pyro guide, samples, an MCMC object, a :class:`Posterior`).

    * A model with a classifier, on data with at least one label (either
      representation): ``log p(y_i | x_obs,i)``, the log-probability the prediction
      (:func:`predict`'s ``"probs"``) gives the true label, so at most 0; ``nan`` for an
      unlabelled example (there is nothing to score). Data with no label at all are
      scored by their features, as below.
    * ``representation="observed"``, otherwise: ``log p(x_obs,i)`` of the original
      features (the standardisation Jacobian is included), assignments and missing
      modalities summed out exactly.
    * latent, otherwise: ``log p(x_obs,i)`` of the original features, estimated by
      importance sampling with ``num_samples`` draws from ``q(z | x)`` (a stochastic
      lower bound in expectation).
    """
    posterior = as_posterior(guide, model=model)
    with evaluation_mode(*posterior.modules()):
        return _log_likelihood(posterior, batch, num_samples, chunk_size)


def _has_labels(batch) -> bool:
    """Whether ``batch`` has at least one labelled example (a data set whose labels are
    all ``-1`` is scored by its features, like one without labels)."""
    return batch.labels is not None and bool(batch.label_mask.any())


def _log_likelihood(posterior: Posterior, batch, num_samples, chunk_size):
    model = posterior.model
    globals_ = posterior.point_estimate(batch)
    params = model.params_from_sites(globals_)
    out = []
    # Decided for the whole data set, not per chunk: a chunk without labels in a
    # labelled set is nan, as its examples would be in one chunk.
    score_labels = model.classifier is not None and _has_labels(batch)
    for part in map(batch.index, batch.chunk_indices(chunk_size)):
        if score_labels:
            inputs = (part.concatenated(model.modalities) if model.representation == "observed"
                      else posterior.encode(part, globals_)[0])
            scores = model.label_log_prob(inputs, params, part.labels, part.masks)
            out.append(scores.masked_fill(~part.label_mask, math.nan))
        elif model.representation == "observed":
            x = part.concatenated(model.modalities)
            mixture = params.mixture(model.mixture, mask=part.masks, batch_size=part.size,
                                     stacked=False)
            out.append(mixture.log_prob(x) + model.feature_log_jacobian(part.masks))
        else:
            if not model.reconstruct:
                raise ValueError("log_likelihood: a latent model without decoder or "
                                 "classifier has no likelihood to evaluate")
            loc, scale = posterior.encode(part, globals_)
            q = dist.Normal(loc, scale).to_event(2)
            z = q.sample((num_samples,))                                  # (S, B, M, D)
            log_w = params.mixture(model.mixture, batch_size=part.size).log_prob(z) - q.log_prob(z)
            for j, m in enumerate(model.modalities):
                mean, sd = model.decoders[m](z[..., j, :])
                lp = dist.Normal(mean, sd).to_event(1).log_prob(part.features[m])
                log_w = log_w + lp * part.masks[:, j]
            estimate = torch.logsumexp(log_w, 0) - math.log(num_samples)
            out.append(estimate + model.feature_log_jacobian(part.masks))
    return torch.cat(out)


def _evaluation_log_likelihood(posterior: Posterior, batch, pred) -> torch.Tensor:
    """:func:`log_likelihood` of ``batch``; for a model with a classifier and labels it
    is ``log p(y | x_obs)`` from the same logits as the prediction pass ``pred``, so it
    is read from there."""
    if "log_probs" in pred and _has_labels(batch):
        scores = pred["log_probs"].gather(-1, batch.labels[:, None])[:, 0]
        return scores.masked_fill(~batch.label_mask, math.nan)
    return log_likelihood(posterior.model, posterior, batch)


def evaluate(result: "FitResult | Any", data: MultimodalData) -> dict[str, float]:
    """Held-out metrics on ``data``, at the point estimate of the posterior ``result``
    (anything :func:`~pyro_mm.model.posterior.as_posterior` accepts).

    Returns:
        ``accuracy`` and ``ece`` (labelled examples, models with a classifier; ECE:
        :func:`~pyro_mm.predictive.metrics.expected_calibration_error`, 15 equal-width
        bins of the top probability), ``log_likelihood`` (mean per example, nats; see
        :func:`log_likelihood`): with a classifier and labels, ``log p(y | x_obs)``
        over the labelled examples (at most 0, for either representation); otherwise
        ``log p(x_obs)`` of the features), ``ari`` (adjusted Rand index of the most
        responsible component against the labels), ``effective_components``
        (perplexity of the fitted weights) and ``num_examples``.
    """
    posterior = as_posterior(result)
    model = posterior.model
    batch = model.prepare(data)
    with torch.no_grad():
        pred = predict_batch(model, posterior, batch, log_probs=True)
        metrics: dict[str, float] = {"num_examples": float(batch.size)}
        labelled = None if batch.label_mask is None else batch.label_mask
        raw_labels = data.labels
        if "probs" in pred and labelled is not None and bool(labelled.any()):
            hit = (pred["probs"].argmax(-1) == batch.labels)[labelled]
            metrics["accuracy"] = float(hit.float().mean())
            metrics["ece"] = expected_calibration_error(pred["probs"][labelled],
                                                        batch.labels[labelled])
        # Unlabelled examples have no label log-likelihood (nan): average the rest.
        metrics["log_likelihood"] = float(_evaluation_log_likelihood(posterior, batch,
                                                                     pred).nanmean())
        if raw_labels is not None and (raw_labels >= 0).any():
            resp = pred["responsibilities"]
            if resp.dim() == 3:  # independent: average the modalities' assignments
                resp = resp.mean(-2)
            keep = raw_labels >= 0
            metrics["ari"] = adjusted_rand_index(raw_labels[keep],
                                                 resp.argmax(-1).cpu().numpy()[keep])
        point = posterior.point_estimate(batch)
        weights = model.params_from_sites(point).log_weights.exp()
        metrics["effective_components"] = float(weights_perplexity(weights))
    return metrics
