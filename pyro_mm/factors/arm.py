"""ARM: measure each modality's contribution to the label and reinforce the weak one.

For example ``i`` with label ``y_i`` and representations ``z_i`` (``M >= 2``):

* ``l_i = log p(y_i | z_i)``, from the model's own classifier;
* ``l_i^(-m)``: the same with ``z_im`` replaced by its expected value under the mixture,
  ``sum_k pi_k mu_mk`` ("modality ``m`` removed");
* conditional contribution ``c_im = l_i - l_i^(-m)``; its mean over labelled examples,
  ``phi_m``, is a variational estimate of ``I(y; z_m | z_-m)`` in nats (a modality the
  classifier ignores scores exactly 0);
* joint contribution ``phi_MI = H(y) + mean_i l_i``, a lower bound on ``I(y; z)``, with
  ``H(y)`` from the training label frequencies; it never exceeds ``H(y)``.

The factor adds the balanced min-max loss ``L_bal = max_m phi_m - min_m phi_m`` (with
``smooth=T``: ``T logsumexp(phi / T) + T logsumexp(-phi / T)``, a smooth upper bound of
the same gap) as one batch-level value per example (magnitude ``N * L_bal``, see
:mod:`pyro_mm.factors.base`). The classification likelihood keeps the dominant modality
strong while this term closes the gap.

Dynamic feature-level fusion: after each training step, the model's modality weights
(used by both ``concat`` and ``dp`` fusion) move towards ``M softmax_m(-phi_m / T)``
by an exponential moving average with ``fusion_momentum``; they are detached, so the
weaker modality is amplified without a gradient through the weights. Weights change
only in training mode, never while evaluating.

Reinforcement of the weak modality's own representation (``reinforce > 0``): a
linear head per modality, ``q_m(y | z_m)``, and the per-example term
``r_i = -sum_m w_m log q_m(y_i | z_im)`` with ``w`` the (detached) fusion weights, so
the weakest modality gets the largest share. ``H(y) + mean_i log q_m(y_i | z_im)`` is a
lower bound on the unimodal information ``I(y; z_m)``; it is bounded by ``H(y)``, so
unlike ``phi_m`` it cannot be raised by making the classifier fail when ``z_m`` is
removed, only by putting label information into ``z_m``. Why it is needed: ``phi_m``
measures how much the fused classifier *relies* on ``z_m``, and the min-max loss can
raise it by re-weighting the classifier alone; the weak encoder then learns nothing new
(on mfeat, ARM without this term tripled ``phi_mor`` and left a linear probe on
``z_mor`` where it was). The heads are the factor's parameters, trained with the model.

Dynamic sample-level re-sampling (``resample=True``, off by default): each epoch the
trainer draws example ``i`` with probability proportional to
``exp(-resample_strength * standardised(min_m c_im))``, so examples whose weakest
modality contributes least are seen more often. **This changes the objective**: the
minibatch sums are no longer unbiased for the full-data ELBO; it re-weights the data
towards hard examples, as ARM intends.

Unlike the histogram mutual-information estimates of the reference code (which gave
about 0.5 nats on independent data), these are computed from the model's predictive
log-probabilities, so a useless modality scores near 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pyro
import torch
from torch import nn

from ..params import point_params
from .base import AuxiliaryFactor, FactorContext

if TYPE_CHECKING:  # pragma: no cover
    from ..data import TensorBatch
    from ..models import MixtureParams, MultimodalDPMixture


def conditional_contributions(model: "MultimodalDPMixture", z: torch.Tensor,
                              params: "MixtureParams", labels: torch.Tensor,
                              mask: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c (B, M), l (B,))``: per-example contributions ``c_im = l_i - l_i^(-m)`` and
    the log-likelihoods ``l_i = log p(y_i | z_i)`` (see the module docstring)."""
    full = model.label_log_prob(z, params, labels, mask)
    dropped = torch.stack([model.label_log_prob(z, params, labels, mask, drop=j)
                           for j in range(z.shape[-2])], dim=-1)
    return full.unsqueeze(-1) - dropped, full


