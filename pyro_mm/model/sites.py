"""Helpers for the model's sample sites under ``pyro.infer.Predictive`` and masks."""

from __future__ import annotations

import pyro.distributions as dist
import torch


def unbatched(value: torch.Tensor, event_dim: int) -> torch.Tensor:
    """A global site's value as the model computes with it: ``(*L, *event)``, its draw
    dims ``L`` in front (none for one draw).

    ``pyro.infer.Predictive`` (sequential, its default) conditions on one draw padded
    to ``(1, ...)``: that is one draw, the padding is dropped. ``Predictive(...,
    parallel=True)`` and ``Trace_ELBO(vectorize_particles=True)`` give ``(S, 1,
    *event)``: ``S`` draws, left of the data plate (dim -1, the ``1``); the trailing
    size-1 plate dims are dropped, so ``L = (S,)``. A batch of draws is evaluated in
    one pass (:mod:`pyro_mm.model.distributions` on draw dims).
    """
    if value.dim() == event_dim:  # the usual case: leave the tensor itself alone
        return value
    extra = list(value.shape[: value.dim() - event_dim])
    while extra and extra[-1] == 1:
        extra.pop()
    return value.reshape(torch.Size(extra) + value.shape[value.dim() - event_dim:])


#: Event dims of each global site (``<m>`` stands for a modality's name).
_EVENT_DIMS = {"alpha": 0, "sticks": 1, "component_loc_": 2, "component_scale_": 2,
               "component_df_": 0, "component_loadings_": 3}


def draw_values(values) -> dict[str, torch.Tensor]:
    """Global site values as :func:`unbatched` shapes them (``site -> (*L, *event)``),
    for consumers that receive a guide's values as they are, e.g. under
    ``vectorize_particles`` (``(P, 1, *event)``)."""
    out = {}
    for name, value in values.items():
        event = next((d for prefix, d in _EVENT_DIMS.items()
                      if name == prefix or (prefix.endswith("_") and name.startswith(prefix))),
                     None)
        out[name] = value if event is None else unbatched(value, event)
    return out


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
