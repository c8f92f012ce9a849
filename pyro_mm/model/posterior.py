"""Any posterior of a :class:`~pyro_mm.model.dp_mixture.MultimodalDPMixture` behind one
interface, :class:`Posterior`, and :func:`as_posterior`, which builds one from what a
Pyro user has at hand:

* a :class:`~pyro_mm.runs.result.FitResult` (anything with ``.model`` and ``.guide``);
* ``(model, guide)`` with the library's :class:`~pyro_mm.model.guide.MultimodalGuide`;
* ``(model, guide)`` or ``(model, guide, local)`` with any Pyro guide over the model's
  global sites: an autoguide (``AutoNormal``, ``AutoDelta``, ``AutoGuideList``, ...)
  or a plain function called as the model is, ``guide(batch, subsample, kl_weight)``.
  A latent model also needs a *local* guide, ``q(z | x)``: the library's
  ``MultimodalGuide`` (its :meth:`~pyro_mm.model.guide.MultimodalGuide.encode`) or any
  object with ``encode(batch, globals_) -> (loc, scale)``, or a function of
  ``(batch, globals_)`` returning the same, each ``(B, M, D)``;
* posterior samples: ``{site: tensor}`` with a leading draw axis ``(S, ...)`` or
  leading ``(chain, draw)`` axes (what ``pyro.infer.MCMC.get_samples(group_by_chain=...)``
  returns), as ``(model, samples)`` or ``(model, samples, local)``, or the
  ``pyro.infer.MCMC`` object itself (its kernel's model is used when it is a
  ``MultimodalDPMixture``; otherwise pass ``(model, mcmc)``).

**Point estimates** (what plug-in prediction uses), one rule: a guide's own point
estimate where it has one (``MultimodalGuide.point_estimate()``; an autoguide's
``median()``); otherwise (a plain function guide) the per-site, per-element median of
:data:`POINT_DRAWS` draws seeded with :data:`POINT_SEED` (the caller's random state is
left alone); for samples, the per-site, per-element median of all their draws.

**Draws** (:meth:`Posterior.draws`): a guide is sampled (the library's guide
:data:`DRAW_BLOCK` draws at a time in one vectorised pass, any other guide one draw per
call, as nothing is known about its shapes); samples are read in order, chain by chain.
Every draw is a :class:`GlobalDraw`. Samples have no density ``q``: their
``log_q`` is NaN and :attr:`Posterior.has_log_q` is false.

This module is the top of :mod:`pyro_mm.model`: it sits above the guide and below
``factors``, ``predictive`` and ``diagnostics``, which all read posteriors through it.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import MCMC
from torch import nn

from ..data.batch import TensorBatch
from ..errors import DataValidationError
from .dp_mixture import MultimodalDPMixture
from .guide import MultimodalGuide

#: Global draws of the library's guide made in one vectorised pass.
DRAW_BLOCK = 256
#: Memory budget of one batched pass over draws, in tensor elements (2**24: 64 MiB of
#: float32 per intermediate): :func:`draws_per_pass` sizes the blocks of draws that
#: ``predict``, ``impute`` and the diagnostics evaluate at once from it.
DRAW_BUDGET = 2 ** 24
#: Draws whose per-site median is the point estimate of a guide that has none.
POINT_DRAWS = 101
#: Seed of those draws.
POINT_SEED = 0

ACCEPTED = ("a FitResult, (model, MultimodalGuide), (model, pyro guide[, local guide]), "
            "(model, samples dict[, local guide]), a pyro.infer.MCMC object, or a "
            "Posterior")


@dataclasses.dataclass
class GlobalDraw:
    """One draw ``theta_s`` of the global posterior.

    Attributes:
        index: ``s``, its position among the draws.
        values: ``site name -> value`` (each site's own shape, no draw axis).
        log_q: ``log q(theta_s)``, the guide's log density of the draw (masked, not
            scaled); NaN for posterior samples, which have no density.
        trace: the draw as a :class:`pyro.poutine.Trace` of the global sites, to
            ``poutine.replay`` the local guide or the model against.
    """

    index: int
    values: dict[str, torch.Tensor]
    log_q: float
    trace: poutine.Trace


@dataclasses.dataclass
class DrawBlock:
    """Draws ``start .. start + size - 1`` of the global posterior, stacked.

    Attributes:
        start: index of the first draw.
        values: ``site -> (size, *event)``.
        log_q: ``(size,)`` float64, as :attr:`GlobalDraw.log_q` (NaN for samples).
    """

    start: int
    values: dict[str, torch.Tensor]
    log_q: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.log_q.shape[0])


def draws_per_pass(model: MultimodalDPMixture, examples: int,
                   budget: int = DRAW_BUDGET) -> int:
    """How many draws to evaluate at once on ``examples`` examples so that the largest
    per-example intermediates (components, representations, hidden layers, features,
    of every modality; a factor component's conditional moments of every feature) stay
    within ``budget`` elements."""
    M, K = len(model.modalities), model.num_components
    widest = max([*model.hidden, *model.dims.values(), model.latent_dim, 1])
    per_draw = examples * (M * (K + model.latent_dim + widest) + (model.num_classes or 0))
    if model.component == "factor":
        per_draw += examples * K * sum(model.dims.values())
    return max(1, budget // max(1, per_draw))


def site_log_prob(site: dict[str, Any]) -> torch.Tensor:
    """``log_prob`` of a trace site, masked but *not* scaled (the plate's ``N / B`` and
    KL warm-up scales are left out on purpose: callers sum chunks instead)."""
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    if site["mask"] is not None:
        log_prob = torch.where(site["mask"], log_prob, log_prob.new_zeros(()))
    return log_prob


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device):
    """Seed PyTorch's generators for the block only, leaving the caller's state as it
    was (``seed=None``: draw from the current state)."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def global_site_shapes(model: MultimodalDPMixture) -> dict[str, torch.Size]:
    """``site -> shape`` of one draw of each global site of ``model`` (read from a
    trace of :meth:`~pyro_mm.model.dp_mixture.MultimodalDPMixture.sample_globals`; the
    caller's random state is left as it was)."""
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices), poutine.block():
        trace = poutine.trace(model.sample_globals).get_trace()
    return {name: site["value"].shape for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]}


