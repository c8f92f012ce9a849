"""Posterior diagnostics: the ArviZ tree, VI reliability (Pareto k), LOO, the summary,
plots and the `diagnose` command logic. Small seeded models; the one long fit (the
well-specified model for Pareto k) is shared by a module-scoped fixture."""

import contextlib
import math
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402
from pyro.infer import Trace_ELBO  # noqa: E402

import pyro_mm as pm  # noqa: E402
from pyro_mm import diagnostics as dx  # noqa: E402
from pyro_mm.diagnostics import plots  # noqa: E402
from pyro_mm.model.distributions import stick_breaking_log_weights  # noqa: E402
from pyro_mm.model.dp_mixture import MixtureParams  # noqa: E402

torch.set_num_threads(1)


@contextlib.contextmanager
def _quiet():
    """ArviZ warns about high Pareto k on these tiny fits; the tests check numbers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------------- fixtures
def _simple_data():
    return pm.datasets.make_synthetic(num_examples=300, num_clusters=2, dims={"a": 2, "b": 2},
                                      signal=4.0, noise=0.5, seed=0)


@pytest.fixture(scope="module")
def good_fit():
    """Well specified (2 clusters, K=2, mixture on the features), fitted long enough:
    300 full-batch steps with a decaying step size."""
    pyro.clear_param_store()
    data = _simple_data()
    # The lognormal prior of the variances: with the default inverse-gamma prior (shape
    # nu0 / 2 = 1, a heavy tail the mean-field guide's log-normal does not follow) this
    # fit's Pareto k is 0.64, past the 0.60 threshold of 300 draws.
    model = pm.MultimodalDPMixture(data.dims, num_components=2, representation="observed",
                                   scale_prior="lognormal", scale_floor=0.05,
                                   resolution_floor=False)
    result = pm.fit(model, data, num_epochs=300, batch_size=300, learning_rate=0.02,
                    lr_decay=0.995, seed=0, device="cpu", progress=False)
    return result, data


@pytest.fixture(scope="module")
def latent_fit():
    """A small latent model with a classifier and decoders; labels and one modality
    partly missing."""
    pyro.clear_param_store()
    data = pm.datasets.make_synthetic(num_examples=90, num_clusters=3, dims={"a": 4, "b": 3},
                                      missing_rate=0.2, seed=1)
    labels = data.labels
    labels[::7] = -1
    data = pm.MultimodalData(data.features, labels=labels, masks=data.masks, num_classes=3)
    model = pm.MultimodalDPMixture(data.dims, num_classes=3, latent_dim=2, num_components=4,
                                   hidden=(8,), alpha="learned")
    result = pm.fit(model, data, num_epochs=2, batch_size=32, seed=0, device="cpu",
                    progress=False)
    tree = dx.to_datatree(result, data, num_samples=40, batch_size=50, seed=0,
                          progress=False)
    return result, data, tree


@pytest.fixture(scope="module")
def observed_fit():
    """A briefly fitted mixture on the features with a classifier (cheap, exact
    log-likelihood)."""
    pyro.clear_param_store()
    data = pm.datasets.make_synthetic(num_examples=80, num_clusters=2, dims={"a": 3, "b": 2},
                                      missing_rate=0.2, seed=2)
    model = pm.MultimodalDPMixture(data.dims, num_classes=2, num_components=3,
                                   representation="observed", hidden=(8,))
    result = pm.fit(model, data, num_epochs=5, batch_size=40, seed=0, device="cpu",
                    progress=False)
    tree = dx.to_datatree(result, data, num_samples=60, batch_size=30, seed=0,
                          progress=False)
    return result, data, tree


# ---------------------------------------------------------------------- the tree
def test_tree_has_arviz_groups_dims_and_coords(latent_fit):
    result, data, tree = latent_fit
    for group in ("posterior", "posterior_predictive", "log_likelihood", "observed_data",
                  "sample_stats", "constant_data", "per_example"):
        assert group in tree, group
    post = tree["posterior"]
    assert post.sizes["chain"] == 1 and post.sizes["draw"] == 40
    assert post["weights"].dims == ("chain", "draw", "component")
    assert post["sticks"].dims == ("chain", "draw", "stick")
    assert post["component_loc"].dims == ("chain", "draw", "component", "modality", "latent")
    assert list(post["modality"].values) == ["a", "b"]
    assert "alpha" in post.data_vars
    np.testing.assert_allclose(post["weights"].sum("component"), 1.0, rtol=1e-5)
    assert (post["component_scale"] > 0).all()

    ll = tree["log_likelihood"]
    assert set(ll.data_vars) == {"y", "x_a", "x_b"}
    # y only where labelled, x_m only where observed; coordinates give their positions
    np.testing.assert_array_equal(ll["y_example"], np.flatnonzero(data.labels >= 0))
    np.testing.assert_array_equal(ll["x_a_example"], np.flatnonzero(data.masks["a"]))
    assert np.isfinite(ll["y"]).all() and np.isfinite(ll["x_a"]).all()

    pp, obs = tree["posterior_predictive"], tree["observed_data"]
    assert pp["y"].dims == ("chain", "draw", "example")
    assert pp["x_a"].dims == ("chain", "draw", "example", "a_feature")
    assert set(np.unique(pp["y"])) <= {0, 1, 2}
    missing = ~data.masks["a"]
    assert np.isnan(obs["x_a"].values[missing]).all()
    np.testing.assert_array_equal(obs["x_a"].values[~missing], data.features["a"][~missing])
    np.testing.assert_array_equal(obs["y"], data.labels)
    assert tree["per_example"]["class_probs"].dims == ("example", "class")
    np.testing.assert_allclose(tree["per_example"]["responsibilities"].sum("component"), 1,
                               rtol=1e-5)
    np.testing.assert_array_equal(tree["constant_data"]["mask"].sel(modality="b"),
                                  data.masks["b"])


def test_arviz_summary_ess_and_loo_run_on_the_tree(latent_fit, observed_fit):
    import arviz as az

    for _, _, tree in (latent_fit, observed_fit):
        table = az.summary(tree, var_names=["weights", "sticks"])
        assert len(table) > 0
        ess = az.ess(tree, var_names=["weights"])
        assert np.isfinite(ess["weights"]).all()
        for name in tree["log_likelihood"].data_vars:
            with _quiet():
                elpd = az.loo(tree, var_name=name, pointwise=True)
            assert np.isfinite(elpd.elpd)


def test_log_likelihood_is_the_exact_density_at_each_draw(observed_fit):
    """Recompute log p(x_i | theta_s) from the stored draws with the model's own
    distribution (assignments summed out, missing modalities marginalised, Jacobian of
    the standardisation), and check ArviZ's LOO against the pointwise values."""
    import arviz as az

    result, data, tree = observed_fit
    model = result.model
    batch = model.prepare(data)
    x = torch.cat([batch.features[m] for m in model.modalities], dim=-1)
    post = tree["posterior"]
    stored = tree["log_likelihood"]["x"].values[0]                       # (S, N)
    for s in (0, 17, 59):
        draw = post.isel(chain=0, draw=s)
        sticks = torch.as_tensor(draw["sticks"].values)
        params = MixtureParams(
            stick_breaking_log_weights(sticks),
            [torch.as_tensor(draw[f"component_loc_{m}"].values) for m in model.modalities],
            [torch.as_tensor(draw[f"component_scale_{m}"].values) for m in model.modalities],
            model.alpha, sticks,
            # the exported scales are the sites sigma; components use sqrt(sigma^2 + f^2)
            floors=[torch.as_tensor(tree["constant_data"][f"component_scale_floor_{m}"].values)
                    for m in model.modalities])
        with torch.no_grad():
            direct = (params.mixture(model.mixture, mask=batch.masks, batch_size=batch.size,
                                     stacked=False).log_prob(x)
                      + model.feature_log_jacobian(batch.masks))
        np.testing.assert_allclose(stored[s], direct.numpy(), rtol=1e-5, atol=1e-4)

    # PSIS-LOO: by definition elpd_loo = lppd - p_loo, lppd from the pointwise values
    with _quiet():
        elpd = az.loo(tree, var_name="x", pointwise=True)
    lppd = np.logaddexp.reduce(stored.astype(np.float64), axis=0) - math.log(stored.shape[0])
    assert elpd.elpd + elpd.p == pytest.approx(lppd.sum(), rel=1e-6)
    np.testing.assert_array_less(np.asarray(elpd.elpd_i) - 1e-6, lppd)
    # the classifier of an observed model reads the features and has no random
    # parameters, so its label likelihood would be constant over draws: not stored
    assert "y" not in tree["log_likelihood"]


