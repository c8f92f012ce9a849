"""Closed-form variational Bayes for the observed mixture where it is conjugate.

The observed model with Gaussian components and the inverse-gamma variance prior
(:class:`~pyro_mm.model.dp_mixture.MultimodalDPMixture` with
``representation="observed"``, ``component="normal"``, ``mixture="joint"``, a fixed
``alpha``) is conditionally conjugate given the assignments ``c_i``:

    v_k ~ Beta(1, alpha),  mu_kd ~ N(0, s0^2),  sigma_kd^2 ~ InvGamma(a0, b0),
    c_i ~ Cat(pi(v)),      x_id | c_i = k ~ N(mu_kd, sigma_kd^2)  (observed cells only).

So the mean-field posterior ``q(c) q(v) q(mu) q(sigma^2)`` has every factor in closed
form and coordinate ascent (CAVI; Blei & Jordan 2006 for the stick-breaking weights,
Bishop 2006 ch. 10 for the Gaussian parts) reaches a local optimum of the ELBO in a few
dozen full passes over the data, each ``O(N K d)``: what SVI approaches in thousands of
noisy steps. Each update below is the exact maximiser of the ELBO in its factor, so the
ELBO never decreases (tested).

:meth:`~pyro_mm.model.guide.MultimodalGuide.initialize` starts the guide here:
:func:`unconstrained_moments` turns the factors into the mean and standard deviation of
each global site in the unconstrained space the guide's ``AutoNormal`` lives in (exact
moments: ``logit v ~ (psi(a) - psi(b), psi'(a) + psi'(b))``, ``log sigma = -log(tau) /
2`` for ``tau ~ Gamma(A, B)``), and SVI goes on from there under the full model (its
recording-resolution term, any classifier, factors).

Shapes: ``N`` examples, ``D`` features (the modalities concatenated), ``K`` components.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch.distributions import Beta, Gamma, Normal, kl_divergence

from .distributions import EXP_FLOOR, floored_logsumexp

_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass
class ConjugatePrior:
    """The hyperparameters: ``alpha`` (stick-breaking concentration), ``loc_scale``
    (``s0``), ``a0``, ``b0`` (the inverse-gamma of the variances)."""

    alpha: float
    loc_scale: float
    a0: float
    b0: float


@dataclasses.dataclass
class ConjugatePosterior:
    """The factors of ``q``.

    Attributes:
        stick_a, stick_b: ``(K - 1,)`` the Beta of each stick.
        loc_mean, loc_var: ``(K, D)`` the Normal of each component mean.
        var_shape, var_rate: ``(K, D)`` the inverse-gamma of each component variance
            (``1 / sigma^2 ~ Gamma(var_shape, var_rate)``).
        resp: ``(N, K)`` ``q(c_i = k)``.
        elbo: the ELBO after each iteration (nats, whole data set).
    """

    stick_a: torch.Tensor
    stick_b: torch.Tensor
    loc_mean: torch.Tensor
    loc_var: torch.Tensor
    var_shape: torch.Tensor
    var_rate: torch.Tensor
    resp: torch.Tensor
    elbo: list[float]


def conjugate_start(model) -> bool:
    """Whether ``model`` (a :class:`~pyro_mm.model.dp_mixture.MultimodalDPMixture`) is
    the conjugate model above: observed features, Gaussian components, one joint
    assignment, the inverse-gamma variance prior, ``alpha`` fixed. (A classifier,
    factors and the resolution floor are outside it; the closed form is then a start
    for SVI, which fits them.)"""
    return model.component == "normal" and _conjugate_but_components(model)


def closed_form_start(model) -> bool:
    """Whether the guide starts ``model`` from the closed form: the conjugate model
    (:func:`conjugate_start`), or the same with factor components, whose diagonal
    Gaussian is that model (their loadings then start from its responsibilities, and
    SVI fits them: the closed form is never the whole fit)."""
    return model.component in ("normal", "factor") and _conjugate_but_components(model)


def _conjugate_but_components(model) -> bool:
    """The conditions of :func:`conjugate_start` other than the component family."""
    return (model.representation == "observed" and model.mixture == "joint"
            and model.scale_prior == "inverse_gamma" and not model.learn_alpha)


def expected_log_weights(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(K,)`` ``E_q[log pi_k]`` for sticks ``v_k ~ Beta(a_k, b_k)``, ``k < K``:
    ``E[log v_k] + sum_{j<k} E[log(1 - v_j)]``, the last weight taking the rest."""
    total = torch.digamma(a + b)
    log_v, log_rest = torch.digamma(a) - total, torch.digamma(b) - total
    before = torch.cat([log_rest.new_zeros(1), torch.cumsum(log_rest, 0)])
    return torch.cat([log_v, log_v.new_zeros(1)]) + before


def _expected_log_density(x, seen, q: ConjugatePosterior) -> torch.Tensor:
    """``(N, K)`` ``sum_d seen_id E_q[log N(x_id; mu_kd, sigma_kd^2)]``."""
    precision = q.var_shape / q.var_rate                        # E[1 / sigma^2]
    log_var = torch.log(q.var_rate) - torch.digamma(q.var_shape)  # E[log sigma^2]
    # E[(x - mu)^2] = x^2 - 2 x m + m^2 + s^2, expanded into matrix products (O(N K)).
    quadratic = ((x * x) @ precision.T - 2 * x @ (q.loc_mean * precision).T
                 + seen @ ((q.loc_mean.pow(2) + q.loc_var) * precision).T)
    return -0.5 * (quadratic + seen @ (log_var + _LOG_2PI).T)


