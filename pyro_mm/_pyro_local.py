"""Keep every pyro_mm module's parameters inside the module itself.

By default Pyro mirrors :class:`~pyro.nn.PyroModule` parameters into one global
parameter store keyed by name, so a second model built in the same session silently
picks up the first one's weights. Our models and guides run under Pyro's
``module_local_params`` setting instead (construction and every call), so each object
owns its parameters, ``state_dict`` is the whole state, and two fitted models in one
notebook never interfere. Users' own Pyro code is unaffected: the setting is scoped.
"""

from __future__ import annotations

import contextlib

import pyro
from pyro.nn import PyroModule


def local_params() -> contextlib.AbstractContextManager:
    """Context in which PyroModules keep their parameters to themselves."""
    return pyro.settings.context(module_local_params=True)


class LocalParamsModule(PyroModule):
    """A :class:`~pyro.nn.PyroModule` that is always called with module-local params.

    Subclasses build their submodules inside ``with local_params():`` in ``__init__``.
    """

    def __init__(self, name: str = ""):
        with local_params():
            super().__init__(name)

    def __call__(self, *args, **kwargs):
        with local_params():
            return super().__call__(*args, **kwargs)
