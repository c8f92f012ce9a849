"""Posterior diagnostics: ArviZ data, VI reliability checks, plots and a summary.

* :func:`to_datatree`: a fitted model as an ``xarray.DataTree`` in ArviZ's schema
  (posterior, posterior_predictive, log_likelihood, observed_data, sample_stats).
* :func:`pareto_k`: is the variational posterior trustworthy? (Pareto-k of the
  importance ratios ``log p - log q``, with a verdict in plain words.)
* :func:`loo`, :func:`effective_components`, :func:`responsibility_ari`: PSIS-LOO of
  labels and features, the number of components in use, clusters against labels.
* :func:`summary`: all of it in one table.
* :func:`compare`: two posteriors of one model (SVI against NUTS), components matched.
* :mod:`pyro_mm.diagnostics.plots`: training history, mixture weights,
  responsibilities by class, modality contributions (ARM), the PMRL singular-value
  spectrum, posterior predictive checks.

Importing this package needs neither ArviZ nor matplotlib; the functions that use them
import them when called.
"""

from .compare import Comparison, compare
from .datatree import load_datatree, save_datatree, to_datatree
from .reliability import (ParetoK, effective_components, loo, pareto_k, pareto_k_verdict,
                          responsibility_ari)
from .sampling import MAX_PREDICTIVE_VALUES, importance_log_ratios
from .summary import DiagnosticsSummary, summary

__all__ = [
    "Comparison",
    "DiagnosticsSummary",
    "MAX_PREDICTIVE_VALUES",
    "ParetoK",
    "compare",
    "effective_components",
    "importance_log_ratios",
    "load_datatree",
    "loo",
    "pareto_k",
    "pareto_k_verdict",
    "responsibility_ari",
    "save_datatree",
    "summary",
    "to_datatree",
]
