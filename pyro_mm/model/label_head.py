"""The label head of :class:`~pyro_mm.model.dp_mixture.MultimodalDPMixture`: fusion of the
representations, the classifier's logits with absent modalities handled, leave-one-out
predictions, modality dropout, the class prior and the ``"y"`` site.

How an absent modality is handled (the model's module docstring says why): ``concat``
and ``dp`` fill it with the mixture's conditional mean given the present modalities;
``experts`` leaves its head out of the product. Modality dropout (training, ``concat``
and ``dp``) marks each present modality absent with probability ``modality_dropout``,
never all of them, so the classifier is fitted to every prediction it is later asked
for; ``experts`` needs none, as each head is fitted on its own. The optional Gaussian
prior on the classifier's weights (``classifier_prior_scale``) is here too.

:class:`LabelHead` is a submodule of the model: it owns the fusion, the classifier and
two buffers, the modality weights (``(M,)``, 1 = neutral, written by ARM's dynamic
fusion) and the training class frequencies (``(C,)``, the class prior), and is told its
configuration in its constructor. The mixture parameters it needs for a fill or a gate
come with each call.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..data.batch import TensorBatch
from .fusion import make_classifier, make_fusion
from .params import MixtureParams
from .sites import fill_unobserved


class LabelHead(nn.Module):
    """Fusion, classifier, class prior and modality weights of the model's label ``y``.

    Args:
        modalities: the ``M`` modality names, in the model's order.
        input_sizes: ``(M,)`` each modality's input size: ``D`` for latent
            representations, ``d_m`` for observed features.
        num_classes: ``C``; ``None`` builds no classifier (the fusion and the modality
            weights still exist).
        latent: the inputs are stacked representations ``(B, M, D)``; ``False``: the
            concatenated standardised features ``(B, sum d_m)``.
        mixture: the model's ``"joint"`` or ``"independent"`` mixture (for fills and
            the ``dp`` gate).
        fusion: ``"concat"``, ``"dp"`` or ``"experts"`` (:mod:`pyro_mm.model.fusion`).
        hidden: hidden sizes of the classifier.
        modality_dropout: probability of dropping each present modality in training.
        experts_pool: ``"product"`` or ``"mean"`` (``fusion="experts"``).
        classifier_prior_scale: ``sigma`` of the ``Normal(0, sigma)`` prior on the
            classifier's weight matrices; ``None``: no prior.
    """

    def __init__(self, modalities: Sequence[str], input_sizes: Sequence[int],
                 num_classes: int | None, *, latent: bool = True, mixture: str = "joint",
                 fusion: str = "concat", hidden: Sequence[int] = (256,),
                 modality_dropout: float = 0.0, experts_pool: str = "product",
                 classifier_prior_scale: float | None = None):
        super().__init__()
        self.modalities = tuple(modalities)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.latent = bool(latent)
        self.mixture = mixture
        self.fusion_name = fusion
        self.modality_dropout = float(modality_dropout)
        self.classifier_prior_scale = (None if classifier_prior_scale is None
                                       else float(classifier_prior_scale))
        self.fusion = make_fusion(fusion)
        self.classifier = None
        if self.num_classes is not None:
            self.classifier = make_classifier(fusion, list(input_sizes), tuple(hidden),
                                              self.num_classes, concatenated=not latent,
                                              pool=experts_pool)
        self.register_buffer("modality_weights", torch.ones(len(self.modalities)))
        self.register_buffer("class_frequencies", torch.zeros(self.num_classes or 0))

    # ------------------------------------------------------------------ state
    def set_modality_weights(self, weights: torch.Tensor) -> None:
        """Replace the ``(M,)`` modality weights by ``weights`` (a new tensor, not an
        in-place update: a step's graph may still hold the old one)."""
        if not isinstance(weights, torch.Tensor) or weights.shape != (len(self.modalities),):
            shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(
                weights).__name__
            raise ValueError(f"modality_weights: expected a tensor of shape "
                             f"({len(self.modalities)},), one per modality, got {shape}")
        self.modality_weights = weights

    def fit_class_frequencies(self, labels: np.ndarray) -> None:
        """The class prior from training ``labels (N,)`` (``-1``: unlabelled, ignored);
        nothing changes when no label is observed."""
        if self.num_classes is None:
            return
        counts = np.bincount(labels[labels >= 0], minlength=self.num_classes)
        if counts.sum() > 0:
            self.class_frequencies.copy_(torch.as_tensor(counts / counts.sum()))

    def warn_about_labels(self, labels: np.ndarray | None) -> None:
        """Warn once per problem with the training ``labels (N,)`` (``-1``: unlabelled;
        ``None``: none at all) of a model with a classifier: no labelled example (only
        the mixture is fitted: the classifier's term is zero on every row), or classes
        that no labelled example has (named: the classifier can only learn them from
        the class prior's floor)."""
        if self.num_classes is None:
            return
        seen = np.zeros(0, dtype=np.int64) if labels is None else labels[labels >= 0]
        if seen.size == 0:
            warnings.warn(
                f"labels: no training example is labelled, so only the mixture is fitted; "
                f"the classifier (num_classes={self.num_classes}) stays at its "
                f"initialisation and its predictions mean nothing", UserWarning,
                stacklevel=3)
            return
        unseen = np.flatnonzero(np.bincount(seen, minlength=self.num_classes) == 0)
        if unseen.size:
            warnings.warn(
                f"labels: class{'es' if unseen.size > 1 else ''} {unseen.tolist()} of "
                f"num_classes={self.num_classes} {'have' if unseen.size > 1 else 'has'} "
                f"no labelled training example; the classifier will rarely predict "
                f"{'them' if unseen.size > 1 else 'it'}", UserWarning, stacklevel=3)

    def log_class_prior(self) -> torch.Tensor:
        """``(C,)``: ``log pi``, the training label frequencies (uniform before they are
        fitted; a class never seen gets a floor, not ``-inf``)."""
        freq = self.class_frequencies
        # where, not an if on the sum: no host sync in the training step
        freq = torch.where(freq.sum() > 0, freq, torch.ones_like(freq)).clamp(min=1e-6)
        return torch.log(freq / freq.sum())

    # ------------------------------------------------------------------ predictions
    def fuse(self, z: torch.Tensor, params: MixtureParams,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, M, D) -> (B, M * D)`` classifier input, by the model's fusion."""
        log_density = None
        if self.fusion_name == "dp":
            log_density = params.mixture(self.mixture, mask=mask,
                                         batch_size=z.shape[0]).modality_log_density(z)
        return self.fusion(z, log_density, self.modality_weights)

    def class_logits(self, z: torch.Tensor, params: MixtureParams,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C)`` classifier logits from representations ``(B, M, D)`` (latent) or
        concatenated standardised features ``(B, sum d)`` (observed).

        Modalities that ``mask (B, M)`` marks absent are first replaced by their
        conditional mean given the present ones (module docstring); with
        ``fusion="experts"`` they are left out of the sum of heads instead."""
        if self.classifier is None:
            raise ValueError("this model has no classifier (num_classes=None)")
        if self.fusion_name == "experts":  # absent modalities add nothing: no fill
            return self.classifier(z, self.log_class_prior(), mask, self.modality_weights)
        if mask is not None and not bool(mask.all()):
            mixture = params.mixture(self.mixture, batch_size=z.shape[0],
                                     stacked=self.latent)
            z = mixture.fill_absent(z, mask)
        return self.classifier(self.fuse(z, params, mask) if self.latent else z)

    def label_log_prob(self, z: torch.Tensor, params: MixtureParams, labels: torch.Tensor,
                       mask: torch.Tensor | None = None, drop: int | None = None
                       ) -> torch.Tensor:
        """``(B,)``: ``log q(y_i | z_i)`` under the classifier.

        Args:
            z: ``(B, M, D)`` representations (concatenated features when observed).
            params: global parameters (the fusion and the fill use them).
            labels: ``(B,)`` class indices.
            mask: ``(B, M)`` which modalities are present (``None``: all).
            drop: a modality index to leave out: it is treated as absent, i.e. filled in
                from the other present modalities exactly as a missing modality is (with
                ``fusion="experts"``: its head's term is removed), so
                this is the prediction ``q(y | z_-m)`` the classifier was fitted to make
                under modality dropout.
        """
        if drop is not None:
            if mask is None:
                mask = torch.ones(z.shape[0], len(self.modalities), dtype=torch.bool,
                                  device=z.device)
            mask = mask.clone()
            mask[:, drop] = False
        logits = self.class_logits(z, params, mask)
        return torch.log_softmax(logits, -1).gather(-1, labels[:, None])[:, 0]

    def dropout_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """``(B, M)``: ``mask`` with each present modality dropped with probability
        ``modality_dropout``; an example that would lose all of them keeps one present
        modality chosen uniformly."""
        draw = torch.rand(mask.shape, device=mask.device)
        keep = mask & (draw >= self.modality_dropout)
        rescue = (torch.rand(mask.shape, device=mask.device) * mask).argmax(-1)
        rescue = torch.nn.functional.one_hot(rescue, mask.shape[-1]).bool()
        return torch.where(keep.any(-1, keepdim=True), keep, rescue)

    # ------------------------------------------------------------------ Pyro statements
    def classifier_prior(self) -> None:
        """The factor ``"classifier_prior"``: ``log N(W | 0, sigma^2)`` of the classifier's
        weight matrices (biases excluded) up to a constant, once per step (a global
        term, outside the data plate), when ``classifier_prior_scale`` ``sigma`` is set.
        The classifier's parameters are point estimates, so they become MAP estimates:
        L2 regularisation of strength ``1 / (2 sigma^2)``, as scikit-learn's logistic
        regression with ``C = sigma^2``."""
        sigma = self.classifier_prior_scale
        if sigma is None or self.classifier is None:
            return
        weights = [p for name, p in self.classifier.named_parameters()
                   if name.endswith("weight")]
        pyro.factor("classifier_prior",
                    -0.5 * sum(w.pow(2).sum() for w in weights) / sigma ** 2)

    def observe(self, inputs: torch.Tensor, params: MixtureParams, part: TensorBatch
                ) -> None:
        """The ``"y"`` site of the minibatch ``part`` (``B`` examples, inside the data
        plate), from ``inputs`` (``(B, M, D)`` or ``(B, sum d_m)``, as for
        :meth:`class_logits`); with ``fusion="experts"`` also the factor
        ``"y_experts"``. Nothing without a classifier. Unlabelled rows are sampled
        (the model's module docstring)."""
        if self.classifier is None:
            return
        mask = part.masks
        if self.fusion_name == "experts":  # nothing to drop: every head is fitted alone
            logits = self._experts_logits(inputs, mask, part)
        else:
            if self.training and self.modality_dropout > 0:
                mask = self.dropout_mask(mask)
            logits = self.class_logits(inputs, params, mask)
        likelihood = dist.Categorical(logits=logits)
        if part.labels is None:  # nothing observed: an ordinary latent site
            pyro.sample("y", likelihood.mask(False))
            return
        pyro.sample("y", likelihood.mask(part.label_mask),
                    obs=fill_unobserved(part.labels, part.label_mask, likelihood))

    def _experts_logits(self, inputs, mask, part: TensorBatch) -> torch.Tensor:
        """``fusion="experts"`` in training: each head is fitted as a classifier of its
        own, from every labelled example where its modality is present (the factor
        ``"y_experts"``, ``sum_m log q_m(y_i | v_im)``, ``(B,)``); the ``"y"`` site scores
        the product of the detached heads, so it passes no gradient (a cut: the
        combination has nothing to fit; :mod:`pyro_mm.model.fusion` says why)."""
        classifier = self.classifier
        terms = classifier.terms(inputs)
        if part.labels is not None:
            # terms (*L, B, M, C): draw dims L, if any, in front
            index = part.labels.clamp(min=0)[:, None, None].expand(*terms.shape[:-1], 1)
            unimodal = terms.gather(-1, index)[..., 0]
            seen = part.masks & part.label_mask.unsqueeze(-1)
            pyro.factor("y_experts",
                        torch.where(seen, unimodal, torch.zeros_like(unimodal)).sum(-1))
        return classifier.combine(terms.detach(), self.log_class_prior(), mask,
                                  self.modality_weights)
