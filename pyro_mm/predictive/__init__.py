"""What comes out of a fitted model: class probabilities, held-out evaluation,
log-likelihoods, imputation of missing modalities, clustering, and the metrics they
report."""

from .cluster import Clustering, cluster
from .impute import impute
from .predict import evaluate, log_likelihood, predict

__all__ = ["Clustering", "cluster", "evaluate", "impute", "log_likelihood", "predict"]
