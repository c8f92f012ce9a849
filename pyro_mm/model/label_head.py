"""The label head of :class:`~pyro_mm.model.dp_mixture.MultimodalDPMixture`: fusion of the
representations, the classifier's logits with absent modalities handled, leave-one-out
predictions, modality dropout and the ``"y"`` site.

How an absent modality is handled (the model's module docstring says why): ``concat``
and ``dp`` fill it with the mixture's conditional mean given the present modalities;
``experts`` leaves its head out of the product. Modality dropout (training, ``concat``
and ``dp``) marks each present modality absent with probability ``modality_dropout``,
never all of them, so the classifier is fitted to every prediction it is later asked
for; ``experts`` needs none, as each head is fitted on its own. The optional Gaussian
prior on the classifier's weights (``classifier_prior_scale``) is here too.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from ..data.container import TensorBatch
from .params import MixtureParams
from .sites import fill_unobserved


class LabelHead:
    """Mixin of :class:`~pyro_mm.model.dp_mixture.MultimodalDPMixture` (it provides
    ``classifier``, ``fusion``, ``fusion_name``, ``mixture``, ``representation``,
    ``modalities``, ``modality_weights`` and ``modality_dropout``)."""

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
        latent = self.representation == "latent"
        if self.fusion_name == "experts":  # absent modalities add nothing: no fill
            return self.classifier(z, self.log_class_prior(), mask, self.modality_weights)
        if mask is not None and not bool(mask.all()):
            mixture = params.mixture(self.mixture, batch_size=z.shape[0], stacked=latent)
            z = mixture.fill_absent(z, mask)
        return self.classifier(self.fuse(z, params, mask) if latent else z)

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

    def log_class_prior(self) -> torch.Tensor:
        """``(C,)``: ``log pi``, the training label frequencies (uniform before the
        standardisation is fitted; a class never seen gets a floor, not ``-inf``)."""
        freq = self.class_frequencies
        # where, not an if on the sum: no host sync in the training step
        freq = torch.where(freq.sum() > 0, freq, torch.ones_like(freq)).clamp(min=1e-6)
        return torch.log(freq / freq.sum())

    def _experts_logits(self, inputs, mask, part: TensorBatch) -> torch.Tensor:
        """``fusion="experts"`` in training: each head is fitted as a classifier of its
        own, from every labelled example where its modality is present (the factor
        ``"y_experts"``, ``sum_m log q_m(y_i | v_im)``, ``(B,)``); the ``"y"`` site scores
        the product of the detached heads, so it passes no gradient (a cut: the
        combination has nothing to fit; :mod:`pyro_mm.model.fusion` says why)."""
        classifier = self.classifier
        terms = classifier.terms(inputs)
        if part.labels is not None:
            index = part.labels.clamp(min=0)[:, None, None].expand(-1, terms.shape[-2], 1)
            unimodal = terms.gather(-1, index)[..., 0]
            seen = part.masks & part.label_mask.unsqueeze(-1)
            pyro.factor("y_experts",
                        torch.where(seen, unimodal, torch.zeros_like(unimodal)).sum(-1))
        return classifier.combine(terms.detach(), self.log_class_prior(), mask,
                                  self.modality_weights)

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

    def _observe_labels(self, inputs, params, part: TensorBatch) -> None:
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
