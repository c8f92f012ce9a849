"""Two posteriors of the same model side by side, e.g. SVI against NUTS:
:func:`compare`.

Mixture components are exchangeable, so two posteriors (or two chains of one) may hold
the same components under different labels. Before anything is compared, the
components of every chain of both posteriors are matched to a reference, chain 0 of
the second posterior, by the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``) on the squared distance between the
chains' posterior-mean component locations (every modality's, concatenated), and the
component axis of ``weights``, ``component_loc*`` and ``component_scale*`` is permuted
accordingly. The sticks are left out: stick breaking orders the components, so a
permuted mixture has different sticks (its ``weights`` are compared instead). Matching
is per chain, so a chain that switches labels *within* itself is not repaired (its
``arviz.rhat`` shows it).

Per site (each posterior variable but the sticks), elementwise over its coordinates:

* ``z = (mean_1 - mean_2) / sd_2``: the difference of the posterior means in units of
  the second posterior's standard deviation;
* ``sd_1 / sd_2``: the ratio of the posterior standard deviations;

summarised by the largest ``|z|`` and the range of the ratios; and PSIS-LOO
(``arviz.loo``) of each ``log_likelihood`` variable of both.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.container import MultimodalData
from ..model.posterior import as_posterior
from .datatree import to_datatree
from .reliability import _is_tree, loo

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr


@dataclasses.dataclass
class SiteComparison:
    """One posterior variable of :func:`compare`.

    Attributes:
        site: the variable (``weights``, ``component_loc_<m>``, ...).
        size: its number of elements per draw.
        max_abs_z: the largest ``|mean_1 - mean_2| / sd_2`` over its elements.
        sd_ratio_min, sd_ratio_max: the range of ``sd_1 / sd_2`` over its elements.
        z, sd_ratio: the elementwise values, the variable's own shape.
    """

    site: str
    size: int
    max_abs_z: float
    sd_ratio_min: float
    sd_ratio_max: float
    z: np.ndarray = dataclasses.field(repr=False)
    sd_ratio: np.ndarray = dataclasses.field(repr=False)


@dataclasses.dataclass
class Comparison:
    """What :func:`compare` found; ``str()`` is the table.

    Attributes:
        names: the two posteriors' names.
        sites: one :class:`SiteComparison` per compared variable.
        elpd_loo: ``name -> {variable: (elpd_loo, se)}``.
        permutations: ``name -> (chain, K)`` array: ``permutations[name][c, k]`` is the
            component of chain ``c`` matched to the reference's component ``k``.
        trees: ``name -> xarray.DataTree``, as drawn (components not relabelled).
    """

    names: tuple[str, str]
    sites: list[SiteComparison]
    elpd_loo: dict[str, dict[str, tuple[float, float]]]
    permutations: dict[str, np.ndarray]
    trees: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def max_abs_z(self) -> float:
        """The largest ``|z|`` over every site."""
        return max((s.max_abs_z for s in self.sites), default=math.nan)

    @property
    def sd_ratio_range(self) -> tuple[float, float]:
        """``(min, max)`` of ``sd_1 / sd_2`` over every site."""
        return (min(s.sd_ratio_min for s in self.sites),
                max(s.sd_ratio_max for s in self.sites))

    def to_dict(self) -> dict[str, Any]:
        """Every summary number, JSON-serialisable."""
        return {"names": list(self.names),
                "sites": [{k: v for k, v in dataclasses.asdict(s).items()
                           if k not in ("z", "sd_ratio")} for s in self.sites],
                "elpd_loo": {n: {v: list(e) for v, e in d.items()}
                             for n, d in self.elpd_loo.items()},
                "permutations": {n: p.tolist() for n, p in self.permutations.items()}}

    def __str__(self) -> str:
        a, b = self.names
        width = max([len(s.site) for s in self.sites] + [4])
        lines = [f"{a} against {b} (components matched; z = (mean_{a} - mean_{b}) / "
                 f"sd_{b})",
                 f"  {'site':<{width}}  size  max |z|  sd ratio {a}/{b}"]
        for s in self.sites:
            lines.append(f"  {s.site:<{width}}  {s.size:>4}  {s.max_abs_z:7.3f}  "
                         f"{s.sd_ratio_min:.2f} - {s.sd_ratio_max:.2f}")
        for var in sorted(set().union(*(d.keys() for d in self.elpd_loo.values()))):
            values = [f"{n} {self.elpd_loo[n][var][0]:.1f} ({self.elpd_loo[n][var][1]:.1f})"
                      if var in self.elpd_loo[n] else f"{n} n/a" for n in self.names]
            lines.append(f"  elpd_loo {var} (se): " + ", ".join(values))
        return "\n".join(lines)

    __repr__ = __str__


def _component_variables(posterior: "xr.Dataset") -> list[str]:
    return [v for v in posterior.data_vars if "component" in posterior[v].dims]


def _loc_matrix(posterior: "xr.Dataset", chain: int) -> np.ndarray:
    """``(K, F)``: chain ``chain``'s posterior-mean component locations, every
    modality's features (or latent coordinates) side by side."""
    names = sorted(v for v in posterior.data_vars if str(v).startswith("component_loc"))
    if not names:
        raise ValueError("compare: the posterior has no component_loc variables to match "
                         "components by")
    parts = []
    for name in names:
        mean = posterior[name].isel(chain=chain).mean("draw").transpose("component", ...)
        parts.append(np.asarray(mean).reshape(mean.sizes["component"], -1))
    return np.concatenate(parts, axis=1)


