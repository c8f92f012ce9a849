"""A fitted model as an object and as a folder: :class:`FitResult`, its history, atomic
checkpoints, and the data a run folder was trained and tested on. Below prediction and
training, so both can use the result type."""

from .result import FitResult, History, load

__all__ = ["FitResult", "History", "load"]
