"""Data-parallel training on ``torch.distributed``: finding the process group, and the
few collectives the trainer and ARM need so that every rank decides the same.

:func:`pyro_mm.fit` runs data-parallel when a process group exists (the user called
``torch.distributed.init_process_group``) or when ``torchrun`` started the process (its
``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` variables are set; :func:`init_from_env` then
creates the group: NCCL when CUDA is available, gloo otherwise, with a short timeout).

Every helper takes the :class:`Group` (or ``None`` for one process, where it returns its
input unchanged), so the single-process trainer runs the same code with no collectives.
A collective that fails (a rank died, hung past the timeout, or took another path)
becomes a :class:`~pyro_mm.errors.DistributedError` on the ranks still alive.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from ..errors import DistributedError

if TYPE_CHECKING:  # pragma: no cover
    from ..data.batch import TensorBatch

#: Seconds a collective waits for the other ranks before failing (environment variable
#: ``PYRO_MM_DIST_TIMEOUT`` overrides it). Short, so a rank that died or hung surfaces as
#: an error within minutes; no step, validation or checkpoint of ours takes this long.
DEFAULT_TIMEOUT = 300.0
TIMEOUT_ENV = "PYRO_MM_DIST_TIMEOUT"


@dataclasses.dataclass(frozen=True)
class Group:
    """This process's place in the default process group."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes run folders and checkpoints."""
        return self.rank == 0


_active: Group | None = None
_log = logging.getLogger("pyro_mm")


def launched_by_torchrun() -> bool:
    """Whether ``torchrun`` (``torch.distributed.run``) started this process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def init_from_env(timeout: float | None = None) -> bool:
    """Create the default process group from ``torchrun``'s environment variables
    (if it does not exist yet); returns whether a group exists afterwards.

    NCCL when CUDA is available (each rank on ``cuda:LOCAL_RANK``), gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if not (dist.is_available() and launched_by_torchrun()):
        return False
    seconds = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT) if timeout is None
                    else timeout)
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if use_cuda else "gloo",
                            timeout=datetime.timedelta(seconds=seconds))
    return True


