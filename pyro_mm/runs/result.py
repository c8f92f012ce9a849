"""The result of a fit: :class:`FitResult` (model, guide, :class:`History`, config,
metrics), how it is saved to a run folder and :func:`load`-ed back.

Both training (:mod:`pyro_mm.train.fit`, which makes results) and prediction
(:mod:`pyro_mm.predictive.predict`, which reads them) use this module; it depends on neither.
The run folder layout is described in :mod:`pyro_mm.runs.checkpoint`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..data.batch import TensorBatch
from ..errors import CheckpointError
from ..model.dp_mixture import MultimodalDPMixture
from ..model.guide import MultimodalGuide
from ..runtime.devices import resolve_device
from ..runtime.modes import evaluation_mode
from . import checkpoint as ckpt
from .run_data import DATA_SPEC

#: What a checkpoint holds besides the model, guide and history (``FitResult.state``):
#: the optimiser and RNG states, position and early stopping a resumed fit restores, and
#: the fingerprint and description of the training data it checks and records.
STATE_KEYS = ("optimizer_state", "rng", "epoch", "step", "early_stop", "data_fingerprint",
              "data_source")


@dataclasses.dataclass
class History:
    """Training history.

    Attributes:
        steps: one dict per SVI step: ``step``, ``epoch``, ``loss`` (negative ELBO per
            example, nats) and every value the model's factors logged.
        epochs: one dict per epoch: ``epoch``, ``loss`` (mean over the epoch),
            ``val_loss`` and ``val_accuracy`` when validation data was given,
            ``seconds``, and ``resampled`` (1.0 when a factor re-weighted how the
            epoch's examples were drawn).
    """

    steps: list[dict[str, float]] = dataclasses.field(default_factory=list)
    epochs: list[dict[str, float]] = dataclasses.field(default_factory=list)

    def series(self, key: str, per: str = "steps") -> list[float]:
        """All recorded values of ``key`` (``per="steps"`` or ``"epochs"``)."""
        return [row[key] for row in getattr(self, per) if key in row]

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "epochs": self.epochs}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "History":
        return cls(list(payload.get("steps", [])), list(payload.get("epochs", [])))


@dataclasses.dataclass
class FitResult:
    """A fitted model: the Pyro ``model`` and ``guide``, the ``history``, the fit
    ``config`` and the final ``metrics``; ``run_dir`` if it was written to disk."""

    model: MultimodalDPMixture
    guide: MultimodalGuide
    history: History
    config: dict[str, Any]
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    run_dir: Path | None = None
    state: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def save(self, path: str | Path) -> Path:
        """Write the run folder (see :mod:`pyro_mm.runs.checkpoint`); returns its path.

        The checkpoint first, then the JSON files, each atomically; ``data.json`` too
        when ``state`` has a ``data_source`` (what ``pyro-mm train`` records), so every
        file of the folder is this run's. Take the folder's lock for a folder another
        process could write (:func:`pyro_mm.runs.folder.open_run_folder`; :func:`fit`
        does).

        Raises:
            CheckpointError: a file could not be written (the OS error named).
        """
        path = Path(path)
        payload = {
            "model_config": self.model.config(),
            "guide_config": self.guide.config(),
            "fit_config": self.config,
            "model_state": self.model.state_dict(),
            "guide_state": self.guide.state_dict(),
            "history": self.history.to_dict(),
            **self.state,
        }
        ckpt.save_checkpoint(path / ckpt.CHECKPOINT, payload)
        ckpt.write_json(path / "config.json", {"model": self.model.config(),
                                               "guide": self.guide.config(),
                                               "fit": self.config})
        ckpt.write_json(path / "metrics.json", self.metrics)
        ckpt.write_json(path / "history.json", self.history.to_dict())
        if self.state.get("data_source") is not None:
            ckpt.write_json(path / DATA_SPEC, self.state["data_source"])
        self.run_dir = path
        return path


def _build(payload: Mapping[str, Any], encoders, device) -> tuple[MultimodalDPMixture,
                                                                   MultimodalGuide]:
    model = MultimodalDPMixture.from_config(payload["model_config"])
    guide_config = dict(payload["guide_config"])
    custom = guide_config.pop("custom_encoders", [])
    missing = sorted(set(custom) - set(encoders or {}))
    if missing:
        raise CheckpointError(
            f"encoders: this run used custom encoders for {missing}; pass the same "
            "modules (untrained) as `encoders=` so their weights can be loaded"
        )
    guide = MultimodalGuide(model, encoders=encoders, **guide_config)
    model.to(device)
    guide.to(device)
    with evaluation_mode(model, guide):
        guide.materialize(_dummy_batch(model))
    model.load_state_dict(payload["model_state"])
    guide.load_state_dict(payload["guide_state"])
    return model, guide


def _dummy_batch(model: MultimodalDPMixture) -> TensorBatch:
    """Two standard-normal examples: enough for batch statistics to be defined."""
    gen = torch.Generator().manual_seed(0)
    features = {m: torch.randn(2, d, generator=gen).to(model.device)
                for m, d in model.dims.items()}
    masks = torch.ones(2, len(model.modalities), dtype=torch.bool, device=model.device)
    return TensorBatch(features, masks)


def load(path: str | Path, encoders: Mapping[str, torch.nn.Module] | None = None,
         device: str | torch.device = "cpu") -> FitResult:
    """Load a run folder written by :meth:`FitResult.save` or :func:`fit`.

    Args:
        path: the run folder (or its ``checkpoint.pt``).
        encoders: the same custom encoder modules the run was trained with, if any.
        device: where to put the model (``"auto"``: CUDA when present).
    """
    device = resolve_device(device)
    path = Path(path)
    payload = ckpt.load_checkpoint(path, map_location=device)
    model, guide = _build(payload, encoders, device)
    run_dir = path if path.is_dir() else path.parent
    metrics_path = run_dir / "metrics.json"
    metrics = ckpt.read_json(metrics_path) if metrics_path.is_file() else {}
    state = {k: payload[k] for k in STATE_KEYS if k in payload}
    return FitResult(model, guide, History.from_dict(payload.get("history", {})),
                     dict(payload.get("fit_config", {})), metrics, run_dir, state)


def resume_state(resume_from, device) -> dict[str, Any]:
    """What a resumed :func:`~pyro_mm.train.fit.fit` starts from: model, guide and
    optimiser state, history, RNG states, epoch and step (``{}`` for a fresh run)."""
    if resume_from is None:
        return {}
    if isinstance(resume_from, FitResult):
        state = {**resume_from.state, "history": resume_from.history,
                 "model_config": resume_from.model.config(),
                 "model_state": resume_from.model.state_dict(),
                 "guide_state": resume_from.guide.state_dict(),
                 "guide_config": resume_from.guide.config(),
                 "fit_config": resume_from.config}
    else:
        payload = ckpt.load_checkpoint(resume_from, map_location=device)
        state = {**payload, "history": History.from_dict(payload["history"])}
    if "optimizer_state" not in state:
        raise CheckpointError("resume_from: the run has no optimiser state to resume")
    return state


__all__ = ["FitResult", "History", "load", "resume_state"]
