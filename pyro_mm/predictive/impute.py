"""Posterior predictive imputation of missing modalities' features.

For every missing (example, modality) cell, :func:`impute` describes
``p(x_im | present modalities of example i, training data)`` on the original feature
scale. Each of ``S`` draws ``s`` takes the global parameters from the global posterior
(a guide's draws, or posterior samples: :mod:`pyro_mm.model.posterior`) and then

* latent models (``reconstruct=True``): ``z_i`` from the local guide's ``q(z_i)``, whose
  missing modalities are the mixture's prediction from the present ones
  (:meth:`~pyro_mm.model.guide.MultimodalGuide.encode`), and the decoder's Gaussian
  ``N(mu_m(z_im), sd_m(z_im)^2)``;
* observed models: a component ``k`` from the responsibilities of the present
  modalities (the weights ``pi`` for ``independent``) and that component's Gaussian
  ``N(mu_mk, sigma_mk^2)`` (for factor components, its Gaussian given the present
  modalities: a regression on them, :mod:`pyro_mm.model.factor_analysis`): the
  conditional of a Gaussian mixture is a Gaussian mixture, and this samples it one
  component at a time.

So the predictive is an equal-weight mixture of ``S`` Gaussians per feature: its mean,
its standard deviation (``E_s[sd_s^2] + Var_s[mu_s]``, the total variance) and its
quantiles (found by bisection on the mixture's CDF, not from a handful of samples).
The spread therefore includes the decoder's (or component's) noise, the uncertainty of
the missing representation given the present ones, and the global posterior's.

A fit can predict values its training data never came near: a latent model trained far
past its own stopping point merges its mixture into one wide component and reads its
decoders at representations its encoders never produced (on mfeat, imputed means
thousands of training standard deviations out, with intervals as wide). :func:`impute`
says so, once per call, naming the modalities whose imputed means lie more than
:data:`FAR_FROM_TRAINING` training standard deviations from the training mean; the
values are still returned.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.batch import TensorBatch
from ..data.container import MultimodalData
from ..model.dp_mixture import MultimodalDPMixture
from ..model.posterior import Posterior, as_posterior, draws_per_pass, model_of
from ..runtime.modes import evaluation_mode
from .predict import draw_passes

if TYPE_CHECKING:  # pragma: no cover
    from ..runs.result import FitResult

_BISECTION_STEPS = 30
#: Training standard deviations from the training mean beyond which an imputed posterior
#: mean is reported (:func:`warn_far_from_training`): by Chebyshev's inequality at most
#: 1 % of any distribution lies that far from its mean, so such a value is not one the
#: training data make plausible.
FAR_FROM_TRAINING = 10.0


def _draw_gaussians(model: MultimodalDPMixture, posterior: Posterior, part: TensorBatch,
                    values, params, size: int) -> list[tuple[torch.Tensor, ...]]:
    """``size`` draws in one pass (``values``: ``site -> (size, *event)``): per
    modality ``(loc, sd)``, each ``(size, B, d_m)``, of the predictive of its
    standardised features given the present modalities (module docstring)."""
    if model.representation == "latent":
        loc, scale = posterior.encode_draws(part, values, size)
        z = loc + scale * torch.randn_like(scale)
        # A decoder's scale may be per feature only, (d_m,): broadcast it to (S, B, d_m).
        return [torch.broadcast_tensors(*model.decoders[m](z[..., j, :]))
                for j, m in enumerate(model.modalities)]
    x = part.concatenated(model.modalities)
    mixture = params.mixture(model.mixture, mask=part.masks, batch_size=part.size,
                             stacked=False)
    if model.mixture == "joint":
        # One component per example for all its modalities, as the model generates;
        # its moments given the present modalities (for Student-t components the
        # moment-matched Gaussian, as the guide's fill-in does).
        resp, locs, variances = mixture.component_conditionals(x, part.masks)
        comp = _categorical(resp)                                          # (S, B)
        return [(_pick(loc, comp), _pick(var, comp).sqrt())
                for loc, var in zip(locs, variances)]
    # A missing modality's row is pi: its component says nothing about the others'.
    comps = list(_categorical(mixture.responsibilities(x)).unbind(-1))
    sds = [var.sqrt().unsqueeze(-3) for var in mixture.component_variances()]
    return [(_pick(loc.unsqueeze(-3), k), _pick(sd, k))
            for k, loc, sd in zip(comps, params.locs, sds)]


def _categorical(probs: torch.Tensor) -> torch.Tensor:
    """One category per row of ``probs (..., K)``: ``(...)``."""
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1])


def _pick(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table (S, B or 1, K, d)`` at ``index (S, B)``: ``(S, B, d)``, each example's
    row of its component."""
    table = table.expand(*index.shape, *table.shape[-2:])
    index = index[..., None, None].expand(*index.shape, 1, table.shape[-1])
    return table.gather(-2, index).squeeze(-2)


