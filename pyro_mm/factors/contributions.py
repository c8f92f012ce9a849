"""How much each modality tells about the label: estimates with known bounds.

For example ``i`` with label ``y_i`` and representations ``z_i`` (``M >= 2``):

* ``l_i = log q(y_i | z_i)``, the model's own classifier on every present modality;
* ``l_i^(-m) = log q(y_i | z_i,-m)``, the same classifier with modality ``m`` treated as
  missing: ``z_im`` is replaced by the mixture's conditional mean given the other present
  modalities, exactly as for a modality missing from the data
  (:meth:`pyro_mm.model.dp_mixture.MultimodalDPMixture.label_log_prob` with ``drop=m``). The model's
  modality dropout (and ARM's leave-one-out term) train the classifier on such inputs,
  so this is a *fitted* predictor of ``y`` from the other modalities, not the classifier
  pushed off its training distribution;
* conditional contribution ``c_im = l_i - l_i^(-m)``; its mean ``phi_m`` over held-out
  examples where ``m`` and at least one other modality are present.

What ``phi_m`` estimates: the difference of two held-out cross-entropies,
``CE(y | z_-m) - CE(y | z)``. When both predictors are well fitted this is
``H(y | z_-m) - H(y | z) = I(y; z_m | z_-m)``. Its bias is the difference of the two
predictors' excess risks (KL from the Bayes posterior): a poorly fitted leave-one-out
predictor inflates ``phi_m``, a poorly fitted full one deflates it. Overfitting to
``z_m`` on the training set shows up on held-out data as a *negative* ``c_im``. A
modality whose information the others already carry scores about 0 (it is not needed
*given the others*, whatever it holds on its own); the unimodal bound below says what it
holds alone.

* joint contribution ``phi_MI = H(y) + mean_i l_i``, a lower bound on ``I(y; z)`` (``H(y)``
  from the training label frequencies); it never exceeds ``H(y)``.
* unimodal bound ``H(y) + mean_i log q_m(y_i | z_im)`` from ARM's linear head on ``z_m``
  alone: a lower bound on ``I(y; z_m)``, also capped by ``H(y)``.

Every estimate comes with its standard error over examples. ``phi_m`` cannot honestly
exceed ``H(y)`` (nor ``H(y | z_-m)``); an estimate above ``H(y)`` by more than three
standard errors means the leave-one-out predictor was not fitted (e.g. a model trained
with ``modality_dropout=0`` and no ARM), and :func:`modality_contributions` warns.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..model.posterior import as_posterior

if TYPE_CHECKING:  # pragma: no cover
    from ..model.factor_protocol import FactorModel
    from ..model.params import MixtureParams


@dataclasses.dataclass
class LeaveOneOut:
    """Label log-likelihoods of a batch with and without each modality.

    Attributes:
        full: ``(B,)`` ``l_i = log q(y_i | z_i)``.
        without: ``(B, M)`` ``l_i^(-m) = log q(y_i | z_i,-m)``.
        valid: ``(B, M)`` bool: ``m`` is present and so is at least one other modality
            (elsewhere leaving ``m`` out either changes nothing or leaves nothing).
    """

    full: torch.Tensor
    without: torch.Tensor
    valid: torch.Tensor

    @property
    def contributions(self) -> torch.Tensor:
        """``(B, M)`` ``c_im = l_i - l_i^(-m)``, zero where not ``valid``."""
        c = self.full.unsqueeze(-1) - self.without
        return torch.where(self.valid, c, torch.zeros_like(c))


def leave_one_out(model: "FactorModel", z: torch.Tensor, params: "MixtureParams",
                  labels: torch.Tensor, mask: torch.Tensor | None = None) -> LeaveOneOut:
    """:class:`LeaveOneOut` for ``z (B, M, D)``, ``labels (B,)`` and the presence
    ``mask (B, M)`` (``None``: all present)."""
    if mask is None:
        mask = torch.ones(z.shape[0], len(model.modalities), dtype=torch.bool,
                          device=z.device)
    full = model.label_log_prob(z, params, labels, mask)
    without = torch.stack([model.label_log_prob(z, params, labels, mask, drop=j)
                           for j in range(len(model.modalities))], dim=-1)
    valid = mask & (mask.sum(-1, keepdim=True) >= 2)
    return LeaveOneOut(full, without, valid)


def label_entropy(frequencies: torch.Tensor) -> torch.Tensor:
    """``H(y)`` in nats from class frequencies."""
    p = frequencies[frequencies > 0]
    return -(p * p.log()).sum()


def unimodal_bounds(model: "FactorModel", log_q: torch.Tensor,
                    observed: torch.Tensor) -> dict[str, torch.Tensor]:
    """``modality -> H(y) + mean log q_m(y_i | z_im)``, the lower bound on ``I(y; z_m)``,
    averaged over the examples ``observed (B, M)`` marks (modalities with none are left
    out); ``log_q (B, M)`` from :meth:`pyro_mm.factors.ARM.unimodal_log_prob`."""
    entropy = label_entropy(model.class_frequencies)
    return {m: entropy + log_q[observed[:, j], j].mean()
            for j, m in enumerate(model.modalities) if bool(observed[:, j].any())}


def _mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    se = float(values.std() / math.sqrt(n)) if n > 1 else math.nan
    return float(values.mean()), se


class Contributions(Mapping):
    """Per-modality contributions ``phi_m`` (nats) with standard errors.

    Behaves as a mapping ``modality -> phi_m``. Attributes: ``se`` and ``counts``
    (``modality -> standard error / examples it was averaged over``), ``phi_mi`` and
    ``phi_mi_se`` (the joint bound on ``I(y; z)``), ``label_entropy`` (``H(y)``),
    ``num_examples`` (labelled examples), ``unimodal`` and ``unimodal_se``
    (``modality -> H(y) + mean log q_m(y | z_m)``, ARM's bound on ``I(y; z_m)``, or
    ``None`` without ARM's heads). ``str()`` is a readable table.
    """

    def __init__(self, phi: Mapping[str, float], se: Mapping[str, float],
                 counts: Mapping[str, int], phi_mi: float, phi_mi_se: float,
                 entropy: float, num_examples: int,
                 unimodal: Mapping[str, float] | None = None,
                 unimodal_se: Mapping[str, float] | None = None):
        self._phi = dict(phi)
        self.se = dict(se)
        self.counts = {m: int(n) for m, n in counts.items()}
        self.phi_mi = float(phi_mi)
        self.phi_mi_se = float(phi_mi_se)
        self.label_entropy = float(entropy)
        self.num_examples = int(num_examples)
        self.unimodal = None if unimodal is None else dict(unimodal)
        self.unimodal_se = None if unimodal_se is None else dict(unimodal_se)

    def __getitem__(self, key: str) -> float:
        return self._phi[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._phi)

    def __len__(self) -> int:
        return len(self._phi)

    def to_dict(self) -> dict[str, Any]:
        return {"phi": dict(self._phi), "se": dict(self.se), "counts": dict(self.counts),
                "phi_mi": self.phi_mi, "phi_mi_se": self.phi_mi_se,
                "label_entropy": self.label_entropy, "num_examples": self.num_examples,
                "unimodal": self.unimodal, "unimodal_se": self.unimodal_se}

    def __str__(self) -> str:
        width = max([len(m) for m in self._phi] + [len("joint phi_MI")])
        header = f"  {'modality':<{width}}  phi_m = I(y; z_m | z_-m)"
        if self.unimodal is not None:
            header += "   I(y; z_m) >= (ARM's head)"
        lines = [f"Modality contributions on {self.num_examples} labelled examples "
                 "(nats, +- one standard error)", header]
        for m, v in self._phi.items():
            line = f"  {m:<{width}}  {v:8.4f} +- {self.se[m]:.4f}"
            if self.unimodal is not None and m in self.unimodal:
                line += f"{'':8}{self.unimodal[m]:8.4f} +- {self.unimodal_se[m]:.4f}"
            lines.append(line)
        lines.append(f"  {'joint phi_MI':<{width}}  {self.phi_mi:8.4f} +- "
                     f"{self.phi_mi_se:.4f}   (<= H(y) = {self.label_entropy:.4f})")
        return "\n".join(lines)

    __repr__ = __str__


def _arm_heads(model):
    # Duck-typed so this module needs nothing from the factor that owns the heads.
    return next((f for f in model.factors
                 if callable(getattr(f, "unimodal_log_prob", None)) and len(f.heads)), None)


def _fitted_without_modalities(model) -> bool:
    # "experts" fits every head alone, so every subset's product is a fitted predictor.
    return model.modality_dropout > 0 or model.fusion_name == "experts" or any(
        callable(getattr(f, "leave_one_out_loss", None)) for f in model.factors)


def modality_contributions(result, data) -> Contributions:
    """``phi_m`` for each modality, the joint ``phi_MI`` and (with ARM's heads) each
    modality's unimodal bound, with standard errors, on the labelled examples of
    ``data`` (held-out data, for the estimates to mean what the module docstring says).

    Works for any fitted model with a classifier; ARM need not have been used. Warns if
    the classifier was never trained to predict without a modality
    (``modality_dropout=0`` and no ARM), or if an estimate exceeds ``H(y)`` by more than
    three standard errors.

    ``result``: a posterior (a ``FitResult``, ``(model, guide)``, samples, an MCMC
    object: :func:`~pyro_mm.model.posterior.as_posterior`), read at its point estimate.
    """
    posterior = as_posterior(result)
    model = posterior.model
    if model.num_classes is None:
        raise ValueError("modality_contributions: the model has no classifier")
    batch = model.prepare(data)
    if batch.labels is None or not bool(batch.label_mask.any()):
        raise ValueError("modality_contributions: the data has no labels")
    heads = _arm_heads(model)
    with torch.no_grad():
        loo, masks, log_q = _labelled_terms(posterior, batch, heads)
        entropy = float(label_entropy(model.class_frequencies))
        c = loo.contributions
        phi, se, counts = {}, {}, {}
        for j, m in enumerate(model.modalities):
            counts[m] = int(loo.valid[:, j].sum())
            phi[m], se[m] = _mean_and_se(c[loo.valid[:, j], j]) if counts[m] else (
                math.nan, math.nan)
        phi_mi, phi_mi_se = _mean_and_se(entropy + loo.full)
        unimodal = unimodal_se = None
        if heads is not None:
            unimodal, unimodal_se = {}, {}
            for j, m in enumerate(model.modalities):
                if bool(masks[:, j].any()):
                    unimodal[m], unimodal_se[m] = _mean_and_se(
                        entropy + log_q[masks[:, j], j])
    _warn_if_implausible(model, phi, se, entropy)
    return Contributions(phi, se, counts, phi_mi, phi_mi_se, entropy, masks.shape[0],
                         unimodal, unimodal_se)


def _labelled_terms(posterior, batch, heads, chunk_size: int = 4096):
    """The labelled examples' :class:`LeaveOneOut` (concatenated over chunks of
    ``chunk_size``, so data on disk is read a chunk at a time), their ``(L, M)`` masks
    and ARM's unimodal ``log q`` ``(L, M)`` (``None`` without ARM's heads)."""
    model = posterior.model
    globals_ = posterior.point_estimate(batch)
    params = model.params_from_sites(globals_)
    labelled = batch.label_mask.nonzero().squeeze(-1)
    parts: list[tuple] = []
    for start in range(0, labelled.numel(), chunk_size):
        part = batch.index(labelled[start : start + chunk_size])
        if model.representation == "latent":
            z, _ = posterior.encode(part, globals_)
        else:
            z = part.concatenated(model.modalities)
        loo = leave_one_out(model, z, params, part.labels, part.masks)
        log_q = None if heads is None else heads.unimodal_log_prob(z, part.labels)
        parts.append((loo, part.masks, log_q))
    loo = LeaveOneOut(*(torch.cat([getattr(p[0], f.name) for p in parts])
                        for f in dataclasses.fields(LeaveOneOut)))
    masks = torch.cat([p[1] for p in parts])
    log_q = None if heads is None else torch.cat([p[2] for p in parts])
    return loo, masks, log_q


def _warn_if_implausible(model, phi, se, entropy) -> None:
    if not _fitted_without_modalities(model):
        warnings.warn(
            "modality_contributions: this model was trained with modality_dropout=0 and "
            "no ARM factor, so its classifier was never fitted to predict without a "
            "modality; phi_m then measures how much it relies on z_m, not information",
            stacklevel=3)
    for m, value in phi.items():
        if value > entropy + 3 * se[m]:
            warnings.warn(
                f"modality_contributions: phi[{m!r}] = {value:.3f} nats exceeds "
                f"H(y) = {entropy:.3f} by more than 3 standard errors, which no "
                "information can; the leave-one-out predictor is not fitted",
                stacklevel=3)