def test_map_guide_draws_agree_with_inference_log_likelihood():
    """With a MAP guide every draw is the point estimate, so each draw's
    log-likelihood equals pyro_mm.predictive.predict.log_likelihood exactly."""
    data = pm.datasets.make_synthetic(num_examples=60, num_clusters=2, dims={"a": 3, "b": 2},
                                      seed=3)
    model = pm.MultimodalDPMixture(data.dims, num_components=3, representation="observed")
    guide = pm.MultimodalGuide(model, global_guide="map")
    result = pm.fit(model, data, guide=guide, num_epochs=3, batch_size=30, seed=0,
                    device="cpu", progress=False)
    tree = dx.to_datatree(result, data, num_samples=5, seed=0, progress=False)
    expected = pm.log_likelihood(model, guide, model.prepare(data)).numpy()
    for s in range(5):
        np.testing.assert_allclose(tree["log_likelihood"]["x"].values[0, s], expected,
                                   rtol=1e-5, atol=1e-5)
    pk = dx.pareto_k(tree)
    assert math.isnan(pk.k) and pk.label == "undefined"


def test_label_log_prob_is_exact_for_confident_classifiers():
    from pyro_mm.diagnostics.sampling import label_log_prob

    logits = torch.tensor([[0.0, 50.0, -3.0], [1.0, 2.0, 3.0], [100.0, 0.0, 0.0]])
    labels = torch.tensor([1, 2, 0])
    value = label_log_prob(logits, labels)
    assert value.dtype == torch.float64
    np.testing.assert_allclose(value[1], torch.log_softmax(logits.double(), -1)[1, 2])
    # float32 log_softmax rounds these to exactly 0; PSIS needs them to differ
    assert -1e-20 < float(value[0]) < 0 and -1e-40 < float(value[2]) < 0