def mixture_quantiles(locs: torch.Tensor, sds: torch.Tensor, probs: Sequence[float]
                      ) -> torch.Tensor:
    """Quantiles of equal-weight Gaussian mixtures, elementwise, by bisection.

    Args:
        locs, sds: ``(S, ...)``: ``S`` components for every element of ``...``.
        probs: ``Q`` levels in ``(0, 1)``.

    Returns:
        ``(Q, ...)``.
    """
    normal = torch.distributions.Normal(locs, sds)
    out = []
    for p in probs:
        low = (locs - 10 * sds).min(0).values
        high = (locs + 10 * sds).max(0).values
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (low + high)
            below = normal.cdf(mid).mean(0) < p
            low, high = torch.where(below, mid, low), torch.where(below, high, mid)
        out.append(0.5 * (low + high))
    return torch.stack(out) if out else locs.new_zeros((0,) + locs.shape[1:])


@torch.no_grad()
def impute_batch(posterior: Posterior, batch: TensorBatch, num_samples: int = 100, quantiles: Sequence[float] = (),
                 chunk_size: int = 512) -> dict[str, dict[str, torch.Tensor]]:
    """:func:`impute` on a prepared batch, on the standardised scale (``posterior``
    from :func:`~pyro_mm.model.posterior.as_posterior`).

    Returns:
        ``modality -> {"rows": (R,) example indices where it is missing, "mean": (R,
        d_m), "sd": (R, d_m), "quantiles": (Q, R, d_m)}``.
    """
    model = posterior.model
    mods = model.modalities
    pieces: dict[str, dict[str, list]] = {m: {"rows": [], "mean": [], "sd": [],
                                              "quantiles": []} for m in mods}
    blocks = [(b.values, model.params_from_sites(b.values), b.size)
              for b in posterior.draw_blocks(batch, num_samples)]
    per_pass = draws_per_pass(model, min(chunk_size, batch.size))
    with evaluation_mode(*posterior.modules()):
        for idx in batch.chunk_indices(chunk_size):
            idx = idx[~batch.masks[idx].all(-1)]          # rows with something missing
            if idx.numel() == 0:
                continue
            part = batch.index(idx)
            per_block = [_draw_gaussians(model, posterior, part, *piece)
                         for values, params, size in blocks
                         for piece in draw_passes(model, values, size, per_pass, params)]
            for j, m in enumerate(mods):
                rows = torch.nonzero(~part.masks[:, j])[:, 0]
                if rows.numel() == 0:
                    continue
                locs = torch.cat([d[j][0][:, rows] for d in per_block])   # (S, R, d)
                sds = torch.cat([d[j][1][:, rows] for d in per_block])
                mean = locs.mean(0)
                variance = sds.pow(2).mean(0) + locs.var(0, correction=0)
                piece = pieces[m]
                piece["rows"].append(idx[rows])
                piece["mean"].append(mean)
                piece["sd"].append(variance.sqrt())
                piece["quantiles"].append(mixture_quantiles(locs, sds, quantiles))
    out = {}
    for m, piece in pieces.items():
        d = model.dims[m]
        empty = batch.masks.new_zeros((0,), dtype=torch.long)
        out[m] = {
            "rows": torch.cat(piece["rows"]) if piece["rows"] else empty,
            "mean": torch.cat(piece["mean"]) if piece["mean"] else torch.zeros(0, d),
            "sd": torch.cat(piece["sd"]) if piece["sd"] else torch.zeros(0, d),
            "quantiles": (torch.cat(piece["quantiles"], 1) if piece["quantiles"]
                          else torch.zeros(len(quantiles), 0, d)),
        }
    return out


def warn_far_from_training(raw: dict[str, dict[str, torch.Tensor]]) -> None:
    """One warning naming every modality whose imputed means (``raw``: what
    :func:`impute_batch` returns, standardised) lie more than :data:`FAR_FROM_TRAINING`
    training standard deviations from the training mean: how many cells, and the
    largest. Such a fit predicts values its training data never came near (a latent
    model trained long past its own stopping point does: its decoder is read at
    representations its encoders never produced)."""
    far = {}
    for m, piece in raw.items():
        size = piece["mean"].abs()
        count = int((size > FAR_FROM_TRAINING).sum())
        if count:
            far[m] = (count, piece["mean"].numel(), float(size.max()))
    if far:
        said = "; ".join(f"{m!r}: {c} of {n} cells, largest {big:.3g} sd"
                         for m, (c, n, big) in far.items())
        warnings.warn(f"impute: imputed means more than {FAR_FROM_TRAINING:g} training "
                      f"standard deviations from the training mean ({said}); the fit does "
                      "not describe these cells (pyro_mm.predictive.impute says why)",
                      stacklevel=3)


