"""The auxiliary-factor convention: :class:`AuxiliaryFactor` and :class:`FactorContext`.

They live in :mod:`pyro_mm.factor_protocol`, below the model, so that the model can run
factors without importing this package; this module keeps the import path the factors
(and code written against it) use.
"""

from ..factor_protocol import AuxiliaryFactor, FactorContext

__all__ = ["AuxiliaryFactor", "FactorContext"]
