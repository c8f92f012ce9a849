"""Feature standardisation of :class:`~pyro_mm.model.dp_mixture.MultimodalDPMixture`: checking
data against the model, fitting the per-feature statistics on training data, and turning
a :class:`~pyro_mm.data.container.MultimodalData` into the standardised tensors the model runs on.

Every likelihood of the model is on the standardised scale; the statistics live in the
model's buffers (``feature_loc_<m>``, ``feature_scale_<m>``, ``class_frequencies``,
``component_scale_floor_<m>``), so they are saved and moved with it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.container import MultimodalData, TensorBatch
from ..data.stats import feature_moments
from ..data.batch import StoreBatch
from ..errors import DataValidationError
from .scale_floors import feature_floor


class FeatureStandardization:
    """Mixin of :class:`~pyro_mm.model.dp_mixture.MultimodalDPMixture` (it provides the buffers
    and ``modalities``, ``dims``, ``num_classes``, ``representation``, ``scale_floor``,
    ``resolution_floor`` and ``device``)."""

    def check_data(self, data: MultimodalData) -> None:
        """Raise :class:`DataValidationError` if ``data`` does not fit this model."""
        missing = [m for m in self.modalities if m not in data.dims]
        if missing:
            raise DataValidationError(
                f"modalities {missing}: the model was built for {list(self.modalities)} "
                f"but the data has {list(data.modalities)}"
            )
        for m in self.modalities:
            if data.dims[m] != self.dims[m]:
                raise DataValidationError(
                    f"modality {m!r}: has {data.dims[m]} features but the model expects "
                    f"{self.dims[m]}"
                )
        if (self.num_classes is not None and data.num_classes is not None
                and data.has_labels and data.labels.max() >= self.num_classes):
            raise DataValidationError(
                f"labels: value {int(data.labels.max())} is out of range for a model "
                f"with num_classes={self.num_classes}"
            )

    def fit_standardization(self, data: MultimodalData) -> None:
        """Fit per-feature mean and standard deviation on (training) ``data``, the
        class frequencies of its labels and, for ``representation="observed"``, the
        component scale floors (:func:`pyro_mm.model.scale_floors.feature_floor`).

        Only observed rows count; a constant feature keeps scale 1. Data on disk
        (:meth:`~pyro_mm.data.container.MultimodalData.open_zarr`) is read once, a block of rows
        at a time (:func:`pyro_mm.data.stats.feature_moments`); its statistics equal
        the in-memory ones to float64 rounding. The recording-resolution floor needs
        every distinct value of a feature, so it is refused for such data.
        """
        self.check_data(data)
        if data.on_disk:
            self._fit_streamed(data)
        else:
            self._fit_in_memory(data)
        self._fit_class_frequencies(data)
        self.standardized.fill_(True)

    def _fit_in_memory(self, data: MultimodalData) -> None:
        features, masks = data.features, data.masks
        for m in self.modalities:
            x = features[m][masks[m]].astype(np.float64)
            self._set_statistics(m, x.mean(0), x.std(0), x)

    def _fit_streamed(self, data: MultimodalData) -> None:
        if self.representation == "observed" and self.resolution_floor:
            raise DataValidationError(
                "resolution_floor=True: needs every distinct training value of each "
                "feature, which a streaming pass over data on disk does not keep; use "
                "resolution_floor=False (the default) or data in memory")
        moments = feature_moments(data.select(self.modalities))
        for m in self.modalities:
            _, loc, variance = moments[m]
            self._set_statistics(m, loc, np.sqrt(variance), None)

    def _set_statistics(self, m: str, loc: np.ndarray, scale: np.ndarray, x) -> None:
        """Buffers of modality ``m`` from its mean and standard deviation ``(d,)``
        (``x``: its observed rows, only read by the resolution floor)."""
        scale = scale.copy()
        scale[~(scale > 1e-8 * np.maximum(1.0, np.abs(loc)))] = 1.0
        getattr(self, f"feature_loc_{m}").copy_(torch.as_tensor(loc))
        getattr(self, f"feature_scale_{m}").copy_(torch.as_tensor(scale))
        if self.representation == "observed":
            floor = feature_floor(x, scale, self.scale_floor, self.resolution_floor)
            getattr(self, f"component_scale_floor_{m}").copy_(torch.as_tensor(floor))

    def _fit_class_frequencies(self, data: MultimodalData) -> None:
        if self.num_classes is not None and data.has_labels:
            labels = data.labels
            counts = np.bincount(labels[labels >= 0], minlength=self.num_classes)
            self.class_frequencies.copy_(torch.as_tensor(counts / counts.sum()))

    def prepare(self, data: MultimodalData, rows=None) -> TensorBatch | StoreBatch:
        """Validate ``data`` against the model, standardise it and move it to the
        model's device. Missing entries stay exactly zero.

        Args:
            rows: only these examples (``(B,)`` positions, in that order).

        Returns:
            a :class:`TensorBatch`; for data on disk without ``rows``, a
            :class:`~pyro_mm.data.store_batch.StoreBatch` that reads rows when indexed.
        """
        if not bool(self.standardized):
            raise ValueError(
                "prepare: the model has no standardisation statistics yet; call "
                "model.fit_standardization(train_data) first (pyro_mm.fit does)")
        self.check_data(data)
        if data.on_disk and rows is None:
            return self._store_batch(data.select(self.modalities))
        return self.standardize(data.to_tensors(self.device, modalities=self.modalities,
                                                rows=rows))

    def _store_batch(self, data: MultimodalData) -> StoreBatch:
        device, mods = self.device, self.modalities
        masks = torch.as_tensor(np.stack([data.masks[m] for m in mods], 1), device=device)
        labels = label_mask = None
        if self.num_classes is not None and data.labels is not None:
            label_mask = torch.as_tensor(data.labels >= 0, device=device)
            labels = torch.as_tensor(np.maximum(data.labels, 0), device=device)

        def read(rows: np.ndarray) -> TensorBatch:
            return self.standardize(data.to_tensors(device, modalities=mods, rows=rows))

        return StoreBatch(read, masks, labels, label_mask)

    def standardize(self, raw: TensorBatch) -> TensorBatch:
        """``raw`` (features as stored, on the model's device, in its modality order)
        standardised; labels dropped for a model without classifier."""
        features = {}
        for j, m in enumerate(self.modalities):
            x = (raw.features[m] - getattr(self, f"feature_loc_{m}")) / getattr(
                self, f"feature_scale_{m}")
            features[m] = x * raw.masks[:, j : j + 1]
        labels, label_mask = raw.labels, raw.label_mask
        if self.num_classes is None:
            labels = label_mask = None
        return TensorBatch(features, raw.masks, labels, label_mask)

    def standardization_statistics(self) -> dict[str, torch.Tensor]:
        """``name -> (2 d_m,)``: each modality's feature means then scales."""
        return {m: torch.cat([getattr(self, f"feature_loc_{m}"),
                              getattr(self, f"feature_scale_{m}")])
                for m in self.modalities}

    def feature_log_jacobian(self, masks: torch.Tensor) -> torch.Tensor:
        """``(B,)``: add to a log-density of standardised features to get the density
        of the original features (``-sum log scale`` over observed modalities)."""
        per = torch.stack([getattr(self, f"feature_scale_{m}").log().sum()
                           for m in self.modalities])
        return -(masks.to(per.dtype) * per).sum(-1)