def test_importance_ratios_are_the_elbo_and_do_not_depend_on_chunking(observed_fit):
    result, data, _ = observed_fit
    lp1, lq1 = dx.importance_log_ratios(result, data, 100, batch_size=30, seed=3,
                                        progress=False)
    lp2, lq2 = dx.importance_log_ratios(result, data, 100, batch_size=1000, seed=3,
                                        progress=False)
    np.testing.assert_allclose(lp1, lp2, rtol=1e-6)
    np.testing.assert_allclose(lq1, lq2, rtol=1e-6)
    # The mean ratio is a Monte Carlo ELBO of the whole data set: compare with Pyro's
    batch = result.model.prepare(data)
    pyro.set_rng_seed(0)
    with torch.no_grad():
        elbo = -Trace_ELBO(num_particles=50).loss(result.model, result.guide, batch)
    ratio = lp1 - lq1
    se = math.hypot(ratio.std() / math.sqrt(ratio.size), ratio.std() / math.sqrt(50))
    assert abs(ratio.mean() - elbo) < 5 * se + 1e-3 * abs(elbo)


def test_seed_reproduces_the_tree_and_leaves_global_rng_alone(observed_fit):
    result, data, tree = observed_fit
    state = torch.get_rng_state()
    again = dx.to_datatree(result, data, num_samples=60, batch_size=30, seed=0,
                           progress=False)
    assert torch.equal(state, torch.get_rng_state())
    xr.testing.assert_equal(tree["posterior"].to_dataset(), again["posterior"].to_dataset())
    xr.testing.assert_equal(tree["log_likelihood"].to_dataset(),
                            again["log_likelihood"].to_dataset())


