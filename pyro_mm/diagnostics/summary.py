"""All the posterior diagnostics of a fitted model in one table: :func:`summary`."""

from __future__ import annotations

import dataclasses
import html
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.container import MultimodalData
from ..model.posterior import as_posterior
from ..predictive.metrics import adjusted_rand_index
from ..predictive.predict import predict
from .datatree import to_datatree
from .reliability import (ParetoK, _hard_assignments, effective_components,
                          good_k_threshold, loo, pareto_k)

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

    from ..runs.result import FitResult


@dataclasses.dataclass
class LooResult:
    """PSIS-LOO of one ``log_likelihood`` variable (from ``arviz.loo``)."""

    variable: str
    elpd: float
    se: float
    p_loo: float
    num_points: int
    lppd: float             # log pointwise predictive density, no leave-one-out
    num_bad_k: int          # Pareto k above ArviZ's good-k threshold
    max_k: float
    good_k: float

    @property
    def elpd_per_point(self) -> float:
        return self.elpd / max(self.num_points, 1)


@dataclasses.dataclass
class DiagnosticsSummary:
    """What :func:`summary` found; ``str()`` (or the notebook display) is the table.

    Attributes:
        description: model, data size and number of draws.
        training: ``steps``, ``epochs``, ``final_loss`` (negative ELBO per example,
            last epoch) and, when validation ran, ``val_loss`` / ``val_accuracy``.
        elbo_per_example: Monte Carlo ELBO of ``data`` per example from the draws
            (``None`` for posterior samples, which have no density ``q``).
        pareto_k: :class:`~pyro_mm.diagnostics.reliability.ParetoK` (``None`` for
            posterior samples).
        loo: ``variable -> LooResult`` (labels ``"y"``, features ``"x"``/``"x_<m>"``).
        effective_components: ``mean``, ``median``, ``lower``, ``upper``, ``ci_prob``.
        ari: adjusted Rand index of the most responsible component against the labels
            (``None`` without labels).
        components_used: distinct most-responsible components.
        accuracy: plug-in accuracy of the classifier (``None`` without one).
        tree: the :class:`xarray.DataTree` the numbers come from.
    """

    description: str
    training: dict[str, float]
    elbo_per_example: float | None
    pareto_k: ParetoK | None
    loo: dict[str, LooResult]
    effective_components: dict[str, float]
    ari: float | None
    components_used: int | None
    accuracy: float | None
    tree: Any = dataclasses.field(default=None, repr=False)

    # -------------------------------------------------------------- numbers
    def to_dict(self) -> dict[str, Any]:
        """Every number, JSON-serialisable."""
        return {
            "description": self.description,
            "training": dict(self.training),
            "elbo_per_example": self.elbo_per_example,
            "pareto_k": None if self.pareto_k is None else self.pareto_k.to_dict(),
            "loo": {k: dataclasses.asdict(v) for k, v in self.loo.items()},
            "effective_components": {k: v for k, v in self.effective_components.items()
                                     if k != "draws"},
            "ari": self.ari,
            "components_used": self.components_used,
            "accuracy": self.accuracy,
        }

    # -------------------------------------------------------------- table
    def rows(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """``[(section, [(label, value), ...]), ...]``: the table's content."""
        t = self.training
        training = []
        if "steps" in t:
            training.append(("SVI steps / epochs", f"{int(t['steps'])} / {int(t['epochs'])}"))
        if "final_loss" in t:
            training.append(("final training loss (-ELBO / example)",
                             f"{t['final_loss']:.4g}"))
        if "val_loss" in t:
            training.append(("final validation loss (-ELBO / example)",
                             f"{t['val_loss']:.4g}"))
        if self.elbo_per_example is not None:
            training.append(("ELBO / example on these data (draws)",
                             f"{self.elbo_per_example:.4g}"))
        reliability = self._reliability_rows()

        predictive = []
        for name, r in self.loo.items():
            predictive.append((f"PSIS-LOO {name}: elpd_loo (se)",
                               f"{r.elpd:.2f} ({r.se:.2f}); {r.elpd_per_point:.4g} per point"))
            predictive.append(("  lppd (no leave-one-out); p_loo",
                               f"{r.lppd:.2f}; {r.p_loo:.2f}"))
            predictive.append((f"  points with Pareto k > {r.good_k:.2f}",
                               f"{r.num_bad_k} of {r.num_points} (max k {r.max_k:.2f})"))
        if self.accuracy is not None:
            predictive.append(("accuracy (plug-in)", f"{self.accuracy:.4f}"))

        ec = self.effective_components
        mixture = [(f"effective components [{ec['ci_prob']:.0%} interval]",
                    f"{ec['mean']:.2f} [{ec['lower']:.2f}, {ec['upper']:.2f}]")]
        if self.components_used is not None:
            mixture.append(("components used (most responsible)", str(self.components_used)))
        if self.ari is not None:
            mixture.append(("adjusted Rand index (components vs labels)", f"{self.ari:.4f}"))
        sections = [("Training", training), ("Is the variational posterior reliable?",
                                             reliability)]
        if predictive:
            sections.append(("Predictive checks", predictive))
        sections.append(("Mixture", mixture))
        return sections

    def _reliability_rows(self) -> list[tuple[str, str]]:
        """The rows of "Is the posterior reliable?" (Pareto k; none for samples)."""
        pk = self.pareto_k
        if pk is None:
            return [("Pareto k of log p - log q", "n/a: posterior samples have no q"),
                    ("verdict", "check the chains with arviz.rhat and arviz.ess")]
        return [
            ("Pareto k of log p - log q",
             "n/a" if math.isnan(pk.k) else f"{pk.k:.3f}  [{pk.label}]"),
            ("  ratio over", "globals and every representation z" if pk.includes_locals
             else "the global parameters"),
            ("importance-sampling ESS", f"{pk.ess:.1f} of {pk.num_samples}"),
            ("verdict", pk.verdict),
        ]

    def __str__(self) -> str:
        sections = self.rows()
        width = max(len(label) for _, rows in sections for label, _ in rows)
        lines = [f"pyro_mm diagnostics: {self.description}"]
        for title, rows in sections:
            lines.append(title)
            for label, value in rows:
                if label == "verdict":
                    lines.extend(_wrap(value, 4, 88))
                else:
                    lines.append(f"  {label:<{width}}  {value}")
        return "\n".join(lines)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        out = [f"<b>pyro_mm diagnostics</b>: {html.escape(self.description)}",
               "<table>"]
        for title, rows in self.rows():
            out.append(f'<tr><th colspan="2" style="text-align:left">{html.escape(title)}'
                       "</th></tr>")
            for label, value in rows:
                out.append(f'<tr><td style="text-align:left">{html.escape(label)}</td>'
                           f'<td style="text-align:left">{html.escape(value)}</td></tr>')
        out.append("</table>")
        return "\n".join(out)


def _wrap(text: str, indent: int, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width - indent:
            lines.append(" " * indent + line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(" " * indent + line)
    return lines


def _loo_results(tree) -> dict[str, LooResult]:
    out = {}
    for name, elpd in loo(tree).items():
        k = np.asarray(elpd.pareto_k).ravel()
        good = float(getattr(elpd, "good_k", good_k_threshold(elpd.n_samples)))
        out[name] = LooResult(
            variable=name, elpd=float(elpd.elpd), se=float(elpd.se), p_loo=float(elpd.p),
            num_points=int(elpd.n_data_points), lppd=float(elpd.elpd) + float(elpd.p),
            num_bad_k=int((k > good).sum()),
            max_k=float(np.nanmax(k)) if k.size else math.nan, good_k=good)
    return out


def summary(
    result: "FitResult | Any",
    data: MultimodalData,
    num_samples: int | None = None,
    batch_size: int = 2048,
    *,
    tree: "xr.DataTree | None" = None,
    seed: int | None = 0,
    progress: bool = True,
) -> DiagnosticsSummary:
    """Every posterior check of a fitted model, as one readable table.

    ``print(pm.summary(result, data))``, or leave it as the last expression of a
    notebook cell. The numbers are attributes of the returned object (and
    ``.to_dict()``).

    * training: steps, epochs, final loss; the ELBO on ``data`` from the draws;
    * is the variational posterior reliable: Pareto k of ``log p - log q`` with its
      verdict, and the importance-sampling effective sample size
      (:func:`~pyro_mm.diagnostics.pareto_k`);
    * predictive checks: PSIS-LOO (``arviz.loo``) of each ``log_likelihood`` variable
      (labels ``y``, features ``x``), with the number of examples whose Pareto k is
      too high for the LOO estimate to be trusted, and the plain log pointwise
      predictive density ``lppd`` (on held-out data this is already an out-of-sample
      score; LOO matters for the data the model was fitted on); plug-in accuracy;
    * mixture: the effective number of components with a credible interval, the
      number of components that are most responsible for some example and the
      adjusted Rand index against the labels (plug-in responsibilities, as
      :func:`pyro_mm.evaluate`).

    Args:
        result: a posterior: a fitted :class:`~pyro_mm.runs.result.FitResult`,
            ``(model, guide)`` with any Pyro guide, posterior samples or a
            ``pyro.infer.MCMC`` (:func:`~pyro_mm.model.posterior.as_posterior`);
            samples get no Pareto k (they have no density ``q``).
        data: the data to diagnose (the training data answers "did the fit work",
            held-out data "does it generalise").
        num_samples: posterior draws (ignored when ``tree`` is given; ``None``: 1000
            from a guide, every sample).
        batch_size: examples per chunk.
        tree: a tree already made by :func:`~pyro_mm.diagnostics.to_datatree` for
            ``result`` and ``data``.
        seed: seed for the draws (``None``: PyTorch's current random state).
        progress: tqdm progress bar while drawing.
    """
    posterior = as_posterior(result)
    if tree is None:
        tree = to_datatree(posterior, data, num_samples=num_samples, batch_size=batch_size,
                           seed=seed, progress=progress)
    model = posterior.model
    n = len(data)
    S = int(tree["posterior"].sizes["draw"]) * int(tree["posterior"].sizes["chain"])
    history = getattr(result, "history", None)
    training: dict[str, float] = {}
    if history is not None and history.steps:
        training["steps"] = len(history.steps)
        training["epochs"] = len(history.epochs)
    if history is not None and history.epochs:
        last = history.epochs[-1]
        for key, name in (("loss", "final_loss"), ("val_loss", "val_loss"),
                          ("val_accuracy", "val_accuracy")):
            if key in last:
                training[name] = float(last[key])
    pk = pareto_k(tree) if "log_q" in tree["sample_stats"] else None
    pred = predict(posterior, data)
    assignments = _hard_assignments(pred["responsibilities"])
    labels = data.labels
    keep = None if labels is None else labels >= 0
    ari = accuracy = None
    if keep is not None and keep.any():
        ari = adjusted_rand_index(labels[keep], assignments[keep])
        if "probs" in pred:
            accuracy = float((pred["probs"].argmax(-1)[keep] == labels[keep]).mean())
    factors = [type(f).__name__ for f in getattr(model, "factors", [])]
    description = (
        f"{model.representation} representation, {model.mixture} mixture, "
        f"K={model.num_components}"
        + (", Student-t components" if model.component == "studentt" else "")
        + (f", D={model.latent_dim}" if model.representation == "latent" else "")
        + (f", factors {', '.join(factors)}" if factors else "")
        + f"; {n} examples, {S} posterior draws")
    return DiagnosticsSummary(
        description=description,
        training=training,
        elbo_per_example=None if pk is None else pk.elbo / n,
        pareto_k=pk,
        loo=_loo_results(tree),
        effective_components=effective_components(tree),
        ari=ari,
        components_used=int(np.unique(assignments).size),
        accuracy=accuracy,
        tree=tree,
    )


__all__ = ["DiagnosticsSummary", "LooResult", "summary"]
