"""A fitted model as an :class:`xarray.DataTree` in ArviZ's schema.

Pyro has no SVI converter in ArviZ; :func:`to_datatree` is ours. Every draw ``s`` is
one joint draw from the variational posterior, made with Pyro's own machinery:

1. ``theta_s ~ q(theta)``: one trace of the guide's global part (AutoNormal, or
   AutoDelta, whose draws are all the same point);
2. for each chunk of examples (``pyro.plate("data", N, subsample=chunk)``): the whole
   guide replayed on ``theta_s`` (so the amortised ``z_s ~ q(z | x, theta_s)`` of latent
   models is drawn for the chunk), then the model replayed on that guide trace.

From these traces come, per draw, the posterior values (``posterior``), the pointwise
log-likelihoods (``log_likelihood``), replicated data (``posterior_predictive``) and the
two log densities of the importance ratio (``sample_stats``: ``lp = log p(theta_s,
z_s, data)`` and ``log_q = log q(theta_s, z_s)``). Local terms are evaluated *without*
the plate's ``N / B`` scale and summed over the chunks, so each draw sees the whole
data set exactly once whatever the chunk size; global terms are counted once.

What ``log_likelihood`` holds (one value per example and draw; all densities are of
the *original* features, i.e. the standardisation Jacobian
:meth:`~pyro_mm.models.MultimodalDPMixture.feature_log_jacobian` is added):

* ``representation="observed"``: variable ``"x"``, the exact ``log p(x_i | theta_s)``
  of the example's observed modalities with the component assignment summed out
  (missing modalities are marginalised). This is the textbook pointwise
  log-likelihood, and PSIS-LOO on it is an honest leave-one-out estimate.
* latent models with a classifier and labels: variable ``"y"``, ``log p(y_i | z_is,
  theta_s)`` with ``z_is ~ q(z_i | x_i)``: the label likelihood given the example's own
  representation. The representation of a left-out example is still inferred from its
  features (that is what the amortised guide does at test time), so LOO on ``"y"``
  estimates how well labels are predicted from features.
* latent models that reconstruct: one variable ``"x_<m>"`` per modality, ``log p(x_im |
  z_is)`` (the decoder likelihood at the sampled representation). It is *conditional
  on* ``z_is ~ q(z_i | x_i)``, which has seen ``x_im``: a reconstruction score, not a
  marginal ``log p(x_i)`` (for that see :func:`pyro_mm.log_likelihood`).

When a variable is not observed for every example (missing labels, a missing
modality) it is stored only for the examples where it is, along a dimension
``"<variable>_example"`` whose coordinate gives their positions in the data; otherwise
its dimension is ``"example"``.

Draws are made one at a time and, within a draw, over chunks of ``batch_size``
examples, into preallocated arrays: memory is the size of the output plus one chunk.
The replicated features of ``posterior_predictive`` are the largest output
(``num_samples x N x features``); see ``predictive_features``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import torch
from pyro import poutine

from ..data import MultimodalData, TensorBatch
from ..metrics import effective_components as _perplexity
from ..models import MixtureParams, MultimodalDPMixture

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

    from ..guides import MultimodalGuide
    from ..training import FitResult

#: Default cap on the number of replicated feature values kept in
#: ``posterior_predictive`` when ``predictive_features`` is ``None`` (about 200 MB in
#: float32).
MAX_PREDICTIVE_VALUES = 50_000_000


# ---------------------------------------------------------------------- helpers
def _model_and_guide(result) -> tuple[MultimodalDPMixture, "MultimodalGuide"]:
    if isinstance(result, tuple) and len(result) == 2:
        return result
    try:
        return result.model, result.guide
    except AttributeError:
        raise TypeError(
            f"result: expected a FitResult (or a (model, guide) pair), got "
            f"{type(result).__name__}") from None


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Seed PyTorch's generators for the block only, leaving the caller's state as it
    was (``seed=None``: draw from the current state)."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def _in_data_plate(site) -> bool:
    return any(frame.name == "data" for frame in site["cond_indep_stack"])


def _site_log_prob(site) -> torch.Tensor:
    """``log_prob`` of a trace site, masked but *not* scaled (the plate's ``N / B`` and
    KL warm-up scales are left out on purpose: chunks are summed instead)."""
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    if site["mask"] is not None:
        log_prob = torch.where(site["mask"], log_prob, log_prob.new_zeros(()))
    return log_prob


def mixture_params(model: MultimodalDPMixture, globals_: Mapping[str, torch.Tensor]
                   ) -> MixtureParams:
    """:class:`~pyro_mm.models.MixtureParams` from a dict of global site values (one
    draw of the guide, or its point estimate), with the model's scale floors and
    component kind."""
    return model.params_from_sites(globals_)


def _feature_stats(model: MultimodalDPMixture, m: str) -> tuple[torch.Tensor, torch.Tensor]:
    return getattr(model, f"feature_loc_{m}"), getattr(model, f"feature_scale_{m}")


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
class _Plan:
    """What the sampling loop computes, decided once from the model and the data."""

    latent: bool
    labelled: np.ndarray | None        # (N,) bool: examples with a label (y likelihood)
    ll_vars: dict[str, np.ndarray]     # variable -> (N,) bool where it is observed
    pp_labels: bool
    pp_features: bool
    responsibilities_shape: tuple[int, ...]


def _make_plan(model: MultimodalDPMixture, batch: TensorBatch,
               predictive_features: bool | None, num_samples: int, predictive: bool
               ) -> _Plan:
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
            import warnings

            warnings.warn(
                f"to_datatree: leaving the replicated features out of posterior_predictive "
                f"({num_samples} draws x {n} examples x {sum(model.dims.values())} features "
                f"= {num_values:.3g} values); pass predictive_features=True to keep them, "
                "or use fewer draws or examples", stacklevel=3)
    else:
        pp_features = bool(predictive_features)
    K, M = model.num_components, len(model.modalities)
    resp_shape = (n, K) if model.mixture == "joint" else (n, M, K)
    return _Plan(latent, labelled, ll_vars, predictive and model.classifier is not None,
                 pp_features, resp_shape)


# ---------------------------------------------------------------------- sampling
def _global_draws(guide: "MultimodalGuide", batch: TensorBatch, num_samples: int,
                  draw_block: int) -> Iterator[tuple[int, "poutine.Trace", float]]:
    """``(s, trace, log q(theta_s))`` for ``s < num_samples``: draws of the global guide,
    made ``draw_block`` at a time in one vectorised trace (an outer plate over draws),
    then handed out one by one as a replayable trace of that draw alone."""
    for start in range(0, num_samples, draw_block):
        size = min(draw_block, num_samples - start)
        with pyro.plate("_pyro_mm_draws", size, dim=-1):
            trace = poutine.trace(guide.global_guide).get_trace(batch, None, 1.0)
        sites = [(name, site) for name, site in trace.nodes.items()
                 if site["type"] == "sample" and not site["is_observed"]]
        log_q = sum(_site_log_prob(site).double().expand(size) for _, site in sites)
        for i in range(size):
            draw = poutine.Trace()
            for name, site in sites:
                value = site["value"]
                value = value[i] if value.dim() > 0 and value.shape[0] == size else value
                draw.add_node(name, type="sample", name=name, is_observed=False,
                              value=value, infer=site["infer"], fn=site["fn"],
                              cond_indep_stack=(), mask=None, args=(), kwargs={})
            yield start + i, draw, float(log_q[i])


@torch.no_grad()
def _sample(model: MultimodalDPMixture, guide: "MultimodalGuide", batch: TensorBatch,
            plan: _Plan, num_samples: int, batch_size: int, progress: bool,
            per_example: bool = True, draw_block: int = 256) -> dict[str, Any]:
    """The sampling loop (module docstring). Returns NumPy arrays with a leading draw
    axis."""
    S, n = num_samples, batch.size
    K = model.num_components
    mods = model.modalities
    sizes = model.site_sizes
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
    ll_index = {v: np.cumsum(mask) - 1 for v, mask in plan.ll_vars.items()}
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

    jac = {m: -_feature_stats(model, m)[1].log().sum() for m in mods}

    def store(var: str, rows: np.ndarray, value: torch.Tensor) -> None:
        keep = plan.ll_vars[var][rows]
        out["ll"][var][s, ll_index[var][rows[keep]]] = value.cpu().numpy()[keep]
    x_loc = torch.cat([_feature_stats(model, m)[0] for m in mods])
    x_scale = torch.cat([_feature_stats(model, m)[1] for m in mods])

    from tqdm.auto import tqdm

    model_was_training, guide_was_training = model.training, guide.training
    model.eval()
    guide.eval()
    try:
        bar = tqdm(total=S, desc="posterior draws", unit="draw", disable=not progress)
        for s, global_trace, log_q_global in _global_draws(guide, batch, S, draw_block):
            bar.update(1)
            out["log_q"][s] = log_q_global
            globals_ = {name: global_trace.nodes[name]["value"] for name in guide.global_sites}
            params = mixture_params(model, globals_)
            out["sticks"][s] = params.sticks.cpu().numpy()
            out["log_weights"][s] = params.log_weights.double().cpu().numpy()
            out["alpha"][s] = float(params.alpha)
            if params.df is not None:
                out["df"][s] = [float(v) for v in params.df]
            for j, m in enumerate(mods):
                out["locs"][m][s] = params.locs[j].cpu().numpy()
                out["scales"][m][s] = params.scales[j].cpu().numpy()
            first = True
            for idx in batch.chunk_indices(batch_size):
                if plan.latent:
                    guide_trace = poutine.trace(poutine.replay(guide, trace=global_trace)
                                                ).get_trace(batch, idx, 1.0)
                else:  # the guide of an observed model is its global part
                    guide_trace = global_trace
                model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)
                                            ).get_trace(batch, idx, 1.0)
                model.pop_records()
                rows = idx.cpu().numpy()
                if plan.latent:
                    for site in guide_trace.nodes.values():
                        if site["type"] == "sample" and _in_data_plate(site):
                            out["log_q"][s] += float(_site_log_prob(site).double().sum())
                for name, site in model_trace.nodes.items():
                    if site["type"] != "sample":
                        continue
                    local = _in_data_plate(site)
                    if not local and not first:
                        continue
                    log_prob = _site_log_prob(site)
                    out["lp"][s] += float(log_prob.double().sum())
                    if not local:
                        continue
                    var = name
                    if var in plan.ll_vars and var != "y":
                        value = log_prob.double()
                        if var == "x":
                            value = value + model.feature_log_jacobian(
                                batch.masks[idx]).double()
                        else:
                            value = value + jac[var[2:]].double()
                        store(var, rows, value)
                first = False
                if not (per_example or plan.pp_labels or plan.pp_features
                        or "y" in plan.ll_vars):
                    continue
                part = batch.index(idx)
                if plan.latent:
                    inputs = guide_trace.nodes["z"]["value"]
                    mixture = params.mixture(model.mixture, batch_size=part.size)
                else:
                    inputs = torch.cat([part.features[m] for m in mods], dim=-1)
                    mixture = params.mixture(model.mixture, mask=part.masks,
                                             batch_size=part.size, stacked=False)
                logits = None
                if model.classifier is not None:
                    logits = model.class_logits(inputs, params, part.masks)
                if "y" in plan.ll_vars:
                    store("y", rows, label_log_prob(logits, part.labels))
                if per_example:
                    out["responsibilities"][rows] += mixture.responsibilities(
                        inputs).double().cpu().numpy()
                    if logits is not None:
                        out["class_probs"][rows] += torch.softmax(
                            logits, -1).double().cpu().numpy()
                if plan.pp_labels:
                    out["pp_y"][s, rows] = torch.distributions.Categorical(
                        logits=logits).sample().cpu().numpy()
                if plan.pp_features:
                    if plan.latent:
                        for j, m in enumerate(mods):
                            loc, scale = model.decoders[m](inputs[..., j, :])
                            x = loc + scale * torch.randn_like(loc)
                            x_m_loc, x_m_scale = _feature_stats(model, m)
                            out["pp_x"][m][s, rows] = (x * x_m_scale + x_m_loc).cpu().numpy()
                    else:
                        free = params.mixture(model.mixture, batch_size=part.size,
                                              stacked=False)
                        x = free.sample()
                        out["pp_x"][s, rows] = (x * x_scale + x_loc).cpu().numpy()
        bar.close()
    finally:
        model.train(model_was_training)
        guide.train(guide_was_training)
    if per_example:
        out["responsibilities"] /= S
        if "class_probs" in out:
            out["class_probs"] /= S
    return out


def importance_log_ratios(result, data: MultimodalData, num_samples: int = 1000,
                          batch_size: int = 2048, seed: int | None = None,
                          progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(lp, log_q)``, each ``(num_samples,)``: ``log p(theta_s, z_s, data)`` and
    ``log q(theta_s, z_s)`` for draws from the guide (the ``sample_stats`` of
    :func:`to_datatree`, without the rest). Their difference is the per-draw ELBO
    integrand, the log importance ratio whose Pareto-k :func:`pyro_mm.diagnostics.pareto_k`
    reports."""
    model, guide = _model_and_guide(result)
    batch = model.prepare(data)
    plan = _make_plan(model, batch, False, num_samples, predictive=False)
    with _seeded(seed, batch.device):
        out = _sample(model, guide, batch, plan, num_samples, batch_size, progress,
                      per_example=False)
    return out["lp"], out["log_q"]