def test_observed_tree_layout(observed_fit):
    result, data, tree = observed_fit
    post = tree["posterior"]
    assert post["component_loc_a"].dims == ("chain", "draw", "component", "a_feature")
    assert "alpha" not in post.data_vars and tree.attrs["alpha"] == 1.0
    x = tree["posterior_predictive"]["x"]
    assert x.dims == ("chain", "draw", "example", "feature")
    assert list(x["feature"].values) == ["a[0]", "a[1]", "a[2]", "b[0]", "b[1]"]
    assert list(x["feature_modality"].values) == ["a", "a", "a", "b", "b"]
    assert tree["log_likelihood"]["x"].dims == ("chain", "draw", "example")
    # replicated features are on the original scale, like the observations
    obs = tree["observed_data"]["x"].sel(feature="a[0]").values
    rep = x.sel(feature="a[0]").values.ravel()
    assert abs(np.nanmean(obs) - rep.mean()) < 1.0 * np.nanstd(obs)


def test_predictive_features_can_be_left_out(observed_fit):
    result, data, _ = observed_fit
    tree = dx.to_datatree(result, data, num_samples=3, predictive_features=False,
                          progress=False, seed=0)
    assert "x" not in tree["posterior_predictive"].data_vars
    assert "y" in tree["posterior_predictive"].data_vars


# ---------------------------------------------------------------------- storage
def _assert_trees_equal(a, b):
    assert set(a.groups) == set(b.groups)
    for group in a.groups:
        xr.testing.assert_identical(a[group].to_dataset(), b[group].to_dataset())


def test_netcdf_round_trip_is_lossless(latent_fit, observed_fit, tmp_path):
    for i, (_, _, tree) in enumerate((latent_fit, observed_fit)):
        path = dx.save_datatree(tree, tmp_path / f"tree{i}.nc")
        back = dx.load_datatree(path)
        _assert_trees_equal(tree, back)
        assert back["constant_data"]["mask"].dtype == bool
        assert back["posterior_predictive"]["y"].dtype == np.int64


def test_zarr_round_trip_is_lossless(observed_fit, tmp_path):
    pytest.importorskip("zarr")
    tree = observed_fit[2]
    back = dx.load_datatree(dx.save_datatree(tree, tmp_path / "tree.zarr"))
    _assert_trees_equal(tree, back)


# ---------------------------------------------------------------------- reliability
def test_pareto_k_is_small_for_a_good_fit_and_flags_poor_ones(good_fit):
    result, data = good_fit
    good = dx.pareto_k(result, data, num_samples=300, seed=1, progress=False)
    assert good.k < 0.7 and good.label == "good", good
    assert "good" in good.verdict and good.ess > 20
    assert not good.includes_locals

    # the same guide with every posterior scale shrunk tenfold: far too confident
    scales = [p for name, p in result.guide.global_guide.named_parameters()
              if name.startswith("scales.")]
    saved = [p.detach().clone() for p in scales]
    try:
        with torch.no_grad():
            for p in scales:
                p -= math.log(10.0)
        narrow = dx.pareto_k(result, data, num_samples=300, seed=1, progress=False)
    finally:
        with torch.no_grad():
            for p, value in zip(scales, saved):
                p.copy_(value)
    assert narrow.k > 0.7 and narrow.label in ("bad", "very bad"), narrow

    # a guide trained for a handful of steps from the k-means++ start (the closed-form
    # start would already be near the optimum)
    model = pm.MultimodalDPMixture(data.dims, num_components=2, representation="observed")
    short = pm.fit(model, data, guide=pm.MultimodalGuide(model, init="kmeans"),
                   num_epochs=5, batch_size=300, seed=0, device="cpu", progress=False)
    poor = dx.pareto_k(short, data, num_samples=300, seed=1, progress=False)
    assert poor.k > 0.7 and poor.label in ("bad", "very bad"), poor
    assert poor.elbo < good.elbo


def test_pareto_k_verdicts_follow_arviz_thresholds():
    assert dx.reliability.good_k_threshold(1000) == pytest.approx(1 - 1 / 3)
    assert dx.reliability.good_k_threshold(10**5) == 0.7
    assert dx.pareto_k_verdict(0.3, 1000)[0] == "good"
    assert dx.pareto_k_verdict(0.8, 1000)[0] == "bad"
    assert dx.pareto_k_verdict(1.5, 1000)[0] == "very bad"
    assert dx.pareto_k_verdict(float("nan"), 1000)[0] == "undefined"


