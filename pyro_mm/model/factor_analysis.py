"""Low-rank-plus-diagonal components (a mixture of factor analysers): the algebra.

Component ``k`` generates the modalities of an example from ``r`` shared factors::

    f_i ~ N(0, I_r),    x_im | k = mu_mk + W_mk f_i + eps_im,    eps_im ~ N(0, diag psi_mk)

so its covariance over all features is ``Sigma_k = W_k W_k^T + diag psi_k`` with ``W_k``
the modalities' loadings ``W_mk (d_m, r)`` stacked: correlated features (within a view and
across views) share factors instead of counting as independent evidence. Never forming
``Sigma_k``, every quantity goes through the ``r x r`` capacitance matrix of the present
features ``o`` (the Woodbury identity and the matrix determinant lemma)::

    C = I_r + W_o^T psi_o^-1 W_o,        u = W_o^T psi_o^-1 (x_o - mu_o)
    log N(x_o; mu_o, Sigma_oo) = log N(x_o; mu_o, diag psi_o) + u^T C^-1 u / 2 - log|C| / 2
    f | x_o, k ~ N(C^-1 u, C^-1)
    x_h | x_o, k ~ N(mu_h + W_h C^-1 u, diag psi_h + W_h C^-1 W_h^T)   (h: absent features)

A missing modality drops out of ``W_o`` and ``psi_o``: the marginal of a Gaussian. The
cost per example and component is ``O(d r + r^3)``, against ``O(d^3)`` for a full
covariance.

Shapes: ``B`` examples, ``K`` components, ``M`` modalities, ``d_m`` features, rank ``r``;
every parameter may carry leading draw dims ``L`` (as in
:mod:`pyro_mm.model.distributions`), which every result gains in front.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch


@dataclasses.dataclass
class FactorPosterior:
    """The factors given the present features, per example and component.

    Attributes:
        covariance: ``(*L, B or 1, K, r, r)`` ``Cov[f | x_o, k] = C^-1`` (``B`` is 1
            when every example sees the same modalities).
        mean: ``(*L, B, K, r)`` ``E[f | x_o, k] = C^-1 u``.
        correction: ``(*L, B, K)`` ``u^T C^-1 u / 2 - log|C| / 2``: what turns the
            diagonal Gaussian's log-density of the present features into the component's.
    """

    covariance: torch.Tensor
    mean: torch.Tensor
    correction: torch.Tensor


def factor_posterior(values: Sequence[torch.Tensor], locs: Sequence[torch.Tensor],
                     variances: Sequence[torch.Tensor], loadings: Sequence[torch.Tensor],
                     present: torch.Tensor | None = None) -> FactorPosterior:
    """The posterior of the shared factors given the present modalities (module
    docstring), for every example and component.

    Args:
        values: per modality ``(*L, B, d_m)`` (or ``(B, d_m)``); an absent modality's
            entries are ignored (they may be anything finite).
        locs, variances: per modality ``(*L, K, d_m)``: ``mu_mk`` and ``psi_mk``.
        loadings: per modality ``(*L, K, d_m, r)``.
        present: ``(B, M)`` bool, or ``None`` (all present).

    ``C`` depends on which modalities are present, not on their values: it is factorised
    once per component and pattern of present modalities (at most ``2^M - 1`` of them),
    and ``C^-1`` is applied to each example's ``u`` by products, not by a triangular
    solve per example and component (tens of thousands of ``r x r`` solves per step).
    """
    capacitances, projections = [], []
    for x, loc, var, w in zip(values, locs, variances, loadings):
        weighted = w / var.unsqueeze(-1)                              # psi^-1 W
        capacitances.append(w.mT @ weighted)                          # (*L, K, r, r)
        K, d, r = weighted.shape[-3:]
        flat = weighted.transpose(-3, -2).reshape(*weighted.shape[:-3], d, K * r)
        u = (x @ flat).unflatten(-1, (K, r))                          # (*L, B, K, r)
        projections.append(u - (loc.unsqueeze(-1) * weighted).sum(-2).unsqueeze(-3))
    eye = torch.eye(capacitances[0].shape[-1], dtype=capacitances[0].dtype,
                    device=capacitances[0].device)
    if present is None:
        capacitance = (eye + sum(capacitances)).unsqueeze(-4)         # (*L, 1, K, r, r)
        u, pattern = sum(projections), None
    else:
        patterns, pattern = torch.unique(present, dim=0, return_inverse=True)
        stacked = torch.stack(capacitances, -4)                       # (*L, M, K, r, r)
        capacitance = eye + (patterns.to(stacked.dtype) @ stacked.flatten(-3)).unflatten(
            -1, stacked.shape[-3:])                                   # (*L, P, K, r, r)
        u = sum(torch.where(present[:, j, None, None], p, p.new_zeros(()))
                for j, p in enumerate(projections))
    chol = torch.linalg.cholesky(capacitance)
    covariance = torch.cholesky_inverse(chol)
    log_det = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)     # (*L, P|1, K)
    if pattern is None:  # one C per component: a matrix product per component
        mean = (u.transpose(-3, -2) @ covariance.squeeze(-4)).transpose(-3, -2)
    else:  # each example's pattern's
        covariance, log_det = covariance[..., pattern, :, :, :], log_det[..., pattern, :]
        mean = (covariance * u.unsqueeze(-2)).sum(-1)                 # (*L, B, K, r)
    return FactorPosterior(covariance=covariance, mean=mean,
                           correction=0.5 * ((u * mean).sum(-1) - log_det))


def conditional_moments(loc: torch.Tensor, variance: torch.Tensor, loading: torch.Tensor,
                        posterior: FactorPosterior) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of one modality's features in every component, given the
    present features that ``posterior`` conditioned on (module docstring).

    Args:
        loc, variance: ``(*L, K, d)``; loading: ``(*L, K, d, r)``.

    Returns:
        ``(mean, variance)``, each ``(*L, B, K, d)``.
    """
    # W m: per component, (B, r) @ (r, d).
    shift = (posterior.mean.transpose(-3, -2) @ loading.mT).transpose(-3, -2)
    # diag(W C^-1 W^T)_d = sum_rs W_dr W_ds (C^-1)_rs: the outer products of W's rows do
    # not depend on the example, so no (B, K, d, r) intermediate is built.
    inverse = posterior.covariance.flatten(-2)                        # (*L, B|1, K, r r)
    outer = (loading.unsqueeze(-1) * loading.unsqueeze(-2)).flatten(-2)  # (*L, K, d, r r)
    spread = (inverse.transpose(-3, -2) @ outer.mT).transpose(-3, -2)
    return loc.unsqueeze(-3) + shift, variance.unsqueeze(-3) + spread


