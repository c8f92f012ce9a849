"""Feature standardisation of :class:`~pyro_mm.model.dp_mixture.MultimodalDPMixture`: the
per-feature statistics fitted on training data, the component scale floors that depend on
them, and turning stored features into the standardised ones the model runs on.

Every likelihood of the model is on the standardised scale. :class:`Standardization` is a
submodule of the model that registers and owns its buffers (``feature_loc_<m>``,
``feature_scale_<m>``, ``component_scale_floor_<m>``, ``standardized``), so they are
saved and moved with the model; other code asks it (:meth:`Standardization.statistics`,
:meth:`Standardization.scale_floors`, :meth:`Standardization.feature_log_jacobian`) and
never reads a buffer by name.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..data.container import MultimodalData
from ..data.stats import feature_moments
from ..errors import DataValidationError
from .scale_floors import feature_floor, keep_missing_floors


class Standardization(nn.Module):
    """Per-feature standardisation of each modality and the component scale floors.

    Before :meth:`fit`, every loc is 0 and every scale 1 (``fitted`` is ``False``).

    Args:
        dims: ``modality name -> number of features d_m``, in the model's modality order.
        scale_floor: the floor of the component scales: a fraction of each feature's
            training standard deviation (observed features, refitted by :meth:`fit`) or,
            with ``latent_dim``, of ``prior_scale`` (fixed here).
        resolution_floor: observed features only: also floor at the recording resolution
            (:func:`~pyro_mm.model.scale_floors.feature_floor`). ``None``: for data in
            memory; data on disk skip it (with a warning), ``True`` refuses them.
        latent_dim: ``D`` for a mixture on latent representations (floors of size ``D``,
            never refitted); ``None``: the mixture sits on the features (floors of size
            ``d_m``).
        prior_scale: ``s1``, the prior median of the latent component scales.
    """

    def __init__(self, dims: Mapping[str, int], *, scale_floor: float,
                 resolution_floor: bool | None = False, latent_dim: int | None = None,
                 prior_scale: float = 1.0):
        super().__init__()
        self.modalities = tuple(dims)
        self.observed = latent_dim is None
        self.scale_floor = float(scale_floor)
        self.resolution_floor = None if resolution_floor is None else bool(resolution_floor)
        self.register_buffer("standardized", torch.tensor(False))
        for m, d in dims.items():
            self.register_buffer(f"feature_loc_{m}", torch.zeros(d))
            self.register_buffer(f"feature_scale_{m}", torch.ones(d))
        floor = self.scale_floor * (1.0 if self.observed else prior_scale)
        for m, d in dims.items():
            size = d if self.observed else int(latent_dim)
            self.register_buffer(f"component_scale_floor_{m}", torch.full((size,), floor))
        self._register_load_state_dict_pre_hook(keep_missing_floors, with_module=True)

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has set the statistics (one host sync)."""
        return bool(self.standardized)

    # ------------------------------------------------------------------ fitting
    def fit(self, data: MultimodalData) -> None:
        """Fit per-feature mean and standard deviation on (training) ``data``, already
        checked against the model, and, for observed features, the component scale
        floors (:func:`pyro_mm.model.scale_floors.feature_floor`).

        Only observed rows count; a constant feature keeps scale 1. Data on disk
        (:meth:`~pyro_mm.data.container.MultimodalData.open_zarr`) is read once, a block
        of rows at a time (:func:`pyro_mm.data.stats.feature_moments`); its statistics
        equal the in-memory ones to float64 rounding. The recording-resolution floor
        needs every distinct value of a feature, so it is refused for such data, before
        anything is written (``resolution_floor=None``: skipped, with a warning).
        """
        if data.on_disk:
            self._fit_streamed(data)
        else:
            self._fit_in_memory(data)
        self.standardized.fill_(True)

    def _fit_in_memory(self, data: MultimodalData) -> None:
        features, masks = data.features, data.masks
        for m in self.modalities:
            x = features[m][masks[m]].astype(np.float64)
            self._set_statistics(m, x.mean(0), x.std(0), x)

    def _fit_streamed(self, data: MultimodalData) -> None:
        if self.observed and self.resolution_floor is None:
            warnings.warn(
                "resolution_floor: the data are on disk (streamed statistics), so the "
                "recording resolution is not added to the component variances; pass "
                "resolution_floor=False to say so, or fit on data in memory", stacklevel=3)
        if self.observed and self.resolution_floor:
            raise DataValidationError(
                "resolution_floor=True: needs every distinct training value of each "
                "feature, which a streaming pass over data on disk does not keep; use "
                "resolution_floor=False (the default) or data in memory")
        moments = feature_moments(data.select(self.modalities))
        for m in self.modalities:
            _, loc, variance = moments[m]
            self._set_statistics(m, loc, np.sqrt(variance), None, resolution=False)

    def _set_statistics(self, m: str, loc: np.ndarray, scale: np.ndarray, x,
                        resolution: bool | None = None) -> None:
        """Buffers of modality ``m`` from its mean and standard deviation ``(d,)``
        (``x``: its observed rows, only read by the resolution floor; ``resolution``:
        whether to apply it, default as configured)."""
        if resolution is None:
            resolution = self.resolution_floor is not False
        scale = scale.copy()
        scale[~(scale > 1e-8 * np.maximum(1.0, np.abs(loc)))] = 1.0
        getattr(self, f"feature_loc_{m}").copy_(torch.as_tensor(loc))
        getattr(self, f"feature_scale_{m}").copy_(torch.as_tensor(scale))
        if self.observed:
            floor = feature_floor(x, scale, self.scale_floor, resolution)
            getattr(self, f"component_scale_floor_{m}").copy_(torch.as_tensor(floor))

    # ------------------------------------------------------------------ what it holds
    def statistics(self, m: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)``, each ``(d_m,)``: modality ``m``'s feature means and standard
        deviations (standardised = ``(x - loc) / scale``)."""
        return getattr(self, f"feature_loc_{m}"), getattr(self, f"feature_scale_{m}")

    def all_statistics(self) -> dict[str, torch.Tensor]:
        """``name -> (2 d_m,)``: each modality's feature means then scales."""
        return {m: torch.cat(self.statistics(m)) for m in self.modalities}

    def scale_floors(self) -> list[torch.Tensor]:
        """``[(size_m,)]``: each modality's component scale floor ``f_m`` (``size_m``:
        ``d_m`` for observed features, ``D`` for latent representations)."""
        return [getattr(self, f"component_scale_floor_{m}") for m in self.modalities]

    # ------------------------------------------------------------------ using it
    def standardize(self, features: Mapping[str, torch.Tensor], masks: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
        """``modality -> (B, d_m)`` standardised features from ``features`` (as stored,
        on this module's device) and ``masks (B, M)`` (in modality order); missing
        entries (stored as zero) stay exactly zero."""
        out = {}
        for j, m in enumerate(self.modalities):
            loc, scale = self.statistics(m)
            out[m] = (features[m] - loc) / scale * masks[:, j : j + 1]
        return out

    def feature_log_jacobian(self, masks: torch.Tensor) -> torch.Tensor:
        """``(B,)`` from ``masks (B, M)``: add to a log-density of standardised features
        to get the density of the original features (``-sum log scale`` over observed
        modalities)."""
        per = torch.stack([self.statistics(m)[1].log().sum() for m in self.modalities])
        return -(masks.to(per.dtype) * per).sum(-1)
