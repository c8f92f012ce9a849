"""Exceptions raised by pyro_mm.

Every error a user can trigger with bad input is a subclass of :class:`ValueError`, so
``except ValueError`` keeps working, and its message names the modality, argument or
file that is wrong.
"""


class DataValidationError(ValueError):
    """Input data is malformed: NaN/inf, wrong rank, disagreeing sizes, bad labels."""


class CheckpointError(ValueError):
    """A checkpoint or run folder is missing, incomplete or not one of ours."""


class TrainingDivergedError(RuntimeError):
    """The loss stayed non-finite after every recovery attempt.

    The model and guide hold the last state whose loss was finite; no checkpoint was
    written from a non-finite state.
    """


class DistributedError(RuntimeError):
    """Data-parallel training cannot go on: another rank died or hung past the
    process-group timeout, or the ranks disagree on data or configuration. Raised on
    every rank still running; the last checkpoint is left intact."""
