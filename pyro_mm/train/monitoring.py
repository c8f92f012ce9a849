"""What the trainer watches between epochs: the per-example ELBO of held-out data
(:func:`local_elbo`, :func:`validation_metrics`) and early stopping.

These run the model in evaluation mode and never touch the optimiser; the trainer
(:mod:`pyro_mm.train.fit`) calls them once per epoch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from pyro import poutine

from ..data.batch import TensorBatch
from ..model.dp_mixture import MultimodalDPMixture
from ..model.guide import MultimodalGuide
from ..predictive.predict import predict_batch
from ..runtime.modes import evaluation_mode


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
    """Negative ELBO per example (``val_loss``) and, with labels, the plug-in accuracy
    (``val_accuracy``) and label NLL ``-log p(y | x_obs)`` (``val_nll``, nats, mean
    over the labelled examples) on ``batch``."""
    subsample = None
    if batch.size > max_examples:
        subsample = torch.randperm(batch.size, generator=generator)[:max_examples]
        subsample = subsample.to(batch.device)
    out = {"val_loss": -float(local_elbo(model, guide, batch, subsample).mean())}
    if model.classifier is not None and batch.labels is not None and bool(batch.label_mask.any()):
        pred = predict_batch(model, guide, batch, log_probs=True)
        hit = (pred["probs"].argmax(-1) == batch.labels)[batch.label_mask]
        out["val_accuracy"] = float(hit.float().mean())
        picked = pred["log_probs"].gather(-1, batch.labels[:, None])[:, 0]
        out["val_nll"] = -float(picked[batch.label_mask].mean())
    return out


class EarlyStopping:
    """Patience on a monitored loss; keeps a copy of the best parameters when a
    patience is set (``None``: track the best epoch only, never stop)."""

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


__all__ = ["EarlyStopping", "local_elbo", "validation_metrics"]
