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

from pyro.nn import PyroModule
from torch import nn

_COUNTER = itertools.count()


class UniquelyNamedModule(PyroModule):
    """A :class:`~pyro.nn.PyroModule` whose Pyro name is ``<prefix><n>``, unique in
    this process (``n`` counts instances)."""

    def __init__(self, prefix: str):
        super().__init__(name=f"{prefix}{next(_COUNTER)}")


@contextlib.contextmanager
def evaluation_mode(*modules: nn.Module):
    """Put ``modules`` in eval mode (dropout off, batch-norm statistics frozen, no
    training-time state updates such as ARM's fusion weights), then restore each."""
    previous = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, previous):
            m.train(mode)
