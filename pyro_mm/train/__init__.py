"""What learns the model: :func:`fit` (SVI on one process or many), its trainer, ELBO,
optimiser, monitoring and settings, and the exact solve of the experts' heads."""

from .fit import fit

__all__ = ["fit"]
