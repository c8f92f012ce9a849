"""Training: :func:`fit` runs minibatch SVI and returns a :class:`FitResult`.

The loop is Pyro's PyTorch-style interface: ``Trace_ELBO()(model, guide)`` is an
``nn.Module`` whose parameters a :class:`~pyro.optim.clipped_adam.ClippedAdam`
optimiser updates. One warm-up pass (data-dependent initialisation of the guide) runs
before the optimiser is created, so every lazily created parameter is included.

Minibatches go through ``pyro.plate("data", N, subsample=idx)``, so every local term is
scaled by ``N / B`` and each step's loss is an unbiased estimate of the full negative
ELBO. History values are per example (divided by ``N``).

A non-finite loss or gradient never reaches the parameters: the step is skipped and the
learning rate halved; after ``max_recoveries`` consecutive failures the model and guide
are put back to the last epoch whose loss was finite and :class:`TrainingDivergedError`
is raised. Checkpoints are only written from finite states.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.optim.clipped_adam import ClippedAdam

from . import checkpoint as ckpt
from ._naming import evaluation_mode
from .data import MultimodalData, TensorBatch
from .devices import resolve_device
from .errors import CheckpointError, TrainingDivergedError
from .guides import MultimodalGuide
from .models import MultimodalDPMixture


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
        """Write the run folder (see :mod:`pyro_mm.checkpoint`); returns its path."""
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
    state = {k: payload[k] for k in ("optimizer_state", "rng", "epoch", "step", "early_stop")
             if k in payload}
    return FitResult(model, guide, History.from_dict(payload.get("history", {})),
                     dict(payload.get("fit_config", {})), metrics, run_dir, state)


class _EarlyStopping:
    def __init__(self, patience: int | None):
        self.patience = patience
        self.best = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.best_state: dict[str, Any] | None = None

    def update(self, value: float, epoch: int, model, guide) -> bool:
        """Record ``value``; return ``True`` when training should stop."""
        if value < self.best:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            if self.patience is not None:
                self.best_state = {"model": copy.deepcopy(model.state_dict()),
                                   "guide": copy.deepcopy(guide.state_dict())}
            return False
        self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "best_state": self.best_state}

    def load(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.bad_epochs, self.best_state = state["bad_epochs"], state["best_state"]


def _sampling_weights(model, guide, batch) -> torch.Tensor | None:
    """The product of the factors' per-example sampling weights, or ``None``."""
    weights = None
    with evaluation_mode(model, guide):
        for factor in model.factors:
            w = factor.sampling_weights(model, guide, batch)
            if w is not None:
                weights = w if weights is None else weights * w
    return None if weights is None else weights / weights.sum()


def _is_non_finite_parameter_error(exc: ValueError) -> bool:
    """Pyro validates distribution parameters, so a NaN inside the model surfaces as
    torch's "found invalid values" ValueError rather than as a NaN loss."""
    return "invalid values" in str(exc)


def _finite_grads(params) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


