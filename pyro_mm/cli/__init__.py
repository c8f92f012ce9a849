"""The command line, ``pyro-mm``: ``train``, ``evaluate``, ``impute``, ``diagnose``."""

from .main import main

__all__ = ["main"]