def test_psis_k_matches_arviz_pareto_khat():
    from arviz_stats.base import array_stats

    rng = np.random.default_rng(0)
    log_ratios = rng.standard_t(3, size=2000)
    _, k = dx.reliability.psis(log_ratios)
    # (pareto_khat's own log_weights=True is not passed on to the tail fit in
    # arviz-stats 1.3, so give it the weights themselves)
    weights = np.exp(log_ratios - log_ratios.max())
    direct = array_stats.pareto_khat(weights, chain_axis=None, draw_axis=-1, r_eff=1.0,
                                     tail="right")
    assert k == pytest.approx(float(direct), abs=1e-8)


def test_effective_components_and_ari(latent_fit):
    result, data, tree = latent_fit
    ec = dx.effective_components(tree, ci_prob=0.9)
    assert 1.0 <= ec["lower"] <= ec["mean"] <= ec["upper"] <= result.model.num_components
    weights = tree["posterior"]["weights"].values.reshape(-1, 4)
    np.testing.assert_allclose(
        ec["draws"], pm.predictive.metrics.weights_perplexity(torch.as_tensor(weights)).numpy(),
        rtol=1e-4)
    plug_in = dx.responsibility_ari(result, data)
    assert plug_in["ari"] == pytest.approx(pm.evaluate(result, data)["ari"])
    from_tree = dx.responsibility_ari(tree)
    assert -1.0 <= from_tree["ari"] <= 1.0 and from_tree["components_used"] >= 1


def test_summary_prints_every_check(latent_fit):
    result, data, tree = latent_fit
    report = dx.summary(result, data, tree=tree)
    text = str(report)
    for words in ("Pareto k", "importance-sampling ESS", "PSIS-LOO y", "PSIS-LOO x_a",
                  "effective components", "adjusted Rand index", "accuracy", "ELBO"):
        assert words in text, words
    assert report.pareto_k.includes_locals
    numbers = report.to_dict()
    assert set(numbers["loo"]) == {"y", "x_a", "x_b"}
    assert numbers["ari"] == pytest.approx(pm.evaluate(result, data)["ari"])
    assert numbers["accuracy"] == pytest.approx(pm.evaluate(result, data)["accuracy"])
    assert "<table>" in report._repr_html_()
    import json

    json.dumps(numbers)


