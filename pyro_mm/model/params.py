"""The global parameters of the mixture: :class:`MixtureParams` and the sites they come
from.

One draw (or point estimate) of ``alpha``, the sticks and the component means and scales
of :class:`~pyro_mm.model.dp_mixture.MultimodalDPMixture`, with the mixture distribution they
define. :meth:`MixtureParams.from_sites` is its one constructor; the model's
:meth:`~pyro_mm.model.dp_mixture.MultimodalDPMixture.params_from_sites` calls it with the
model's floors and component kind (``model.params_from_sites(guide.point_estimate())`` is
the plug-in estimate prediction, factors and diagnostics start from).
"""

from __future__ import annotations

import dataclasses

import torch

from .distributions import MultimodalMixture, effective_scale, stick_breaking_log_weights
from .factor_analysis import embed_private

#: Names of the global latent sites (``<m>`` is each modality's name).
GLOBAL_SITES = ("alpha", "sticks", "component_loc_<m>", "component_scale_<m>",
                "component_df_<m>", "component_loadings_<m>")

#: ``(shape, rate)`` of the Gamma prior on learned Student-t degrees of freedom (mean 20,
#: the usual weakly informative choice of Juarez and Steel, 2010).
DF_PRIOR = (2.0, 0.1)


@dataclasses.dataclass
class MixtureParams:
    """One draw (or point estimate) of the global parameters.

    Attributes:
        log_weights: ``(K,)`` log mixture weights.
        locs, scales: one ``(K, d_m)`` tensor per modality; ``scales`` are the site
            values ``sigma`` (before the floor).
        alpha: concentration (scalar tensor).
        sticks: ``(K - 1,)`` stick proportions.
        floors: one ``(d_m,)`` scale floor per modality, or ``None`` (no floor).
        component: ``"normal"``, ``"studentt"`` or ``"factor"``.
        df: with ``"studentt"``, one degrees-of-freedom scalar per modality.
        loadings: with ``"factor"``, one ``(K, d_m, r)`` loading matrix per modality.
        shared_rank: with private factors, how many of each matrix's ``r`` columns are
            shared by the views (the rest are the view's own; the mixture places them
            with :func:`~pyro_mm.model.factor_analysis.embed_private`); ``None``: all.

    Build it with :meth:`~pyro_mm.model.dp_mixture.MultimodalDPMixture.sample_globals` or
    :meth:`~pyro_mm.model.dp_mixture.MultimodalDPMixture.params_from_sites`, which fill in the
    model's floors and component kind.
    """

    log_weights: torch.Tensor
    locs: list[torch.Tensor]
    scales: list[torch.Tensor]
    alpha: torch.Tensor
    sticks: torch.Tensor
    floors: list[torch.Tensor] | None = None
    component: str = "normal"
    df: list[torch.Tensor] | None = None
    loadings: list[torch.Tensor] | None = None
    shared_rank: int | None = None
    #: What the mixtures of these parameters share within one step (the effective
    #: scales, the last value's component log-densities); see
    #: :class:`~pyro_mm.model.distributions.MultimodalMixture`. Not an argument, so
    #: ``dataclasses.replace`` starts a fresh one; do not mutate the fields in place.
    _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False,
                                     compare=False)

    @classmethod
    def from_sites(cls, modalities, values, default_alpha: torch.Tensor | None = None,
                   floors=None, component: str = "normal", df=None,
                   shared_rank: int | None = None) -> "MixtureParams":
        """From a mapping of global site values (``"sticks"``, ``"component_loc_<m>"``,
        ``"component_scale_<m>"`` and, when learned, ``"alpha"`` and
        ``"component_df_<m>"``; ``"component_loadings_<m>"`` for factor components): a
        guide draw or its point estimate. ``df``: fixed degrees of freedom per
        modality; ``None`` reads the ``component_df_<m>`` sites."""
        sticks = values["sticks"]
        if component == "studentt" and df is None:
            df = [values[f"component_df_{m}"] for m in modalities]
        loadings = None
        if component == "factor":
            loadings = [values[f"component_loadings_{m}"] for m in modalities]
        return cls(log_weights=stick_breaking_log_weights(sticks),
                   locs=[values[f"component_loc_{m}"] for m in modalities],
                   scales=[values[f"component_scale_{m}"] for m in modalities],
                   alpha=values.get("alpha", default_alpha), sticks=sticks,
                   floors=floors, component=component, df=df, loadings=loadings,
                   shared_rank=shared_rank)

    @property
    def effective_scales(self) -> list[torch.Tensor]:
        """``[(K, d_m)]``: ``sqrt(sigma^2 + floor^2)``, the scales the components use."""
        if "effective_scales" not in self._cache:
            floors = self.floors or [None] * len(self.scales)
            self._cache["effective_scales"] = [effective_scale(s, f)
                                               for s, f in zip(self.scales, floors)]
        return self._cache["effective_scales"]

    @property
    def component_loadings(self) -> list[torch.Tensor] | None:
        """``[(K, d_m, R)]``: the loadings the components use, with any view-private
        columns placed in the shared factor space
        (:func:`~pyro_mm.model.factor_analysis.embed_private`); built once per set of
        parameters, as :attr:`effective_scales` is."""
        if self.shared_rank is None:
            return self.loadings
        if "component_loadings" not in self._cache:
            self._cache["component_loadings"] = embed_private(self.loadings,
                                                              self.shared_rank)
        return self._cache["component_loadings"]

    def mixture(self, mixture: str, mask=None, batch_size=None, stacked=True
                ) -> MultimodalMixture:
        """The mixture distribution of these parameters (effective scales)."""
        return MultimodalMixture(self.log_weights, self.locs, self.effective_scales,
                                 mixture=mixture, mask=mask, batch_size=batch_size,
                                 stacked=stacked, component=self.component, df=self.df,
                                 loadings=self.component_loadings,
                                 cache=self._cache.setdefault("densities", {}))


__all__ = ["DF_PRIOR", "GLOBAL_SITES", "MixtureParams"]
