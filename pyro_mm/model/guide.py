"""The variational guide: amortised local posteriors and a mean-field global posterior.

* Local (``representation="latent"``): ``q(z_im | x_im) = Normal(loc_m(x_im),
  scale_m(x_im))`` from one encoder per modality. Encoders are ordinary
  :class:`torch.nn.Module` s; pass your own (a ResNet, a text model) as a backbone.
* Missing modality ``m`` of example ``i``: its encoder never sees the (meaningless)
  input. ``q(z_im)`` is instead the mixture's prediction from the modalities that are
  present: responsibilities ``r_ik`` from the present representations (``joint``; the
  weights ``pi`` for ``independent``), then the moments of ``sum_k r_ik N(mu_mk,
  sigma_mk^2)`` (the model's components: floored scales, Student-t if chosen), matched by
  a Gaussian.
* Global: Pyro's :class:`~pyro.infer.autoguide.AutoNormal` (mean-field) or
  :class:`~pyro.infer.autoguide.AutoDelta` (MAP) over the global sites only (the model
  is wrapped in ``poutine.block``).

Initialisation (:meth:`MultimodalGuide.initialize`) is data-dependent, as mixture
fitting needs: component means start at k-means++ seeds of the representations the
mixture sees at the start (the features, or the untrained encoders' means), component
scales at the pooled within-cluster spread, and sticks at 0.5, so the weights start
geometric (1/2, 1/4, ...) and later, redundant seeds start light: the
richer-gets-richer dynamics then empties them instead of splitting clusters. The scale
sites start at ``sqrt(spread^2 - floor^2)`` so the *effective* scales start at the
spread. Where the model is conjugate (observed features, Gaussian components, one joint
assignment, the inverse-gamma variance prior, ``alpha`` fixed), or is that model with
factor components (:func:`~pyro_mm.model.conjugate.closed_form_start`), the start goes
on from those seeds to the closed-form variational posterior of the diagonal Gaussian
mixture by coordinate ascent, and the global sites start at its moments (their scales
too, for the mean-field guide). Factor components' loadings then start along each
component's principal directions (:meth:`MultimodalGuide._start_loadings`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.infer.autoguide.initialization import init_to_median, init_to_sample
from torch import nn

from ..data.batch import TensorBatch
from ._pyro_module import UniquelyNamedModule
from .conjugate import (ConjugatePrior, closed_form_start, fit_conjugate_mixture,
                        unconstrained_moments)
from .dp_mixture import MultimodalDPMixture
from .factor_analysis import initial_loadings
from .networks import GaussianEncoder, default_encoder
from .sites import draw_values


def kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices ``(k,)`` of k-means++ seeds among ``points (N, d)`` (seeds repeat if
    ``N < k``)."""
    n = points.shape[0]
    first = torch.randint(n, (1,), generator=generator, device=points.device)
    chosen = [int(first)]
    dist2 = (points - points[first]).pow(2).sum(-1)
    for _ in range(1, k):
        total = dist2.sum()
        if not total > 0:
            nxt = torch.randint(n, (1,), generator=generator, device=points.device)
        else:
            nxt = torch.multinomial(dist2 / total, 1, generator=generator)
        chosen.append(int(nxt))
        dist2 = torch.minimum(dist2, (points - points[nxt]).pow(2).sum(-1))
    return torch.tensor(chosen, device=points.device)


