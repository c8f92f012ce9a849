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
:meth:`~pyro_mm.model.dp_mixture.MultimodalDPMixture.feature_log_jacobian` is added):

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

Draws are evaluated a block at a time (as many as
:func:`~pyro_mm.model.posterior.draws_per_pass` allows on a chunk, the block's global
values and ``z`` carrying a leading draw dimension, so each network and density runs once
per block rather than once per draw; one draw at a time for a model with auxiliary
factors) and, within a block, over chunks of ``batch_size`` examples, into preallocated
arrays: memory is the size of the output plus one chunk of a block.
The replicated features of ``posterior_predictive`` are the largest output
(``num_samples x N x features``); see ``predictive_features``.

Drawing is in :mod:`pyro_mm.diagnostics.sampling`, writing and reading the tree in
:mod:`pyro_mm.diagnostics.storage`; this module assembles the groups.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import torch

from .._version import __version__
from ..data.container import MultimodalData
from ..model.dp_mixture import MultimodalDPMixture
# The drawing and the storage live in their own modules; their public names (and the
# helpers other diagnostics use) stay importable from here.
from ..model.posterior import as_posterior, seeded
from ..predictive.metrics import weights_perplexity
from .sampling import Plan, make_plan, sample_draws
from .storage import load_datatree, save_datatree

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

    from ..runs.result import FitResult


def _dataset(variables: Mapping[str, Any], coords: Mapping[str, Any]) -> "xr.Dataset":
    """A Dataset with the coordinates of the dimensions its variables use."""
    # xarray is imported when used, so that importing pyro_mm does not pay for it.
    import xarray as xr

    used = {d for dims, _ in variables.values() for d in dims}
    return xr.Dataset(dict(variables), coords={k: v for k, v in coords.items() if k in used})


