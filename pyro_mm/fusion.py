"""Fusion: turn per-modality representations into one vector for the classifier.

A fusion is named and replaceable. Both built-ins return the concatenation of the
``M`` representations, each multiplied by a per-example weight; they differ in the
weights:

* ``concat``: every weight is 1 (times optional modality weights).
* ``dp``: weights ``M * softmax_m(log p_m(z_im) / T)``, where ``log p_m`` is the
  modality's mixture log-density: a representation that sits on a heavy, tight
  component is amplified. With equal prominence the gate is 1 for every modality, so
  ``dp`` starts out as ``concat``.

``modality_weights`` (``(M,)``, mean 1) come from outside, e.g. the ARM factor's dynamic
feature-level fusion; they multiply the gate and are never trained through.
"""

from __future__ import annotations

import torch
from torch import nn


class ConcatFusion(nn.Module):
    """``(B, M, D) -> (B, M * D)`` concatenation, optionally weighted per modality."""

    name = "concat"

    def gate(self, z: torch.Tensor, log_density: torch.Tensor | None) -> torch.Tensor:
        return z.new_ones(z.shape[:-1])

    def forward(
        self,
        z: torch.Tensor,
        log_density: torch.Tensor | None = None,
        modality_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args: ``z (B, M, D)``; ``log_density (B, M)`` (used by ``dp``);
        ``modality_weights (M,)``. Returns ``(B, M * D)``."""
        weights = self.gate(z, log_density)
        if modality_weights is not None:
            weights = weights * modality_weights
        return (z * weights.unsqueeze(-1)).flatten(-2)


class DPGateFusion(ConcatFusion):
    """Prominence gate ``g_im = M softmax_m(log p_m(z_im) / T)`` (see module docstring).

    Args:
        temperature: ``T``; larger values flatten the gate towards ``concat``. The
            log-densities grow with ``D``, so the default scales ``T`` with it.
    """

    name = "dp"

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = float(temperature)

    def gate(self, z: torch.Tensor, log_density: torch.Tensor | None) -> torch.Tensor:
        if log_density is None:
            raise ValueError("fusion 'dp': needs the modalities' mixture log-densities")
        temperature = self.temperature * z.shape[-1]
        return z.shape[-2] * torch.softmax(log_density / temperature, dim=-1)


FUSIONS = {"concat": ConcatFusion, "dp": DPGateFusion}


def make_fusion(name: str) -> ConcatFusion:
    """Build a fusion by name (``"concat"`` or ``"dp"``)."""
    if name not in FUSIONS:
        raise ValueError(f"fusion: expected one of {sorted(FUSIONS)}, got {name!r}")
    return FUSIONS[name]()
