"""Auxiliary factors: multimodal losses attached to the model as ``pyro.factor`` sites.

See :mod:`pyro_mm.model.factor_protocol` for the convention every factor follows and for
the registry :data:`FACTORS`, which this package fills with the built-in kinds.
"""

from __future__ import annotations

from ..model.factor_protocol import (FACTORS, AuxiliaryFactor, FactorContext, factor_config,
                                     make_factor)
from .arm import ARM
from .contributions import Contributions, modality_contributions
from .pmrl import PMRL, PMRLComponents

# The registry is the protocol module's dict (the model saves and rebuilds factors
# through it); registering here keeps the model free of any import of this package.
FACTORS.update({"pmrl": PMRL, "arm": ARM})

__all__ = ["ARM", "AuxiliaryFactor", "Contributions", "FactorContext", "FACTORS", "PMRL",
           "PMRLComponents", "factor_config", "make_factor", "modality_contributions"]
