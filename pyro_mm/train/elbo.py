"""The ELBO as :func:`pyro_mm.fit` computes it: Pyro's ``Trace_ELBO`` without its
host synchronisation per site.

``Trace_ELBO.differentiable_loss`` adds every site's log-density up twice: as a tensor
(the surrogate, whose gradient is the estimator) and as Python floats (one ``.item()``
per site, 48 per step for mfeat's six views) for the value it returns. Each ``.item()``
waits for the device. When no guide site needs a score-function term (every site is
reparameterised, as in :class:`~pyro_mm.model.guide.MultimodalGuide`) the two sums hold the
same terms, so :class:`TraceELBO` returns the tensor sum alone: the same gradients, and
the same value up to the rounding of the sum (Pyro's float sum is in double precision).
A guide with a non-reparameterised site gets Pyro's own computation.
"""

from __future__ import annotations

import torch
from pyro.infer import Trace_ELBO
from pyro.infer.util import is_identically_zero


class TraceELBO(Trace_ELBO):
    """:class:`pyro.infer.Trace_ELBO` without the per-site ``.item()`` calls (see the
    module docstring); ``differentiable_loss`` returns a scalar tensor (the negative
    ELBO estimate, averaged over ``num_particles``)."""

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        surrogate = 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                surrogate = surrogate + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                _, score_function_term, entropy_term = site["score_parts"]
                if not is_identically_zero(score_function_term):
                    return super()._differentiable_loss_particle(model_trace, guide_trace)
                if not is_identically_zero(entropy_term):
                    surrogate = surrogate - entropy_term.sum()
        return -surrogate, -surrogate

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            value, surrogate = self._differentiable_loss_particle(model_trace, guide_trace)
            # Pyro's fallback returns a float value and a surrogate tensor: its form.
            particle = (surrogate if isinstance(value, torch.Tensor)
                        else value + (surrogate - surrogate.detach()))
            loss = loss + particle / self.num_particles
        return loss