def _check(model: MultimodalDPMixture, num_samples, quantiles, chunk_size) -> list[float]:
    if model.representation == "latent" and not model.reconstruct:
        raise ValueError("impute: a latent model needs a decoder (reconstruct=True) to "
                         "predict features")
    for name, value in (("num_samples", num_samples), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    levels = [] if quantiles is None else [float(q) for q in np.atleast_1d(quantiles)]
    bad = [q for q in levels if not 0.0 < q < 1.0]
    if bad:
        raise ValueError(f"quantiles: must lie strictly between 0 and 1, got {bad}")
    return levels


def impute(result: "FitResult | Any", data: MultimodalData, num_samples: int = 100,
           quantiles: Sequence[float] | None = None, seed: int | None = 0,
           chunk_size: int = 512):
    """Posterior predictive of every missing (example, modality) cell's features.

    Args:
        result: a posterior: a fitted model (:func:`pyro_mm.fit` or
            :func:`pyro_mm.load`), or anything
            :func:`~pyro_mm.model.posterior.as_posterior` accepts (``(model, guide)``
            with any Pyro guide, posterior samples, a ``pyro.infer.MCMC``). Samples of
            ``C`` chains take ``num_samples`` a multiple of ``C`` (evenly spaced draws
            of each chain).
        data: the examples to impute; their ``masks`` say what is missing.
        num_samples: ``S``, draws of the global posterior (module docstring).
        quantiles: levels in ``(0, 1)`` to report, e.g. ``(0.05, 0.95)`` for a 90 %
            interval; ``None``: none.
        seed: seeds the draws (PyTorch's global generator is left as it was);
            ``None``: use and advance the global generator.
        chunk_size: examples processed at once; the draws are evaluated in batched
            passes of at most :func:`~pyro_mm.model.posterior.draws_per_pass` draws
            (memory ``~ DRAW_BUDGET`` elements per intermediate), so memory is bounded
            whatever ``num_samples``.

    Returns:
        ``xarray.Dataset`` on the original feature scale with, per modality ``m``,
        ``<m>_mean`` and ``<m>_sd`` (dims ``example``, ``feature_<m>``),
        ``<m>_quantiles`` (dims ``quantile``, ``example``, ``feature_<m>``; only with
        ``quantiles``) and ``<m>_missing`` (``example``, bool). Cells where the
        modality was observed are NaN.

    Warns:
        UserWarning: imputed means more than :data:`FAR_FROM_TRAINING` training
        standard deviations from the training mean (module docstring).
    """
    import xarray as xr

    # What the model cannot do is said first, before the rest of ``result`` is read.
    model = model_of(result)
    if not isinstance(model, MultimodalDPMixture):
        model = as_posterior(result).model       # the TypeError naming what is accepted
    levels = _check(model, num_samples, quantiles, chunk_size)
    posterior = as_posterior(result)
    batch = model.prepare(data)
    devices = [batch.device] if batch.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        raw = impute_batch(posterior, batch, num_samples, levels, chunk_size)
    warn_far_from_training(raw)
    n = batch.size
    variables = {}
    for j, m in enumerate(model.modalities):
        loc, scale = (s.double().cpu().numpy() for s in model.standardization.statistics(m))
        rows = raw[m]["rows"].cpu().numpy()
        dims = ("example", f"feature_{m}")
        for key in ("mean", "sd"):
            full = np.full((n, model.dims[m]), np.nan)
            value = raw[m][key].double().cpu().numpy()
            full[rows] = value * scale + (loc if key == "mean" else 0.0)
            variables[f"{m}_{key}"] = (dims, full)
        if levels:
            full = np.full((len(levels), n, model.dims[m]), np.nan)
            full[:, rows] = raw[m]["quantiles"].double().cpu().numpy() * scale + loc
            variables[f"{m}_quantiles"] = (("quantile",) + dims, full)
        variables[f"{m}_missing"] = (("example",), ~batch.masks[:, j].cpu().numpy())
    coords = {"example": np.arange(n)}
    if levels:
        coords["quantile"] = np.asarray(levels)
    return xr.Dataset(variables, coords=coords,
                      attrs={"num_samples": num_samples, "scale": "original",
                             "representation": model.representation})
