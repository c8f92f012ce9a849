"""The settings of :func:`pyro_mm.train.fit.fit` that shape the training loop, checked
once, before anything is built."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

__all__ = ["Settings"]


@dataclasses.dataclass(frozen=True)
class Settings:
    """The arguments of :func:`fit` that shape the loop (see :func:`fit` for each);
    checked on construction."""

    num_epochs: int = 100
    batch_size: int = 128
    learning_rate: float = 1e-2
    clip_norm: float = 10.0
    lr_decay: float = 1.0
    device: str | torch.device = "auto"
    seed: int | None = 0
    early_stopping: int | None = None
    kl_warmup_epochs: int = 0
    num_particles: int = 1
    elbo: str = "trace"
    run_dir: str | Path | None = None
    checkpoint_every: int = 1
    max_recoveries: int = 5
    validate_args: bool = False
    progress: bool = True
    distributed: bool | None = None
    num_workers: int = 2
    disk_order: str = "random"
    #: Restore the best epoch at the end even when the budget ran out before early
    #: stopping stopped it (``fit(num_epochs=None)``).
    restore_best: bool = False

    def __post_init__(self):
        for name in ("num_epochs", "batch_size", "num_particles", "checkpoint_every"):
            value = getattr(self, name)
            if name == "num_epochs" and value == 0 and not isinstance(value, bool):
                continue  # no SVI: the guide's initialisation is the fit
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: must be positive, got {self.learning_rate!r}")
        if self.disk_order not in ("random", "chunks"):
            raise ValueError(f"disk_order: expected 'random' or 'chunks', got "
                             f"{self.disk_order!r}")
        if self.elbo not in ("trace", "meanfield"):
            raise ValueError(f"elbo: expected 'trace' or 'meanfield', got {self.elbo!r}")
