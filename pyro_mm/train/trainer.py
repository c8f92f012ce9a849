"""The training loop of :func:`pyro_mm.train.fit.fit` as a :class:`Trainer` with one
method per phase.

Every step is one ``Trace_ELBO`` (:mod:`pyro_mm.train.elbo`) or ``TraceMeanField_ELBO``
evaluation on a :class:`Minibatch`, followed by a
:class:`~pyro.optim.clipped_adam.ClippedAdam` update (fused: :mod:`pyro_mm.train.optim`); a
non-finite loss or gradient skips the update and halves the step size
(:meth:`Trainer._recover`). See :mod:`pyro_mm.train.fit` for the behaviour as a whole.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import TraceMeanField_ELBO

from ..data.batch import TensorBatch
from ..data.container import MultimodalData
from ..data.loader import RowLoader, chunk_local
from ..errors import CheckpointError, TrainingDivergedError
from ..model._pyro_module import without_param_statements
from ..model.dp_mixture import MultimodalDPMixture
from ..model.factor_protocol import sampling_weights
from ..model.guide import MultimodalGuide
from ..predictive.predict import evaluate
from ..runs import checkpoint as ckpt
from ..runs.fingerprint import check_resume, data_fingerprint, warn_of_other_settings
from ..runs.result import FitResult, History, resume_state
from ..runtime import distributed as ddp
from ..runtime.devices import flush_denormals, resolve_device
from ..runtime.modes import evaluation_mode
from .elbo import TraceELBO
from .expert_heads import experts_heads_are_separable, solve_expert_heads
from .monitoring import EarlyStopping, validation_metrics
from .optim import FusedClippedAdam, finite_gradients
from .settings import Settings

__all__ = ["CHUNK_WINDOW", "Minibatch", "Settings", "Trainer"]

#: ``disk_order="chunks"``: store chunks whose examples are shuffled together.
CHUNK_WINDOW = 4


@dataclasses.dataclass(frozen=True)
class Minibatch:
    """What one SVI step consumes: ``indices`` ``(B,)`` into the prepared ``batch``
    (``N`` examples); the model's data plate scales local terms by ``N / B``."""

    batch: TensorBatch
    indices: torch.Tensor


def _is_non_finite_parameter_error(exc: ValueError) -> bool:
    """Pyro validates distribution parameters, so a NaN inside the model surfaces as
    torch's "found invalid values" ValueError rather than as a NaN loss."""
    return "invalid values" in str(exc)