def _nearest_seeds(x: torch.Tensor, seen: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` one-hot nearest of ``seeds (K, D)`` to each row of ``x (N, D)``, by the
    squared distance over its ``seen`` cells only (``O(N K)`` memory)."""
    x = torch.where(seen > 0, x, torch.zeros_like(x))
    distance = seen @ seeds.pow(2).T - 2 * x @ seeds.T
    return torch.nn.functional.one_hot(distance.argmin(-1), seeds.shape[0])


def _constrained(site: str, loc: torch.Tensor) -> torch.Tensor:
    """The constrained value at an unconstrained ``loc`` of a global site (sticks:
    sigmoid; scales: exp)."""
    if site == "sticks":
        return torch.sigmoid(loc)
    return loc.exp() if site.startswith("component_scale") else loc


class MultimodalGuide(UniquelyNamedModule):
    """Guide for :class:`~pyro_mm.model.dp_mixture.MultimodalDPMixture`.

    Args:
        model: the model this guide approximates the posterior of.
        encoders: ``modality -> nn.Module``; each maps ``(B, d_m)`` to ``(B, H)``
            features (a Gaussian head to ``(loc, scale)`` of size ``D`` is added), or is
            a :class:`~pyro_mm.model.networks.GaussianEncoder`. Missing modalities get the
            default MLP encoder.
        global_guide: ``"meanfield"`` (AutoNormal) or ``"map"`` (AutoDelta).
        init_scale: initial posterior scale of the global sites (meanfield).
        hidden: hidden sizes of the default encoders (default: the model's).
        init: ``"auto"``: where the model is conjugate
            (:func:`~pyro_mm.model.conjugate.closed_form_start`), :meth:`initialize`
            starts the global sites at the closed-form variational posterior (locs and,
            for meanfield, scales); elsewhere, and with ``"kmeans"``, at the k-means++
            start of the module docstring.
    """

    def __init__(
        self,
        model: MultimodalDPMixture,
        encoders: Mapping[str, nn.Module] | None = None,
        global_guide: str = "meanfield",
        init_scale: float = 0.05,
        hidden=None,
        init: str = "auto",
    ):
        super().__init__("pyro_mm_guide")
        if global_guide not in ("meanfield", "map"):
            raise ValueError(f"global_guide: expected 'meanfield' or 'map', got {global_guide!r}")
        if init not in ("auto", "kmeans"):
            raise ValueError(f"init: expected 'auto' or 'kmeans', got {init!r}")
        self.init = init
        #: What the closed-form start did (``iterations``, and ``elbo_per_example``:
        #: its final ELBO per example, nats, of the standardised features) when
        #: :meth:`initialize` ran it; else ``None``.
        self.closed_form: dict[str, float] | None = None
        encoders = dict(encoders or {})
        unknown = set(encoders) - set(model.modalities)
        if unknown:
            raise ValueError(f"encoders: modalities {sorted(unknown)} are not in the model")
        if encoders and model.representation == "observed":
            raise ValueError("encoders: representation='observed' has no encoders")
        self.modalities = model.modalities
        self.mixture = model.mixture
        self.latent = model.representation == "latent"
        self.learn_alpha = model.learn_alpha
        self.global_guide_name = global_guide
        self.custom_encoders = sorted(encoders)
        hidden = tuple(model.hidden if hidden is None else hidden)
        self._config = {"global_guide": global_guide, "init_scale": float(init_scale),
                        "hidden": list(hidden), "custom_encoders": self.custom_encoders,
                        "init": init}
        self._init_values: dict[str, torch.Tensor] = {}
        global_names = {"sticks"} | {f"component_{p}_{m}" for m in model.modalities
                                     for p in ("loc", "scale")}
        if model.learn_alpha:
            global_names.add("alpha")
        if model.learn_df:
            global_names |= {f"component_df_{m}" for m in model.modalities}
        if model.component == "factor":
            global_names |= {f"component_loadings_{m}" for m in model.modalities}
        # encode() builds the model's components (floors, kind, df) through
        # model.params_from_sites. Held in a tuple, as Pyro's autoguides hold theirs, so
        # it is not registered: its parameters and buffers stay out of the guide's state.
        self._model = (model,)
        self.global_sites = tuple(sorted(global_names))
        blocked = poutine.block(model, expose=list(global_names))
        if global_guide == "meanfield":
            self.global_guide = AutoNormal(blocked, init_loc_fn=self._init_loc,
                                           init_scale=init_scale)
        else:
            self.global_guide = AutoDelta(blocked, init_loc_fn=self._init_loc)
        self.encoders = nn.ModuleDict()
        if self.latent:
            for m, d in model.dims.items():
                enc = encoders.get(m)
                if enc is None:
                    enc = default_encoder(d, model.latent_dim, hidden)
                elif not isinstance(enc, GaussianEncoder):
                    enc = GaussianEncoder(enc, model.latent_dim)
                self.encoders[m] = enc
        self.register_buffer("initialized", torch.tensor(False))
        self._follow_dtype(model, encoders)
        self._encoders_ready = False

    def _follow_dtype(self, model: MultimodalDPMixture, custom: Mapping[str, nn.Module]
                      ) -> None:
        """Build the guide in the model's dtype (``model.double()`` gives a float64
        guide). A custom encoder is the caller's module: it is not converted behind
        their back, and one of another dtype is refused here rather than failing
        inside the first matrix product."""
        dtype = model.alpha.dtype
        for m, enc in custom.items():
            wrong = {p.dtype for p in enc.parameters()
                     if p.is_floating_point() and p.dtype != dtype}
            if wrong:
                raise TypeError(
                    f"encoders[{m!r}]: has {sorted(map(str, wrong))} parameters but the "
                    f"model is {dtype}; convert it (encoder.to({dtype})) or the model")
        self.to(dtype=dtype)

    def config(self) -> dict:
        return dict(self._config)

    # ------------------------------------------------------------------ initialisation
    def _init_loc(self, site):
        value = self._init_values.get(site["name"])
        if value is not None:
            return torch.as_tensor(value).to(site["fn"].sample())  # its device and dtype
        if site["name"].startswith("component_loc_"):
            return init_to_sample(site)
        return init_to_median(site)

    @torch.no_grad()
    def initialize(self, model: MultimodalDPMixture, batch: TensorBatch,
                   generator: torch.Generator | None = None, max_points: int = 20000
                   ) -> None:
        """Data-dependent initial values (see the module docstring), then one pass of
        the global guide so every parameter exists before an optimiser is created.

        Call once before the guide is first run (:func:`pyro_mm.fit` does).

        Args:
            model: the model this guide belongs to.
            batch: prepared training data (:meth:`MultimodalDPMixture.prepare`).
            generator: randomness of the k-means++ seeding (default: seeded from
                PyTorch's global generator).
            max_points: seed from at most this many random examples.
        """
        if generator is None:
            generator = torch.Generator(device=batch.device).manual_seed(
                int(torch.randint(2**62, ())))
        n, everything = batch.size, batch
        if n > max_points:
            idx = torch.randperm(n, generator=generator, device=batch.device)[:max_points]
            batch = batch.index(idx)
        # A missing cell stands at its modality's mean of the present ones, so what it
        # holds never steers the seeds; spreads are measured on present cells only.
        present = batch.masks.T
        reps = [torch.where(seen[:, None], rep, rep[seen].mean(0)) if bool(seen.any())
                else rep for rep, seen in zip(self.representations(batch), present)]
        seeds = kmeans_plus_plus(torch.cat(reps, dim=-1), model.num_components, generator)
        nearest = torch.cdist(torch.cat(reps, -1), torch.cat(reps, -1)[seeds]).argmin(-1)
        values = {"sticks": torch.full((model.num_components - 1,), 0.5, device=batch.device)}
        for m, rep, seen, floor in zip(self.modalities, reps, present, model.scale_floors()):
            seen = seen if bool(seen.any()) else torch.ones_like(seen)
            spread = (rep - rep[seeds][nearest])[seen].pow(2).mean(0).div(2).sqrt()
            spread = spread.clamp_min(1e-2 * rep.std(0).clamp_min(1e-3))
            # sigma such that sqrt(sigma^2 + floor^2) = spread (the effective scale).
            sigma = (spread.pow(2) - floor.pow(2)).clamp_min(1e-4 * spread.pow(2)).sqrt()
            values[f"component_loc_{m}"] = rep[seeds].clone()
            values[f"component_scale_{m}"] = sigma.expand(model.num_components, -1).clone()
        if self.learn_alpha:
            values["alpha"] = model.alpha_prior[0] / model.alpha_prior[1]
        moments, rows = None, batch
        resp = torch.nn.functional.one_hot(nearest, model.num_components)
        if closed_form_start(model) and self.init == "auto":
            # In memory the closed form sees every row; on disk, the seeds' sample.
            rows = everything if type(everything) is TensorBatch else batch
            moments, resp = self._closed_form(model, rows, torch.cat(reps, -1)[seeds], n)
            values.update({name: _constrained(name, loc) for name, (loc, _) in moments.items()})
        if model.component == "factor":
            values.update(self._start_loadings(model, rows, resp, values))
        self._init_values = values
        self.materialize(batch)
        self._init_values = {}
        if moments is not None and isinstance(self.global_guide, AutoNormal):
            self._set_scales({name: scale for name, (_, scale) in moments.items()})
        self.initialized.fill_(True)

    def _closed_form(self, model: MultimodalDPMixture, batch: TensorBatch,
                     seeds: torch.Tensor, num_examples: int
                     ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """The conjugate model's closed-form posterior (:mod:`pyro_mm.model.conjugate`)
        from the rows of ``batch`` (of ``num_examples`` in all) assigned to their nearest
        ``seeds (K, D)``, as ``site -> (loc, scale)`` in the unconstrained space, and
        its responsibilities ``(B, K)``. The recording-resolution floor ``f`` is not
        conjugate: the scale sites start at ``sigma^2 - f^2`` so the effective variance
        is the fitted one."""
        x, seen = self._cells(model, batch)
        resp = _nearest_seeds(x, seen, seeds).to(x.dtype)
        nu0, spread = (float(v) for v in model.variance_prior)
        prior = ConjugatePrior(alpha=float(model.alpha), loc_scale=float(model.prior_loc_scale),
                               a0=0.5 * nu0, b0=0.5 * nu0 * spread)
        q = fit_conjugate_mixture(x, seen, resp, prior, weight=num_examples / batch.size)
        self.closed_form = {"iterations": len(q.elbo),
                            "elbo_per_example": q.elbo[-1] / num_examples}
        moments = unconstrained_moments(q)
        floor = torch.cat(model.scale_floors())
        loc, scale = moments.pop("component_scale")
        loc = loc + 0.5 * torch.log((1 - floor.pow(2) * torch.exp(-2 * loc)).clamp_min(1e-4))
        sizes = [model.dims[m] for m in self.modalities]
        out = {"sticks": moments["sticks"]}
        for what, (mean, sd) in (("loc", moments["component_loc"]), ("scale", (loc, scale))):
            for m, a, b in zip(self.modalities, mean.split(sizes, -1), sd.split(sizes, -1)):
                out[f"component_{what}_{m}"] = (a, b)
        return out, q.resp

    def _start_loadings(self, model: MultimodalDPMixture, batch: TensorBatch,
                        resp: torch.Tensor, values: Mapping[str, torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
        """Factor components' start from the diagonal start in ``values`` and its
        responsibilities ``resp (B, K)`` of the rows of ``batch``: loadings along each
        component's principal directions, and scale sites lowered by what they explain
        (:func:`~pyro_mm.model.factor_analysis.initial_loadings`)."""
        x, seen = self._cells(model, batch)
        floor = torch.cat(model.scale_floors()).pow(2)
        locs = torch.cat([values[f"component_loc_{m}"] for m in self.modalities], -1)
        sigma = torch.cat([values[f"component_scale_{m}"] for m in self.modalities], -1)
        loadings, noise = initial_loadings(x, seen, resp.to(x.dtype), locs,
                                           sigma.pow(2) + floor, model.rank)
        sigma = (noise - floor).clamp_min(1e-4 * noise).sqrt()
        if model.private_rank:  # private factors start small, along random directions
            private = 0.1 * noise.sqrt().unsqueeze(-1) * torch.randn(
                *noise.shape, model.private_rank, dtype=noise.dtype, device=noise.device)
            loadings = torch.cat([loadings, private], -1)
        sizes = [model.dims[m] for m in self.modalities]
        out = {}
        for m, w, s in zip(self.modalities, loadings.split(sizes, -2), sigma.split(sizes, -1)):
            out[f"component_loadings_{m}"], out[f"component_scale_{m}"] = w, s
        return out

    def _cells(self, model: MultimodalDPMixture, batch: TensorBatch
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, seen)``, each ``(B, D)``: the features concatenated and 1.0 where the
        cell's modality is present."""
        x = batch.concatenated(self.modalities)
        seen = torch.cat([batch.masks[:, j:j + 1].expand(-1, model.dims[m]).to(x.dtype)
                          for j, m in enumerate(self.modalities)], 1)
        return x, seen

    @torch.no_grad()
    def _set_scales(self, scales: Mapping[str, torch.Tensor]) -> None:
        """Write ``AutoNormal``'s scale parameters in place (the same tensors the
        param store and any optimiser hold)."""
        transform = torch.distributions.biject_to(self.global_guide.scale_constraint)
        for name, scale in scales.items():
            param = getattr(self.global_guide.scales, f"{name}_unconstrained")
            param.copy_(transform.inv(scale.to(param.dtype).clamp_min(1e-8)))

    @torch.no_grad()
    def materialize(self, batch: TensorBatch) -> None:
        """Create every lazily built parameter (encoder heads sized on first use, the
        autoguide's parameters) with one pass outside inference. Needed before
        ``load_state_dict`` on a fresh guide; :meth:`initialize` calls it."""
        if self.latent:
            self.encode_present(batch)
        with torch.enable_grad():
            self.global_guide(batch)

    def representations(self, batch: TensorBatch) -> list[torch.Tensor]:
        """What the mixture sees for each modality: the features (observed) or the
        encoders' posterior means (latent); ``[(B, d_m)]``."""
        if not self.latent:
            return [batch.features[m] for m in self.modalities]
        loc, _ = self.encode_present(batch)
        return list(loc.unbind(-2))

    # ------------------------------------------------------------------ encoding
    def encode_present(self, batch: TensorBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)``, each ``(B, M, D)``, from every modality's own encoder.

        Rows of a missing modality hold meaningless values here; :meth:`encode`
        replaces them.

        The encoders are registered with Pyro here (``pyro.module``, through the
        guide's Pyro context), not only in :meth:`forward`: a custom guide of the
        global sites that calls :meth:`encode` then trains them under ``SVI``.
        Before the lazily sized heads exist (the first call, :meth:`materialize`)
        nothing is registered: an uninitialised parameter cannot enter the store.
        """
        self._model[0].check_batch(batch)  # before an encoder's own dtype error
        locs, scales = [], []
        with self._registering():
            for m in self.modalities:
                loc, scale = self.encoders[m](batch.features[m])
                locs.append(loc)
                scales.append(scale)
        return torch.stack(locs, -2), torch.stack(scales, -2)

    def _registering(self):
        """The guide's Pyro context once every encoder parameter is materialised
        (reading ``self.encoders`` inside it issues the ``pyro.module`` statement), a
        null context before."""
        if not self._encoders_ready:
            self._encoders_ready = not any(nn.parameter.is_lazy(p)
                                           for p in self.encoders.parameters())
        return self._pyro_context if self._encoders_ready else contextlib.nullcontext()

    def encode(self, batch: TensorBatch, globals_: Mapping[str, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(loc, scale)`` of ``z``, each ``(B, M, D)``, missing modalities
        filled in from the present ones through the mixture (module docstring).

        ``globals_`` may carry draw dims ``L`` (``site -> (*L, *event)``, or a
        vectorised guide's ``(P, 1, *event)``): with a modality missing the result is
        then ``(*L, B, M, D)``, one fill per draw (all present: ``(B, M, D)``, the
        same for every draw)."""
        loc, scale = self.encode_present(batch)
        mask = batch.masks
        if bool(mask.all()):
            return loc, scale
        params = self._model[0].params_from_sites(draw_values(globals_))
        mixture = params.mixture(self.mixture, batch_size=loc.shape[0])
        means, variances = mixture.conditional_moments(loc.detach(), mask)
        fill_loc = torch.stack(means, -2)
        fill_scale = torch.stack(variances, -2).clamp_min(1e-6).sqrt()
        present = mask.unsqueeze(-1)
        return torch.where(present, loc, fill_loc), torch.where(present, scale, fill_scale)

    # ------------------------------------------------------------------ the guide
    def forward(self, batch: TensorBatch, subsample: torch.Tensor | None = None,
                kl_weight: float = 1.0) -> dict[str, torch.Tensor]:
        """Sample the global sites, then ``z`` for the minibatch (same arguments as
        the model). Returns the global values."""
        if not bool(self.initialized):
            raise RuntimeError(
                "MultimodalGuide: call guide.initialize(model, batch) once before using "
                "the guide (pyro_mm.fit does this for you)")
        globals_ = self.global_guide(batch, subsample, kl_weight)
        if self.latent:
            with pyro.plate("data", batch.size, subsample=subsample) as idx:
                part = batch if subsample is None else batch.index(idx)
                loc, scale = self.encode(part, globals_)
                with poutine.scale(scale=kl_weight):
                    pyro.sample("z", dist.Normal(loc, scale).to_event(2))
        return globals_

    def point_estimate(self) -> dict[str, torch.Tensor]:
        """Posterior medians of the global sites (the MAP values for ``"map"``)."""
        return self.global_guide.median()
