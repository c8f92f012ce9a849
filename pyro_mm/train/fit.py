"""Training: :func:`fit` runs minibatch SVI and returns a :class:`FitResult`.

:func:`fit` checks its arguments and runs a :class:`~pyro_mm.train.trainer.Trainer`, whose
methods are the phases of the loop (data and device, optimiser state, step, epoch,
validation and early stopping, checkpoint, finish). The result type and
:func:`~pyro_mm.runs.result.load` live in :mod:`pyro_mm.runs.result`, the validation
metrics in :mod:`pyro_mm.train.monitoring`.

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

**Data-parallel** (``torchrun``, or a process group the caller created): the loss module
is wrapped in ``torch.nn.parallel.DistributedDataParallel`` after the warm-up pass, and
every step goes through the wrapper, whose backward averages the gradients over ranks
(``SVI.step`` would bypass it). All ranks draw the same permutation of the data (same
seed; rank 0's is broadcast) and each takes every ``K``-th example of it, so the ranks'
``j``-th minibatches together are the ``j``-th minibatch of a single process with
``K * batch_size`` examples; the data plate gets the full ``N`` and the rank's indices,
so the averaged gradient is that of the union. Initial parameters are identical
(the data-dependent initialisation is deterministic and DDP broadcasts rank 0's); the
guide's noise is seeded per rank (``seed + rank``). Step losses, validation metrics
(each rank scores a share), the non-finite check, early stopping and ARM's fusion
weights are reduced over ranks before anything is decided, so every rank decides the
same; rank 0 alone writes the run folder, which every rank can resume from. Factor
values in ``history.steps`` are rank 0's. A failed collective (a rank died or hung past
the timeout) or a mismatch of data or arguments between ranks raises
:class:`~pyro_mm.errors.DistributedError` on every surviving rank.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..data.container import MultimodalData
from ..errors import CheckpointError
from ..model.conjugate import conjugate_start
from ..model.dp_mixture import MultimodalDPMixture
from ..model.guide import MultimodalGuide
from ..model.standardization import Standardization
from ..runs import checkpoint as ckpt
from ..runs.folder import open_run_folder
from ..runs.result import FitResult
from ..runtime import distributed as ddp
from .trainer import Settings, Trainer

__all__ = ["fit", "auto_schedule", "closed_form_is_the_fit"]

#: ``fit(num_epochs=None)`` on the conjugate model: the largest recording-resolution
#: floor (training sds; its variance ``1e-6`` of the unit prior spread) for which the
#: closed form is the whole fit (:func:`closed_form_is_the_fit`).
EXACT_FLOOR = 1e-3
#: ``fit(num_epochs=None)``: the SVI steps the epoch budget aims at, whatever ``N``.
AUTO_STEPS = 4000
#: ... and the budget's bounds in epochs.
AUTO_EPOCHS = (10, 2000)
#: ... early stopping's patience, in steps (at least 5 epochs).
AUTO_PATIENCE_STEPS = 400
#: ... the internal validation split when no ``val_data`` is given: this fraction of
#: the rows (stratified by label, seeded by ``seed``), at most :data:`VALIDATION_MAX`.
VALIDATION_FRACTION = 0.1
VALIDATION_MAX = 5000
#: ... and the fewest rows for which it is made (below, the whole budget is run).
VALIDATION_MIN_ROWS = 20


def auto_schedule(num_examples: int, batch_size: int) -> tuple[int, int]:
    """``(num_epochs, patience)`` of ``fit(num_epochs=None)`` for ``num_examples``
    training rows in minibatches of ``batch_size``: as many epochs as
    :data:`AUTO_STEPS` steps take (within :data:`AUTO_EPOCHS`), and a patience of
    :data:`AUTO_PATIENCE_STEPS` steps (at least 5 epochs). With 40 rows that is 2,000
    one-step epochs; with 100,000, 10 epochs of 782 steps."""
    if not isinstance(batch_size, int) or batch_size < 1:  # as Settings says it
        raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
    steps_per_epoch = max(1, math.ceil(num_examples / batch_size))
    low, high = AUTO_EPOCHS
    epochs = min(high, max(low, math.ceil(AUTO_STEPS / steps_per_epoch)))
    patience = max(5, math.ceil(AUTO_PATIENCE_STEPS / steps_per_epoch))
    return epochs, patience


def _validation_split(data: MultimodalData, seed: int | None
                      ) -> tuple[MultimodalData, MultimodalData]:
    """``(train, validation)``: :data:`VALIDATION_FRACTION` of ``data``'s rows (at most
    :data:`VALIDATION_MAX`), stratified by label (unlabelled rows are a stratum),
    drawn with ``seed``."""
    fraction = min(VALIDATION_FRACTION, VALIDATION_MAX / len(data))
    return data.split(test_fraction=fraction, seed=0 if seed is None else seed)


def fit(
    model: MultimodalDPMixture,
    data: MultimodalData,
    *,
    guide: MultimodalGuide | None = None,
    num_epochs: int | None = None,
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
    distributed: bool | None = None,
    num_workers: int = 2,
    disk_order: str = "random",
    overwrite: bool = False,
    new_data: bool = False,
    data_source: Mapping[str, Any] | None = None,
    metrics_data: MultimodalData | None = None,
) -> FitResult:
    """Fit ``model`` to ``data`` by minibatch SVI.

    Args:
        model: a :class:`~pyro_mm.model.dp_mixture.MultimodalDPMixture`.
        data: training data (standardisation statistics are fitted on it unless the
            model already has them, e.g. when resuming).
        guide: defaults to ``MultimodalGuide(model)`` (amortised encoders, mean-field
            globals).
        num_epochs: total epochs (a resumed run continues up to this number).
            ``None`` (default): the package chooses (:func:`auto_schedule`): a budget
            of about :data:`AUTO_STEPS` SVI steps whatever the data set's size, with
            early stopping on the held-out negative ELBO (``val_loss``) and the best
            epoch's parameters restored. The held-out data are ``val_data`` when
            given, else an internal split of ``data`` (:data:`VALIDATION_FRACTION` of
            the rows, at most :data:`VALIDATION_MAX`, stratified by label, seeded by
            ``seed``), left out of training; a data set under
            :data:`VALIDATION_MIN_ROWS` rows is not split and runs the whole budget.
            ``result.metrics`` are then those of the internal split, unless
            ``metrics_data`` is given. Data a report is computed on must not also choose
            the training length: pass it as ``metrics_data``, not ``val_data``.
            For the conjugate observed mixture (:func:`closed_form_is_the_fit`) the
            closed-form variational posterior the guide starts from
            (:mod:`pyro_mm.model.conjugate`) is already the optimum SVI would approach,
            so no SVI runs (``result.config["epochs_run"] == 0``) and no rows are held
            out. ``0``: no SVI whatever the model (the guide's initialisation alone).
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
            With ``num_epochs=None`` it defaults to :func:`auto_schedule`'s.
        kl_warmup_epochs: the representation KL weight rises linearly from 0 to 1.
        num_particles: ELBO particles per step.
        elbo: ``"trace"`` (Trace_ELBO) or ``"meanfield"`` (TraceMeanField_ELBO,
            analytic KLs where available).
        run_dir: write config, metrics, history and checkpoints here. The folder is
            locked for the whole fit (a second run on it is refused, naming the process
            that holds it; a lock left by a run that is gone is taken over), and a
            folder that already holds a run is refused unless this fit resumes it
            (``resume_from`` is the same folder) or ``overwrite`` is given (see
            :mod:`pyro_mm.runs.folder` for what "holds a run" and "finished" mean).
        resume_from: a run folder or :class:`FitResult` to continue exactly where it
            stopped (same data and arguments). The model (and a given guide) must have
            the run's configuration and the data the run's fingerprint (modalities,
            sizes, a hash of the rows): otherwise :class:`~pyro_mm.errors.CheckpointError`
            lists the differences. A checkpoint of an earlier version without a
            fingerprint resumes with a warning that the data cannot be checked.
        checkpoint_every: epochs between checkpoints (with ``run_dir``).
        max_recoveries: consecutive non-finite steps tolerated (each halves the step size).
        validate_args: Pyro's and torch's distribution argument checks during the SVI
            steps. Off by default, as Pyro advises for a mature model: it makes a step
            10-15% faster (``benchmarks/overhead.py``), the data are validated when they
            enter, and a parameter that turns non-finite still shows up as a non-finite
            loss, which is skipped as described above. Turn it on to debug a model of
            your own.
        progress: show a tqdm progress bar (on rank 0 only when data-parallel).
        distributed: data-parallel training on ``torch.distributed``. ``None`` (auto):
            when a process group exists (``init_process_group`` was called) or
            ``torchrun`` started the process (the group is then created: NCCL on GPUs,
            gloo on CPUs, timeout :data:`pyro_mm.runtime.distributed.DEFAULT_TIMEOUT`);
            ``False``: never; ``True``: required. Every rank passes the same data and
            arguments (checked); ``batch_size`` is per rank and each rank takes a
            disjoint share of every epoch; only rank 0 writes ``run_dir``. See the
            module docstring.
        num_workers: for data on disk (:meth:`MultimodalData.open_zarr`), the
            ``DataLoader`` processes reading minibatches ahead (0: read in this
            process); ignored for data in memory. See ``guides/gpu-and-scale.md``.
        disk_order: for data on disk, ``"random"``: every minibatch a uniform draw,
            exactly as in memory (each one reads every chunk holding one of its rows:
            with chunks fewer than ``batch_size``, nearly the whole store); ``"chunks"``:
            the same examples per epoch, ordered so that a minibatch comes from a random
            window of :data:`~pyro_mm.train.trainer.CHUNK_WINDOW` chunks, shuffled within it
            (for stores much larger than memory; write the store in random order).
        overwrite: with ``run_dir`` holding another run, delete that run's files and
            write this one there.
        new_data: with ``resume_from``, continue on data other than the run's on
            purpose (the model's standardisation stays the run's); the checkpoints
            then record the new data.
        metrics_data: held-out data for ``result.metrics`` (and ``metrics.json``)
            alone: never trained on, never used to stop (default: ``val_data``).
            ``pyro-mm train`` passes its test split here.
        data_source: JSON-able description of how to rebuild ``data`` (``pyro-mm
            train`` records its data set, views, seed and split), kept in every
            checkpoint and written beside it as ``data.json``; a resumed fit keeps the
            run's when not given.

    Returns:
        :class:`FitResult`.
    """
    if not isinstance(data, MultimodalData):
        raise TypeError(f"data: expected MultimodalData, got {type(data).__name__}")
    automatic = num_epochs is None
    statistics = _closed_form_statistics(model, data, guide, resume_from) if automatic else None
    if statistics is not None:
        num_epochs = 0
        if statistics is not model.standardization:  # what prepare would fit on these rows
            model.standardization.load_state_dict(statistics.state_dict())
    elif automatic:
        data, val_data, num_epochs, early_stopping = _automatic(
            data, val_data, batch_size, early_stopping, seed)
    settings = Settings(
        num_epochs=num_epochs, batch_size=batch_size, learning_rate=learning_rate,
        clip_norm=clip_norm, lr_decay=lr_decay, device=device, seed=seed,
        early_stopping=early_stopping, kl_warmup_epochs=kl_warmup_epochs,
        num_particles=num_particles, elbo=elbo, run_dir=run_dir,
        checkpoint_every=checkpoint_every, max_recoveries=max_recoveries,
        validate_args=validate_args, progress=progress, distributed=distributed,
        num_workers=num_workers, disk_order=disk_order, restore_best=automatic)
    if run_dir is not None:
        model.config()  # fails now, not after the first epoch, if it cannot be saved
    if resume_from is None:  # a resumed run's data are checked against its fingerprint
        model.check_data(data)  # before the label warnings: a label out of range is an error
        model.label_head.warn_about_labels(data.labels)
    trainer = Trainer(model, settings)
    with ddp.active(trainer.group), _run_folder(  # a failed collective: DistributedError
            trainer.group, run_dir, _resumes_in(resume_from, run_dir), overwrite):
        trainer.prepare(data, val_data, guide, resume_from, new_data=new_data,
                        metrics_data=metrics_data,
                        data_source=data_source)
        trainer.build_optimizer()
        return trainer.run()


def closed_form_is_the_fit(model: MultimodalDPMixture, data: MultimodalData, guide=None,
                           resume_from=None) -> bool:
    """Whether ``fit(num_epochs=None)`` takes the guide's closed-form start as the whole
    fit (no SVI, ``epochs_run == 0``): the model is exactly the conjugate mixture of
    :mod:`pyro_mm.model.conjugate` (no classifier, no factors, recording-resolution
    floors at most :data:`EXACT_FLOOR` training standard deviations), the data are in
    memory (the closed form sees every row), and the guide is the library's mean-field
    one, not yet initialised, with ``init="auto"``. Anywhere else SVI goes on from that
    start."""
    return _closed_form_statistics(model, data, guide, resume_from) is not None


def _closed_form_statistics(model: MultimodalDPMixture, data: MultimodalData, guide,
                            resume_from) -> Standardization | None:
    """:func:`closed_form_is_the_fit`'s answer as the feature statistics it was decided
    on (the model's own if fitted, else a copy fitted on ``data``, which ``fit`` hands
    to the model rather than fitting them again), or ``None`` for no."""
    if not (conjugate_start(model) and model.num_classes is None and not len(model.factors)
            and not data.on_disk and resume_from is None):
        return None
    if guide is not None and not (isinstance(guide, MultimodalGuide) and guide.init == "auto"
                                  and guide.global_guide_name == "meanfield"
                                  and not bool(guide.initialized)):
        return None  # a MAP guide's optimum is the posterior's mode: SVI finds it
    model.check_data(data)  # bad data is named here, before any statistic is taken
    standardization = model.standardization
    if not standardization.fitted:  # what prepare will fit, on the same rows
        standardization = copy.deepcopy(standardization)
        standardization.fit(data)
    exact = all(float(f.max()) <= EXACT_FLOOR for f in standardization.scale_floors())
    return standardization if exact else None


def _automatic(data, val_data, batch_size, early_stopping, seed):
    """``fit(num_epochs=None)``: ``(data, val_data, num_epochs, early_stopping)``, the
    internal validation split made when there is no ``val_data`` (see :func:`fit`)."""
    # A resumed run makes the same seeded split again (same data and seed), so its
    # training rows keep the fingerprint it was checked against.
    if val_data is None and len(data) >= VALIDATION_MIN_ROWS:
        data, val_data = _validation_split(data, seed)
    num_epochs, patience = auto_schedule(len(data), batch_size)
    return data, val_data, num_epochs, patience if early_stopping is None else early_stopping


def _resumes_in(resume_from, run_dir) -> bool:
    """Whether ``resume_from`` is the run in ``run_dir`` (which it may then write)."""
    if resume_from is None or run_dir is None:
        return False
    source = resume_from.run_dir if isinstance(resume_from, FitResult) else resume_from
    if source is None:
        return False
    source = Path(source)
    if source.name == ckpt.CHECKPOINT and not source.is_dir():
        source = source.parent
    return source.resolve() == Path(run_dir).resolve()


@contextlib.contextmanager
def _run_folder(group, run_dir, resuming: bool, overwrite: bool) -> Iterator[None]:
    """Rank 0 (or the only process) holds ``run_dir`` for the block
    (:func:`~pyro_mm.runs.folder.open_run_folder`); a refusal is raised on every rank."""
    if run_dir is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        error = None
        if group is None or group.is_writer:
            try:
                stack.enter_context(open_run_folder(run_dir, resuming=resuming,
                                                    overwrite=overwrite))
            except CheckpointError as exc:
                error = exc
        message = ddp.broadcast_object(group, None if error is None else str(error))
        if error is not None:
            raise error
        if message is not None:
            raise CheckpointError(f"rank {group.rank}: rank 0 could not open the run "
                                  f"folder: {message}")
        yield