def embed_private(loadings: Sequence[torch.Tensor], shared: int) -> list[torch.Tensor]:
    """Per-view loadings ``(*L, K, d_m, shared + p)`` (``p`` private factors per view)
    placed in one factor space of ``shared + M p`` factors: view ``m``'s private columns
    at ``shared + m p``, zeros for the other views' private factors, so those factors
    explain variation within one view only and carry nothing across views."""
    private = loadings[0].shape[-1] - shared
    out = []
    for j, w in enumerate(loadings):
        pad = w.new_zeros(*w.shape[:-1], private)
        blocks = [w[..., :shared]] + [w[..., shared:] if i == j else pad
                                      for i in range(len(loadings))]
        out.append(torch.cat(blocks, -1))
    return out


def marginal_variances(variances: Sequence[torch.Tensor], loadings: Sequence[torch.Tensor]
                       ) -> list[torch.Tensor]:
    """Per modality ``(*L, K, d_m)``: each feature's variance in each component,
    ``psi + rowsum(W^2)`` (no feature conditioned on)."""
    return [var + w.pow(2).sum(-1) for var, w in zip(variances, loadings)]


def initial_loadings(x: torch.Tensor, seen: torch.Tensor, resp: torch.Tensor,
                     locs: torch.Tensor, variances: torch.Tensor, rank: int,
                     min_share: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Loadings and noise variances to start a fit from a diagonal mixture's fit.

    For each component, the principal directions of its members' residuals measured in
    units of the component's standard deviations (probabilistic PCA, Tipping and
    Bishop 1999: ``W = U (lambda - s^2)^1/2``, ``s^2`` the mean of the discarded
    eigenvalues), scaled back; the noise keeps what the factors do not explain of each
    feature's variance, at least ``min_share`` of it.

    Args:
        x, seen: ``(N, D)`` features and 1.0 where observed (unseen cells count as
            lying at the component mean).
        resp: ``(N, K)`` responsibilities.
        locs, variances: ``(K, D)`` the diagonal fit.
        rank: ``r``.

    Returns:
        ``(loadings (K, D, r), variances (K, D))``.
    """
    out_w, out_var = [], []
    for k in range(resp.shape[1]):
        weight = resp[:, k]
        total = weight.sum().clamp_min(1e-12)
        sd = variances[k].sqrt()
        residual = seen * (x - locs[k]) / sd * (weight / total).sqrt().unsqueeze(-1)
        w = _principal_loadings(residual, rank)
        share = (1.0 - w.pow(2).sum(-1)).clamp_min(min_share)
        out_w.append(w * sd.unsqueeze(-1))
        out_var.append(variances[k] * share)
    return torch.stack(out_w), torch.stack(out_var)


def _principal_loadings(residual: torch.Tensor, rank: int) -> torch.Tensor:
    """``(D, r)`` probabilistic-PCA loadings of weighted residuals ``(N, D)`` whose
    squared sum per column is that column's variance."""
    N, D = residual.shape
    q = min(rank, N, D)
    _, s, v = torch.svd_lowrank(residual, q=q, niter=4, M=None)
    eig = s.pow(2)
    rest = (residual.pow(2).sum() - eig.sum()).clamp_min(0.0) / max(D - q, 1)
    w = v * (eig - rest).clamp_min(0.0).sqrt()                        # (D, q)
    if q < rank:
        w = torch.cat([w, w.new_zeros(D, rank - q)], -1)
    return w


__all__ = ["FactorPosterior", "conditional_moments", "factor_posterior",
           "initial_loadings", "marginal_variances"]
