"""PMRL: principled multimodal representation learning (DESIGN section 4.1).

For example ``i`` stack its unit-normalised representations as the columns of
``Z_i = [z_i1/|z_i1|, ..., z_iM/|z_iM|]`` (``D x M``). The singular values
``s_i1 >= ... >= s_iM`` of ``Z_i`` satisfy ``sum_k s_ik^2 = M``, so ``s_i1`` lies in
``[1, sqrt(M)]`` and equals ``sqrt(M)`` exactly when the Gram matrix ``Z_i^T Z_i`` has
rank 1.

* alignment: ``L_align_i = -log softmax(s_i / tau_align)[0]`` (the largest singular value
  is the target class);
* instance separation: with ``u_i`` the leading left singular vector of ``Z_i`` (unit
  norm, sign fixed, see below), ``L_inst_i = -log(exp(u_i.u_i/tau_instance) /
  sum_j exp(u_i.u_j/tau_instance))`` over the ``B`` examples of the minibatch
  (InfoNCE of example ``i`` against the batch);
* total per example: ``L_i = L_align_i + instance_weight * L_inst_i``
  (``+ P_i`` with ``penalise_antialigned=True``, see below).

Numerics (the decisions this module makes):

* **Unit normalisation** divides by ``max(|z|, eps)`` (``eps = 1e-6``), so a zero vector
  becomes a zero column (its gradient is finite, ``1/eps`` at worst) instead of NaN.
* **Singular values from the small Gram matrix.** ``G_i = Z_i^T Z_i`` (``M x M``) is
  diagonalised by :func:`torch.linalg.eigh` *without gradient*: its eigenvectors
  ``w_ik`` (eigenvalues ``s_ik^2``) are treated as constants in the backward pass. The
  singular values are then recomputed with gradient as ``s_ik = |Z_i w_ik|``. This has
  the exact gradient of ``s_ik`` wherever the eigenvalues are distinct (the eigenvector
  derivative does not enter a Rayleigh quotient to first order:
  ``d|Z w|^2 = w^T dG w = d lambda``), and it is finite everywhere: the gradient of a
  norm is bounded by 1 (and 0 at a zero vector), so there is no ``1/(2 sqrt(lambda))``
  from ``sqrt`` of a zero eigenvalue and no ``1/(lambda_1 - lambda_2)`` from eigenvector
  gradients, both of which blow up in the normal state at initialisation (all columns
  (nearly) orthogonal, or several equal). Non-finite inputs are zeroed before ``eigh``
  (so the solver never fails); the loss then comes out non-finite, which the trainer
  detects and skips.
* **Leading direction** ``u_i = Z_i w_i1 / s_i1`` (unit norm). Its gradient flows
  through ``Z_i`` with ``w_i1`` held fixed; this is a surrogate, not the exact gradient
  of the leading singular vector (which is undefined when ``s_i1`` is degenerate), so
  :func:`torch.autograd.gradcheck` applies to the alignment term only.
* **Sign of u.** ``u_i . sum_m z_im/|z_im| = s_i1 (w_i1 . 1)``, so the sign is fixed by
  requiring ``sum_m w_i1m >= 0``. When that sum is zero to rounding (e.g. exactly
  anti-aligned columns, where the representations' mean direction is zero) the tie is
  broken by the first modality whose weight ``|w_i1m| >= 1/(2 sqrt(M))``, requiring
  ``u_i . z_im >= 0`` for it. Consequences: the loss does not depend on the arbitrary
  sign the eigensolver returns; flipping every representation of *all* examples leaves
  the instance loss unchanged; flipping every representation of *one* example ``i``
  flips ``u_i`` (it follows its representations) and so changes ``u_i . u_j`` for
  ``j != i`` -- it is equivariance, not invariance (its alignment loss is unchanged).
* **Missing modalities.** With a mask (inside the model, the batch's observation mask)
  a missing modality's column is zeroed and its singular value is left out of the
  softmax, so only observed modalities are aligned (the guide's imputed ``z`` for a
  missing modality is not rewarded for agreeing with the others). An example with a
  single observed modality has ``L_align = 0`` and ``u_i`` equal to that modality's
  direction.
* **Anti-aligned columns.** ``z`` and ``-z`` also give a rank-1 Gram matrix
  (``s_1 = sqrt(M)``), which the alignment term cannot tell from agreement (the model
  is symmetric under flipping one modality's whole latent space, so this is a real
  optimum, not a corner case). With ``penalise_antialigned=True`` the per-example
  penalty ``P_i = sum_{m < m'} relu(-z_im.z_im' / (|z_im| |z_im'|)) / tau_align``
  (observed modalities only) is added: every pair of modalities must have a
  non-negative cosine. Then ``G_i`` is entrywise non-negative, so its top eigenvector is
  non-negative (Perron-Frobenius) and ``u_i . z_im >= 0`` for every ``m``: the DESIGN's
  condition follows. The penalty is written on ``G_i`` rather than as
  ``relu(-u_i . z_im)`` because ``u_i`` jumps where the top singular value is
  degenerate (for ``M = 2``, at orthogonality, exactly on the path from anti-aligned to
  aligned), so a penalty on ``u_i`` is discontinuous there and gradient descent stalls
  at the jump; it is divided by ``tau_align`` so that its slope beats the alignment
  term's cusp at orthogonality (slope ``1/(2 tau_align)`` per unit cosine for
  ``M = 2``). In a check with gradient descent on free vectors (64 examples,
  ``M = 2, 6``) this version removed every negative cosine; ``relu(-u_i . z_im)``,
  with or without the ``1/tau_align``, left up to 98 % (``M = 6``) of the examples
  with one.

Minibatch scaling (DESIGN section 4): :meth:`PMRL.model_loss` returns the per-example
``(B,)`` loss ``L_i``; :meth:`attach` adds ``pyro.factor(name, -weight * L)`` inside the
data plate, which Pyro sums and scales by ``N/B``, giving ``-weight * N * mean_i L_i``.
For the alignment term (a function of example ``i`` alone) this is an unbiased estimate
of ``sum_{n=1}^N L_align_n``, like the log-likelihood. The instance term of example
``i`` is its InfoNCE against the other ``B - 1`` examples of the *same minibatch*, so it
depends on the minibatch: ``(N/B) sum_i L_inst_i`` is an unbiased estimate of
``N * E[L_inst]``, ``N`` times the expected per-example InfoNCE at batch size ``B`` --
exactly the magnitude the batch-level convention (one scalar for the batch, counted
``N`` times) would give, while keeping per-example values (e.g. for the per-example
ELBO). Like any in-batch contrastive loss its value grows with ``B`` (about ``log B``
for unseparated directions), so changing the batch size changes the objective, and a
full-batch evaluation (e.g. the validation ELBO, ``B`` = the validation set) is not on
the training scale.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

from ..model.factor_protocol import AuxiliaryFactor, FactorContext, FactorModel


@dataclasses.dataclass
class PMRLComponents:
    """What :meth:`PMRL.components` computes, for ``B`` examples (leading batch dims
    of the input are kept in front).

    Attributes:
        align: ``(B,)`` alignment loss per example.
        instance: ``(B,)`` instance-contrastive loss per example (InfoNCE against the
            batch).
        singular_values: ``(B, M)`` singular values of ``Z_i``, largest first (a
            missing modality contributes a zero, at the end).
        direction: ``(B, D)`` leading directions ``u_i`` (unit norm, sign fixed).
        antialigned: ``(B,)`` anti-alignment penalty ``P_i`` (computed whether or not
            it enters the total; see the module docstring).
        total: ``(B,)`` the loss per example.
    """

    align: torch.Tensor
    instance: torch.Tensor
    singular_values: torch.Tensor
    direction: torch.Tensor
    antialigned: torch.Tensor
    total: torch.Tensor


class PMRL(AuxiliaryFactor):
    """Principled multimodal representation learning as an auxiliary factor.

    Pass it to the model, ``MultimodalDPMixture(..., factors=[PMRL()])``, or call it as
    a plain PyTorch loss, ``PMRL()(z)`` on a ``(batch, modalities, latent)`` tensor (or
    a list of ``(batch, latent)`` tensors, one per modality), which returns the mean
    loss; :meth:`components` returns the parts. See the module docstring for the
    mathematics, the numerical decisions and the minibatch scaling.

    Args:
        weight: multiplies the loss before it enters the ELBO. The loss is a few nats
            per example at most, so against a feature likelihood of hundreds of nats per
            example the default (1, with ``tau_align=0.05``) barely acts; on mfeat
            ``weight=100, tau_align=1.0`` raised the held-out leading singular value from
            1.39 to 1.80 (six views) at the same accuracy (guides/auxiliary-factors.md).
        tau_align: temperature of the singular-value softmax (``tau1``).
        tau_instance: temperature of the instance-contrastive term (``tau2``).
        instance_weight: ``lambda``, weight of the instance term within the loss.
        penalise_antialigned: add ``P_i = sum_{m<m'} relu(-cos(z_im, z_im')) / tau_align``,
            so that ``z`` and ``-z`` no longer count as aligned (module docstring).
        name: ``pyro.factor`` site name and prefix of the logged values
            (default ``"pmrl"``).

    Logged (training history): ``<name>/align``, ``<name>/instance``,
    ``<name>/leading_sv`` (means over the batch), ``<name>/antialigned`` (with the
    penalty on) and ``<name>/loss`` (the mean total, logged by the base class).
    """

    site_name = "pmrl"
    #: Norms below this are clamped when unit-normalising (a zero vector stays zero).
    eps = 1e-6
    #: Rows of the ``B x B`` similarity matrix computed at a time (bounds memory for
    #: full-batch evaluation of large data sets).
    chunk_size = 4096

    def __init__(
        self,
        weight: float = 1.0,
        tau_align: float = 0.05,
        tau_instance: float = 0.1,
        instance_weight: float = 1.0,
        penalise_antialigned: bool = False,
        name: str | None = None,
    ):
        super().__init__(weight=weight, name=name)
        for arg, value in (("tau_align", tau_align), ("tau_instance", tau_instance)):
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"PMRL {arg}: must be a positive number, got {value!r}")
        if not (isinstance(instance_weight, (int, float)) and instance_weight >= 0):
            raise ValueError(
                f"PMRL instance_weight: must be a non-negative number, got {instance_weight!r}")
        if not isinstance(penalise_antialigned, bool):
            raise ValueError(
                f"PMRL penalise_antialigned: must be True or False, got {penalise_antialigned!r}")
        self.tau_align = float(tau_align)
        self.tau_instance = float(tau_instance)
        self.instance_weight = float(instance_weight)
        self.penalise_antialigned = penalise_antialigned

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "tau_align": self.tau_align,
            "tau_instance": self.tau_instance,
            "instance_weight": self.instance_weight,
            "penalise_antialigned": self.penalise_antialigned,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())

    # ------------------------------------------------------------------ input checks
    @staticmethod
    def _check_modalities(num: int, where: str = "") -> None:
        if num < 2:
            raise ValueError(
                f"PMRL: needs at least 2 modalities to align, got {num}{where}")

    def _stack(self, z: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(z, torch.Tensor):
            if z.dim() < 3:
                raise ValueError(
                    f"PMRL: expected representations of shape (batch, modalities, latent), "
                    f"got shape {tuple(z.shape)}")
            self._check_modalities(z.shape[-2])
            return z
        parts = list(z)
        self._check_modalities(len(parts))
        for j, part in enumerate(parts):
            if not isinstance(part, torch.Tensor) or part.dim() < 2:
                raise ValueError(
                    f"PMRL: modality {j}: expected a (batch, latent) tensor, got "
                    f"{getattr(part, 'shape', type(part).__name__)}")
        sizes = [part.shape[-1] for part in parts]
        if len(set(sizes)) > 1:
            raise ValueError(
                f"PMRL: every modality needs the same latent size, got sizes {sizes}")
        batches = [tuple(part.shape[:-1]) for part in parts]
        if len(set(batches)) > 1:
            raise ValueError(
                f"PMRL: every modality needs the same batch shape, got {batches}")
        return torch.stack(parts, dim=-2)

    def check_model(self, model: FactorModel) -> None:
        """Raise ``ValueError`` if ``model`` cannot carry this factor (fewer than two
        modalities, or representations that are not latent); the model's constructor
        calls it, so a one-modality model with PMRL fails before training."""
        self._check_modalities(
            len(model.modalities), f" (the model's modalities are {list(model.modalities)})")
        if getattr(model, "representation", "latent") != "latent":
            raise ValueError("PMRL: needs representation='latent' (it acts on z)")

    # ------------------------------------------------------------------ the loss
    def components(self, z: torch.Tensor | Sequence[torch.Tensor],
                   mask: torch.Tensor | None = None) -> PMRLComponents:
        """All parts of the loss.

        Args:
            z: ``(B, M, D)`` representations (extra leading dims allowed), or a list of
                ``M`` tensors ``(B, D)``.
            mask: optional ``(B, M)`` boolean, ``True`` where a modality is observed.

        Returns:
            :class:`PMRLComponents`.
        """
        z = self._stack(z)
        M = z.shape[-2]
        norm = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
        unit = z / norm.clamp_min(self.eps)                              # (..., B, M, D)
        if mask is not None:
            mask = mask.to(torch.bool)
            if mask.shape[-1] != M:
                raise ValueError(
                    f"PMRL: mask has {mask.shape[-1]} modalities, representations have {M}")
            unit = unit * mask.unsqueeze(-1).to(unit.dtype)
        columns = unit.transpose(-1, -2)                                  # (..., B, D, M)

        gram = unit @ columns                                             # (..., B, M, M)
        with torch.no_grad():
            safe = torch.nan_to_num(gram.detach(), nan=0.0, posinf=0.0, neginf=0.0)
            _, vecs = torch.linalg.eigh(safe)                             # ascending
            vecs = vecs.flip(-1)                                          # largest first
            lead = vecs[..., 0]                                           # (..., B, M)
            total = lead.sum(-1)
            big = lead.abs() >= 0.5 / M ** 0.5
            first = torch.argmax(big.to(torch.int8), dim=-1, keepdim=True)
            fallback = lead.gather(-1, first).squeeze(-1)
            tol = 100 * torch.finfo(lead.dtype).eps
            sign = torch.where(total.abs() > tol, total.sign(), fallback.sign())
            sign = torch.where(sign == 0, torch.ones_like(sign), sign)

        projected = columns @ vecs                                        # (..., B, D, M)
        singular = torch.linalg.vector_norm(projected, dim=-2)            # (..., B, M)

        logits = singular / self.tau_align
        if mask is not None:
            observed = mask.sum(-1, keepdim=True).clamp_min(1)
            position = torch.arange(M, device=z.device)
            logits = logits.masked_fill(position >= observed, float("-inf"))
        align = -torch.log_softmax(logits, dim=-1)[..., 0]

        leading = singular[..., 0:1]
        direction = projected[..., 0] * sign.unsqueeze(-1) / leading.clamp_min(self.eps)
        instance = self._instance(direction)

        antialigned = F.relu(-gram).triu(1).sum((-1, -2)) / self.tau_align
        total_loss = align + self.instance_weight * instance
        if self.penalise_antialigned:
            total_loss = total_loss + antialigned
        return PMRLComponents(align, instance, singular, direction, antialigned, total_loss)

    def _instance(self, u: torch.Tensor) -> torch.Tensor:
        """``(..., B)`` InfoNCE of each ``u_i`` against the rows of ``u`` ``(..., B, D)``."""
        own = (u * u).sum(-1) / self.tau_instance
        rows = u.shape[-2]
        if rows <= self.chunk_size:
            lse = torch.logsumexp(u @ u.transpose(-1, -2) / self.tau_instance, dim=-1)
        else:
            lse = torch.cat(
                [torch.logsumexp(u[..., s : s + self.chunk_size, :] @ u.transpose(-1, -2)
                                 / self.tau_instance, dim=-1)
                 for s in range(0, rows, self.chunk_size)], dim=-1)
        return lse - own

    def per_example(self, z: torch.Tensor | Sequence[torch.Tensor],
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B,)`` total loss per example."""
        return self.components(z, mask).total

    def forward(self, z: torch.Tensor | Sequence[torch.Tensor],
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar mean loss over the batch (a plain PyTorch loss)."""
        return self.components(z, mask).total.mean()

    # ------------------------------------------------------------------ in the model
    def model_loss(self, context: FactorContext) -> torch.Tensor:
        """``(B,)`` per-example loss of the minibatch (observed modalities only)."""
        z = context.z
        self._check_modalities(
            z.shape[-2], f" (the model's modalities are {list(context.model.modalities)})")
        parts = self.components(z, context.batch.masks)
        context.log(f"{self.name}/align", parts.align.mean())
        context.log(f"{self.name}/instance", parts.instance.mean())
        context.log(f"{self.name}/leading_sv", parts.singular_values[..., 0].mean())
        if self.penalise_antialigned:
            context.log(f"{self.name}/antialigned", parts.antialigned.mean())
        return parts.total


__all__ = ["PMRL", "PMRLComponents"]