def _load_state(module: torch.nn.Module, state: Mapping[str, Any], source, what: str
                ) -> None:
    """``load_state_dict``, its wall of size mismatches cut to one line (the configs
    were compared before, so this means custom encoders built otherwise)."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(
            f"resume_from {source}: the {what}'s weights do not fit the run's "
            f"({lines[1] if len(lines) > 1 else lines[0]}"
            f"{f'; {len(lines) - 2} more' if len(lines) > 2 else ''}); build it "
            "exactly as the run's") from exc


def _snapshot(model, guide) -> dict[str, Any]:
    return {"model": copy.deepcopy(model.state_dict()),
            "guide": copy.deepcopy(guide.state_dict())}


class Trainer:
    """Minibatch SVI in named phases; :func:`fit` runs them in order:

    :meth:`prepare` (data and device) -> :meth:`build_optimizer` (fresh or restored) ->
    :meth:`run`, which for every epoch draws :meth:`minibatches`, runs :meth:`epoch_losses`
    (one :meth:`step` per minibatch, with non-finite recovery), then :meth:`validate`
    (validation and early stopping) and :meth:`checkpoint`, and at the end
    :meth:`finish`.

    A step takes one :class:`Minibatch` and an epoch any iterable of them, so another
    data source (sharded, streamed) replaces :meth:`prepare` and :meth:`minibatches`
    without touching the rest. Data-parallel (``self.group``), each phase reduces over
    the ranks what it decides on (:mod:`pyro_mm.runtime.distributed`).
    """

    def __init__(self, model: MultimodalDPMixture, settings: Settings):
        self.model = model
        self.settings = settings
        #: ``None`` in one process; else this rank's place (see :mod:`pyro_mm.runtime.distributed`).
        self.group = ddp.resolve(settings.distributed)
        self.device = ddp.rank_device(self.group, resolve_device(settings.device))
        self.writer = self.group is None or self.group.is_writer
        self.run_path = None if settings.run_dir is None else Path(settings.run_dir)
        self.guide: MultimodalGuide | None = None
        self.val_data: MultimodalData | None = None
        self.metrics_data: MultimodalData | None = None
        self.resume_state: dict[str, Any] = {}
        self.history = History()
        self.stopper = EarlyStopping(settings.early_stopping)
        self.start_epoch = self.epoch = self.global_step = self.failures = 0

    # ------------------------------------------------------------- data and device
    def prepare(self, data: MultimodalData, val_data: MultimodalData | None = None,
                guide: MultimodalGuide | None = None, resume_from=None, *,
                new_data: bool = False, data_source: Mapping[str, Any] | None = None,
                metrics_data: MultimodalData | None = None) -> None:
        """Check and restore a resumed run's model (:func:`~pyro_mm.runs.fingerprint.
        check_resume`: same model, guide and, unless ``new_data``, data), seed, move to
        the device, fit the standardisation, prepare the data and initialise the guide.
        ``data_source``: how to rebuild the data, kept in every checkpoint (a resumed
        run keeps its own when not given). ``metrics_data``: where the final metrics are
        computed (default: ``val_data``)."""
        model, s = self.model, self.settings
        self.config = dict(
            num_epochs=s.num_epochs, batch_size=s.batch_size, learning_rate=s.learning_rate,
            clip_norm=s.clip_norm, lr_decay=s.lr_decay, device=str(self.device), seed=s.seed,
            early_stopping=s.early_stopping, kl_warmup_epochs=s.kl_warmup_epochs,
            num_particles=s.num_particles, elbo=s.elbo, num_examples=len(data),
            modalities=list(model.modalities))
        self.resume_state = resume = resume_state(resume_from, self.device)
        self.fingerprint = data_fingerprint(data)
        self.data_source = data_source if data_source is not None else resume.get(
            "data_source")
        source = (resume_from if not isinstance(resume_from, FitResult)
                  else resume_from.run_dir or "the FitResult given")
        if resume:
            check_resume(resume, source=source, model_config=model.config(),
                         guide_config=None if guide is None else guide.config(),
                         fingerprint=self.fingerprint, new_data=new_data)
            warn_of_other_settings(resume, self.config, source=source)
            _load_state(model, resume["model_state"], source, "model")
            if guide is None:
                guide = self._resumed_guide(resume["guide_config"])
        if s.seed is not None:
            pyro.set_rng_seed(s.seed)
        self.generator = torch.Generator().manual_seed(0 if s.seed is None else s.seed)
        model.to(self.device)
        model.check_data(data)
        if not model.standardization.fitted:
            model.fit_standardization(data)
        # Data on disk: a StoreBatch, whose minibatches a DataLoader reads ahead.
        self.batch = model.prepare(data)
        self.loader = self.chunk_of = None
        if data.on_disk:
            self.loader = RowLoader(data, model.modalities, self.device, s.num_workers)
            if s.disk_order == "chunks":
                self.chunk_of = torch.as_tensor(data.store_chunks())
        self.val_data = val_data
        self.metrics_data = val_data if metrics_data is None else metrics_data
        self.val_batch = None if val_data is None else model.prepare(val_data)
        self.guide = guide = MultimodalGuide(model) if guide is None else guide
        guide.to(self.device)
        if not bool(guide.initialized):
            guide.initialize(model, self.batch, self.generator)
        if "guide_state" in resume:
            _load_state(guide, resume["guide_state"], source, "guide")
        if self.group is not None:
            self._prepare_ranks(data)

    def _prepare_ranks(self, data: MultimodalData) -> None:
        """Data-parallel only: check that every rank has the same data and settings,
        seed the guide's noise per rank (the initialisation above was identical) and
        give each rank a share of the validation data."""
        group, s = self.group, self.settings
        self.config["world_size"] = group.world_size
        batch = self.batch
        if not isinstance(batch, TensorBatch):  # on disk: never read whole
            batch = batch.summary(self.model.standardization.all_statistics())
        ddp.check_inputs(group, batch, model=self.model.config(),
                         guide=self.guide.config(), resumed=bool(self.resume_state),
                         settings={**self.config, "device": None, "run_dir": str(s.run_dir)})
        if s.seed is None:
            torch.seed()  # torch's start-up seed is the same in every process
        else:
            pyro.set_rng_seed(s.seed + group.rank)
        if self.val_batch is not None and self.val_batch.size >= group.world_size:
            share = torch.arange(group.rank, self.val_batch.size, group.world_size)
            self.val_batch = (self.model.prepare(self.val_data.subset(share.numpy()))
                              if self.val_data.on_disk else
                              self.val_batch.index(share.to(self.device)))

    def _resumed_guide(self, guide_config: Mapping[str, Any]) -> MultimodalGuide:
        guide_config = dict(guide_config)
        if guide_config.pop("custom_encoders", []):
            raise CheckpointError(
                "resume_from: the run used custom encoders; pass guide="
                "MultimodalGuide(model, encoders=...) built like the original")
        return MultimodalGuide(self.model, **guide_config)

    # ------------------------------------------------------------- optimiser state
    def build_optimizer(self) -> None:
        """Create the loss and the optimiser after one warm-up pass (so every lazily
        created parameter exists), and restore a resumed run's state."""
        model, guide, s = self.model, self.guide, self.settings
        elbo_cls = TraceELBO if s.elbo == "trace" else TraceMeanField_ELBO
        self.loss_fn = elbo_cls(num_particles=s.num_particles)(model, guide)
        n = self.batch.size
        self.minibatch_size = min(s.batch_size, n)
        # Eval mode, so no training-time state moves during the warm-up.
        with torch.set_grad_enabled(self.group is not None), evaluation_mode(model, guide):
            warm = self.loss_fn(self.batch,
                                torch.arange(self.minibatch_size, device=self.device))
        model.pop_records()
        self.loss_fn = ddp.wrap(self.group, self.loss_fn, self.device, warm)
        self.params = list(self.loss_fn.parameters())
        self.optimizer = FusedClippedAdam(self.params, lr=s.learning_rate,
                                          clip_norm=s.clip_norm, lrd=s.lr_decay)
        resume = self.resume_state
        if resume:
            self.optimizer.load_state_dict(resume["optimizer_state"])
            self.history = resume["history"]
            self.start_epoch = int(resume["epoch"])
            self.global_step = int(resume["step"])
            if resume.get("early_stop"):
                self.stopper.load(resume["early_stop"])
            self.generator.set_state(resume["rng"]["batches"])
            ckpt.set_rng_state(resume["rng"])
            ranks = resume["rng"].get("ranks")
            if self.group is not None and len(ranks or ()) == self.group.world_size:
                torch.set_rng_state(ranks[self.group.rank].cpu())
        per_rank = n if self.group is None else math.ceil(n / self.group.world_size)
        self.warmup_steps = s.kl_warmup_epochs * math.ceil(per_rank / self.minibatch_size)
        self.last_good = _snapshot(model, guide)
        self.result = FitResult(model, guide, self.history, self.config,
                                run_dir=self.run_path)

    # ------------------------------------------------------------- one step
    def minibatches(self, epoch: int) -> tuple[Iterable[Minibatch], bool]:
        """This epoch's minibatches, a random permutation of the data or, when a factor
        re-weights the examples (e.g. ARM's re-sampling), a weighted draw; and whether
        it was re-weighted. For data on disk the same minibatches, read ahead by the
        DataLoader (:mod:`pyro_mm.data.loader`)."""
        n = self.batch.size
        weights = (sampling_weights(self.model, self.guide, self.batch)
                   if epoch > 0 else None)
        if weights is None:
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.multinomial(weights.cpu(), n, replacement=True,
                                      generator=self.generator)
        if self.chunk_of is not None:  # minibatches from few chunks (see fit)
            order = chunk_local(order, self.chunk_of, CHUNK_WINDOW, self.generator)
        # Every rank draws the same order (same seed); rank 0's is sent anyway, so a
        # re-weighting that differs in the last bit cannot split the ranks.
        order = ddp.shard(self.group, ddp.broadcast(self.group, order)).to(self.device)
        chunks = [order[start : start + self.minibatch_size]
                  for start in range(0, len(order), self.minibatch_size)]
        if self.loader is None:
            return [Minibatch(self.batch, idx) for idx in chunks], weights is not None
        return self._read_ahead(chunks), weights is not None

    def _read_ahead(self, chunks: list[torch.Tensor]) -> Iterable[Minibatch]:
        """Data on disk: the minibatches ``chunks`` as the loader delivers them."""
        for idx, raw in self.loader.epoch(chunks):
            yield Minibatch(self.batch.with_rows(idx, self.model.standardize(raw)), idx)

    def step(self, minibatch: Minibatch) -> float | None:
        """One SVI step; returns the loss per example, or ``None`` when a non-finite
        loss or gradient made it skip the update (see :meth:`_recover`). Subnormal
        floats are flushed to zero meanwhile (:func:`~pyro_mm.runtime.devices.flush_denormals`:
        they made mfeat's step at batch 1,024 markedly slower on the CPU)."""
        with flush_denormals():
            return self._step(minibatch)

    def _step(self, minibatch: Minibatch) -> float | None:
        s = self.settings
        kl_weight = (min(1.0, (self.global_step + 1) / self.warmup_steps)
                     if self.warmup_steps else 1.0)
        try:
            # The optimiser holds the weights (warm-up in build_optimizer): no statements.
            with pyro.validation_enabled(s.validate_args), without_param_statements():
                loss = self.loss_fn(minibatch.batch, minibatch.indices, kl_weight)
        except ValueError as exc:
            if not _is_non_finite_parameter_error(exc):
                raise
            loss = torch.tensor(math.nan)
        records = self.model.pop_records()
        if self.group is not None and not s.validate_args:
            # A non-finite loss makes this rank's gradients NaN, and their average over
            # ranks then fails the check below on every rank alike: no collective of its
            # own. (With validation on, a failed check leaves no graph to backpropagate.)
            (loss if bool(torch.isfinite(loss)) else loss * math.nan).backward()
            usable = True
        else:
            usable = ddp.all_finite(self.group, loss)  # every rank backpropagates or none
            if usable:
                loss.backward()
        if not usable or not finite_gradients(self.params):
            self._recover()
            return None
        self.failures = 0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        # This rank's loss; epoch_losses averages the epoch's steps over ranks at once.
        value = float(loss.detach()) / minibatch.batch.size
        self.history.steps.append({"step": self.global_step, "epoch": self.epoch,
                                   "loss": value, **records})
        self.global_step += 1
        return value

    def _recover(self) -> None:
        """Drop the gradient and halve the step size; after ``max_recoveries``
        consecutive failures put back the last finite state and raise."""
        self.optimizer.zero_grad(set_to_none=True)
        self.failures += 1
        for group in self.optimizer.param_groups:
            group["lr"] *= 0.5
        if self.failures > self.settings.max_recoveries:
            self.model.load_state_dict(self.last_good["model"])
            self.guide.load_state_dict(self.last_good["guide"])
            raise TrainingDivergedError(
                f"loss was non-finite for {self.failures} consecutive steps "
                f"(epoch {self.epoch}, step {self.global_step}) even after halving the "
                f"step size each time; the model holds its last finite state. "
                "Try a smaller learning_rate or check the data scale."
            )

    # ------------------------------------------------------------- one epoch
    def epoch_losses(self, minibatches: Iterable[Minibatch]) -> list[float]:
        """One pass over ``minibatches`` in training mode; the finite steps' losses."""
        losses, first = [], len(self.history.steps)
        self.model.train()
        self.guide.train()
        for minibatch in minibatches:
            value = self.step(minibatch)
            if value is not None:
                losses.append(value)
        self.model.eval()
        self.guide.eval()
        if self.group is not None:  # every rank took the same steps (see step)
            losses = ddp.mean_each(self.group, losses)
            for row, value in zip(self.history.steps[first:], losses, strict=True):
                row["loss"] = value
        return losses

    def validate(self, losses: list[float], seconds: float, resampled: bool
                 ) -> tuple[dict[str, float], bool]:
        """The epoch's history row (with validation metrics when there is validation
        data) and whether early stopping says to stop."""
        row = {"epoch": self.epoch, "loss": sum(losses) / max(len(losses), 1),
               "seconds": seconds, "resampled": float(resampled)}
        if self.val_batch is not None:
            # Each rank scores its share of the validation data; the mean over ranks,
            # weighted by share size, is the same number on every rank.
            row.update(ddp.mean(self.group, validation_metrics(
                self.model, self.guide, self.val_batch, self.generator),
                weight=self.val_batch.size))
        self.history.epochs.append(row)
        if math.isfinite(row["loss"]):
            self.last_good = _snapshot(self.model, self.guide)
        monitor = row.get("val_loss", row["loss"])
        stop = self.stopper.update(monitor, self.epoch, self.model, self.guide)
        return row, bool(ddp.broadcast(self.group, torch.tensor(stop)))

    def keep_state(self, epochs_done: int) -> None:
        """Keep the state a resumed run needs, after ``epochs_done`` epochs."""
        self.result.state = {
            "optimizer_state": self.optimizer.state_dict(), "epoch": epochs_done,
            "step": self.global_step, "early_stop": self.stopper.state(),
            "rng": {**ckpt.rng_state(), "batches": self.generator.get_state()},
            "data_fingerprint": self.fingerprint, "data_source": self.data_source}
        if self.group is not None:  # each rank's guide noise, to resume it exactly
            self.result.state["rng"]["ranks"] = ddp.gather(self.group, torch.get_rng_state())

    def checkpoint(self, stop: bool) -> None:
        """Keep the state a resumed run needs; write the run folder when it is due."""
        self.keep_state(self.epoch + 1)
        s = self.settings
        if self.run_path is not None and (
                (self.epoch + 1) % s.checkpoint_every == 0 or stop
                or self.epoch + 1 == s.num_epochs):
            self.write_run_folder()

    def write_run_folder(self) -> None:
        """Rank 0 writes the run folder; every rank raises the same
        :class:`CheckpointError` when it could not (naming the file, the OS error and
        the checkpoint left intact), so none waits for a rank that stopped."""
        error = None
        if self.writer:
            try:
                self.result.save(self.run_path)
            except CheckpointError as exc:
                error = exc
        message = ddp.broadcast_object(self.group, None if error is None else
                                       f"{error}; {self._intact()}")
        if message is not None:
            raise CheckpointError(message if self.writer else
                                  f"rank {self.group.rank}: rank 0 {message}") from error

    def _intact(self) -> str:
        """What a failed write left: the checkpoint on disk is read back to say so."""
        try:
            epoch = ckpt.load_checkpoint(self.run_path / ckpt.CHECKPOINT)["epoch"]
        except CheckpointError:
            return f"no checkpoint of this run is in {self.run_path}"
        return f"the checkpoint of epoch {epoch} is intact"

    # ------------------------------------------------------------- the loop
    def run(self) -> FitResult:
        """Every remaining epoch, then :meth:`finish`."""
        with ddp.active(self.group):
            return self._run()

    def _run(self) -> FitResult:
        bar = self._progress_bar()
        stopped_early = False
        self.epoch = self.start_epoch
        try:
            for self.epoch in range(self.start_epoch, self.settings.num_epochs):
                started = time.perf_counter()
                minibatches, resampled = self.minibatches(self.epoch)
                losses = self.epoch_losses(minibatches)
                row, stop = self.validate(losses, time.perf_counter() - started, resampled)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in row.items()
                                     if k in ("loss", "val_loss", "val_accuracy")})
                self.checkpoint(stop)
                if stop:
                    stopped_early = True
                    break
        finally:
            if bar is not None:
                bar.close()
        if self.settings.num_epochs == self.start_epoch == 0:  # no SVI (closed form)
            self.keep_state(0)
        return self.finish(stopped_early)

    def _progress_bar(self):
        if not (self.settings.progress and self.writer):
            return None
        # tqdm is only needed for the bar; imported here to keep it optional.
        from tqdm.auto import tqdm

        return tqdm(total=self.settings.num_epochs, initial=self.start_epoch, desc="SVI",
                    unit="epoch")

    def finish(self, stopped_early: bool) -> FitResult:
        """Restore the best epoch after early stopping, solve separable experts' heads
        exactly (:mod:`pyro_mm.train.expert_heads`), complete the config, compute held-out
        metrics and write the run folder."""
        model, guide, config = self.model, self.guide, self.config
        best = self.stopper.best_state
        if best is not None and (stopped_early or self.settings.restore_best):
            model.load_state_dict(best["model"])
            guide.load_state_dict(best["guide"])
        if experts_heads_are_separable(model) and isinstance(self.batch, TensorBatch):
            solve_expert_heads(model, self.batch)  # on disk: SVI's heads (expert_heads)
        num_epochs = self.settings.num_epochs
        config["epochs_run"] = (self.epoch + 1 if num_epochs > self.start_epoch
                                else self.start_epoch)
        config["stopped_early"] = stopped_early
        config["best_epoch"] = self.stopper.best_epoch
        if guide.closed_form is not None:
            config["closed_form"] = guide.closed_form
        if self.metrics_data is not None:
            self.result.metrics = ddp.mean(self.group,
                                           evaluate(self.result, self.metrics_data))
        if self.run_path is not None:
            self.write_run_folder()
        ddp.barrier(self.group)  # no rank returns before the run folder is complete
        return self.result