def match_components(tree: "xr.DataTree", reference: np.ndarray) -> tuple["xr.Dataset",
                                                                         np.ndarray]:
    """``tree``'s posterior with the components of every chain relabelled to match
    ``reference`` (``(K, F)``, from :func:`_loc_matrix`), and the ``(chain, K)``
    permutations used (module docstring)."""
    import xarray as xr
    from scipy.optimize import linear_sum_assignment

    posterior = tree["posterior"].to_dataset()
    chains = []
    perms = []
    for c in range(posterior.sizes["chain"]):
        locs = _loc_matrix(posterior, c)
        cost = ((reference[:, None, :] - locs[None, :, :]) ** 2).sum(-1)  # (ref, own)
        _, perm = linear_sum_assignment(cost)
        perms.append(perm)
        chain = posterior.isel(chain=[c])
        for var in _component_variables(posterior):
            chain[var] = chain[var].isel(component=perm).assign_coords(
                component=posterior["component"])
        chains.append(chain)
    return xr.concat(chains, dim="chain"), np.stack(perms)


def _site_rows(first: "xr.Dataset", second: "xr.Dataset") -> list[SiteComparison]:
    rows = []
    for var in second.data_vars:
        if var == "sticks" or var not in first.data_vars:
            continue
        a, b = first[var], second[var]
        mean_a, mean_b = (np.asarray(x.mean(("chain", "draw"))) for x in (a, b))
        sd_a, sd_b = (np.asarray(x.std(("chain", "draw"))) for x in (a, b))
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (mean_a - mean_b) / sd_b
            ratio = sd_a / sd_b
        rows.append(SiteComparison(str(var), int(z.size), float(np.nanmax(np.abs(z))),
                                   float(np.nanmin(ratio)), float(np.nanmax(ratio)),
                                   z, ratio))
    return rows


def _elpd(tree) -> dict[str, tuple[float, float]]:
    return {name: (float(e.elpd), float(e.se)) for name, e in loo(tree).items()}


def compare(first, second, data: MultimodalData | None = None, *,
            num_samples: int | None = None, batch_size: int = 2048, seed: int | None = 0,
            names: tuple[str, str] = ("svi", "mcmc")) -> Comparison:
    """Compare two posteriors of one model (module docstring), e.g.
    ``compare(svi_result, mcmc, data)``.

    Args:
        first, second: posteriors (anything
            :func:`~pyro_mm.model.posterior.as_posterior` accepts: a ``FitResult``,
            ``(model, guide)``, ``(model, samples)``, a ``pyro.infer.MCMC``), or trees
            already made by :func:`~pyro_mm.diagnostics.to_datatree`. ``second`` is
            the reference: components are matched to its chain 0, and differences are
            in its standard deviations.
        data: the data of the trees and the LOO (required unless both are trees).
        num_samples: draws of a guide (``None``: 1000); samples are used whole.
        batch_size, seed: as in :func:`~pyro_mm.diagnostics.to_datatree`.
        names: what to call the two in the table.

    Returns:
        :class:`Comparison`.
    """
    trees = []
    for source in (first, second):
        if _is_tree(source):
            trees.append(source)
            continue
        if data is None:
            raise ValueError("compare: pass the data to draw the posteriors on")
        posterior = as_posterior(source)
        trees.append(to_datatree(posterior, data, batch_size=batch_size, seed=seed,
                                 num_samples=num_samples if posterior.has_log_q else None,
                                 progress=False))
    reference = _loc_matrix(trees[1]["posterior"].to_dataset(), 0)
    matched, permutations = {}, {}
    for name, tree in zip(names, trees):
        matched[name], permutations[name] = match_components(tree, reference)
    a, b = names
    return Comparison(names=tuple(names), sites=_site_rows(matched[a], matched[b]),
                      elpd_loo={n: _elpd(t) for n, t in zip(names, trees)},
                      permutations=permutations, trees=dict(zip(names, trees)))


__all__ = ["Comparison", "SiteComparison", "compare", "match_components"]
