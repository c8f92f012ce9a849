"""Draws of the global posterior: the one loop that every multi-draw path uses
(:func:`~pyro_mm.predictive.predict.predict` with ``num_samples``,
:func:`~pyro_mm.predictive.impute.impute`, and the diagnostics' sampling loop).

The global guide is run ``block`` draws at a time inside one outer plate
(``"_pyro_mm_draws"``, the rightmost batch dim), so its sites are sampled in one
vectorised pass; each draw is then handed out alone, as a replayable trace of its global
sites, with its log density under the guide.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pyro
import torch
from pyro import poutine

from ..data.batch import TensorBatch

#: Global draws made in one vectorised pass of the guide.
DRAW_BLOCK = 256


@dataclasses.dataclass
class GlobalDraw:
    """One draw ``theta_s`` of the global guide.

    Attributes:
        index: ``s``, its position among the draws.
        values: ``site name -> value`` (each site's own shape, no draw axis).
        log_q: ``log q(theta_s)``, the guide's log density of the draw (masked, not
            scaled).
        trace: the draw as a :class:`pyro.poutine.Trace` of the global sites, to
            ``poutine.replay`` the local guide or the model against.
    """

    index: int
    values: dict[str, torch.Tensor]
    log_q: float
    trace: poutine.Trace


def site_log_prob(site: dict[str, Any]) -> torch.Tensor:
    """``log_prob`` of a trace site, masked but *not* scaled (the plate's ``N / B`` and
    KL warm-up scales are left out on purpose: callers sum chunks instead)."""
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    if site["mask"] is not None:
        log_prob = torch.where(site["mask"], log_prob, log_prob.new_zeros(()))
    return log_prob


@torch.no_grad()
def global_draws(guide, batch: TensorBatch, num_samples: int, block: int = DRAW_BLOCK
                 ) -> Iterator[GlobalDraw]:
    """``num_samples`` independent draws of ``guide.global_guide`` (a
    :class:`~pyro_mm.model.guide.MultimodalGuide`; a MAP guide yields its point estimate
    every time), ``block`` at a time in one vectorised pass.

    ``poutine.block`` keeps the draws out of any trace the caller is running.
    """
    for start in range(0, num_samples, block):
        size = min(block, num_samples - start)
        with poutine.block(), pyro.plate("_pyro_mm_draws", size, dim=-1):
            trace = poutine.trace(guide.global_guide).get_trace(batch, None, 1.0)
        sites = [(name, site) for name, site in trace.nodes.items()
                 if site["type"] == "sample" and not site["is_observed"]]
        log_q = sum(site_log_prob(site).double().expand(size) for _, site in sites)
        for i in range(size):
            yield _one_draw(start + i, i, size, sites, float(log_q[i]),
                            guide.global_sites)


def _one_draw(index: int, i: int, size: int, sites, log_q: float, names) -> GlobalDraw:
    """Draw ``i`` of a block of ``size``: every site's value at position ``i`` of the
    draw axis (the plate puts it first)."""
    draw = poutine.Trace()
    for name, site in sites:
        value = site["value"]
        value = value[i] if value.dim() > 0 and value.shape[0] == size else value
        draw.add_node(name, type="sample", name=name, is_observed=False, value=value,
                      infer=site["infer"], fn=site["fn"], cond_indep_stack=(), mask=None,
                      args=(), kwargs={})
    values = {name: draw.nodes[name]["value"] for name in names}
    return GlobalDraw(index, values, log_q, draw)


__all__ = ["DRAW_BLOCK", "GlobalDraw", "global_draws", "site_log_prob"]
