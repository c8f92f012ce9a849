"""Auxiliary factors: multimodal losses attached to the model as ``pyro.factor`` sites.

See :mod:`pyro_mm.factors.base` for the convention every factor follows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .arm import ARM
from .base import AuxiliaryFactor, FactorContext
from .contributions import Contributions, modality_contributions
from .pmrl import PMRL, PMRLComponents

#: Factor kind (as used on the command line) -> class.
FACTORS: dict[str, type[AuxiliaryFactor]] = {"pmrl": PMRL, "arm": ARM}


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


__all__ = ["ARM", "AuxiliaryFactor", "Contributions", "FactorContext", "FACTORS", "PMRL",
           "PMRLComponents", "factor_config", "make_factor", "modality_contributions"]
