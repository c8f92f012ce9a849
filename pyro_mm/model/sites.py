"""Helpers for the model's sample sites under ``pyro.infer.Predictive`` and masks."""

from __future__ import annotations

import pyro.distributions as dist
import torch


def unbatched(value: torch.Tensor, event_dim: int) -> torch.Tensor:
    """A global site's value without leading size-1 dims. ``pyro.infer.Predictive``
    (sequential, its default) conditions on draws padded to ``(1, ...)``; one draw at
    a time is what the model computes with. A real batch of draws is refused."""
    if value.dim() == event_dim:  # the usual case: leave the tensor itself alone
        return value
    extra = value.shape[: value.dim() - event_dim]
    if any(size != 1 for size in extra):
        raise ValueError(
            f"global sites: got a batch of {tuple(extra)} draws; the model takes one "
            "draw at a time (use Predictive(..., parallel=False), the default)")
    return value.reshape(value.shape[value.dim() - event_dim:])


def fill_unobserved(values: torch.Tensor, observed: torch.Tensor,
                     likelihood: dist.Distribution) -> torch.Tensor:
    """``values`` where ``observed (B,)``, elsewhere a draw from ``likelihood``.

    The site stays observed and masked, so the unobserved rows add nothing to the
    ELBO (it is exactly what it was), while ``pyro.infer.Predictive`` and
    ``poutine.trace`` see the model's own prediction there instead of a placeholder.
    """
    if bool(observed.all()):
        return values
    draw = likelihood.sample()
    keep = observed.reshape(observed.shape + (1,) * (values.dim() - observed.dim()))
    return torch.where(keep, values, draw)