def _attrs(**extra) -> dict[str, Any]:
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
    result: "FitResult | Any",
    data: MultimodalData,
    num_samples: int | None = None,
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
    docstring (:mod:`pyro_mm.diagnostics.datatree`); in short: for a guide one chain,
    ``draw`` = independent draws from the variational posterior; for posterior samples
    (MCMC) their chains and draws as they are, so ``arviz.rhat`` and ``arviz.ess``
    apply; ``log_likelihood`` is ``"x"``
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
      Student-t components, ``component_df`` [modality]; with factor components,
      ``component_loadings_<m>`` [component, <m>_feature, factor] (the model is
      unchanged by a rotation of a component's factors, so two fits, or two chains,
      may hold rotated loadings: compare ``W W^T``, not the entries).
    * ``posterior_predictive``: ``y`` [example] (a label drawn from the classifier, for
      every example) and the replicated features on the original scale: ``x``
      [example, feature] (observed) or ``x_<m>`` [example, <m>_feature] (latent,
      reconstructing; the decoder's likelihood at ``z_i ~ q(z_i | x_i)``).
    * ``log_likelihood``: see above.
    * ``observed_data``: ``y`` [example] (labels, ``-1`` = missing) and the features
      under the same names as in ``posterior_predictive`` (NaN where a modality is
      missing). For data on disk (:meth:`MultimodalData.open_zarr`) only ``y``: the
      features stay in the store (its path is in the group's description), and every
      draw reads the store a chunk at a time.
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
        result: a posterior: a :class:`~pyro_mm.runs.result.FitResult`, ``(model,
            guide[, local])`` with the library's or any Pyro guide, ``(model,
            samples[, local])`` or a ``pyro.infer.MCMC`` (see
            :func:`~pyro_mm.model.posterior.as_posterior`).
        data: the examples to evaluate (typically held out); its modalities must
            include the model's.
        num_samples: draws from a guide (one chain; ``None``: 1000); for samples of
            ``C`` chains, ``None`` (all of them) or a multiple of ``C`` (evenly spaced
            draws of each chain). Samples have no ``log_q`` in ``sample_stats``.
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
    # xarray is imported when used, so that importing pyro_mm does not pay for it.
    import xarray as xr

    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        raise ValueError(f"num_samples: must be a positive integer or None, got "
                         f"{num_samples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
    if not isinstance(data, MultimodalData):
        raise TypeError(f"data: expected MultimodalData, got {type(data).__name__}")
    posterior = as_posterior(result)
    model = posterior.model
    batch = model.prepare(data)
    num_samples = posterior.num_draws(num_samples)
    plan = make_plan(model, batch, predictive_features, num_samples, predictive=True)
    with seeded(seed, batch.device):
        out = sample_draws(posterior, batch, plan, num_samples, batch_size, progress)
    if not posterior.has_log_q:
        del out["log_q"]

    coords = _coords(model, plan, num_samples, batch.size, posterior.num_chains)
    observed_data, feature_coords = _observed_data(model, plan, data, coords)
    groups = {"posterior": _posterior(model, plan, out, coords),
              "posterior_predictive": _posterior_predictive(model, plan, out, coords,
                                                            feature_coords),
              "log_likelihood": _log_likelihood(plan, out, coords),
              "sample_stats": _sample_stats(out, coords),
              "observed_data": observed_data,
              "constant_data": _constant_data(model, data, coords),
              "per_example": _per_example(model, out, coords, num_samples)}
    groups = {k: v for k, v in groups.items() if len(v.data_vars)}
    tree = xr.DataTree.from_dict(groups)
    tree.attrs = _attrs(
        representation=model.representation, mixture=model.mixture,
        num_components=model.num_components, num_examples=batch.size,
        num_samples=num_samples, alpha=None if model.learn_alpha else float(model.alpha),
        posterior=posterior.kind, num_chains=posterior.num_chains,
        global_guide=getattr(getattr(posterior, "guide", None), "global_guide_name", None),
        log_likelihood=(
            "per example and draw; see pyro_mm.diagnostics.datatree: 'x' exact "
            "log p(x_i | theta) (observed), 'y' log p(y_i | z_i, theta) and 'x_<m>' "
            "log p(x_im | z_i) with z_i ~ q(z_i | x_i) (latent); original feature scale"),
    )
    return tree


# ---------------------------------------------------------------------- the groups
#: The leading dimensions of every drawn variable.
_SD = ("chain", "draw")


def _draws(array, coords: Mapping[str, Any]) -> np.ndarray:
    """``(S, ...)`` draws, chain by chain, as ``(chain, draw, ...)``."""
    array = np.asarray(array)
    return array.reshape((len(coords["chain"]), len(coords["draw"])) + array.shape[1:])


def _chain_draw(coords: Mapping[str, Any]) -> dict[str, Any]:
    return {"chain": coords["chain"], "draw": coords["draw"]}


def _coords(model: MultimodalDPMixture, plan: Plan, S: int, n: int, chains: int = 1
            ) -> dict[str, Any]:
    """The coordinates shared by the groups (module docstring of :func:`to_datatree`);
    ``S`` draws in all, ``S / chains`` per chain."""
    K, mods = model.num_components, list(model.modalities)
    coords = {"chain": np.arange(chains), "draw": np.arange(S // chains), "component": np.arange(K),
              "stick": np.arange(K - 1), "modality": np.array(mods), "example": np.arange(n)}
    if plan.latent:
        coords["latent"] = np.arange(model.latent_dim)
    if model.num_classes is not None:
        coords["class"] = np.arange(model.num_classes)
    return coords


def _posterior(model: MultimodalDPMixture, plan: Plan, out: Mapping[str, Any],
               coords: Mapping[str, Any]) -> "xr.Dataset":
    mods = list(model.modalities)
    coords = dict(coords)
    weights = np.exp(out["log_weights"])
    post = {
        "sticks": (_SD + ("stick",), _draws(out["sticks"], coords)),
        "weights": (_SD + ("component",), _draws(weights.astype(np.float32), coords)),
        "effective_components": (_SD, _draws(
            weights_perplexity(torch.as_tensor(weights)).numpy(), coords)),
    }
    if model.learn_alpha:
        post["alpha"] = (_SD, _draws(out["alpha"], coords))
    if model.learn_df:
        post["component_df"] = (_SD + ("modality",), _draws(out["df"], coords))
    if plan.latent:
        for what in ("loc", "scale"):
            stacked = np.stack([out[what + "s"][m] for m in mods], axis=2)  # S K M D
            post[f"component_{what}"] = (_SD + ("component", "modality", "latent"),
                                         _draws(stacked, coords))
    else:
        for m in mods:
            for what in ("loc", "scale"):
                post[f"component_{what}_{m}"] = (_SD + ("component", f"{m}_feature"),
                                                 _draws(out[what + "s"][m], coords))
                coords[f"{m}_feature"] = np.arange(model.dims[m])
            if m in out["loadings"]:
                post[f"component_loadings_{m}"] = (
                    _SD + ("component", f"{m}_feature", "factor"),
                    _draws(out["loadings"][m], coords))
    posterior = _dataset(post, coords)
    posterior.attrs = _attrs()
    return posterior


def _observed_data(model: MultimodalDPMixture, plan: Plan, data: MultimodalData,
                   coords: Mapping[str, Any]) -> tuple["xr.Dataset", dict[str, Any]]:
    """Features on the original scale (NaN where missing) and labels; with the feature
    coordinates that ``posterior_predictive`` shares."""
    import xarray as xr

    mods = list(model.modalities)
    observed: dict[str, Any] = {}
    feature_coords: dict[str, Any] = {}
    if data.on_disk:
        # Copying the store into the tree would read it whole: the features stay there.
        raw_masks, plan_features = data.masks, False
    else:
        raw, raw_masks, plan_features = data.features, data.masks, True
    if plan_features and not plan.latent:
        x = np.concatenate([np.where(raw_masks[m][:, None], raw[m], np.nan) for m in mods],
                           axis=1).astype(np.float32)
        observed["x"] = (("example", "feature"), x)
        feature_coords = {
            "feature": np.array([f"{m}[{j}]" for m in mods for j in range(model.dims[m])]),
            "feature_modality": ("feature", np.array([m for m in mods
                                                      for _ in range(model.dims[m])]))}
    elif plan_features and model.reconstruct:
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
        "(-1 = missing)" if plan_features else
        f"labels (-1 = missing); the features stay in the Zarr store {data.store_path}"))
    return observed_data, feature_coords


def _posterior_predictive(model: MultimodalDPMixture, plan: Plan, out: Mapping[str, Any],
                          coords: Mapping[str, Any], feature_coords: Mapping[str, Any]
                          ) -> "xr.Dataset":
    import xarray as xr

    pp: dict[str, Any] = {}
    if plan.pp_labels:
        pp["y"] = (_SD + ("example",), _draws(out["pp_y"], coords))
    if plan.pp_features:
        if plan.latent:
            for m in model.modalities:
                pp[f"x_{m}"] = (_SD + ("example", f"{m}_feature"),
                                _draws(out["pp_x"][m], coords))
        else:
            pp["x"] = (_SD + ("example", "feature"), _draws(out["pp_x"], coords))
    predictive = xr.Dataset(pp, coords={**_chain_draw(coords), "example": coords["example"],
                                        **(feature_coords if plan.pp_features else {})})
    predictive.attrs = _attrs()
    return predictive


def _log_likelihood(plan: Plan, out: Mapping[str, Any], coords: Mapping[str, Any]
                    ) -> "xr.Dataset":
    """One variable per likelihood term; a term observed for only some examples gets a
    dimension ``<variable>_example`` with their positions."""
    import xarray as xr

    ll: dict[str, Any] = {}
    ll_coords: dict[str, Any] = _chain_draw(coords)
    for var, mask in plan.ll_vars.items():
        if mask.all():
            dim = "example"
            ll_coords["example"] = coords["example"]
        else:
            dim = f"{var}_example"
            ll_coords[dim] = np.flatnonzero(mask)
        ll[var] = (_SD + (dim,), _draws(out["ll"][var], coords))
    descriptions = {
        "x": "log p(x_i | theta): exact, component assignment summed out, original scale",
        "y": "log p(y_i | z_i, theta) with z_i ~ q(z_i | x_i)",
    }
    log_likelihood = xr.Dataset(ll, coords=ll_coords)
    for var in log_likelihood.data_vars:
        log_likelihood[var].attrs["description"] = descriptions.get(
            var, f"log p({var}_i | z_i) with z_i ~ q(z_i | x_i), original scale")
    log_likelihood.attrs = _attrs()
    return log_likelihood


def _sample_stats(out: Mapping[str, Any], coords: Mapping[str, Any]) -> "xr.Dataset":
    """The two sides of the importance ratio."""
    import xarray as xr

    stats = {"lp": (_SD, _draws(out["lp"], coords))}
    if "log_q" in out:  # posterior samples have no density q
        stats["log_q"] = (_SD, _draws(out["log_q"], coords))
    sample_stats = xr.Dataset(stats, coords=_chain_draw(coords))
    sample_stats["lp"].attrs["description"] = (
        "log p(theta, z, data): the model's joint log density at the draw, whole data "
        "set (standardised features; auxiliary factors included)")
    if "log_q" in out:
        sample_stats["log_q"].attrs["description"] = ("log q(theta, z): the guide's log "
                                                      "density")
    sample_stats.attrs = _attrs()
    return sample_stats


def _constant_data(model: MultimodalDPMixture, data: MultimodalData,
                   coords: Mapping[str, Any]) -> "xr.Dataset":
    masks = np.stack([data.masks[m] for m in model.modalities], axis=1)
    const = {"mask": (("example", "modality"), masks)}
    floors = [f.cpu().numpy() for f in model.scale_floors()]
    if model.representation == "latent":
        const["component_scale_floor"] = (("modality", "latent"), np.stack(floors))
    else:
        const.update({f"component_scale_floor_{m}": ((f"{m}_feature",), f)
                      for m, f in zip(model.modalities, floors)})
    constant_data = _dataset(const, coords)
    constant_data.attrs = _attrs()
    return constant_data


def _per_example(model: MultimodalDPMixture, out: Mapping[str, Any],
                 coords: Mapping[str, Any], S: int) -> "xr.Dataset":
    """Monte Carlo posterior means per example (ours; ArviZ ignores the group)."""
    import xarray as xr

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
    return per_example


__all__ = ["load_datatree", "save_datatree", "to_datatree"]