def _trace_node(name: str, value: torch.Tensor, fn, infer=None) -> dict[str, Any]:
    return dict(type="sample", name=name, is_observed=False, value=value,
                infer=infer or {}, fn=fn, cond_indep_stack=(), mask=None, args=(),
                kwargs={})


def _median(stacked: torch.Tensor) -> torch.Tensor:
    """Per-element median over the leading axis (the mean of the two middle values
    for an even count, unlike ``torch.median``)."""
    ordered = stacked.sort(0).values
    n = ordered.shape[0]
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


class Posterior(abc.ABC):
    """A posterior of ``model``'s global sites (and, for latent models, ``q(z | x)``).

    Attributes:
        model: the :class:`~pyro_mm.model.dp_mixture.MultimodalDPMixture`.
        global_sites: the model's global site names (sorted).
        kind: ``"multimodal_guide"``, ``"guide"`` or ``"samples"``.
        num_chains: chains of the draws (1 for a guide).
        has_log_q: whether draws carry ``log q`` (false for samples).
    """

    kind = "posterior"
    has_log_q = True
    num_chains = 1

    def __init__(self, model: MultimodalDPMixture, local=None):
        self.model = model
        self.shapes = global_site_shapes(model)
        self.global_sites = tuple(sorted(self.shapes))
        self.local = local
        if model.representation == "latent" and local is None:
            raise TypeError(
                "a latent model needs a local guide q(z | x): pass (model, guide, local) "
                "with local a MultimodalGuide, an object with encode(batch, globals_) or "
                "a function (batch, globals_) -> (loc, scale)")

    def modules(self) -> list[nn.Module]:
        """The ``nn.Module`` s involved (the model first), for ``evaluation_mode``."""
        out = [self.model]
        for part in (getattr(self, "guide", None), self.local):
            if isinstance(part, nn.Module) and all(part is not m for m in out):
                out.append(part)
        return out

    @abc.abstractmethod
    def point_estimate(self, batch: TensorBatch | None = None) -> dict[str, torch.Tensor]:
        """``site -> value`` of every global site (module docstring for the rule).
        ``batch`` is what a function guide is called with when it has to be drawn
        from (``guide(batch, None, 1.0)``); nothing else reads it."""

    def num_draws(self, num_samples: int | None) -> int:
        """How many draws :meth:`draws` yields for ``num_samples``."""
        return 1000 if num_samples is None else int(num_samples)

    @abc.abstractmethod
    def draws(self, batch: TensorBatch, num_samples: int | None = None,
              seed: int | None = None) -> Iterator[GlobalDraw]:
        """``num_samples`` :class:`GlobalDraw` s (``None``: a guide's default of 1000,
        or every sample); ``seed`` seeds a guide's draws (the caller's random state is
        left alone; ``None``: PyTorch's current state)."""

    def draw_blocks(self, batch: TensorBatch, num_samples: int | None = None,
                    seed: int | None = None, block: int = DRAW_BLOCK
                    ) -> Iterator[DrawBlock]:
        """The draws of :meth:`draws` (the same values, in order, for the same seed),
        ``block`` at a time as :class:`DrawBlock` s, for consumers that evaluate a
        batch of draws in one pass."""
        chunk: list[GlobalDraw] = []
        for draw in self.draws(batch, num_samples, seed):
            chunk.append(draw)
            if len(chunk) == block:
                yield _stack(chunk, self.global_sites)
                chunk = []
        if chunk:
            yield _stack(chunk, self.global_sites)

    def encode_draws(self, batch: TensorBatch, values: Mapping[str, torch.Tensor],
                     size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` for ``size`` draws at once (``values``: ``site -> (size,
        *event)``): ``(loc, scale)``, each ``(size, B, M, D)``. The library's guide
        encodes them in one pass; any other local guide is called once per draw, as
        nothing is known about the shapes it takes."""
        if isinstance(self.local, MultimodalGuide):
            loc, scale = self.encode(batch, values)
        else:
            pairs = [self.encode(batch, {k: v[i] for k, v in values.items()})
                     for i in range(size)]
            loc, scale = (torch.stack(p) for p in zip(*pairs))
        shape = (size,) + loc.shape[-3:]
        return loc.expand(shape), scale.expand(shape)

    def encode(self, batch: TensorBatch, globals_: Mapping[str, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``q(z | x)`` of a latent model: ``(loc, scale)``, each ``(B, M, D)``."""
        if self.model.representation != "latent":
            raise ValueError("encode: representation='observed' has no local latent z")
        encode = getattr(self.local, "encode", self.local)
        return encode(batch, globals_)

    def local_guide(self, batch: TensorBatch, subsample: torch.Tensor | None,
                    globals_: Mapping[str, torch.Tensor]) -> None:
        """Sample ``z`` of the examples ``subsample`` from :meth:`encode`, in the
        model's ``"data"`` plate (for ``poutine.trace``)."""
        with pyro.plate("data", batch.size, subsample=subsample) as idx:
            part = batch if subsample is None else batch.index(idx)
            loc, scale = self.encode(part, globals_)
            pyro.sample("z", dist.Normal(loc, scale).to_event(2))

    def _check_values(self, values: Mapping[str, torch.Tensor], what: str) -> dict:
        missing = [s for s in self.global_sites if s not in values]
        if missing:
            raise DataValidationError(f"{what}: no value for the global sites {missing} "
                                      f"(the model's are {list(self.global_sites)})")
        return {s: values[s] for s in self.global_sites}


class GuidePosterior(Posterior):
    """The posterior of a Pyro guide over the global sites (module docstring)."""

    def __init__(self, model: MultimodalDPMixture, guide, local=None):
        if isinstance(guide, MultimodalGuide):
            local = guide if local is None else local
        super().__init__(model, local)
        self.guide = guide
        self.kind = "multimodal_guide" if isinstance(guide, MultimodalGuide) else "guide"
        self._point: dict[str, torch.Tensor] | None = None

    def point_estimate(self, batch=None):
        guide = self.guide
        if isinstance(guide, MultimodalGuide):
            return guide.point_estimate()
        if hasattr(guide, "median"):
            return self._check_values(guide.median(), "guide.median()")
        if self._point is None:  # a function guide: fixed, so computed once
            device = self.model.device
            with seeded(POINT_SEED, device):
                draws = [d.values for d in self._sequential(batch, POINT_DRAWS)]
            self._point = {s: _median(torch.stack([d[s] for d in draws]))
                           for s in self.global_sites}
        return self._point

    def draws(self, batch, num_samples=None, seed=None):
        num_samples = 1000 if num_samples is None else num_samples
        with seeded(seed, self.model.device):
            if isinstance(self.guide, MultimodalGuide):
                yield from self._vectorised(batch, num_samples)
            else:
                yield from self._sequential(batch, num_samples)

    def draw_blocks(self, batch, num_samples=None, seed=None, block=DRAW_BLOCK):
        if not isinstance(self.guide, MultimodalGuide):
            yield from super().draw_blocks(batch, num_samples, seed, block)
            return
        num_samples = 1000 if num_samples is None else num_samples
        with seeded(seed, self.model.device):
            for start, size, sites, log_q in self._guide_blocks(batch, num_samples):
                values = {name: _leading(site["value"], size, self.shapes[name])
                          for name, site in sites if name in self.shapes}
                yield DrawBlock(start, self._check_values(values, "guide"), log_q)

    @torch.no_grad()
    def _guide_blocks(self, batch, num_samples: int, block: int = DRAW_BLOCK):
        """The library's global guide, ``block`` draws at a time in one outer plate
        (``"_pyro_mm_draws"``, the rightmost batch dim); ``poutine.block`` keeps the
        draws out of any trace the caller is running. Yields ``(start, size, sites,
        log_q)``. :meth:`draws` and :meth:`draw_blocks` both read these blocks of
        ``DRAW_BLOCK`` (whatever block the caller asks for), so one seed gives the
        same draws either way."""
        for start in range(0, num_samples, block):
            size = min(block, num_samples - start)
            with poutine.block(), pyro.plate("_pyro_mm_draws", size, dim=-1):
                trace = poutine.trace(self.guide.global_guide).get_trace(batch, None, 1.0)
            sites = [(name, site) for name, site in trace.nodes.items()
                     if site["type"] == "sample" and not site["is_observed"]]
            log_q = sum(site_log_prob(site).double().expand(size) for _, site in sites)
            yield start, size, sites, log_q

    @torch.no_grad()
    def _vectorised(self, batch, num_samples: int):
        """:meth:`_guide_blocks` split into :class:`GlobalDraw` s."""
        for start, size, sites, log_q in self._guide_blocks(batch, num_samples):
            for i in range(size):
                draw = poutine.Trace()
                for name, site in sites:
                    value = site["value"]
                    value = value[i] if value.dim() > 0 and value.shape[0] == size else value
                    draw.add_node(name, **_trace_node(name, value, site["fn"], site["infer"]))
                values = {name: draw.nodes[name]["value"] for name in self.global_sites}
                yield GlobalDraw(start + i, values, float(log_q[i]), draw)

    @torch.no_grad()
    def _sequential(self, batch, num_samples: int):
        """Any guide, one call per draw; its global sites are kept and ``log q`` sums
        every sample site's log density (an autoguide's auxiliary unconstrained sites
        and the Jacobian its constrained ``Delta`` sites carry); a site that is not a
        global site of the model is refused."""
        for s in range(num_samples):
            with poutine.block():
                trace = poutine.trace(self.guide).get_trace(batch, None, 1.0)
            draw, log_q = poutine.Trace(), 0.0
            for name, site in trace.nodes.items():
                if site["type"] != "sample" or site["is_observed"]:
                    continue
                if site["infer"].get("is_auxiliary"):  # an autoguide's unconstrained
                    log_q += float(site_log_prob(site).double().sum())  # value: in q
                    continue
                if name not in self.shapes:
                    raise TypeError(
                        f"guide: samples the site {name!r}, which is not a global site of "
                        f"the model ({list(self.global_sites)}); give it a guide of the "
                        "global sites (e.g. AutoNormal(poutine.block(model, expose=...)))"
                        " and the local part as the local guide")
                log_q += float(site_log_prob(site).double().sum())
                value = site["value"].reshape(self.shapes[name])
                draw.add_node(name, **_trace_node(name, value, site["fn"], site["infer"]))
            values = self._check_values({n: draw.nodes[n]["value"] for n in draw.nodes},
                                        "guide")
            yield GlobalDraw(s, values, log_q, draw)


class SamplesPosterior(Posterior):
    """Posterior samples (e.g. from NUTS): ``site -> (chain, draw, ...)`` tensors."""

    kind = "samples"
    has_log_q = False

    def __init__(self, model: MultimodalDPMixture, samples: Mapping[str, Any], local=None):
        super().__init__(model, local)
        values = self._check_values(samples, "samples")
        chains = set()
        self.samples = {}
        for site, value in values.items():
            value = torch.as_tensor(value, device=model.device)
            shape = self.shapes[site]
            lead = value.dim() - len(shape)
            if lead not in (1, 2) or value.shape[lead:] != shape:
                raise DataValidationError(
                    f"samples[{site!r}]: expected shape (draw, *{tuple(shape)}) or "
                    f"(chain, draw, *{tuple(shape)}), got {tuple(value.shape)}")
            if not bool(torch.isfinite(value).all()):
                raise DataValidationError(f"samples[{site!r}]: holds NaN or inf")
            value = value[None] if lead == 1 else value
            chains.add(tuple(value.shape[:2]))
            self.samples[site] = value.to(model.alpha.dtype)  # the model's dtype
        if len(chains) != 1:
            raise DataValidationError(f"samples: the sites disagree on (chain, draw): "
                                      f"{sorted(chains)}")
        self.num_chains, self.draws_per_chain = chains.pop()

    def point_estimate(self, batch=None):
        return {s: _median(v.flatten(0, 1)) for s, v in self.samples.items()}

    def draw_indices(self, num_samples: int | None) -> list[tuple[int, int]]:
        """``(chain, draw)`` of each draw used: all (``None``), or ``num_samples /
        num_chains`` evenly spaced draws of every chain."""
        C, S = self.num_chains, self.draws_per_chain
        if num_samples is None:
            per_chain = S
        elif num_samples % C or not 0 < num_samples <= C * S:
            raise ValueError(f"num_samples: samples of {C} chains x {S} draws take None "
                             f"(all) or a multiple of {C} up to {C * S}, got {num_samples}")
        else:
            per_chain = num_samples // C
        picks = torch.linspace(0, S - 1, per_chain).round().long().tolist()
        return [(c, d) for c in range(C) for d in picks]

    def num_draws(self, num_samples):
        return len(self.draw_indices(num_samples))

    def draws(self, batch, num_samples=None, seed=None):
        """Samples in order, chain by chain (``seed`` is unused: nothing is random)."""
        for s, (c, d) in enumerate(self.draw_indices(num_samples)):
            draw = poutine.Trace()
            values = {}
            for site, value in self.samples.items():
                values[site] = value[c, d]
                fn = dist.Delta(values[site], event_dim=values[site].dim())
                draw.add_node(site, **_trace_node(site, values[site], fn))
            yield GlobalDraw(s, values, math.nan, draw)


def _leading(value: torch.Tensor, size: int, shape: torch.Size) -> torch.Tensor:
    """``(size, *shape)`` from a site of a vectorised guide (a site not drawn per draw,
    e.g. an ``AutoDelta`` constant, is expanded)."""
    if value.dim() > len(shape) and value.shape[0] == size:
        return value.reshape((size,) + tuple(shape))
    return value.reshape(shape).expand((size,) + tuple(shape))


def _stack(draws: list[GlobalDraw], sites) -> DrawBlock:
    values = {s: torch.stack([d.values[s] for d in draws]) for s in sites}
    log_q = torch.tensor([d.log_q for d in draws], dtype=torch.float64)
    return DrawBlock(draws[0].index, values, log_q)


def _is_samples(obj) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _local_of(local):
    if local is None or hasattr(local, "encode") or callable(local):
        return local
    raise TypeError(f"local guide: expected a MultimodalGuide, an object with encode(batch, "
                    f"globals_) or a function, got {type(local).__name__}")


def model_of(source) -> MultimodalDPMixture | None:
    """The model ``source`` carries (a ``Posterior``, ``FitResult``, ``(model, ...)``
    tuple or MCMC), without checking the rest of it; ``None`` if it carries none."""
    if isinstance(source, tuple) and source:
        return source[0]
    if isinstance(source, MCMC):
        return getattr(source.kernel, "model", None)
    return getattr(source, "model", None)


def as_posterior(source, model: MultimodalDPMixture | None = None, local=None) -> Posterior:
    """A :class:`Posterior` of ``source`` (module docstring lists what is accepted).

    Args:
        source: a ``FitResult``, ``(model, guide[, local])``, ``(model, samples[,
            local])``, a ``pyro.infer.MCMC``, a ``Posterior`` (returned as it is), or a
            guide / samples / MCMC alone with ``model`` given.
        model: the model, when ``source`` does not carry it.
        local: the local guide of a latent model, when ``source`` does not carry it.

    Raises:
        TypeError: ``source`` is none of these, or the model is not a
            ``MultimodalDPMixture``.
    """
    if isinstance(source, Posterior):
        return source
    if isinstance(source, tuple) and len(source) in (2, 3):
        return as_posterior(source[1], model=source[0],
                            local=source[2] if len(source) == 3 else local)
    if isinstance(source, tuple) or isinstance(source, (str, bytes)):
        raise TypeError(f"posterior: expected {ACCEPTED}, got a {type(source).__name__}")
    if hasattr(source, "model") and hasattr(source, "guide") and not isinstance(source, MCMC):
        return as_posterior(source.guide, model=source.model, local=local)
    if isinstance(source, MCMC):
        kernel_model = getattr(source.kernel, "model", None)
        model = model if model is not None else kernel_model
        source = source.get_samples(group_by_chain=True)
    if not isinstance(model, MultimodalDPMixture):
        raise TypeError(f"posterior: expected {ACCEPTED} (the model a MultimodalDPMixture), "
                        f"got {type(source).__name__} with model "
                        f"{type(model).__name__}")
    local = _local_of(local)
    if _is_samples(source):
        return SamplesPosterior(model, source, local)
    if isinstance(source, MultimodalGuide) or callable(source):
        return GuidePosterior(model, source, local)
    raise TypeError(f"posterior: expected {ACCEPTED}, got {type(source).__name__}")


__all__ = ["ACCEPTED", "DRAW_BLOCK", "DRAW_BUDGET", "DrawBlock", "GlobalDraw", "GuidePosterior", "POINT_DRAWS",
           "POINT_SEED", "Posterior", "SamplesPosterior", "as_posterior",
           "draws_per_pass", "global_site_shapes", "model_of", "seeded", "site_log_prob"]
