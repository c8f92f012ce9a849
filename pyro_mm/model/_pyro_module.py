"""Give every pyro_mm module its own name in Pyro's global parameter store.

Pyro mirrors :class:`~pyro.nn.PyroModule` parameters into one global store keyed by
name, and a module whose parameter name is already in the store adopts the stored
value. Two models built in one session with the same (default, empty) name would
therefore share weights silently. Each of our top-level modules gets a unique prefix
instead, so objects own their parameters, ``state_dict`` is the whole state, and
ordinary Pyro (``SVI`` with a ``pyro.optim`` optimiser, ``poutine`` handlers) works on
them unchanged.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

from pyro.nn import PyroModule

_COUNTER = itertools.count()

#: Prefix of this module's entries in a PyroModule's per-call cache (which otherwise
#: holds PyroSample values, keyed by their full names: no name starts with NUL).
_REGISTERED = "\0registered:"


class UniquelyNamedModule(PyroModule):
    """A :class:`~pyro.nn.PyroModule` whose Pyro name is ``<prefix><n>``, unique in
    this process (``n`` counts instances).

    Inside a call, the first access to a plain ``nn.Module`` attribute (the decoders,
    encoders, classifier) issues Pyro's ``pyro.module`` statement, one ``pyro.param``
    per weight, as :class:`~pyro.nn.PyroModule` always does; later accesses in the same
    call return the module without repeating them. They would change nothing (the
    same parameters, already in the trace and the store) but cost a pass over every
    weight each time: with six modalities, reading ``self.decoders[m]`` and
    ``self.encoders[m]`` in loops made 362 ``pyro.param`` statements per step (mfeat) for
    84 weights. Outside a call nothing is cached.
    """

    def __init__(self, prefix: str):
        super().__init__(name=f"{prefix}{next(_COUNTER)}")

    def __getattr__(self, name: str) -> Any:
        modules = self.__dict__.get("_modules")
        context = self.__dict__.get("_pyro_context")
        if (modules is None or context is None or not context.active
                or name not in modules or isinstance(modules[name], PyroModule)):
            return super().__getattr__(name)
        if _QUIET:  # see without_param_statements
            return modules[name]
        key = f"{_REGISTERED}{self.__dict__['_pyro_name']}.{name}"  # context is shared
        if key not in context.cache:
            context.cache[key] = super().__getattr__(name)  # the pyro.module statement
        return context.cache[key]


_QUIET = False


@contextlib.contextmanager
def without_param_statements():
    """Inside: a :class:`UniquelyNamedModule` reads its plain ``nn.Module`` attributes
    without Pyro's ``pyro.module`` statement (one ``pyro.param`` per weight).

    For a loop that optimises ``Trace_ELBO()(model, guide).parameters()`` with a torch
    optimiser, as :class:`~pyro_mm.train.trainer.Trainer` does: nothing there reads the
    parameter sites of the trace or the global store, and the statements cost a few
    per cent of a step. Do not use it with ``pyro.infer.SVI``, which finds what to optimise through
    those statements. Pyro's own modules (the autoguide's parameters) are unaffected.
    The weights must already be registered (one ordinary call, e.g. a warm-up step), so
    the store and the modules hold the same tensors.
    """
    global _QUIET
    previous, _QUIET = _QUIET, True
    try:
        yield
    finally:
        _QUIET = previous
