"""Small neural building blocks: MLPs, Gaussian encoder heads, decoders, classifiers.

All are plain :class:`torch.nn.Module` s; the model and guide turn them into
:class:`~pyro.nn.PyroModule` s so their weights are trained by SVI.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.functional import softplus

#: Lower bound added to every learned scale, so a scale can never reach zero.
MIN_SCALE = 1e-3


def mlp(in_features: int, hidden: Sequence[int], out_features: int | None
        ) -> nn.Sequential:
    """``Linear -> ReLU`` for each hidden size, then a final ``Linear`` to
    ``out_features`` (none when ``out_features`` is ``None``)."""
    layers: list[nn.Module] = []
    size = in_features
    for width in hidden:
        layers += [nn.Linear(size, width), nn.ReLU()]
        size = width
    if out_features is not None:
        layers.append(nn.Linear(size, out_features))
    return nn.Sequential(*layers)


class GaussianEncoder(nn.Module):
    """``x (B, d) -> (loc (B, D), scale (B, D))``: a backbone and a Gaussian head.

    Args:
        backbone: any module mapping ``(B, d)`` to ``(B, H)`` features (an MLP by
            default; a ResNet or text model works the same way). Its output size is
            found on the first call (:class:`torch.nn.LazyLinear`).
        latent_dim: ``D``.
    """

    def __init__(self, backbone: nn.Module, latent_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.LazyLinear(2 * latent_dim)
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.head(self.backbone(x)).split(self.latent_dim, dim=-1)
        # Start with small scales (softplus(-3) ~ 0.05) so early samples are informative.
        return loc, softplus(raw_scale - 3.0) + MIN_SCALE


def default_encoder(in_features: int, latent_dim: int, hidden: Sequence[int]) -> GaussianEncoder:
    """An MLP backbone ``d -> hidden`` with ReLU, then the Gaussian head."""
    return GaussianEncoder(mlp(in_features, hidden, None), latent_dim)


class GaussianDecoder(nn.Module):
    """``z (B, D) -> (loc (B, d), scale (d,))``: an MLP mean and a learned per-feature scale."""

    def __init__(self, latent_dim: int, out_features: int, hidden: Sequence[int]):
        super().__init__()
        self.net = mlp(latent_dim, hidden, out_features)
        self.raw_scale = nn.Parameter(torch.zeros(out_features))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(z), softplus(self.raw_scale) + MIN_SCALE