# ---------------------------------------------------------------------- the tree
def _dataset(variables: Mapping[str, Any], coords: Mapping[str, Any]) -> "xr.Dataset":
    """A Dataset with the coordinates of the dimensions its variables use."""
    import xarray as xr

    used = {d for dims, _ in variables.values() for d in dims}
    return xr.Dataset(dict(variables), coords={k: v for k, v in coords.items() if k in used})


def _attrs(**extra) -> dict[str, Any]:
    import pyro

    from .. import __version__

    attrs = {
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "creation_library": "pyro_mm",
        "creation_library_version": __version__,
        "inference_library": "pyro",
        "inference_library_version": pyro.__version__,
    }
    attrs.update({k: v for k, v in extra.items() if v is not None})
    return attrs


def to_datatree(
    result: "FitResult",
    data: MultimodalData,
    num_samples: int = 1000,
    batch_size: int = 2048,
    *,
    predictive_features: bool | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> "xr.DataTree":
    """Posterior draws, pointwise log-likelihoods and replicated data of a fitted model,
    as an :class:`xarray.DataTree` that ArviZ 1.x reads directly (``arviz.summary``,
    ``arviz.ess``, ``arviz.loo``, ``arviz.plot_*``).

    How the draws are made and what each log-likelihood means is in the module
    docstring (:mod:`pyro_mm.diagnostics.datatree`); in short: one chain, ``draw`` =
    independent draws from the variational posterior; ``log_likelihood`` is ``"x"``
    (observed representation: exact ``log p(x_i | theta)``, assignments summed out), or
    ``"y"`` (``log p(y_i | z_i, theta)``) and ``"x_<m>"`` (``log p(x_im | z_i)``) for
    latent models, with ``z_i ~ q(z_i | x_i)``; densities of the original features.

    Groups (dims in brackets; every group also has ``chain`` and ``draw`` first, except
    ``observed_data``, ``constant_data`` and ``per_example``):

    * ``posterior``: ``sticks`` [stick], ``weights`` [component] (stick breaking),
      ``effective_components`` (perplexity of the weights), ``alpha`` (when learned;
      otherwise in the root attrs), and the component means and scales:
      ``component_loc`` / ``component_scale`` [component, modality, latent] for latent
      models, ``component_loc_<m>`` / ``component_scale_<m>`` [component, <m>_feature]
      for ``representation="observed"`` (modalities differ in size there). These are
      the site values ``sigma``; a component's scale is ``sqrt(sigma^2 + floor^2)``
      with the model's ``scale_floors()``, stored in ``constant_data``. With learned
      Student-t components, ``component_df`` [modality].
    * ``posterior_predictive``: ``y`` [example] (a label drawn from the classifier, for
      every example) and the replicated features on the original scale: ``x``
      [example, feature] (observed) or ``x_<m>`` [example, <m>_feature] (latent,
      reconstructing; the decoder's likelihood at ``z_i ~ q(z_i | x_i)``).
    * ``log_likelihood``: see above.
    * ``observed_data``: ``y`` [example] (labels, ``-1`` = missing) and the features
      under the same names as in ``posterior_predictive`` (NaN where a modality is
      missing).
    * ``constant_data``: ``mask`` [example, modality] and the component scale floors
      (``component_scale_floor`` [modality, latent] or ``component_scale_floor_<m>``
      [<m>_feature]; standardised units).
    * ``sample_stats``: ``lp`` and ``log_q``, the two sides of the importance ratio
      (see :func:`pyro_mm.diagnostics.pareto_k`).
    * ``per_example`` (ours; ArviZ ignores it): Monte Carlo posterior means of the
      ``responsibilities`` [example, component] (``[example, modality, component]``
      for ``mixture="independent"``) and ``class_probs`` [example, class].

    Coordinates: ``component`` 0..K-1, ``stick`` 0..K-2, ``modality`` (names),
    ``latent`` 0..D-1, ``example`` 0..N-1 (positions in ``data``), ``class``
    0..C-1, ``feature`` (``"<m>[j]"``, observed representation; with the
    non-index coordinate ``feature_modality``) and ``<m>_feature`` 0..d_m-1.

    Args:
        result: a :class:`~pyro_mm.training.FitResult` (or a ``(model, guide)`` pair).
        data: the examples to evaluate (typically held out); its modalities must
            include the model's.
        num_samples: draws from the variational posterior (one chain).
        batch_size: examples per chunk (bounds memory on large data).
        predictive_features: keep replicated features in ``posterior_predictive``
            (``None``: only while there are at most ``MAX_PREDICTIVE_VALUES`` values,
            with a warning otherwise; they are the largest part of the tree).
        seed: seed for the draws (the caller's random state is left untouched);
            ``None`` draws from PyTorch's current state.
        progress: show a tqdm progress bar over the draws.

    Returns:
        :class:`xarray.DataTree`; write it with :func:`save_datatree` (netCDF or Zarr).
    """
    import xarray as xr

    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: must be a positive integer, got {num_samples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
    if not isinstance(data, MultimodalData):
        raise TypeError(f"data: expected MultimodalData, got {type(data).__name__}")
    model, guide = _model_and_guide(result)
    batch = model.prepare(data)
    plan = _make_plan(model, batch, predictive_features, num_samples, predictive=True)
    with _seeded(seed, batch.device):
        out = _sample(model, guide, batch, plan, num_samples, batch_size, progress)

    S, n = num_samples, batch.size
    K, mods = model.num_components, list(model.modalities)
    chain_draw = {"chain": [0], "draw": np.arange(S)}
    sd = ("chain", "draw")

    def draws(array):
        return np.asarray(array)[None]

    coords = {**chain_draw, "component": np.arange(K), "stick": np.arange(K - 1),
              "modality": np.array(mods), "example": np.arange(n)}
    if plan.latent:
        coords["latent"] = np.arange(model.latent_dim)
    if model.num_classes is not None:
        coords["class"] = np.arange(model.num_classes)
    feature_names = np.array([f"{m}[{j}]" for m in mods for j in range(model.dims[m])])
    feature_modality = np.array([m for m in mods for _ in range(model.dims[m])])

    # -- posterior
    weights = np.exp(out["log_weights"])
    post = {
        "sticks": (sd + ("stick",), draws(out["sticks"])),
        "weights": (sd + ("component",), draws(weights.astype(np.float32))),
        "effective_components": (sd, draws(_perplexity(torch.as_tensor(weights)).numpy())),
    }
    if model.learn_alpha:
        post["alpha"] = (sd, draws(out["alpha"]))
    if model.learn_df:
        post["component_df"] = (sd + ("modality",), draws(out["df"]))
    if plan.latent:
        for what in ("loc", "scale"):
            stacked = np.stack([out[what + "s"][m] for m in mods], axis=2)  # S K M D
            post[f"component_{what}"] = (sd + ("component", "modality", "latent"),
                                         draws(stacked))
    else:
        for m in mods:
            for what in ("loc", "scale"):
                post[f"component_{what}_{m}"] = (sd + ("component", f"{m}_feature"),
                                                 draws(out[what + "s"][m]))
                coords[f"{m}_feature"] = np.arange(model.dims[m])
    posterior = _dataset(post, coords)
    posterior.attrs = _attrs()

    # -- observed data (original scale, NaN where missing)
    raw = data.features
    raw_masks = data.masks
    observed: dict[str, Any] = {}
    feature_coords: dict[str, Any] = {}
    if not plan.latent:
        x = np.concatenate([np.where(raw_masks[m][:, None], raw[m], np.nan) for m in mods],
                           axis=1).astype(np.float32)
        observed["x"] = (("example", "feature"), x)
        feature_coords = {"feature": feature_names,
                          "feature_modality": ("feature", feature_modality)}
    elif model.reconstruct:
        for m in mods:
            observed[f"x_{m}"] = (("example", f"{m}_feature"),
                                  np.where(raw_masks[m][:, None], raw[m], np.nan)
                                  .astype(np.float32))
            feature_coords[f"{m}_feature"] = np.arange(model.dims[m])
    if data.labels is not None:
        observed["y"] = (("example",), data.labels.astype(np.int64))
    observed_data = xr.Dataset(observed, coords={"example": coords["example"],
                                                 **feature_coords})
    observed_data.attrs = _attrs(description=(
        "features on their original scale (NaN where the modality is missing) and labels "
        "(-1 = missing)"))

    # -- posterior predictive
    pp: dict[str, Any] = {}
    if plan.pp_labels:
        pp["y"] = (sd + ("example",), draws(out["pp_y"]))
    if plan.pp_features:
        if plan.latent:
            for m in mods:
                pp[f"x_{m}"] = (sd + ("example", f"{m}_feature"), draws(out["pp_x"][m]))
        else:
            pp["x"] = (sd + ("example", "feature"), draws(out["pp_x"]))
    posterior_predictive = xr.Dataset(pp, coords={**chain_draw, "example": coords["example"],
                                                  **(feature_coords if plan.pp_features
                                                     else {})})
    posterior_predictive.attrs = _attrs()

    # -- log likelihood
    ll: dict[str, Any] = {}
    ll_coords: dict[str, Any] = dict(chain_draw)
    for var, mask in plan.ll_vars.items():
        if mask.all():
            dim = "example"
            ll_coords["example"] = coords["example"]
        else:
            dim = f"{var}_example"
            ll_coords[dim] = np.flatnonzero(mask)
        ll[var] = (sd + (dim,), draws(out["ll"][var]))
    descriptions = {
        "x": "log p(x_i | theta): exact, component assignment summed out, original scale",
        "y": "log p(y_i | z_i, theta) with z_i ~ q(z_i | x_i)",
    }
    log_likelihood = xr.Dataset(ll, coords=ll_coords)
    for var in log_likelihood.data_vars:
        log_likelihood[var].attrs["description"] = descriptions.get(
            var, f"log p({var}_i | z_i) with z_i ~ q(z_i | x_i), original scale")
    log_likelihood.attrs = _attrs()

    # -- sample stats: the importance ratio
    sample_stats = xr.Dataset(
        {"lp": (sd, draws(out["lp"])), "log_q": (sd, draws(out["log_q"]))},
        coords=chain_draw)
    sample_stats["lp"].attrs["description"] = (
        "log p(theta, z, data): the model's joint log density at the draw, whole data "
        "set (standardised features; auxiliary factors included)")
    sample_stats["log_q"].attrs["description"] = "log q(theta, z): the guide's log density"
    sample_stats.attrs = _attrs()

    const = {"mask": (("example", "modality"), np.stack([raw_masks[m] for m in mods], axis=1))}
    floors = [f.cpu().numpy() for f in model.scale_floors()]
    if plan.latent:
        const["component_scale_floor"] = (("modality", "latent"), np.stack(floors))
    else:
        const.update({f"component_scale_floor_{m}": ((f"{m}_feature",), f)
                      for m, f in zip(mods, floors)})
    constant_data = _dataset(const, coords)
    constant_data.attrs = _attrs()

    per: dict[str, Any] = {}
    resp_dims = (("example", "component") if model.mixture == "joint"
                 else ("example", "modality", "component"))
    per["responsibilities"] = (resp_dims, out["responsibilities"].astype(np.float32))
    per_coords = {"example": coords["example"], "component": coords["component"]}
    if model.mixture != "joint":
        per_coords["modality"] = coords["modality"]
    if "class_probs" in out:
        per["class_probs"] = (("example", "class"), out["class_probs"].astype(np.float32))
        per_coords["class"] = coords["class"]
    per_example = xr.Dataset(per, coords=per_coords)
    per_example.attrs = _attrs(description=(
        f"Monte Carlo posterior means over {S} draws (responsibilities p(c_i = k | z_i "
        "or x_i, theta); class probabilities)"))

    groups = {"posterior": posterior, "posterior_predictive": posterior_predictive,
              "log_likelihood": log_likelihood, "sample_stats": sample_stats,
              "observed_data": observed_data, "constant_data": constant_data,
              "per_example": per_example}
    groups = {k: v for k, v in groups.items() if len(v.data_vars)}
    tree = xr.DataTree.from_dict(groups)
    tree.attrs = _attrs(
        representation=model.representation, mixture=model.mixture,
        num_components=K, num_examples=n, num_samples=S,
        alpha=None if model.learn_alpha else float(model.alpha),
        global_guide=getattr(guide, "global_guide_name", None),
        log_likelihood=(
            "per example and draw; see pyro_mm.diagnostics.datatree: 'x' exact "
            "log p(x_i | theta) (observed), 'y' log p(y_i | z_i, theta) and 'x_<m>' "
            "log p(x_im | z_i) with z_i ~ q(z_i | x_i) (latent); original feature scale"),
    )
    return tree


# ---------------------------------------------------------------------- storage
def _engine(path: Path, engine: str | None) -> str:
    if engine is not None:
        return engine
    return "zarr" if path.suffix == ".zarr" else "h5netcdf"


def save_datatree(tree: "xr.DataTree", path: str | Path, engine: str | None = None) -> Path:
    """Write ``tree`` to netCDF (``engine="h5netcdf"``, the default) or Zarr (a path
    ending in ``.zarr``, or ``engine="zarr"``; needs the ``zarr`` package)."""
    path = Path(path)
    engine = _engine(path, engine)
    path.parent.mkdir(parents=True, exist_ok=True)
    if engine == "zarr":
        tree.to_zarr(path, mode="w")
    else:
        tree.to_netcdf(path, engine=engine, mode="w")
    return path


def load_datatree(path: str | Path, engine: str | None = None) -> "xr.DataTree":
    """Read a tree written by :func:`save_datatree` fully into memory (the file is
    closed afterwards)."""
    import xarray as xr

    path = Path(path)
    engine = _engine(path, engine)
    with xr.open_datatree(path, engine=engine) as tree:
        return tree.load().copy()


__all__ = ["MAX_PREDICTIVE_VALUES", "importance_log_ratios", "load_datatree",
           "mixture_params", "save_datatree", "to_datatree"]