def label_entropy(frequencies: torch.Tensor) -> torch.Tensor:
    """``H(y)`` in nats from class frequencies."""
    p = frequencies[frequencies > 0]
    return -(p * p.log()).sum()


def unimodal_bounds(model: "MultimodalDPMixture", log_q: torch.Tensor,
                    observed: torch.Tensor) -> dict[str, torch.Tensor]:
    """``modality -> H(y) + mean log q_m(y_i | z_im)``, the lower bound on ``I(y; z_m)``,
    averaged over the examples ``observed (B, M)`` marks (modalities with none are left
    out); ``log_q (B, M)`` from :meth:`ARM.unimodal_log_prob`."""
    entropy = label_entropy(model.class_frequencies)
    return {m: entropy + log_q[observed[:, j], j].mean()
            for j, m in enumerate(model.modalities) if bool(observed[:, j].any())}


#: Default weight of the unimodal reinforcement term (see the measurements in
#: ``benchmarks/RESULTS.md`` and ``guides/auxiliary-factors.md``).
REINFORCE = 3.0


class ARM(AuxiliaryFactor):
    """Asymmetric reinforcement against modality bias (see the module docstring).

    Args:
        weight: multiplies the balanced min-max loss. The default is 0.1, not 1: the
            loss enters as ``N * L_bal``, as large as the whole label log-likelihood, and
            at weight 1 it bought balance by degrading the dominant modality (fused
            accuracy fell by about 4 points on imbalanced synthetic data, against
            about 0.4 at 0.1; see the benchmarks).
        temperature: ``T`` of the fusion weights ``softmax_m(-phi_m / T)``.
        fusion_momentum: EMA momentum of the fusion weights (0: no smoothing; 1: frozen).
        resample: re-weight how often the trainer draws each example (changes the
            objective).
        resample_strength: sharpness of that re-weighting.
        smooth: ``None`` for the hard ``max - min`` gap, or a temperature for its smooth
            log-sum-exp version.
        reinforce: weight of the unimodal reinforcement term ``r_i`` (per example, on
            the scale of the label log-likelihood; 0 turns it off and builds no heads).
        name: site name and prefix of the logged values (default ``"arm"``); the
            reinforcement term is the site ``<name>_reinforce``.

    Logged per step: ``<name>/phi/<modality>``, ``<name>/phi_mi``, ``<name>/balance``,
    ``<name>/fusion_weight/<modality>`` and, with ``reinforce > 0``,
    ``<name>/unimodal/<modality>`` (the bound on ``I(y; z_m)``) and ``<name>/reinforce``.
    """

    site_name = "arm"

    def __init__(self, weight: float = 0.1, temperature: float = 1.0,
                 fusion_momentum: float = 0.9, resample: bool = False,
                 resample_strength: float = 1.0, smooth: float | None = None,
                 reinforce: float = REINFORCE, name: str | None = None):
        super().__init__(weight, name)
        if not temperature > 0:
            raise ValueError(f"ARM temperature: must be positive, got {temperature!r}")
        if not 0.0 <= fusion_momentum <= 1.0:
            raise ValueError(f"ARM fusion_momentum: must be in [0, 1], got {fusion_momentum!r}")
        if smooth is not None and not smooth > 0:
            raise ValueError(f"ARM smooth: must be None or positive, got {smooth!r}")
        if not reinforce >= 0:
            raise ValueError(f"ARM reinforce: must be a non-negative number, got {reinforce!r}")
        self.temperature = float(temperature)
        self.fusion_momentum = float(fusion_momentum)
        self.resample = bool(resample)
        self.resample_strength = float(resample_strength)
        self.smooth = None if smooth is None else float(smooth)
        self.reinforce = float(reinforce)
        #: One linear head per modality, ``(B, D) -> (B, C)``; built by :meth:`bind`.
        self.heads = nn.ModuleList()

    def config(self) -> dict[str, Any]:
        return {**super().config(), "temperature": self.temperature,
                "fusion_momentum": self.fusion_momentum, "resample": self.resample,
                "resample_strength": self.resample_strength, "smooth": self.smooth,
                "reinforce": self.reinforce}

    def check_model(self, model: "MultimodalDPMixture") -> None:
        if len(model.modalities) < 2:
            raise ValueError(
                f"ARM: needs at least two modalities, the model has {len(model.modalities)}")
        if model.num_classes is None:
            raise ValueError("ARM: needs labels; build the model with num_classes")

    def bind(self, model: "MultimodalDPMixture") -> None:
        super().bind(model)
        self.heads = nn.ModuleList(
            [nn.Linear(model.latent_dim, model.num_classes) for _ in model.modalities]
            if self.reinforce > 0 else [])

    def unimodal_log_prob(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(B, M)``: ``log q_m(y_i | z_im)`` from each modality's linear head, for
        ``z (B, M, D)`` and ``labels (B,)``."""
        if not len(self.heads):
            raise ValueError("ARM: no unimodal heads (reinforce=0, or not bound to a model)")
        logits = torch.stack([head(z[..., j, :]) for j, head in enumerate(self.heads)], -2)
        index = labels[:, None, None].expand(*logits.shape[:-1], 1)
        return torch.log_softmax(logits, -1).gather(-1, index)[..., 0]

    @staticmethod
    def unimodal_loss(model: "MultimodalDPMixture", log_q: torch.Tensor,
                      observed: torch.Tensor) -> torch.Tensor:
        """``(B,)``: ``r_i = -sum_m w_m log q_m(y_i | z_im)`` from ``log_q (B, M)`` over
        the modalities ``observed (B, M)`` marks, ``w`` the model's fusion weights."""
        weighted = model.modality_weights * torch.where(observed, log_q, torch.zeros_like(log_q))
        return -weighted.sum(-1)

    def balance(self, phi: torch.Tensor) -> torch.Tensor:
        """The min-max gap of ``phi (M,)``, hard or smooth."""
        if self.smooth is None:
            return phi.max() - phi.min()
        t = self.smooth
        return t * torch.logsumexp(phi / t, 0) + t * torch.logsumexp(-phi / t, 0)

    def forward(self, model: "MultimodalDPMixture", z: torch.Tensor,
                params: "MixtureParams", labels: torch.Tensor) -> torch.Tensor:
        """Plain PyTorch loss: the balanced min-max loss for ``z (B, M, D)``."""
        contributions, _ = conditional_contributions(model, z, params, labels)
        return self.balance(contributions.mean(0))

    def model_loss(self, context: FactorContext) -> torch.Tensor:
        model, batch = context.model, context.batch
        labelled = batch.label_mask
        if batch.labels is None or labelled is None or not bool(labelled.any()):
            return context.z.new_zeros(())
        c, full = conditional_contributions(model, context.z[labelled], context.params,
                                            batch.labels[labelled], batch.masks[labelled])
        phi = c.mean(0)
        loss = self.balance(phi)
        phi_mi = label_entropy(model.class_frequencies) + full.mean()
        for j, m in enumerate(model.modalities):
            context.log(f"{self.name}/phi/{m}", phi[j])
        context.log(f"{self.name}/phi_mi", phi_mi)
        context.log(f"{self.name}/balance", loss)
        if model.training:
            self._update_fusion(model, phi.detach())
        for j, m in enumerate(model.modalities):
            context.log(f"{self.name}/fusion_weight/{m}", model.modality_weights[j])
        return loss

    def attach(self, context: FactorContext) -> None:
        """The min-max factor ``<name>`` and, with ``reinforce > 0``, the per-example
        unimodal reinforcement factor ``<name>_reinforce``."""
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
    def _update_fusion(self, model: "MultimodalDPMixture", phi: torch.Tensor) -> None:
        target = len(phi) * torch.softmax(-phi / self.temperature, 0)
        # A new tensor, not an in-place update: this step's graph still holds the old one.
        model.modality_weights = (self.fusion_momentum * model.modality_weights
                                  + (1.0 - self.fusion_momentum) * target)

    @torch.no_grad()
    def sampling_weights(self, model: "MultimodalDPMixture", guide, batch: "TensorBatch"
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
def example_scores(model: "MultimodalDPMixture", guide, batch: "TensorBatch",
                   chunk_size: int = 4096) -> torch.Tensor:
    """``(N,)``: each labelled example's weakest contribution ``min_m c_im`` at the
    posterior means (``nan`` for unlabelled examples)."""
    params = point_params(model, guide)
    globals_ = guide.point_estimate()
    out = torch.full((batch.size,), math.nan, device=batch.device)
    for idx in batch.chunk_indices(chunk_size):
        part = batch.index(idx)
        z, _ = guide.encode(part, globals_)
        c, _ = conditional_contributions(model, z, params, part.labels, part.masks)
        out[idx] = torch.where(part.label_mask, c.min(-1).values, out[idx])
    return out


class Contributions(Mapping):
    """Per-modality contributions ``phi_m`` (nats) with the joint ``phi_MI``.

    Behaves as a mapping ``modality -> phi_m``; ``phi_mi``, ``label_entropy`` and
    ``unimodal`` (``modality -> H(y) + mean log q_m(y | z_m)``, the lower bound on
    ``I(y; z_m)`` from ARM's heads, or ``None`` without them) are attributes; ``str()``
    is a readable table.
    """

    def __init__(self, phi: Mapping[str, float], phi_mi: float, entropy: float,
                 num_examples: int, unimodal: Mapping[str, float] | None = None):
        self._phi = dict(phi)
        self.phi_mi = float(phi_mi)
        self.label_entropy = float(entropy)
        self.num_examples = int(num_examples)
        self.unimodal = None if unimodal is None else dict(unimodal)

    def __getitem__(self, key: str) -> float:
        return self._phi[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._phi)

    def __len__(self) -> int:
        return len(self._phi)

    def to_dict(self) -> dict[str, Any]:
        return {"phi": dict(self._phi), "phi_mi": self.phi_mi,
                "label_entropy": self.label_entropy, "num_examples": self.num_examples,
                "unimodal": self.unimodal}

    def __str__(self) -> str:
        width = max([len(m) for m in self._phi] + [len("joint phi_MI")])
        header = f"  {'modality':<{width}}  phi_m = I(y; z_m | z_-m)"
        if self.unimodal is not None:
            header += "   I(y; z_m) >= (ARM's head)"
        lines = [f"Modality contributions on {self.num_examples} labelled examples (nats)",
                 header]
        for m, v in self._phi.items():
            line = f"  {m:<{width}}  {v:8.4f}"
            if self.unimodal is not None and m in self.unimodal:
                line += f"{'':17}{self.unimodal[m]:8.4f}"
            lines.append(line)
        lines.append(f"  {'joint phi_MI':<{width}}  {self.phi_mi:8.4f}   "
                     f"(<= H(y) = {self.label_entropy:.4f})")
        return "\n".join(lines)

    __repr__ = __str__


def modality_contributions(result, data) -> Contributions:
    """``phi_m`` for each modality and the joint ``phi_MI`` on ``data`` (labelled
    examples), from a fitted model with a classifier (ARM need not have been used).
    With an ARM factor that has unimodal heads, also each modality's bound on
    ``I(y; z_m)`` (``Contributions.unimodal``)."""
    model, guide = result.model, result.guide
    if model.num_classes is None:
        raise ValueError("modality_contributions: the model has no classifier")
    batch = model.prepare(data)
    if batch.labels is None or not bool(batch.label_mask.any()):
        raise ValueError("modality_contributions: the data has no labels")
    heads = next((f for f in model.factors if isinstance(f, ARM) and len(f.heads)), None)
    with torch.no_grad():
        params = point_params(model, guide)
        globals_ = guide.point_estimate()
        keep = batch.label_mask.nonzero().squeeze(-1)
        part = batch.index(keep)
        z, _ = guide.encode(part, globals_)
        c, full = conditional_contributions(model, z, params, part.labels, part.masks)
        entropy = label_entropy(model.class_frequencies)
        unimodal = None
        if heads is not None:
            bounds = unimodal_bounds(model, heads.unimodal_log_prob(z, part.labels),
                                     part.masks)
            unimodal = {m: float(v) for m, v in bounds.items()}
    phi = {m: float(c[:, j].mean()) for j, m in enumerate(model.modalities)}
    return Contributions(phi, float(entropy + full.mean()), float(entropy), part.size,
                         unimodal)
