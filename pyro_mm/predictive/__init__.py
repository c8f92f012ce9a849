"""What comes out of a fitted model: class probabilities, held-out evaluation,
log-likelihoods, imputation of missing modalities, and the metrics they report."""

from .impute import impute
from .predict import evaluate, log_likelihood, predict

__all__ = ["evaluate", "impute", "log_likelihood", "predict"]
