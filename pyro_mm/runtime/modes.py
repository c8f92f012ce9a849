"""Training and evaluation modes of modules, switched for a block and restored after.

Prediction, validation, the trainer's warm-up pass and a factor's sampling weights all
run the model and guide in eval mode whatever mode the caller left them in, and must
hand them back unchanged: a model in training mode has training-time behaviour (modality
dropout, ARM moving its fusion weights) that would otherwise leak into, or out of, such
a block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def evaluation_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` in eval mode (dropout off, batch-norm statistics frozen, no
    training-time state updates such as ARM's fusion weights), then restore each one's
    own mode (submodules included: ``train(mode)`` is recursive), even on an error."""
    previous = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, previous):
            m.train(mode)
