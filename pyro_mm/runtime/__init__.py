"""Where and how computation runs: devices and numeric modes, modules' training and
evaluation modes (:mod:`pyro_mm.runtime.modes`), and the collectives of data-parallel
training (:mod:`pyro_mm.runtime.distributed`), which ARM's factor uses, hence their place
below the model."""

from .devices import resolve_device

__all__ = ["resolve_device"]