def resolve(distributed: bool | None) -> Group | None:
    """The group :func:`pyro_mm.fit` trains in: ``None`` for one process.

    ``distributed=None`` (auto): data-parallel when a process group exists or
    ``torchrun`` started the process; ``False``: never; ``True``: required.
    """
    if distributed is False:
        return None
    if not init_from_env():
        if distributed:
            raise ValueError(
                "distributed=True: no torch.distributed process group; start with "
                "`torchrun --nproc_per_node=K ...` or call init_process_group first")
        return None
    return Group(dist.get_rank(), dist.get_world_size(),
                 int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def rank_device(group: Group | None, device: torch.device) -> torch.device:
    """A CUDA device without an index means this rank's GPU, ``cuda:LOCAL_RANK``."""
    if group is not None and device.type == "cuda" and device.index is None:
        return torch.device("cuda", group.local_rank % torch.cuda.device_count())
    return device


def wrap(group: Group | None, loss: torch.nn.Module, device: torch.device,
         warm: torch.Tensor | None = None) -> torch.nn.Module:
    """``loss`` (the ELBO module, after its warm-up call) in
    ``DistributedDataParallel``: every step must go through the wrapper's forward, whose
    backward averages the gradients over ranks (``SVI.step`` would bypass it). Its
    constructor broadcasts rank 0's parameters and buffers.

    Buffers are not re-broadcast before every forward: the only one training changes,
    ARM's fusion weights, is updated from values reduced over ranks, so it agrees
    already. ``warm``: the warm-up call's loss, with its graph; backpropagated once to
    see whether a step can leave parameters without a gradient (a classifier on data
    without any label, say). Only then (or without ``warm``) does DDP walk the graph
    after every forward to find them, which costs about a tenth of a small step."""
    if group is None:
        return loss
    options = {"find_unused_parameters": warm is None or _leaves_unused(warm, loss)}
    parameters = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    # torch >= 2.14 renamed it; the new name still syncs at construction, as wanted.
    options["forward_sync_buffers" if "forward_sync_buffers" in parameters
            else "broadcast_buffers"] = False
    return torch.nn.parallel.DistributedDataParallel(
        loss, device_ids=[device] if device.type == "cuda" else None, **options)


def _leaves_unused(loss: torch.Tensor, module: torch.nn.Module) -> bool:
    """Whether backpropagating ``loss`` leaves any of ``module``'s parameters without a
    gradient; the gradients are cleared again."""
    if not loss.requires_grad:
        return True
    params = list(module.parameters())
    loss.backward()
    unused = any(p.grad is None for p in params)
    for p in params:
        p.grad = None
    return unused


def current() -> Group | None:
    """The group of the training loop now running (``None`` outside one, or in one
    process); factors whose training-time state must agree across ranks read it."""
    return _active


@contextlib.contextmanager
def active(group: Group | None) -> Iterator[None]:
    """Mark ``group`` as the running loop's (see :func:`current`) and turn a failed
    collective into a :class:`DistributedError` of one line (:func:`lost_rank_message`);
    the backend's own text goes to the ``pyro_mm`` log (level INFO) and stays chained
    as the error's ``__cause__``."""
    global _active
    previous, _active = _active, group
    try:
        yield
    except RuntimeError as exc:
        if group is None or isinstance(exc, DistributedError) or not _is_collective(exc):
            raise
        _log.info("rank %d of %d: the backend's error:\n%s", group.rank, group.world_size,
                  exc)
        raise DistributedError(lost_rank_message(group, str(exc))) from exc
    finally:
        _active = previous


def lost_rank_message(group: Group, backend_text: str) -> str:
    """One line for a failed collective: which rank this is, which it lost and why that
    probably happened (read from the backend's text, which is not repeated)."""
    others = (f"rank {1 - group.rank}" if group.world_size == 2 else
              f"another of the {group.world_size} ranks")
    text = backend_text.lower()
    if "timed out" in text or "timeout" in text:
        cause = ("did not answer within the process-group timeout (it hung, or is far "
                 f"slower; {TIMEOUT_ENV} sets the timeout)")
    elif any(k in text for k in ("connection closed", "connection reset", "broken pipe",
                                 "closed by peer", "eof")):
        cause = "closed its connection: its process probably died (killed, out of memory, "\
                "or crashed; see its own output)"
    else:
        cause = "failed in a collective operation (it died, hung, or ran different code)"
    return (f"rank {group.rank} of {group.world_size}: lost {others}, which {cause}; the "
            "last checkpoint in the run folder is intact and can be resumed")


def _is_collective(exc: RuntimeError) -> bool:
    if isinstance(exc, getattr(dist, "DistBackendError", ())):
        return True
    text = str(exc).lower()
    return any(k in text for k in ("gloo", "nccl", "connection closed", "timed out",
                                   "connection reset", "broken pipe"))


def _collective_device(group: Group) -> torch.device:
    """NCCL reduces CUDA tensors only; gloo CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(group: Group | None, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Element-wise sums over ranks of ``tensors`` (in one collective)."""
    if group is None:
        return tensors
    flat = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    flat = flat.to(_collective_device(group))
    dist.all_reduce(flat)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].reshape(t.shape).to(t.device, t.dtype))
        start += t.numel()
    return tuple(out)


def mean(group: Group | None, values: Mapping[str, float],
         weight: float = 1.0) -> dict[str, float]:
    """Weighted mean over ranks of scalar ``values`` (the same keys on every rank);
    ``weight`` is this rank's weight, e.g. its number of examples."""
    if group is None:
        return dict(values)
    keys = sorted(values)
    vec = torch.tensor([values[k] * weight for k in keys] + [weight], dtype=torch.float64)
    (vec,) = all_reduce_sum(group, vec)
    return {k: float(vec[i] / vec[-1]) for i, k in enumerate(keys)}


def all_finite(group: Group | None, loss: torch.Tensor) -> bool:
    """Whether ``loss`` is finite on every rank (one collective). Every rank must
    backpropagate or none: a lone backward would wait forever for the other ranks'
    gradients."""
    finite = bool(torch.isfinite(loss))
    if group is None:
        return finite
    (failed,) = all_reduce_sum(group, torch.tensor([0.0 if finite else 1.0]))
    return bool(failed[0] == 0)