def _update_globals(x, seen, resp, prior: ConjugatePrior, q: ConjugatePosterior,
                    weight: float) -> None:
    """The sticks, then each component's mean and variance factors, from ``resp``;
    ``weight`` multiplies the sufficient statistics (``N / n`` for a subsample)."""
    counts = weight * resp.sum(0)                                        # (K,)
    q.stick_a = 1.0 + counts[:-1]
    q.stick_b = prior.alpha + torch.flip(torch.cumsum(torch.flip(counts, [0]), 0), [0])[1:]
    n = weight * resp.T @ seen                                           # (K, D)
    s1 = weight * resp.T @ x
    s2 = weight * resp.T @ (x * x)
    precision = q.var_shape / q.var_rate
    loc_precision = 1.0 / prior.loc_scale ** 2 + precision * n
    q.loc_var = 1.0 / loc_precision
    q.loc_mean = precision * s1 / loc_precision
    q.var_shape = prior.a0 + 0.5 * n
    q.var_rate = prior.b0 + 0.5 * (s2 - 2 * q.loc_mean * s1
                                   + n * (q.loc_mean.pow(2) + q.loc_var))


def _elbo(local: torch.Tensor, prior: ConjugatePrior, q: ConjugatePosterior,
          weight: float) -> float:
    """The ELBO at ``q`` with ``q(c)`` at its optimum, where the local terms
    ``sum_k r_ik (E[log pi_k] + E[log p(x_i | k)]) - sum_k r_ik log r_ik`` collapse to
    ``local_i = logsumexp_k (E[log pi_k] + E[log p(x_i | k)])``."""
    ones = torch.ones_like(q.stick_a)
    kl = (kl_divergence(Beta(q.stick_a, q.stick_b), Beta(ones, prior.alpha * ones)).sum()
          + kl_divergence(Normal(q.loc_mean, q.loc_var.sqrt()),
                          Normal(torch.zeros_like(q.loc_mean),
                                 torch.full_like(q.loc_mean, prior.loc_scale))).sum()
          # KL is invariant under the bijection sigma^2 = 1 / tau: the Gammas' KL.
          + kl_divergence(Gamma(q.var_shape, q.var_rate),
                          Gamma(torch.full_like(q.var_shape, prior.a0),
                                torch.full_like(q.var_rate, prior.b0))).sum())
    return float(weight * local.sum() - kl)


def fit_conjugate_mixture(x: torch.Tensor, seen: torch.Tensor, resp: torch.Tensor,
                          prior: ConjugatePrior, weight: float = 1.0,
                          max_iter: int = 200, tol: float = 1e-6) -> ConjugatePosterior:
    """Coordinate ascent from initial responsibilities to a local optimum of the ELBO.

    Args:
        x: ``(N, D)`` features (any finite value where not seen).
        seen: ``(N, D)`` 1.0 where a feature is observed, 0.0 where missing.
        resp: ``(N, K)`` initial ``q(c)``, rows summing to 1 (e.g. one-hot nearest
            k-means++ seeds).
        prior: the hyperparameters.
        weight: ``N_total / N`` when ``x`` is a subsample of the data.
        max_iter: most iterations (each: the global factors, then ``q(c)``).
        tol: stop when the ELBO gains less than ``tol`` times its magnitude.

    Returns:
        the :class:`ConjugatePosterior`, ``elbo`` holding every iteration's value.
    """
    x = torch.where(seen > 0, x, torch.zeros_like(x))
    K, D = resp.shape[1], x.shape[1]
    # The variance factors start at the prior (the first mean update reads E[1/sigma^2]).
    q = ConjugatePosterior(
        stick_a=x.new_ones(K - 1), stick_b=x.new_ones(K - 1),
        loc_mean=x.new_zeros(K, D), loc_var=x.new_ones(K, D),
        var_shape=x.new_full((K, D), prior.a0), var_rate=x.new_full((K, D), prior.b0),
        resp=resp, elbo=[])
    for _ in range(max_iter):
        _update_globals(x, seen, q.resp, prior, q, weight)
        joint = _expected_log_density(x, seen, q) + expected_log_weights(q.stick_a,
                                                                         q.stick_b)
        local = floored_logsumexp(joint, keepdim=True)
        q.resp = torch.exp((joint - local).clamp_min(EXP_FLOOR))
        q.elbo.append(_elbo(local, prior, q, weight))
        if len(q.elbo) > 1 and q.elbo[-1] - q.elbo[-2] < tol * abs(q.elbo[-1]):
            break
    return q


def unconstrained_moments(q: ConjugatePosterior) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Mean and standard deviation of each global site in the unconstrained space of
    Pyro's ``biject_to`` (what ``AutoNormal``'s ``locs`` / ``scales`` hold):
    ``"sticks"`` ``(K - 1,)`` (logit), ``"component_loc"`` and ``"component_scale"``
    ``(K, D)`` (identity; log of ``sigma``)."""
    a, b = q.stick_a, q.stick_b
    shape, rate = q.var_shape, q.var_rate
    return {
        "sticks": (torch.digamma(a) - torch.digamma(b),
                   (torch.polygamma(1, a) + torch.polygamma(1, b)).sqrt()),
        "component_loc": (q.loc_mean, q.loc_var.sqrt()),
        # log sigma = -log(tau) / 2, tau ~ Gamma(shape, rate): E[log tau] = psi(shape) -
        # log(rate), Var[log tau] = psi'(shape).
        "component_scale": (0.5 * (torch.log(rate) - torch.digamma(shape)),
                            0.5 * torch.polygamma(1, shape).sqrt()),
    }


__all__ = ["ConjugatePosterior", "ConjugatePrior", "closed_form_start", "conjugate_start",
           "expected_log_weights", "fit_conjugate_mixture", "unconstrained_moments"]
