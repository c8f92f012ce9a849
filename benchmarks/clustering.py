"""Multi-view clustering without being told K: ``pm.cluster`` against k-means (given the
true K), scikit-learn's BayesianGaussianMixture and spectral clustering.

Data: mfeat's six views (2,000 handwritten digits, 649 features; groups: the 10 digits)
and the TCGA cohorts of :mod:`benchmarks.real_data` (BRCA: 769 patients, three omics
views, groups: the 5 PAM50 subtypes; KIPAN: 633 patients, 2 groups), each complete and
with 50 % of the (example, view) cells hidden at random (at least one view kept per
example); a cohort that cannot be had is skipped and says why.
Ours, fitted on all examples (clustering is transductive), clusters from
:func:`pyro_mm.cluster`: the unsupervised latent model (``num_components=20``, the
inverse-gamma variance prior), and the mixture on the observed features
(``representation="observed"``, ``pm.fit``'s own training: its closed form, and SVI
from there where features are integer-valued, as mfeat's pixel counts are), and the
same with factor components (``component="factor"``: low-rank-plus-diagonal
covariances whose factors the views share; SVI from the closed form). The
baselines see the concatenated features standardised per column, missing cells
mean-imputed (0 after standardising). Reported: ARI and NMI against the groups,
the number of clusters found (occupied components: at least one example's most
responsible one), each over seeds, and stability: the mean ARI between the assignments
of every pair of seeds.

    python -m benchmarks.clustering [--tiny] [--seeds 0 1 2] [--epochs 100]
        [--datasets mfeat brca kipan]
"""

from __future__ import annotations

import itertools
import time

import numpy as np

import pyro_mm as pm

from . import real_data
from .common import markdown_table, parser, write_results

TRUNCATION = 20
LOADERS = {"mfeat": pm.datasets.load_mfeat, "brca": real_data.load_brca,
           "kipan": real_data.load_kipan}


def concatenated(data: pm.MultimodalData) -> np.ndarray:
    """``(N, sum d_m)`` standardised features, missing cells at the column mean (0)."""
    parts = []
    for m in data.modalities:
        x, seen = data.features[m].astype(np.float64), data.masks[m]
        loc, scale = x[seen].mean(0), x[seen].std(0)
        scale[scale < 1e-8] = 1.0
        z = (x - loc) / scale
        z[~seen] = 0.0
        parts.append(z)
    return np.hstack(parts)


def ours(data, seed, epochs):
    # the conjugate prior of the component variances, as recorded (the latent default is
    # the lognormal prior)
    model = pm.MultimodalDPMixture(data.dims, num_components=TRUNCATION,
                                   scale_prior="inverse_gamma")
    result = pm.fit(model, data, num_epochs=epochs, batch_size=128, seed=seed,
                    device="cpu", progress=False)
    out = pm.cluster(result, data)
    return out.assignments, out.num_occupied


def ours_observed(data, seed, epochs, **options):  # noqa: ARG001 (its own length)
    """The mixture on the features themselves, ``pm.fit``'s own training (module
    docstring)."""
    model = pm.MultimodalDPMixture(data.dims, num_components=TRUNCATION,
                                   representation="observed", **options)
    result = pm.fit(model, data, num_epochs=None, seed=seed, device="cpu", progress=False)
    out = pm.cluster(result, data)
    return out.assignments, out.num_occupied


def kmeans(x, seed, true_k):
    from sklearn.cluster import KMeans

    labels = KMeans(true_k, n_init=10, random_state=seed).fit_predict(x)
    return labels, true_k


def bgmm(x, seed, true_k):  # noqa: ARG001 (not told K: it finds it)
    from sklearn.mixture import BayesianGaussianMixture

    labels = BayesianGaussianMixture(
        n_components=TRUNCATION, covariance_type="diag", max_iter=500, random_state=seed,
        weight_concentration_prior_type="dirichlet_process").fit(x).predict(x)
    return labels, len(np.unique(labels))


def spectral(x, seed, true_k):
    from sklearn.cluster import SpectralClustering

    labels = SpectralClustering(true_k, affinity="nearest_neighbors", n_neighbors=10,
                                random_state=seed).fit_predict(x)
    return labels, true_k