# ---------------------------------------------------------------------- plots
def test_plots_return_figures_and_save(latent_fit, observed_fit, tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    result, data, tree = latent_fit
    obs_result, obs_data, obs_tree = observed_fit
    made = [
        plots.plot_history(result, tmp_path / "h.png"),
        plots.plot_weights(tree, tmp_path / "w.png"),
        plots.plot_responsibilities(result, data, tmp_path / "r.png"),
        plots.plot_responsibilities(tree, path=tmp_path / "r2.png"),
        plots.plot_pmrl_spectrum(result, data, tmp_path / "s.png"),
        plots.plot_ppc(tree, path=tmp_path / "p.png"),
        plots.plot_ppc(tree, variable="y", path=tmp_path / "py.png"),
        plots.plot_ppc(obs_tree, feature="b[1]", path=tmp_path / "po.png"),
        plots.plot_importance_ratios(obs_tree, tmp_path / "i.png"),
    ]
    for fig in made:
        assert isinstance(fig, Figure)
        plt.close(fig)
    for name in ("h", "w", "r", "r2", "s", "p", "py", "po", "i"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name


def test_history_and_arm_plots_show_every_logged_key(tmp_path):
    import matplotlib.pyplot as plt

    history = pm.History(
        steps=[{"step": i, "epoch": i // 5, "loss": 10.0 / (i + 1), "pmrl/leading_sv": 1.2,
                "arm/phi/a": 0.1 * i, "arm/phi/b": 0.05 * i, "arm/loss": 0.01}
               for i in range(20)],
        epochs=[{"epoch": e, "loss": 1.0, "val_loss": 1.1} for e in range(4)])
    assert plots.history_keys(history) == ["pmrl/leading_sv", "arm/phi/a", "arm/phi/b",
                                           "arm/loss"]
    fig = plots.plot_history(history, tmp_path / "h.png")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[0] == "ELBO per example" and "arm/phi/b" in titles
    plt.close(fig)
    fig = plots.plot_modality_contributions(history, tmp_path / "arm.png")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["a", "b"]
    plt.close(fig)
    with pytest.raises(ValueError, match="ARM"):
        plots.plot_modality_contributions(pm.History(steps=[{"step": 0, "loss": 1.0}]))


def test_singular_values_of_normalised_representations():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(10, 3, 5))
    s = plots.singular_values(z)
    assert s.shape == (10, 3)
    np.testing.assert_allclose((s**2).sum(-1), 3.0, rtol=1e-10)
    aligned = np.repeat(rng.normal(size=(4, 1, 5)), 3, axis=1) * np.array([1, 2, 3])[:, None]
    np.testing.assert_allclose(plots.singular_values(aligned)[:, 0], math.sqrt(3))


# ---------------------------------------------------------------------- command
def test_run_diagnose_on_a_cli_run(tmp_path, capsys):
    from pyro_mm.cli.diagnose import run_diagnose
    from pyro_mm.cli.main import main

    run = tmp_path / "run"
    assert main(["train", "--dataset", "synthetic", "--epochs", "1", "--latent-dim", "2",
                 "--components", "3", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    code = run_diagnose(run, out=tmp_path / "d.nc", plots=tmp_path / "figs", num_samples=30,
                        progress=False)
    assert code == 0
    out = capsys.readouterr().out
    assert "Pareto k" in out and "PSIS-LOO y" in out and "N=400" in out
    tree = dx.load_datatree(tmp_path / "d.nc")
    assert tree["log_likelihood"].sizes["example"] == 400
    for name in ("history", "weights", "responsibilities", "importance_ratios", "ppc_y"):
        assert (tmp_path / "figs" / f"{name}.png").is_file(), name


def test_pyro_mm_diagnose_command(tmp_path, capsys):
    """`pyro-mm diagnose RUN_DIR --out FILE.nc` prints the summary and writes the tree;
    a missing run folder is a clean error (exit code 2)."""
    from pyro_mm.cli.main import main

    run = tmp_path / "run"
    assert main(["train", "--dataset", "synthetic", "--epochs", "1", "--latent-dim", "2",
                 "--components", "3", "--out", str(run), "--quiet"]) == 0
    assert main(["diagnose", str(run), "--out", str(tmp_path / "d.nc"), "--num-samples",
                 "30", "--quiet"]) == 0
    assert "Pareto k" in capsys.readouterr().out
    assert (tmp_path / "d.nc").is_file()
    assert main(["diagnose", str(tmp_path / "nothing")]) == 2


def _ratio_tree(log_ratios):
    import xarray as xr

    stats = xr.Dataset({"lp": (("chain", "draw"), log_ratios[None]),
                        "log_q": (("chain", "draw"), np.zeros((1, log_ratios.size)))})
    return xr.DataTree.from_dict({"sample_stats": stats})


def test_pareto_k_calls_a_tail_of_one_draw_very_bad_whatever_the_fit_returns(monkeypatch):
    rng = np.random.default_rng(0)
    tame = rng.normal(size=150)
    assert dx.pareto_k(_ratio_tree(tame)).label == "good"
    dominated = tame.copy()
    dominated[7] += 40.0     # one draw outweighs the other 149 together (e^40 > 149 e^3)
    # The tail fit on such ratios can return anything; a latent model's gave k = 0.12
    # beside an importance-sampling ESS of 1.0. Make psis return that.
    real = dx.reliability.psis
    monkeypatch.setattr(dx.reliability, "psis", lambda r: (real(r)[0], 0.12))
    out = dx.pareto_k(_ratio_tree(dominated))
    assert out.k == float("inf") and out.label == "very bad" and out.ess < 2
    assert dx.pareto_k(_ratio_tree(tame)).k == 0.12    # the guard leaves other ratios be