@torch.no_grad()
def local_elbo(model: MultimodalDPMixture, guide: MultimodalGuide, batch: TensorBatch,
               subsample: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)`` single-sample ELBO terms of each example: the log-likelihood of its
    observations plus ``log p(z_i) - log q(z_i)``; the global KL is left out, so the
    value does not depend on the size of ``batch``. Factors are included. The model runs
    in evaluation mode (no training-time state changes)."""
    with evaluation_mode(model, guide):
        guide_trace = poutine.trace(guide).get_trace(batch, subsample)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            batch, subsample)
    model.pop_records()
    total = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] != "sample" or not any(
                    f.name == "data" for f in site["cond_indep_stack"]):
                continue
            if sign < 0 and site["is_observed"]:
                continue
            log_prob = site["fn"].log_prob(site["value"])
            if site["mask"] is not None:
                log_prob = log_prob * site["mask"]
            total = total + sign * log_prob
    return total


@torch.no_grad()
def validation_metrics(model: MultimodalDPMixture, guide: MultimodalGuide,
                       batch: TensorBatch, generator: torch.Generator | None = None,
                       max_examples: int = 20000) -> dict[str, float]:
    """Negative ELBO per example and (with labels) plug-in accuracy on ``batch``."""
    subsample = None
    if batch.size > max_examples:
        subsample = torch.randperm(batch.size, generator=generator)[:max_examples]
        subsample = subsample.to(batch.device)
    out = {"val_loss": -float(local_elbo(model, guide, batch, subsample).mean())}
    if model.classifier is not None and batch.labels is not None and bool(batch.label_mask.any()):
        from .inference import predict_batch

        probs = predict_batch(model, guide, batch)["probs"]
        hit = (probs.argmax(-1) == batch.labels)[batch.label_mask]
        out["val_accuracy"] = float(hit.float().mean())
    return out


def fit(
    model: MultimodalDPMixture,
    data: MultimodalData,
    *,
    guide: MultimodalGuide | None = None,
    num_epochs: int = 100,
    batch_size: int = 128,
    learning_rate: float = 1e-2,
    clip_norm: float = 10.0,
    lr_decay: float = 1.0,
    device: str | torch.device = "auto",
    val_data: MultimodalData | None = None,
    seed: int | None = 0,
    early_stopping: int | None = None,
    kl_warmup_epochs: int = 0,
    num_particles: int = 1,
    elbo: str = "trace",
    run_dir: str | Path | None = None,
    resume_from: str | Path | FitResult | None = None,
    checkpoint_every: int = 1,
    max_recoveries: int = 5,
    validate_args: bool = False,
    progress: bool = True,
) -> FitResult:
    """Fit ``model`` to ``data`` by minibatch SVI.

    Args:
        model: a :class:`~pyro_mm.models.MultimodalDPMixture`.
        data: training data (standardisation statistics are fitted on it unless the
            model already has them, e.g. when resuming).
        guide: defaults to ``MultimodalGuide(model)`` (amortised encoders, mean-field
            globals).
        num_epochs: total epochs (a resumed run continues up to this number).
        batch_size: ``B``; the data plate scales local terms by ``N / B``.
        learning_rate, clip_norm, lr_decay: :class:`ClippedAdam` settings (``lr_decay``
            multiplies the step size after every step).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ...
        val_data: evaluated after every epoch (``val_loss``, ``val_accuracy``).
        seed: seeds Python, NumPy, PyTorch and the minibatch order (``None``: no seeding).
            Network weights are drawn when the model is built: call
            ``pyro.set_rng_seed`` before building it for a fully repeatable run.
        early_stopping: patience in epochs on ``val_loss`` (train loss without
            ``val_data``); the best epoch's parameters are restored at the end.
        kl_warmup_epochs: the representation KL weight rises linearly from 0 to 1.
        num_particles: ELBO particles per step.
        elbo: ``"trace"`` (Trace_ELBO) or ``"meanfield"`` (TraceMeanField_ELBO,
            analytic KLs where available).
        run_dir: write config, metrics, history and checkpoints here.
        resume_from: a run folder or :class:`FitResult` to continue exactly where it
            stopped (same data and arguments).
        checkpoint_every: epochs between checkpoints (with ``run_dir``).
        max_recoveries: consecutive non-finite steps tolerated (each halves the step size).
        validate_args: Pyro's and torch's distribution argument checks during the SVI
            steps. Off by default, as Pyro advises for a mature model: it makes a step
            10-15% faster (``benchmarks/overhead.py``), the data are validated when they
            enter, and a parameter that turns non-finite still shows up as a non-finite
            loss, which is skipped as described above. Turn it on to debug a model of
            your own.
        progress: show a tqdm progress bar.

    Returns:
        :class:`FitResult`.
    """
    if not isinstance(data, MultimodalData):
        raise TypeError(f"data: expected MultimodalData, got {type(data).__name__}")
    for name, value in (("num_epochs", num_epochs), ("batch_size", batch_size),
                        ("num_particles", num_particles), ("checkpoint_every", checkpoint_every)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate: must be positive, got {learning_rate!r}")
    if elbo not in ("trace", "meanfield"):
        raise ValueError(f"elbo: expected 'trace' or 'meanfield', got {elbo!r}")
    if run_dir is not None:
        model.config()  # fails now, not after the first epoch, if it cannot be saved
    device = resolve_device(device)
    config = dict(num_epochs=num_epochs, batch_size=batch_size, learning_rate=learning_rate,
                  clip_norm=clip_norm, lr_decay=lr_decay, device=str(device), seed=seed,
                  early_stopping=early_stopping, kl_warmup_epochs=kl_warmup_epochs,
                  num_particles=num_particles, elbo=elbo, num_examples=len(data),
                  modalities=list(model.modalities))

    resume_state: dict[str, Any] = {}
    if resume_from is not None:
        if isinstance(resume_from, FitResult):
            resume_state = {**resume_from.state, "history": resume_from.history,
                            "model_state": resume_from.model.state_dict(),
                            "guide_state": resume_from.guide.state_dict(),
                            "guide_config": resume_from.guide.config()}
        else:
            payload = ckpt.load_checkpoint(resume_from, map_location=device)
            resume_state = {**payload, "history": History.from_dict(payload["history"])}
        if "optimizer_state" not in resume_state:
            raise CheckpointError("resume_from: the run has no optimiser state to resume")
        model.load_state_dict(resume_state["model_state"])
        if guide is None:
            guide_config = dict(resume_state["guide_config"])
            if guide_config.pop("custom_encoders", []):
                raise CheckpointError(
                    "resume_from: the run used custom encoders; pass guide="
                    "MultimodalGuide(model, encoders=...) built like the original")
            guide = MultimodalGuide(model, **guide_config)

    if seed is not None:
        pyro.set_rng_seed(seed)
    generator = torch.Generator().manual_seed(0 if seed is None else seed)

    model.to(device)
    model.check_data(data)
    if not bool(model.standardized):
        model.fit_standardization(data)
    batch = model.prepare(data)
    val_batch = None if val_data is None else model.prepare(val_data)
    guide = MultimodalGuide(model) if guide is None else guide
    guide.to(device)
    if not bool(guide.initialized):
        guide.initialize(model, batch, generator)
    if "guide_state" in resume_state:
        guide.load_state_dict(resume_state["guide_state"])

    elbo_cls = Trace_ELBO if elbo == "trace" else TraceMeanField_ELBO
    loss_fn = elbo_cls(num_particles=num_particles)(model, guide)
    n = batch.size
    bsz = min(batch_size, n)
    # Warm-up: every lazy parameter now exists; eval mode, so no training-time state moves.
    with torch.no_grad(), evaluation_mode(model, guide):
        loss_fn(batch, torch.arange(bsz, device=device))
    model.pop_records()
    params = list(loss_fn.parameters())
    optimizer = ClippedAdam(params, lr=learning_rate, clip_norm=clip_norm, lrd=lr_decay)

    history = History()
    stopper = _EarlyStopping(early_stopping)
    start_epoch, step = 0, 0
    if resume_state:
        optimizer.load_state_dict(resume_state["optimizer_state"])
        history = resume_state["history"]
        start_epoch, step = int(resume_state["epoch"]), int(resume_state["step"])
        if resume_state.get("early_stop"):
            stopper.load(resume_state["early_stop"])
        generator.set_state(resume_state["rng"]["batches"])
        ckpt.set_rng_state(resume_state["rng"])

    steps_per_epoch = math.ceil(n / bsz)
    warmup_steps = kl_warmup_epochs * steps_per_epoch
    last_good = {"model": copy.deepcopy(model.state_dict()),
                 "guide": copy.deepcopy(guide.state_dict())}
    run_path = None if run_dir is None else Path(run_dir)
    result = FitResult(model, guide, history, config, run_dir=run_path)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_epochs, initial=start_epoch, desc="SVI", unit="epoch")
    failures = 0
    stopped_early = False
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, num_epochs):
            started = time.perf_counter()
            weights = _sampling_weights(model, guide, batch) if epoch > 0 else None
            if weights is None:
                order = torch.randperm(n, generator=generator)
            else:  # a factor re-weights the examples (e.g. ARM's re-sampling)
                order = torch.multinomial(weights.cpu(), n, replacement=True,
                                          generator=generator)
            order = order.to(device)
            losses = []
            model.train()
            guide.train()
            for start in range(0, n, bsz):
                idx = order[start : start + bsz]
                kl_weight = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
                try:
                    with pyro.validation_enabled(validate_args):
                        loss = loss_fn(batch, idx, kl_weight)
                except ValueError as exc:
                    if not _is_non_finite_parameter_error(exc):
                        raise
                    loss = torch.tensor(math.nan)
                records = model.pop_records()
                if torch.isfinite(loss):
                    loss.backward()
                if not torch.isfinite(loss) or not _finite_grads(params):
                    optimizer.zero_grad(set_to_none=True)
                    failures += 1
                    for group in optimizer.param_groups:
                        group["lr"] *= 0.5
                    if failures > max_recoveries:
                        model.load_state_dict(last_good["model"])
                        guide.load_state_dict(last_good["guide"])
                        raise TrainingDivergedError(
                            f"loss was non-finite for {failures} consecutive steps "
                            f"(epoch {epoch}, step {step}) even after halving the step "
                            f"size each time; the model holds its last finite state. "
                            "Try a smaller learning_rate or check the data scale."
                        )
                    continue
                failures = 0
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                value = float(loss.detach()) / n
                losses.append(value)
                history.steps.append({"step": step, "epoch": epoch, "loss": value, **records})
                step += 1
            model.eval()
            guide.eval()
            row = {"epoch": epoch, "loss": sum(losses) / max(len(losses), 1),
                   "seconds": time.perf_counter() - started,
                   "resampled": float(weights is not None)}
            if val_batch is not None:
                row.update(validation_metrics(model, guide, val_batch, generator))
            history.epochs.append(row)
            if math.isfinite(row["loss"]):
                last_good = {"model": copy.deepcopy(model.state_dict()),
                             "guide": copy.deepcopy(guide.state_dict())}
            monitor = row.get("val_loss", row["loss"])
            stop = stopper.update(monitor, epoch, model, guide)
            result.state = {"optimizer_state": optimizer.state_dict(), "epoch": epoch + 1,
                            "step": step, "early_stop": stopper.state(),
                            "rng": {**ckpt.rng_state(), "batches": generator.get_state()}}
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items()
                                 if k in ("loss", "val_loss", "val_accuracy")})
            if run_path is not None and ((epoch + 1) % checkpoint_every == 0 or stop
                                         or epoch + 1 == num_epochs):
                result.save(run_path)
            if stop:
                stopped_early = True
                break
    finally:
        if bar is not None:
            bar.close()
    if stopper.best_state is not None and stopped_early:
        model.load_state_dict(stopper.best_state["model"])
        guide.load_state_dict(stopper.best_state["guide"])
    config["epochs_run"] = epoch + 1 if num_epochs > start_epoch else start_epoch
    config["stopped_early"] = stopped_early
    config["best_epoch"] = stopper.best_epoch
    if val_data is not None:
        from .inference import evaluate

        result.metrics = evaluate(result, val_data)
    if run_path is not None:
        result.save(run_path)
    return result