OURS = {"ours (pm.cluster, K not given)": ours,
        "ours, observed features (pm.cluster, K not given)": ours_observed,
        "ours, observed features, factor components (pm.cluster, K not given)":
            lambda data, seed, epochs: ours_observed(data, seed, epochs, component="factor")}
METHODS = {**OURS, "KMeans (true K)": kmeans,
           "BayesianGaussianMixture (DP, diag)": bgmm,
           "SpectralClustering (true K, 10-NN graph)": spectral}


def run(data, seeds, epochs) -> dict:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    x = concatenated(data)
    true_k = len(np.unique(data.labels))
    out = {}
    for name, method in METHODS.items():
        runs = []
        for seed in seeds:
            start = time.perf_counter()
            labels, found = (method(data, seed, epochs) if name in OURS
                             else method(x, seed, true_k))
            runs.append({"ari": float(adjusted_rand_score(data.labels, labels)),
                         "nmi": float(normalized_mutual_info_score(data.labels, labels)),
                         "clusters": int(found), "seconds": time.perf_counter() - start,
                         "labels": labels})
        pairs = [adjusted_rand_score(a["labels"], b["labels"])
                 for a, b in itertools.combinations(runs, 2)]
        out[name] = {"runs": [{k: v for k, v in r.items() if k != "labels"} for r in runs],
                     "stability_ari": float(np.mean(pairs)) if pairs else None}
        print(name, out[name], flush=True)
    return out


def _cell(runs, key):
    values = np.array([r[key] for r in runs], dtype=float)
    return f"{values.mean():.3g} ± {values.std():.2g}"


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--datasets", nargs="+", default=list(LOADERS), choices=list(LOADERS))
    args = p.parse_args(argv)
    seeds, epochs = (args.seeds[:2], 2) if args.tiny else (args.seeds, args.epochs)
    raw, rows, skipped = {}, [], {}
    for name, full in real_data.loaded(args.datasets, LOADERS, skipped):
        if args.tiny:
            full = full.subset(np.arange(0, len(full), max(1, len(full) // 100)))
        for label, fraction in (("complete", 0.0), ("50 % of views missing", 0.5)):
            data = full.mask_at_random(fraction, seed=7) if fraction else full
            raw[f"{name}, {label}"] = results = run(data, seeds, epochs)
            for method, r in results.items():
                stability = ("-" if r["stability_ari"] is None
                             else f"{r['stability_ari']:.3f}")
                rows.append([name, label, method, _cell(r["runs"], "ari"),
                             _cell(r["runs"], "nmi"), _cell(r["runs"], "clusters"),
                             stability, _cell(r["runs"], "seconds")])
    table = markdown_table(["data", "views", "method", "ARI", "NMI", "clusters found",
                            "stability (ARI between seeds)", "seconds"], rows)
    notes = (f"All examples and views of each data set; seeds {seeds}; ours: "
             f"MultimodalDPMixture (latent, K = {TRUNCATION}, scale_prior='inverse_gamma'; "
             f"the latent default is the lognormal prior), {epochs} epochs of batch 128; "
             "ours, observed features: representation='observed', K = "
             f"{TRUNCATION}, pm.fit(num_epochs=None), with diagonal and with factor "
             "components (rank 10). Cells: mean ± sd over seeds. "
             "Baselines on the concatenated standardised features (missing cells "
             f"mean-imputed). TCGA data: {real_data.LICENCE}; read from the package, not "
             "copied." + (f" Skipped: {skipped}." if skipped else ""))
    write_results("clustering", {"title": "Multi-view clustering without K (mfeat, TCGA "
                                          "BRCA, TCGA KIPAN)",
                                 "rows": [dict(zip(("data", "views", "method", "ari", "nmi",
                                                    "clusters", "stability", "seconds"),
                                                   row)) for row in rows],
                                 "skipped": skipped, "results": raw, "notes": notes,
                                 "seeds": seeds, "epochs": epochs}, table, args.out,
                  record=not args.tiny)


if __name__ == "__main__":
    main()
