"""Stick breaking and the multimodal mixture with assignments marginalised.

Components are diagonal Gaussians (``component="normal"``), products of univariate
Student-t densities, one per feature (``component="studentt"``): a value ``r`` scales
away from a component costs ``~ (nu + 1) log r`` nats per feature instead of ``r^2 / 2``,
or Gaussians with low-rank-plus-diagonal covariances (``component="factor"``, a mixture
of factor analysers: :mod:`pyro_mm.model.factor_analysis`), whose factors are shared by
the modalities of the ``joint`` mixture.

Shapes: ``K`` components, ``M`` modalities, ``d_m`` features of modality ``m`` (all equal
to the latent size ``D`` when the mixture sits on representations), ``B`` examples.

**Draw dimensions.** Every parameter may carry leading draw dimensions ``L`` (``S``
draws of the global posterior evaluated in one pass, ``Predictive(parallel=True)``,
``vectorize_particles=True``): weights ``(*L, K)``, locs and scales ``(*L, K, d_m)``,
degrees of freedom ``(*L,)``. Values are ``(B, ...)`` or ``(*L, B, ...)`` and every
result gains the ``L`` dims in front, e.g. ``log_prob`` is ``(*L, B)``. Without draw
dimensions the shapes are the ones documented below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from torch.distributions.transforms import PowerTransform

from . import factor_analysis

_LOG_2PI = math.log(2.0 * math.pi)
#: Terms more than this many nats below the largest are left out of
#: :func:`floored_logsumexp`.
EXP_FLOOR = -80.0


def floored_logsumexp(values: torch.Tensor, dim: int = -1, keepdim: bool = False
                      ) -> torch.Tensor:
    """``log sum exp`` of ``values`` over ``dim``, leaving out the terms more than
    :data:`EXP_FLOOR` nats below the largest.

    Why: ``exp`` runs several times slower on CPUs where its result underflows, which is
    what the far components' terms of a mixture do (``torch.logsumexp`` over ``(2048,
    20)`` such values, forward and backward: 2.4x this function's time). The terms left
    out weigh at most ``K e^-80`` of the sum (``1e-33`` for ``K = 20``), below float
    precision, and get a zero gradient instead of one of that size. A slice of ``-inf``
    gives ``-inf``, as ``torch.logsumexp`` does.
    """
    top = values.detach().amax(dim, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    shifted = values - top
    shifted = shifted.masked_fill(shifted < EXP_FLOOR, -math.inf)
    out = shifted.exp().sum(dim, keepdim=True).log() + top
    return out if keepdim else out.squeeze(dim)


def stick_breaking_log_weights(sticks: torch.Tensor) -> torch.Tensor:
    """Log mixture weights from ``K - 1`` stick proportions, keeping all the mass.

    ``pi_k = v_k prod_{j<k} (1 - v_j)`` for ``k < K`` and ``pi_K = prod_{j<K} (1 - v_j)``.

    Args:
        sticks: ``(..., K - 1)`` values in ``(0, 1)``.

    Returns:
        ``(..., K)`` log weights; ``logsumexp`` over the last dim is 0.
    """
    tiny = torch.finfo(sticks.dtype).tiny
    log_v = sticks.clamp_min(tiny).log()
    log_rest = torch.log1p(-sticks.clamp_max(1.0 - torch.finfo(sticks.dtype).eps))
    before = torch.cumsum(log_rest, dim=-1)
    zero = torch.zeros_like(before[..., :1])
    return torch.cat([log_v, zero], dim=-1) + torch.cat([zero, before], dim=-1)


def stick_breaking_weights(sticks: torch.Tensor) -> torch.Tensor:
    """Mixture weights ``(..., K)`` from sticks ``(..., K - 1)``; they sum to 1."""
    return stick_breaking_log_weights(sticks).exp()


def gaussian_component_log_density(
    value: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor
) -> torch.Tensor:
    """``log N(value_b; locs_k, diag scales_k^2)`` for every example and component.

    Expands the square into three matrix products so memory is ``O(B K)`` instead of
    ``O(B K d)``, which is what makes large ``N`` cheap.

    Args:
        value: ``(..., B, d)``.
        locs, scales: ``(..., K, d)`` (leading draw dims broadcast against value's).

    Returns:
        ``(..., B, K)``.
    """
    precision = scales.pow(-2)
    quadratic = (
        value.pow(2) @ precision.transpose(-1, -2)
        - 2.0 * value @ (locs * precision).transpose(-1, -2)
        + (locs.pow(2) * precision).sum(-1).unsqueeze(-2)
    )
    log_norm = scales.log().sum(-1).unsqueeze(-2) + 0.5 * value.shape[-1] * _LOG_2PI
    return -0.5 * quadratic.clamp_min(0.0) - log_norm


def stacked_gaussian_component_log_density(
    value: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor
) -> torch.Tensor:
    """:func:`gaussian_component_log_density` for ``M`` modalities of one size at once
    (batched matrix products instead of a Python loop over the modalities).

    Args:
        value: ``(..., B, M, d)``.
        locs, scales: ``(..., M, K, d)``.

    Returns:
        ``(..., B, M, K)``.
    """
    precision = scales.pow(-2)                                          # (M, K, d)
    v = value.transpose(-3, -2)                                         # (M, B, d)
    quadratic = (
        v.pow(2) @ precision.transpose(-1, -2)
        - 2.0 * v @ (locs * precision).transpose(-1, -2)
        + (locs.pow(2) * precision).sum(-1).unsqueeze(-2)
    )                                                                   # (M, B, K)
    log_norm = scales.log().sum(-1).unsqueeze(-2) + 0.5 * value.shape[-1] * _LOG_2PI
    return (-0.5 * quadratic.clamp_min(0.0) - log_norm).transpose(-3, -2)


def studentt_component_log_density(
    value: torch.Tensor, locs: torch.Tensor, scales: torch.Tensor, df: torch.Tensor
) -> torch.Tensor:
    """``sum_j log t_nu(value_bj; locs_kj, scales_kj)`` for every example and component:
    independent univariate Student-t densities (heavy tails per feature, so one wild
    feature does not inflate the others as a multivariate t would).

    Memory is ``O(B K d)``: the ``log1p`` does not factor into matrix products.

    Args:
        value: ``(..., B, d)``.
        locs, scales: ``(..., K, d)``.
        df: degrees of freedom, ``(...)`` (one per draw; shared by the modality's
            features).

    Returns:
        ``(..., B, K)``.
    """
    z2 = ((value.unsqueeze(-2) - locs.unsqueeze(-3))
          / scales.unsqueeze(-3)).pow(2)                                # (..., B, K, d)
    d = value.shape[-1]
    df = torch.as_tensor(df, dtype=value.dtype, device=value.device)[..., None, None]
    log_norm = (torch.lgamma(0.5 * (df + 1.0)) - torch.lgamma(0.5 * df)
                - 0.5 * torch.log(df * math.pi))                        # (..., 1, 1)
    return (d * log_norm - scales.log().sum(-1).unsqueeze(-2)
            - 0.5 * (df + 1.0) * torch.log1p(z2 / df.unsqueeze(-1)).sum(-1))


def inverse_gamma_scale_prior(pseudo_count: torch.Tensor, spread: torch.Tensor
                              ) -> TorchDistribution:
    """The distribution of a component scale ``sigma`` whose variance has the conjugate
    prior ``sigma^2 ~ InverseGamma(nu0 / 2, nu0 s^2 / 2)``: ``nu0`` pseudo-observations
    of variance ``s^2`` (the scaled inverse-chi-squared of Gelman et al., BDA 3.2).

    With ``n`` members whose squared deviations sum to ``S``, the posterior mode of
    ``sigma`` (the MAP of this site) is ``sigma^2 = (nu0 s^2 + S) / (nu0 + n + 1)``: a
    large component keeps its own spread ``S / n``; one with few members is pulled to
    ``s^2``, and its density at ``sigma -> 0`` vanishes (``exp(-nu0 s^2 / 2 sigma^2)``).

    Args:
        pseudo_count: ``nu0 > 0``, scalar tensor.
        spread: ``s^2 > 0``, scalar tensor (or broadcastable to the site's shape).

    Returns:
        a distribution on ``(0, inf)`` with the batch shape of ``spread``.
    """
    variance = dist.InverseGamma(0.5 * pseudo_count, 0.5 * pseudo_count * spread)
    return dist.TransformedDistribution(variance, [PowerTransform(
        torch.tensor(0.5, dtype=variance.rate.dtype, device=variance.rate.device))])


def effective_scale(scale: torch.Tensor, floor: torch.Tensor | float | None
                    ) -> torch.Tensor:
    """``sqrt(scale^2 + floor^2)``: a component scale kept above ``floor`` (added in
    quadrature, so a scale well above the floor is barely changed and the gradient
    stays smooth); ``scale`` unchanged when ``floor`` is ``None``."""
    if floor is None:
        return scale
    return torch.sqrt(scale.pow(2) + torch.as_tensor(floor, dtype=scale.dtype,
                                                     device=scale.device).pow(2))


class MultimodalMixture(TorchDistribution):
    """A Gaussian (or Student-t) mixture over several modalities with the assignment
    summed out.

    ``joint``: one component per example shared by its modalities,
    ``log p(x_i) = logsumexp_k [log pi_k + sum_m o_im log N(x_im; mu_mk, sigma_mk)]``.
    ``independent``: each modality picks its own component from the same weights,
    ``log p(x_i) = sum_m o_im logsumexp_k [log pi_k + log N(x_im; mu_mk, sigma_mk)]``.
    ``o_im`` is the observation mask: a missing modality is marginalised out (its
    density integrates to one), so it contributes nothing. With ``component="studentt"``
    every ``N`` above is a product of univariate Student-t densities with the modality's
    degrees of freedom. With ``component="factor"`` component ``k``'s covariance is
    ``W_k W_k^T + diag sigma_k^2`` (:mod:`pyro_mm.model.factor_analysis`): ``joint``, the
    factors are shared by the modalities (``W_k`` stacks the ``W_mk``), so the sum over
    modalities above becomes the density of the present modalities together;
    ``independent``, each modality has its own.

    Args:
        log_weights: ``(K,)`` log mixture weights (``(*L, K)`` with draw dims: the
            module docstring).
        locs, scales: one ``(K, d_m)`` tensor per modality (the scales used as given:
            any floor is applied by the caller, see
            :meth:`pyro_mm.model.dp_mixture.MixtureParams.mixture`).
        mixture: ``"joint"`` or ``"independent"``.
        component: ``"normal"``, ``"studentt"`` or ``"factor"``.
        df: with ``"studentt"``, one degrees-of-freedom value (scalar tensor or
            number) per modality.
        loadings: with ``"factor"``, one ``(K, d_m, r)`` tensor per modality (``(*L, K,
            d_m, r)`` with draw dims).
        mask: ``(B, M)`` bool observation mask, or ``None`` for all observed.
        batch_size: ``B``, the examples in the plate.
        stacked: if ``True`` (all ``d_m`` equal), values have event shape ``(M, d)``;
            otherwise modalities are concatenated, event shape ``(sum_m d_m,)``.
        cache: a dict shared by the mixtures of one set of parameters
            (:meth:`pyro_mm.model.params.MixtureParams.mixture`): the per-component
            log-densities of the last value seen are kept there, so the prior on ``z``,
            the fill-in of absent modalities, the ``dp`` gate and ARM's leave-one-out
            (``M + 1`` fills of the same ``z``) compute them once per step. Only the
            parameters' own mixtures may share one (same components, same scales).
    """

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(
        self,
        log_weights: torch.Tensor,
        locs: Sequence[torch.Tensor],
        scales: Sequence[torch.Tensor],
        mixture: str = "joint",
        mask: torch.Tensor | None = None,
        batch_size: int | None = None,
        stacked: bool = True,
        component: str = "normal",
        df: Sequence[torch.Tensor | float] | None = None,
        validate_args=None,
        cache: dict | None = None,
        loadings: Sequence[torch.Tensor] | None = None,
    ):
        if mixture not in ("joint", "independent"):
            raise ValueError(f"mixture: expected 'joint' or 'independent', got {mixture!r}")
        if component not in ("normal", "studentt", "factor"):
            raise ValueError("component: expected 'normal', 'studentt' or 'factor', got "
                             f"{component!r}")
        if component == "studentt" and (df is None or len(df) != len(locs)):
            raise ValueError("df: 'studentt' needs one degrees-of-freedom value per modality")
        if component == "factor" and (loadings is None or len(loadings) != len(locs)):
            raise ValueError("loadings: 'factor' needs one loading matrix per modality")
        self.loadings = None if loadings is None else list(loadings)
        self.component = component
        self.df = None if df is None else [torch.as_tensor(v, dtype=log_weights.dtype,
                                                           device=log_weights.device)
                                           for v in df]
        self.log_weights = log_weights
        self._cache = cache
        self.locs = list(locs)
        self.scales = list(scales)
        self.mixture = mixture
        self.mask = mask
        self.sizes = [loc.shape[-1] for loc in self.locs]
        self.stacked = stacked
        if stacked and len(set(self.sizes)) != 1:
            raise ValueError(f"stacked=True needs equal sizes, got {self.sizes}")
        if batch_size is None:
            batch_size = 1 if mask is None else mask.shape[0]
        event_shape = (
            torch.Size([len(self.locs), self.sizes[0]]) if stacked
            else torch.Size([sum(self.sizes)])
        )
        draws = log_weights.shape[:-1]  # the draw dims L, left of the data plate
        super().__init__(draws + torch.Size([batch_size]), event_shape, validate_args=False)

    @property
    def _weights(self) -> torch.Tensor:
        """``(*L, 1, K)``: the log weights aligned with ``(*L, B, K)``."""
        return self.log_weights.unsqueeze(-2)

    def split(self, value: torch.Tensor) -> list[torch.Tensor]:
        """Per-modality views ``[(B, d_m)]`` of a value of this distribution."""
        if self.stacked:
            return list(value.unbind(-2))
        return list(value.split(self.sizes, dim=-1))

    def component_log_density(self, value: torch.Tensor) -> torch.Tensor:
        """``(B, M, K)``: ``log N(x_im; mu_mk, sigma_mk)``, zero where masked out."""
        return self._masked(self._unmasked(value), self.mask)

    def _unmasked(self, value: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """``(B, M, K)`` component log-densities of ``value`` (of ``value.detach()``
        if ``detach``: gradients still reach the components, not the value), from the
        shared cache when this exact tensor was seen last."""
        return self._cached((detach, self.stacked), value, detach, self._compute_unmasked)

    def _cached(self, key, value: torch.Tensor, detach: bool, compute, check=None):
        """``compute(value, or value.detach())``, kept in the shared cache under ``key``
        while ``value`` is the tensor last seen (and ``check``, if given, is the object
        stored with it)."""
        cache = self._cache
        if (cache is not None and cache.get("value") is value and key in cache
                and cache[key][0] is check):
            return cache[key][1]
        out = compute(value.detach() if detach else value)
        if cache is not None:
            if cache.get("value") is not value:  # one value at a time: no growth
                cache.clear()
                cache["value"] = value
            cache[key] = (check, out)
        return out

    def _joint(self, value: torch.Tensor, present: torch.Tensor | None,
               detach: bool = False) -> torch.Tensor:
        """``(B, K)``: ``log p(present modalities of x_i | c_i = k)``."""
        if self.component != "factor":
            return self._masked(self._unmasked(value, detach), present).sum(-2)
        diagonal = self._cached(("diagonal", detach), value, detach, self._diagonal)
        return (self._masked(diagonal, present).sum(-2)
                + self._factors(value, present, detach).correction)

    def _factors(self, value: torch.Tensor, present: torch.Tensor | None,
                 detach: bool = False) -> factor_analysis.FactorPosterior:
        """The shared factors' posterior given the ``present`` modalities of ``value``."""
        return self._cached(("factors", detach), value, detach, lambda v: (
            factor_analysis.factor_posterior(self.split(v), self.locs, self._noise(),
                                             self.loadings, present)), check=present)

    def _noise(self) -> list[torch.Tensor]:
        """``[(K, d_m)]`` the diagonal variances (``psi`` of factor components)."""
        return [s.pow(2) for s in self.scales]

    @staticmethod
    def _masked(lp: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``lp (B, M, K)`` with the rows of absent modalities set to zero."""
        if mask is None:
            return lp
        # where, not multiply: a masked-out value may be inf/NaN (0 * inf = NaN).
        return torch.where(mask.unsqueeze(-1), lp, lp.new_zeros(()))

    def modality_log_density(self, value: torch.Tensor) -> torch.Tensor:
        """``(B, M)``: each modality's own mixture log-density
        ``logsumexp_k [log pi_k + log N(x_im; mu_mk, sigma_mk)]`` (the prominence
        used by the ``dp`` fusion gate); ``-inf`` where masked out."""
        per = floored_logsumexp(self._weights.unsqueeze(-2) + self._unmasked(value), dim=-1)
        if self.mask is not None:
            per = per.masked_fill(~self.mask, -math.inf)
        return per

    def _compute_unmasked(self, value: torch.Tensor) -> torch.Tensor:
        """Each modality's own marginal log-density in each component."""
        if self.component == "studentt":
            return torch.stack([studentt_component_log_density(x, loc, scale, df)
                                for x, loc, scale, df in zip(self.split(value), self.locs,
                                                             self.scales, self.df)], dim=-2)
        lp = self._diagonal(value)
        if self.component == "factor":  # one modality alone: its own factors' share
            lp = lp + torch.stack([factor_analysis.factor_posterior(
                [x], [loc], [var], [w]).correction for x, loc, var, w in zip(
                    self.split(value), self.locs, self._noise(), self.loadings)], dim=-2)
        return lp

    def _diagonal(self, value: torch.Tensor) -> torch.Tensor:
        """``(B, M, K)`` diagonal Gaussian log-densities ``log N(x_im; mu_mk, scales_mk)``."""
        if self.stacked and len(self.locs) > 1:
            return stacked_gaussian_component_log_density(
                value, torch.stack(self.locs, -3), torch.stack(self.scales, -3))
        return torch.stack([gaussian_component_log_density(x, loc, scale) for x, loc, scale
                            in zip(self.split(value), self.locs, self.scales)], dim=-2)

    def component_variances(self, max_factor: float = 5.0) -> list[torch.Tensor]:
        """Per-modality ``(K, d_m)`` variances of the components: ``scale^2`` (normal),
        ``scale^2 + rowsum(W^2)`` (factor), ``scale^2 nu / (nu - 2)`` (Student-t). A t
        with ``nu <= 2`` has no variance; the factor is capped at ``max_factor`` (``nu =
        2.5``) so moment matching (the guide's fill-in of a missing modality) stays
        finite."""
        if self.component == "normal":
            return self._noise()
        if self.component == "factor":
            return factor_analysis.marginal_variances(self._noise(), self.loadings)
        factors = [torch.where(df > 2.0, df / (df - 2.0).clamp_min(1e-6),
                               torch.full_like(df, max_factor)).clamp_max(max_factor)
                   [..., None, None] for df in self.df]
        return [s.pow(2) * f for s, f in zip(self.scales, factors)]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self.mixture == "joint":
            return floored_logsumexp(self._weights + self._joint(value, self.mask), dim=-1)
        lp = self.component_log_density(value)
        per = floored_logsumexp(self._weights.unsqueeze(-2) + lp, dim=-1)
        if self.mask is not None:
            per = torch.where(self.mask, per, per.new_zeros(()))
        return per.sum(-1)

    def responsibilities(self, value: torch.Tensor) -> torch.Tensor:
        """Posterior assignment probabilities ``p(c = k | x)``.

        ``(B, K)`` for ``joint``; ``(B, M, K)`` (one per modality) for ``independent``.
        """
        if self.mixture == "joint":
            return torch.softmax(self._weights + self._joint(value, self.mask), dim=-1)
        lp = self.component_log_density(value)
        return torch.softmax(self._weights.unsqueeze(-2) + lp, dim=-1)

    def conditional_moments(self, value: torch.Tensor, present: torch.Tensor,
                            detach: bool = False
                            ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Mean and variance of each modality given the ``present`` ones.

        ``joint``: responsibilities ``r_ik`` from the present modalities of ``value``,
        then the moments of ``sum_k r_ik p_k`` (the components' own variances, Student-t
        included; a factor component's ``p_k`` is its Gaussian given the present
        features, :meth:`component_conditionals`). ``independent``: a modality's
        component tells nothing about another's, so ``r_ik = pi_k`` (the prior moments).
        An example with nothing present also gets the prior moments. The ``mask`` this
        distribution was built with is not used: ``present`` says what to condition on.

        Args:
            value: a value of this distribution, ``(B, M, d)`` or ``(B, sum d_m)``;
                entries of absent modalities are ignored (they may be anything finite).
            present: ``(B, M)`` bool.
            detach: condition on ``value.detach()``.

        Returns:
            ``([mean (B, d_m)], [variance (B, d_m)])``, one of each per modality.
        """
        if self.mixture == "joint" and self.component == "factor":
            resp, locs, variances = self.component_conditionals(value, present, detach)
            means = [(resp.unsqueeze(-1) * loc).sum(-2) for loc in locs]
            return means, [((resp.unsqueeze(-1) * (var + loc.pow(2))).sum(-2)
                            - mean.pow(2)).clamp_min(0.0)
                           for loc, var, mean in zip(locs, variances, means)]
        if self.mixture == "joint":
            resp = torch.softmax(self._weights + self._joint(value, present, detach), -1)
        else:
            weights = self._weights.exp()
            resp = weights.expand(*weights.shape[:-2], present.shape[0], -1)
        means, variances = [], []
        for loc, var in zip(self.locs, self.component_variances()):
            mean = resp @ loc
            second = resp @ (var + loc.pow(2))
            means.append(mean)
            variances.append((second - mean.pow(2)).clamp_min(0.0))
        return means, variances

    def component_conditionals(self, value: torch.Tensor, present: torch.Tensor,
                               detach: bool = False
                               ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Responsibilities and each component's moments of every modality given the
        ``present`` modalities (``joint``), as :meth:`conditional_moments` mixes them.

        Returns:
            ``(resp (B, K), [mean (B, K, d_m)], [variance (B, K, d_m)])``. Without
            factors a component's moments do not depend on the example: the means and
            variances are then broadcast views of the ``(1, K, d_m)`` parameters.
        """
        if self.mixture != "joint":
            raise ValueError("component_conditionals: only a 'joint' mixture conditions "
                             "one modality's component on another's")
        resp = torch.softmax(self._weights + self._joint(value, present, detach), -1)
        if self.component != "factor":
            return (resp, [loc.unsqueeze(-3) for loc in self.locs],
                    [var.unsqueeze(-3) for var in self.component_variances()])
        factors = self._factors(value, present, detach)
        pairs = [factor_analysis.conditional_moments(loc, var, w, factors)
                 for loc, var, w in zip(self.locs, self._noise(), self.loadings)]
        return resp, [m for m, _ in pairs], [v for _, v in pairs]

    def fill_absent(self, value: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``value`` with every absent modality replaced by its conditional mean given
        the present ones (:meth:`conditional_moments`); same shape as ``value``.

        Conditioning uses ``value`` detached: the fill is a prediction from the present
        modalities, not a path for their gradients to game it.
        """
        means, _ = self.conditional_moments(value, present, detach=True)
        parts = [torch.where(present[:, j : j + 1], x, mean)
                 for j, (x, mean) in enumerate(zip(self.split(value), means))]
        return torch.stack(parts, dim=-2) if self.stacked else torch.cat(parts, dim=-1)

    def sample(self, sample_shape=torch.Size()):
        if self.log_weights.dim() == 1:
            return self._sample_one_draw(sample_shape)
        num_modalities = len(self.locs)
        logits = self._weights.expand(*self.batch_shape, -1)          # (*L, B, K)
        if self.mixture == "joint":
            comp = torch.distributions.Categorical(logits=logits).sample(sample_shape)
            comps = [comp] * num_modalities
        else:
            logits = logits.unsqueeze(-2).expand(*self.batch_shape, num_modalities, -1)
            comps = torch.distributions.Categorical(logits=logits).sample(
                sample_shape).unbind(-1)
        with torch.no_grad():
            # A one-hot product picks each example's component, draw dims or not.
            picks = [torch.nn.functional.one_hot(c, self.log_weights.shape[-1])
                     .to(self.log_weights.dtype) for c in comps]
            locs = [p @ loc for p, loc in zip(picks, self.locs)]
            scales = [p @ scale for p, scale in zip(picks, self.scales)]
            if self.component == "studentt":
                noise = [torch.distributions.StudentT(
                    df[..., None, None].expand(loc.shape)).sample()
                    for loc, df in zip(locs, self.df)]
            else:
                noise = [torch.randn_like(loc) for loc in locs]
            parts = [loc + scale * e for loc, scale, e in zip(locs, scales, noise)]
            if self.component == "factor":
                picked = [(p @ w.flatten(-2)).unflatten(-1, w.shape[-2:])
                          for p, w in zip(picks, self.loadings)]
                parts = [x + s for x, s in zip(parts, self._factor_shifts(picked))]
        return torch.stack(parts, dim=-2) if self.stacked else torch.cat(parts, dim=-1)

    def _factor_shifts(self, loadings: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[W_m f]`` for picked loadings ``[(..., d_m, r)]``: standard normal factors
        ``f (..., r)``, one per example shared by its modalities (``joint``) or one per
        modality."""
        shared = torch.randn_like(loadings[0][..., 0, :])
        return [(w @ (shared if self.mixture == "joint" else torch.randn_like(shared))
                 .unsqueeze(-1)).squeeze(-1) for w in loadings]

    def _sample_one_draw(self, sample_shape=torch.Size()):
        """:meth:`sample` without draw dims (the random stream of earlier versions)."""
        shape = torch.Size(sample_shape) + self.batch_shape
        num_modalities = len(self.locs)
        if self.mixture == "joint":
            comp = torch.distributions.Categorical(logits=self.log_weights).sample(shape)
            comps = [comp] * num_modalities
        else:
            comps = torch.distributions.Categorical(logits=self.log_weights).sample(
                shape + (num_modalities,)).unbind(-1)
        with torch.no_grad():
            if self.component == "studentt":
                noise = [torch.distributions.StudentT(df).sample(loc[c].shape)
                         for c, loc, df in zip(comps, self.locs, self.df)]
            else:
                noise = [torch.randn_like(loc[c]) for c, loc in zip(comps, self.locs)]
            parts = [loc[c] + scale[c] * e
                     for c, loc, scale, e in zip(comps, self.locs, self.scales, noise)]
            if self.component == "factor":
                shifts = self._factor_shifts([w[c] for c, w in zip(comps, self.loadings)])
                parts = [x + s for x, s in zip(parts, shifts)]
        return torch.stack(parts, dim=-2) if self.stacked else torch.cat(parts, dim=-1)
