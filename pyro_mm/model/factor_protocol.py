"""The auxiliary-factor protocol the model exposes, and the registry of factor kinds.

This module sits in the model's layer, below the mixture:
:class:`~pyro_mm.model.dp_mixture.MultimodalDPMixture` runs factors through
:class:`AuxiliaryFactor` and :class:`FactorContext` and saves them through
:func:`factor_config` / :func:`make_factor`, without importing the factors themselves;
the factors see the model only as a :class:`FactorModel`, the :class:`typing.Protocol`
of what they use of it, so neither side imports the other's class.
:mod:`pyro_mm.factors` (a layer above) registers the built-in kinds in :data:`FACTORS`
and re-exports :class:`AuxiliaryFactor`, :class:`FactorContext`, :data:`FACTORS`,
:func:`factor_config` and :func:`make_factor`; :class:`FactorModel` and
:func:`sampling_weights` are imported from this module.

The convention shared by every multimodal loss:

A factor computes a loss from the model's representations and adds
``pyro.factor(name, -weight * loss)`` to the model, inside the data plate:

* a per-example loss ``(B,)`` is summed by Pyro and scaled by ``N / B``, so it is an
  unbiased estimate of the sum over the data set, like the log-likelihood;
* a batch-level loss (a scalar, e.g. a contrastive term that needs the whole minibatch)
  is attached as the same value for every example of the batch, so its magnitude is
  ``N * value``, comparable with the log-likelihood sum.

Factors report what they computed through :meth:`FactorContext.log`; the trainer puts
those values in the training history. Each factor is also a plain PyTorch loss: call it
on a ``(batch, modalities, latent)`` tensor outside Pyro.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pyro
import torch
from torch import nn

from ..runtime.modes import evaluation_mode

if TYPE_CHECKING:  # pragma: no cover
    from ..data.batch import StoreBatch, TensorBatch
    from ..data.container import MultimodalData
    from .params import MixtureParams


class FactorModel(Protocol):
    """What an auxiliary factor may use of the model it is bound to, and nothing else
    (:class:`~pyro_mm.model.dp_mixture.MultimodalDPMixture` is one).

    Configuration, read only: ``modalities`` (the ``M`` names, in order),
    ``num_classes`` (``C``, ``None`` without a classifier), ``latent_dim`` (``D``),
    ``representation`` (``"latent"`` or ``"observed"``), ``fusion_name`` and
    ``modality_dropout`` (whether the classifier was fitted to predict without a
    modality); ``training`` (the module's mode: training-time updates happen only
    then) and ``factors`` (the bound factors, this one included).

    State: ``class_frequencies`` ``(C,)`` (read: ``H(y)``) and ``modality_weights``
    ``(M,)``, the fusion weights, which a factor may *assign* (ARM's dynamic fusion:
    a new ``(M,)`` tensor, never an in-place update).
    """

    modalities: tuple[str, ...]
    num_classes: int | None
    latent_dim: int
    representation: str
    training: bool
    modality_weights: torch.Tensor

    @property
    def fusion_name(self) -> str: ...

    @property
    def modality_dropout(self) -> float: ...

    @property
    def class_frequencies(self) -> torch.Tensor: ...

    @property
    def factors(self) -> Iterable[AuxiliaryFactor]: ...

    def label_log_prob(self, z: torch.Tensor, params: MixtureParams, labels: torch.Tensor,
                       mask: torch.Tensor | None = None, drop: int | None = None
                       ) -> torch.Tensor:
        """``(B,)`` ``log q(y_i | z_i)``, with modality ``drop`` treated as absent."""
        ...

    def params_from_sites(self, values: Mapping[str, torch.Tensor]) -> MixtureParams:
        """The mixture parameters from global site values (a guide's point estimate)."""
        ...

    def prepare(self, data: MultimodalData, rows=None) -> TensorBatch | StoreBatch:
        """``data`` checked, standardised and on the model's device."""
        ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


@dataclasses.dataclass
class FactorContext:
    """What a factor may look at inside the model, for one minibatch.

    Attributes:
        model: the model being run, as the factor sees it.
        z: ``(B, M, D)`` representations sampled by the guide.
        batch: the minibatch (standardised), ``B`` examples.
        params: the global mixture parameters of this trace.
        log: ``log(name, value)`` records a detached scalar in the training history.
    """

    model: FactorModel
    z: torch.Tensor
    batch: "TensorBatch"
    params: "MixtureParams"
    log: Callable[[str, torch.Tensor], None]


class AuxiliaryFactor(nn.Module):
    """Base class: subclasses implement :meth:`model_loss` (and ``forward``).

    Args:
        weight: multiplies the loss before it enters the ELBO.
        name: the ``pyro.factor`` site name (default: the class's ``site_name``).
    """

    site_name = "factor"

    def __init__(self, weight: float = 1.0, name: str | None = None):
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"weight: must be a non-negative number, got {weight!r}")
        self.weight = float(weight)
        self.name = name or self.site_name

    def check_model(self, model: FactorModel) -> None:
        """Raise ``ValueError`` if this factor cannot work with ``model``."""

    def bind(self, model: FactorModel) -> None:
        """Called once by the model's constructor: check the model, then build whatever
        depends on its shapes (a factor's own parameters). A factor belongs to one
        model."""
        self.check_model(model)

    def sampling_weights(self, model: FactorModel, guide, batch: "TensorBatch"
                         ) -> torch.Tensor | None:
        """Optional ``(N,)`` non-negative weights: how often the trainer should draw
        each training example next epoch (``None``: uniformly)."""
        return None

    def model_loss(self, context: FactorContext) -> torch.Tensor:
        """Loss for this minibatch: ``(B,)`` per example or a scalar for the batch."""
        raise NotImplementedError

    def attach(self, context: FactorContext) -> None:
        """Add ``pyro.factor(name, -weight * loss)``; call inside the data plate."""
        loss = self.model_loss(context)
        context.log(f"{self.name}/loss", loss.mean())
        if loss.dim() == 0:
            loss = loss.expand(context.batch.size)
        pyro.factor(self.name, -self.weight * loss)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (saved with checkpoints)."""
        return {"weight": self.weight, "name": self.name}


def sampling_weights(model: FactorModel, guide, batch: "TensorBatch"
                     ) -> torch.Tensor | None:
    """How often each example of ``batch`` should be drawn: the normalised product of
    the factors' :meth:`AuxiliaryFactor.sampling_weights` (``None``: uniformly)."""
    weights = None
    with evaluation_mode(model, guide):
        for factor in model.factors:
            w = factor.sampling_weights(model, guide, batch)
            if w is not None:
                weights = w if weights is None else weights * w
    return None if weights is None else weights / weights.sum()


#: Factor kind (as used on the command line and in checkpoints) -> class. Filled by
#: :mod:`pyro_mm.factors` with the built-in kinds; add your own before saving a run.
FACTORS: dict[str, type[AuxiliaryFactor]] = {}


def factor_config(factor: AuxiliaryFactor) -> dict[str, Any]:
    """``{"kind": ..., **constructor arguments}`` for saving a factor."""
    for kind, cls in FACTORS.items():
        if type(factor) is cls:
            return {"kind": kind, **factor.config()}
    raise ValueError(
        f"factor {type(factor).__name__}: not a registered factor, so it cannot be saved; "
        f"register it in pyro_mm.factors.FACTORS"
    )


def make_factor(spec: Mapping[str, Any]) -> AuxiliaryFactor:
    """Inverse of :func:`factor_config`."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in FACTORS:
        raise ValueError(f"factor kind {kind!r}: expected one of {sorted(FACTORS)}")
    return FACTORS[kind](**spec)