def mean_each(group: Group | None, values: list[float]) -> list[float]:
    """Element-wise means over ranks of ``values`` (as long on every rank), in one
    collective: per-step losses, reduced once per epoch instead of once per step."""
    if group is None or not values:
        return list(values)
    (sums,) = all_reduce_sum(group, torch.tensor(values, dtype=torch.float64))
    return (sums / group.world_size).tolist()


def broadcast(group: Group | None, tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``tensor`` (same shape and dtype on every rank) on every rank."""
    if group is None:
        return tensor
    out = tensor.detach().clone().to(_collective_device(group))
    dist.broadcast(out, src=0)
    return out.to(tensor.device)


def barrier(group: Group | None) -> None:
    """Wait until every rank got here (a one-element all-reduce, which, unlike
    ``dist.barrier``, works the same on every backend and device)."""
    all_reduce_sum(group, torch.zeros(1))


def broadcast_object(group: Group | None, value):
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if group is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(group: Group | None, tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same shape and dtype on every rank), in rank order."""
    if group is None:
        return [tensor]
    local = tensor.detach().to(_collective_device(group))
    out = [torch.empty_like(local) for _ in range(group.world_size)]
    dist.all_gather(out, local)
    return [t.cpu() for t in out]


def shard(group: Group | None, order: torch.Tensor) -> torch.Tensor:
    """This rank's share of ``order``: ``order[rank::world_size]`` after repeating its
    first entries so every rank gets as many (as ``DistributedSampler`` does), so all
    ranks take the same number of steps; the ranks' ``j``-th minibatches together are
    the ``j``-th minibatch of ``world_size`` times the size."""
    if group is None:
        return order
    pad = -len(order) % group.world_size
    if pad:
        order = torch.cat([order, order[:pad]])
    return order[group.rank :: group.world_size]


def fingerprint(**items) -> torch.Tensor:
    """A small float64 tensor summarising ``items`` (numbers, tensors, or anything
    JSON can write), one entry per item in keyword order, for :func:`check_same`."""
    values = []
    for value in items.values():
        if isinstance(value, torch.Tensor):
            value = value.detach().double()
            values.append(float(value.sum() + (value * value).sum().sqrt()))
        elif isinstance(value, (int, float)):
            values.append(float(value))
        else:
            text = json.dumps(value, sort_keys=True, default=str).encode()
            values.append(float(int(hashlib.sha256(text).hexdigest()[:12], 16)))
    return torch.tensor(values, dtype=torch.float64)


def check_same(group: Group | None, names: list[str], local: torch.Tensor) -> None:
    """Raise the same :class:`DistributedError` on every rank when any rank's
    :func:`fingerprint` differs from rank 0's (data or configuration mismatch)."""
    if group is None:
        return
    every = gather(group, local)
    for rank, other in enumerate(every[1:], start=1):
        differ = [n for n, a, b in zip(names, every[0].tolist(), other.tolist())
                  if not (a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b)))]
        if differ:
            raise DistributedError(
                f"rank {group.rank} of {group.world_size}: rank {rank} differs from "
                f"rank 0 in {', '.join(differ)}; every rank must load the same data "
                "and use the same model and fit arguments")


def check_inputs(group: Group | None, batch: "TensorBatch", **config) -> None:
    """:func:`check_same` on the prepared training data (size, masks, labels, every
    feature) and ``config`` (model, guide and fit settings)."""
    items = dict(num_examples=batch.size, masks=batch.masks.float(),
                 labels=None if batch.labels is None else batch.labels.float(),
                 **{f"features {m}": x for m, x in batch.features.items()}, **config)
    check_same(group, list(items), fingerprint(**items))


__all__ = ["DEFAULT_TIMEOUT", "Group", "active", "all_finite", "all_reduce_sum", "barrier",
           "broadcast", "broadcast_object", "check_inputs", "check_same", "current",
           "fingerprint", "gather", "init_from_env", "launched_by_torchrun",
           "lost_rank_message", "mean", "mean_each", "rank_device", "resolve", "shard", "wrap"]
