"""ARM: measure each modality's contribution to the label and reinforce the weak ones.

The contributions ``phi_m`` (nats, a held-out estimate of ``I(y; z_m | z_-m)``), the joint
bound ``phi_MI`` and the unimodal bounds are defined in
:mod:`pyro_mm.factors.contributions`. ARM uses them three ways.

**Asymmetric reinforcement** (the site ``<name>``, per example). Each term is a label
log-likelihood of a *fitted* prediction, so it can only be improved by predicting better:

    L_i = -(1/M) sum_m u_m l_i^(-m),    u_m = mean_{j != m} w_j,

``l_i^(-m)`` being the prediction made from every modality but ``m`` and ``w`` the
(detached) fusion weights below, large for weak modalities. ``u_m`` is the weight of the
modalities that make the prediction ``l^(-m)``: leaving out the strongest modality gives
the prediction of the weak ones, which gets the largest weight. This raises what the weak
modalities predict *given the others*; the gradient reaches their encoders and the
classifier. Why not the min-max gap of the first version (``max_m phi_m - min_m phi_m``):
there the full term ``l`` cancels and what is left, ``l^(-weak) - l^(-strong)``, is also
lowered by making the prediction *without the weak modality worse*, i.e. by teaching the
classifier to fail without it; a pure-noise modality reached 3.5 nats that way. No term
of ARM rewards a worse prediction.

**Unimodal reinforcement** (``reinforce > 0``, the site ``<name>_reinforce``, per
example): a linear head per modality, ``q_m(y | z_m)``, and
``r_i = -sum_m w_m log q_m(y_i | z_im)``, weighted towards the weakest modality. It raises
what each modality predicts *alone*, which moves label information into the weak
encoder (the leave-one-out term alone mostly re-weights the classifier). The heads are
the factor's parameters, trained and saved with the model.

**Dynamic feature-level fusion**: after each training step the model's modality weights
(used by ``concat`` and ``dp`` fusion) move towards ``M softmax_m(-phi_m / T)`` by an
exponential moving average (``fusion_momentum``), from the minibatch's ``phi`` (in
data-parallel training, of the union of every rank's minibatch); they are detached, and
change only in training mode.

**Dynamic sample-level re-sampling** (``resample=True``, off by default): each epoch the
trainer draws example ``i`` with probability proportional to
``exp(-resample_strength * standardised(min_m c_im))``, so examples whose weakest
modality contributes least are seen more often. **This changes the objective**: the
minibatch sums are no longer unbiased for the full-data ELBO.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pyro
import torch
from torch import nn

from ..model.factor_protocol import AuxiliaryFactor, FactorContext, FactorModel
from ..runtime.distributed import all_reduce_sum, current
from .contributions import LeaveOneOut, label_entropy, leave_one_out, unimodal_bounds

if TYPE_CHECKING:  # pragma: no cover
    from ..data.batch import TensorBatch
    from ..model.params import MixtureParams

#: Default weight of the unimodal reinforcement term (see the measurements in
#: ``benchmarks/RESULTS.md`` and ``guides/auxiliary-factors.md``).
REINFORCE = 3.0


class ARM(AuxiliaryFactor):
    """Asymmetric reinforcement against modality bias (see the module docstring).

    Args:
        weight: multiplies the leave-one-out reinforcement ``L_i`` (per example, on the
            scale of the label log-likelihood).
        temperature: ``T`` of the fusion weights ``softmax_m(-phi_m / T)``.
        fusion_momentum: EMA momentum of the fusion weights (0: no smoothing; 1: frozen).
        resample: re-weight how often the trainer draws each example (changes the
            objective).
        resample_strength: sharpness of that re-weighting.
        reinforce: weight of the unimodal reinforcement term ``r_i`` (per example; 0
            turns it off and builds no heads).
        name: site name and prefix of the logged values (default ``"arm"``); the
            unimodal term is the site ``<name>_reinforce``.

    Logged per step: ``<name>/loss``, ``<name>/phi/<modality>``, ``<name>/phi_mi``,
    ``<name>/fusion_weight/<modality>`` and, with ``reinforce > 0``,
    ``<name>/unimodal/<modality>`` (the bound on ``I(y; z_m)``) and ``<name>/reinforce``.
    """

    site_name = "arm"

    def __init__(self, weight: float = 1.0, temperature: float = 1.0,
                 fusion_momentum: float = 0.9, resample: bool = False,
                 resample_strength: float = 1.0, reinforce: float = REINFORCE,
                 name: str | None = None):
        super().__init__(weight, name)
        if not temperature > 0:
            raise ValueError(f"ARM temperature: must be positive, got {temperature!r}")
        if not 0.0 <= fusion_momentum <= 1.0:
            raise ValueError(f"ARM fusion_momentum: must be in [0, 1], got {fusion_momentum!r}")
        if not reinforce >= 0:
            raise ValueError(f"ARM reinforce: must be a non-negative number, got {reinforce!r}")
        self.temperature = float(temperature)
        self.fusion_momentum = float(fusion_momentum)
        self.resample = bool(resample)
        self.resample_strength = float(resample_strength)
        self.reinforce = float(reinforce)
        #: One linear head per modality, ``(B, D) -> (B, C)``; built by :meth:`bind`.
        self.heads = nn.ModuleList()

    def config(self) -> dict[str, Any]:
        return {**super().config(), "temperature": self.temperature,
                "fusion_momentum": self.fusion_momentum, "resample": self.resample,
                "resample_strength": self.resample_strength, "reinforce": self.reinforce}

    def check_model(self, model: FactorModel) -> None:
        if len(model.modalities) < 2:
            raise ValueError(
                f"ARM: needs at least two modalities, the model has {len(model.modalities)}")
        if model.num_classes is None:
            raise ValueError("ARM: needs labels; build the model with num_classes")

    def bind(self, model: FactorModel) -> None:
        super().bind(model)
        self.heads = nn.ModuleList(
            [nn.Linear(model.latent_dim, model.num_classes) for _ in model.modalities]
            if self.reinforce > 0 else [])

    # ------------------------------------------------------------------ the two terms
    @staticmethod
    def leave_one_out_loss(model: FactorModel, loo: LeaveOneOut) -> torch.Tensor:
        """``(B,)``: ``L_i = -(1/M) sum_m u_m l_i^(-m)`` over the valid ``(i, m)``, with
        ``u_m`` the mean fusion weight of the modalities other than ``m``."""
        w = model.modality_weights
        num = w.numel()
        u = (w.sum() - w) / (num - 1)
        weighted = torch.where(loo.valid, loo.without, torch.zeros_like(loo.without))
        return -(u * weighted).sum(-1) / num

    def unimodal_log_prob(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(B, M)``: ``log q_m(y_i | z_im)`` from each modality's linear head, for
        ``z (B, M, D)`` and ``labels (B,)``."""
        if not len(self.heads):
            raise ValueError("ARM: no unimodal heads (reinforce=0, or not bound to a model)")
        logits = torch.stack([head(z[..., j, :]) for j, head in enumerate(self.heads)], -2)
        index = labels[:, None, None].expand(*logits.shape[:-1], 1)
        return torch.log_softmax(logits, -1).gather(-1, index)[..., 0]

    @staticmethod
    def unimodal_loss(model: FactorModel, log_q: torch.Tensor,
                      observed: torch.Tensor) -> torch.Tensor:
        """``(B,)``: ``r_i = -sum_m w_m log q_m(y_i | z_im)`` from ``log_q (B, M)`` over
        the modalities ``observed (B, M)`` marks, ``w`` the model's fusion weights."""
        weighted = model.modality_weights * torch.where(observed, log_q, torch.zeros_like(log_q))
        return -weighted.sum(-1)

    def forward(self, model: FactorModel, z: torch.Tensor,
                params: "MixtureParams", labels: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Plain PyTorch loss: the mean leave-one-out reinforcement for ``z (B, M, D)``
        and ``labels (B,)`` (the unimodal term is :meth:`unimodal_loss`)."""
        loo = leave_one_out(model, z, params, labels, mask)
        return self.leave_one_out_loss(model, loo).mean()

    # ------------------------------------------------------------------ inside the model
    def model_loss(self, context: FactorContext) -> torch.Tensor:
        model, batch, z = context.model, context.batch, context.z
        labelled = batch.label_mask
        if batch.labels is None or labelled is None:
            return z.new_zeros(batch.size)
        loo = leave_one_out(model, z, context.params, batch.labels,
                            batch.masks & labelled[:, None])
        loss = self.leave_one_out_loss(model, loo)
        self._log_contributions(context, loo, labelled)
        return loss

    def _log_contributions(self, context: FactorContext, loo: LeaveOneOut,
                           labelled: torch.Tensor) -> None:
        model = context.model
        c = loo.contributions.detach()
        sums, counts = c.sum(0), loo.valid.sum(0)
        if model.training:
            # Data-parallel: phi of the union of the ranks' minibatches, so every rank
            # moves its fusion weights (a buffer DDP does not average) the same way.
            sums, counts = all_reduce_sum(current(), sums, counts)
        phi = sums / counts.clamp_min(1)
        if labelled.any():
            context.log(f"{self.name}/phi_mi", label_entropy(model.class_frequencies)
                        + loo.full.detach()[labelled].mean())
        for j, m in enumerate(model.modalities):
            if counts[j] > 0:
                context.log(f"{self.name}/phi/{m}", phi[j])
        if model.training and bool((counts > 0).all()):
            self._update_fusion(model, phi)
        for j, m in enumerate(model.modalities):
            context.log(f"{self.name}/fusion_weight/{m}", model.modality_weights[j])

    def attach(self, context: FactorContext) -> None:
        """The leave-one-out factor ``<name>`` and, with ``reinforce > 0``, the
        per-example unimodal reinforcement factor ``<name>_reinforce``."""
        super().attach(context)
        batch, model = context.batch, context.model
        if not self.reinforce or batch.labels is None or batch.label_mask is None:
            return
        observed = batch.masks & batch.label_mask[:, None]
        log_q = self.unimodal_log_prob(context.z, batch.labels)
        loss = self.unimodal_loss(model, log_q, observed)
        context.log(f"{self.name}/reinforce", loss.mean())
        for m, bound in unimodal_bounds(model, log_q, observed).items():
            context.log(f"{self.name}/unimodal/{m}", bound)
        pyro.factor(f"{self.name}_reinforce", -self.reinforce * loss)

    @torch.no_grad()
    def _update_fusion(self, model: FactorModel, phi: torch.Tensor) -> None:
        target = len(phi) * torch.softmax(-phi / self.temperature, 0)
        # A new tensor, not an in-place update: this step's graph still holds the old one.
        model.modality_weights = (self.fusion_momentum * model.modality_weights
                                  + (1.0 - self.fusion_momentum) * target)

    # ------------------------------------------------------------------ re-sampling
    @torch.no_grad()
    def sampling_weights(self, model: FactorModel, guide, batch: "TensorBatch"
                         ) -> torch.Tensor | None:
        if not self.resample or batch.labels is None:
            return None
        scores = example_scores(model, guide, batch)
        known = torch.isfinite(scores)
        if known.sum() < 2:
            return None
        mean, std = scores[known].mean(), scores[known].std().clamp_min(1e-6)
        standard = torch.where(known, (scores - mean) / std, torch.zeros_like(scores))
        return torch.softmax(-self.resample_strength * standard, 0)


@torch.no_grad()
def example_scores(model: FactorModel, guide, batch: "TensorBatch",
                   chunk_size: int = 4096) -> torch.Tensor:
    """``(N,)``: each labelled example's weakest contribution ``min_m c_im`` over its
    valid modalities, at the posterior means (``nan`` for an unlabelled example or one
    with a single present modality)."""
    params = model.params_from_sites(guide.point_estimate())
    globals_ = guide.point_estimate()
    out = torch.full((batch.size,), math.nan, device=batch.device)
    for idx in batch.chunk_indices(chunk_size):
        part = batch.index(idx)
        z, _ = guide.encode(part, globals_)
        loo = leave_one_out(model, z, params, part.labels, part.masks)
        c = torch.where(loo.valid, loo.contributions, torch.full_like(loo.without, math.inf))
        weakest = c.min(-1).values
        keep = part.label_mask & loo.valid.any(-1)
        out[idx] = torch.where(keep, weakest, out[idx])
    return out
