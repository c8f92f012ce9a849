"""The global parameters of the mixture: :class:`MixtureParams` and the sites they come
from.

One draw (or point estimate) of ``alpha``, the sticks and the component means and scales
of :class:`~pyro_mm.models.MultimodalDPMixture`, with the mixture distribution they
define. :func:`point_params` is the plug-in estimate every consumer above the guide
(prediction, factors, diagnostics) starts from.
"""

from __future__ import annotations

import dataclasses

import torch

from .distributions import MultimodalMixture, stick_breaking_log_weights

#: Names of the global latent sites (``<m>`` is each modality's name).
GLOBAL_SITES = ("alpha", "sticks", "component_loc_<m>", "component_scale_<m>")


@dataclasses.dataclass
class MixtureParams:
    """One draw (or point estimate) of the global parameters.

    Attributes:
        log_weights: ``(K,)`` log mixture weights.
        locs, scales: one ``(K, d_m)`` tensor per modality.
        alpha: concentration (scalar tensor).
        sticks: ``(K - 1,)`` stick proportions.
    """

    log_weights: torch.Tensor
    locs: list[torch.Tensor]
    scales: list[torch.Tensor]
    alpha: torch.Tensor
    sticks: torch.Tensor

    @classmethod
    def from_sites(cls, modalities, values, default_alpha: torch.Tensor) -> "MixtureParams":
        """From a mapping of global site values (``"sticks"``, ``"component_loc_<m>"``,
        ``"component_scale_<m>"`` and, when learned, ``"alpha"``): a guide draw or its
        point estimate."""
        sticks = values["sticks"]
        return cls(log_weights=stick_breaking_log_weights(sticks),
                   locs=[values[f"component_loc_{m}"] for m in modalities],
                   scales=[values[f"component_scale_{m}"] for m in modalities],
                   alpha=values.get("alpha", default_alpha), sticks=sticks)

    def mixture(self, mixture: str, mask=None, batch_size=None, stacked=True
                ) -> MultimodalMixture:
        return MultimodalMixture(self.log_weights, self.locs, self.scales, mixture=mixture,
                                 mask=mask, batch_size=batch_size, stacked=stacked)


def point_params(model, guide) -> MixtureParams:
    """The global parameters at the guide's point estimate (``model``: a
    :class:`~pyro_mm.models.MultimodalDPMixture`, ``guide``: anything with
    ``point_estimate()``, e.g. :class:`~pyro_mm.guides.MultimodalGuide`)."""
    return MixtureParams.from_sites(model.modalities, guide.point_estimate(), model.alpha)


__all__ = ["GLOBAL_SITES", "MixtureParams", "point_params"]
