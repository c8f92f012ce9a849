"""Training end to end: recovery of known clusters, agreement with scikit-learn,
supervised accuracy on mfeat, checkpoints, exact resume, non-finite losses."""

import math

import numpy as np
import pyro
import pytest
import torch

import pyro_mm as pm
from pyro_mm.factors import AuxiliaryFactor


@pytest.fixture(scope="module")
def four_clusters():
    data = pm.datasets.make_synthetic(num_examples=1000, num_clusters=4,
                                      dims={"a": 6, "b": 6}, signal=3.0, noise=0.5, seed=1)
    return data.split(0.25, seed=0)


def _fit(model, data, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("seed", 0)
    return pm.fit(model, data, **kwargs)


def test_observed_mixture_recovers_four_clusters(four_clusters):
    train, test = four_clusters
    model = pm.MultimodalDPMixture(train.dims, num_components=20, representation="observed")
    result = _fit(model, train, num_epochs=80, batch_size=128, learning_rate=0.02)
    metrics = pm.evaluate(result, test)
    assert metrics["ari"] >= 0.9
    assert 3.0 <= metrics["effective_components"] <= 5.0


def test_amortised_encoders_recover_four_clusters(four_clusters):
    train, test = four_clusters
    model = pm.MultimodalDPMixture(train.dims, latent_dim=4, num_components=20)
    result = _fit(model, train, num_epochs=80, batch_size=128, learning_rate=0.02)
    assert pm.evaluate(result, test)["ari"] >= 0.8


def test_held_out_log_likelihood_matches_scikit_learn():
    sklearn_mixture = pytest.importorskip("sklearn.mixture")
    data = pm.datasets.make_synthetic(num_examples=2000, num_clusters=4,
                                      dims={"a": 4, "b": 4}, signal=2.0, noise=0.6,
                                      noise_spread=0.4, seed=0)
    train, test = data.split(0.25, seed=0)
    stack = lambda d: np.concatenate([d.features[m] for m in d.modalities], axis=1)  # noqa: E731
    reference = sklearn_mixture.BayesianGaussianMixture(
        n_components=20, covariance_type="diag", max_iter=500, random_state=0,
        weight_concentration_prior_type="dirichlet_process").fit(stack(train))
    theirs = reference.score(stack(test))
    model = pm.MultimodalDPMixture(train.dims, num_components=20, representation="observed")
    result = _fit(model, train, num_epochs=60, batch_size=256, learning_rate=0.02)
    ours = pm.evaluate(result, test)["log_likelihood"]
    assert abs(ours - theirs) <= 0.02 * abs(theirs)


def test_supervised_mfeat_two_views_is_accurate():
    data = pm.datasets.load_mfeat(views=("fou", "pix"))
    train, test = data.split(test_fraction=0.2, seed=0)
    model = pm.MultimodalDPMixture(train.dims, num_classes=10, latent_dim=16,
                                   num_components=20)
    result = _fit(model, train, num_epochs=15, batch_size=128, val_data=test)
    assert result.metrics["accuracy"] >= 0.95
    assert len(result.history.epochs) == 15
    assert all(math.isfinite(row["loss"]) for row in result.history.steps)


def test_predict_returns_documented_shapes(tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=5)
    result = _fit(model, tiny_data, num_epochs=1)
    out = pm.predict(result, tiny_data)
    assert out["probs"].shape == (120, 3)
    assert np.allclose(out["probs"].sum(1), 1, atol=1e-5)
    assert out["responsibilities"].shape == (120, 5)
    assert out["latent_mean"].shape == (120, 2, 2)
    independent = pm.MultimodalDPMixture(tiny_data.dims, latent_dim=2, num_components=5,
                                         mixture="independent")
    out = pm.predict(_fit(independent, tiny_data, num_epochs=1), tiny_data)
    assert out["responsibilities"].shape == (120, 2, 5)


def test_missing_modalities_train_and_predict(tiny_data):
    data = pm.datasets.make_synthetic(num_examples=150, num_clusters=3,
                                      dims={"a": 4, "b": 3}, missing_rate=0.3, seed=2)
    model = pm.MultimodalDPMixture(data.dims, num_classes=3, latent_dim=2, num_components=4)
    result = _fit(model, data, num_epochs=2, val_data=data)
    assert all(math.isfinite(v) for v in result.metrics.values())
    observed = pm.MultimodalDPMixture(data.dims, num_components=4, representation="observed")
    assert math.isfinite(pm.evaluate(_fit(observed, data, num_epochs=2), data)["log_likelihood"])


def test_save_and_load_round_trip(tmp_path, tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=4, fusion="dp", alpha="learned")
    result = _fit(model, tiny_data, num_epochs=2)
    result.save(tmp_path / "run")
    loaded = pm.load(tmp_path / "run")
    for key in ("probs", "responsibilities", "latent_mean"):
        np.testing.assert_allclose(pm.predict(loaded, tiny_data)[key],
                                   pm.predict(result, tiny_data)[key], rtol=1e-6, atol=1e-6)
    assert loaded.model.config() == result.model.config()
    assert loaded.history.steps == result.history.steps
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoint.pt", "config.json", "history.json", "metrics.json"]


def test_resume_continues_exactly(tmp_path, tiny_data):
    def build():  # network weights are drawn at construction: same seed, same start
        pyro.set_rng_seed(7)
        return pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                      num_components=4)

    straight = _fit(build(), tiny_data, num_epochs=4, batch_size=32, val_data=tiny_data,
                    early_stopping=10)
    _fit(build(), tiny_data, num_epochs=2, batch_size=32, val_data=tiny_data,
         early_stopping=10, run_dir=tmp_path / "half")
    resumed = _fit(build(), tiny_data, num_epochs=4, batch_size=32, val_data=tiny_data,
                   early_stopping=10, resume_from=tmp_path / "half")
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for key, value in straight.guide.state_dict().items():
        assert torch.equal(value, resumed.guide.state_dict()[key]), key
    assert [r["loss"] for r in straight.history.steps] == [
        r["loss"] for r in resumed.history.steps]


def test_malicious_checkpoint_in_a_run_folder_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (marker.touch, ())

    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "pyro_mm.checkpoint", "version": 1, "payload": Exploit()},
               run / "checkpoint.pt")
    with pytest.raises(pm.CheckpointError, match="refused"):
        pm.load(run)
    assert not marker.exists()


class _Poison(AuxiliaryFactor):
    """Returns NaN on the calls listed in ``bad`` (or on every call after ``after``)."""

    site_name = "poison"

    def __init__(self, bad=(), after=None):
        super().__init__(weight=1.0)
        self.bad, self.after, self.calls = set(bad), after, 0

    def model_loss(self, context):
        self.calls += 1
        loss = context.z.new_zeros(context.batch.size)
        if self.calls in self.bad or (self.after is not None and self.calls > self.after):
            loss = loss + math.nan
        return loss


def test_a_transient_non_finite_loss_is_skipped(tiny_data):
    poison = _Poison(bad={3})
    model = pm.MultimodalDPMixture(tiny_data.dims, latent_dim=2, num_components=3,
                                   factors=[poison])
    result = _fit(model, tiny_data, num_epochs=2, batch_size=40)
    assert len(result.history.steps) == 2 * 3 - 1
    assert all(math.isfinite(r["loss"]) for r in result.history.steps)
    assert all(torch.isfinite(v).all() for v in result.model.state_dict().values())


def test_persistent_non_finite_loss_stops_with_last_good_state(tmp_path, tiny_data,
                                                              monkeypatch):
    monkeypatch.setitem(pm.factors.FACTORS, "poison", _Poison)  # so the run can be saved
    # Call 1 is the warm-up pass; epoch 0 is steps 2-4; then every step is NaN.
    model = pm.MultimodalDPMixture(tiny_data.dims, latent_dim=2, num_components=3,
                                   factors=[_Poison(after=4)])
    with pytest.raises(pm.TrainingDivergedError, match="non-finite"):
        pm.fit(model, tiny_data, num_epochs=5, batch_size=40, progress=False, seed=0,
               run_dir=tmp_path / "run", max_recoveries=2)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved["model_state"][key]), key


def test_early_stopping_restores_the_best_epoch(tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=3)
    result = _fit(model, tiny_data, num_epochs=200, batch_size=120, val_data=tiny_data,
                  early_stopping=2, learning_rate=0.3)
    assert result.config["stopped_early"]
    assert result.config["epochs_run"] < 200
    assert result.config["best_epoch"] == min(
        range(len(result.history.epochs)), key=lambda e: result.history.epochs[e]["val_loss"])


def test_fit_rejects_bad_arguments(tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims)
    with pytest.raises(ValueError, match="batch_size"):
        pm.fit(model, tiny_data, batch_size=0)
    with pytest.raises(ValueError, match="learning_rate"):
        pm.fit(model, tiny_data, learning_rate=-1.0)
    other = pm.MultimodalData({"a": np.zeros((5, 9)), "b": np.zeros((5, 3))})
    with pytest.raises(pm.DataValidationError, match="'a'"):
        pm.fit(model, other)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            pm.fit(model, tiny_data, device="cuda")


def test_fit_does_not_mutate_user_data(tiny_data):
    before = {k: v.copy() for k, v in tiny_data.features.items()}
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=3)
    _fit(model, tiny_data, num_epochs=1)
    for key, value in tiny_data.features.items():
        np.testing.assert_array_equal(value, before[key])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_the_gpu_matches_the_api(tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=4)
    result = _fit(model, tiny_data, num_epochs=2, device="cuda", val_data=tiny_data)
    assert result.model.device.type == "cuda"
    assert next(result.guide.parameters()).device.type == "cuda"
    assert pm.predict(result, tiny_data)["probs"].shape == (120, 3)


def test_kl_warm_up_scales_the_representation_terms(tiny_data):
    from pyro import poutine

    model = pm.MultimodalDPMixture(tiny_data.dims, latent_dim=2, num_components=3)
    result = _fit(model, tiny_data, num_epochs=2, kl_warmup_epochs=2, batch_size=60)
    assert len(result.history.steps) == 4
    batch = model.prepare(tiny_data)
    guide_trace = poutine.trace(result.guide).get_trace(batch, None, 0.25)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        batch, None, 0.25)
    assert model_trace.nodes["z"]["scale"] == pytest.approx(0.25)
    assert guide_trace.nodes["z"]["scale"] == pytest.approx(0.25)
    assert model_trace.nodes["x_a"]["scale"] == 1.0


@pytest.mark.parametrize("options", [{"elbo": "meanfield"}, {"num_particles": 2},
                                     {"guide": "map"}])
def test_other_inference_options_train(tiny_data, options):
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=3)
    if options.pop("guide", None) == "map":
        options["guide"] = pm.MultimodalGuide(model, global_guide="map")
    result = _fit(model, tiny_data, num_epochs=2, **options)
    assert all(math.isfinite(r["loss"]) for r in result.history.steps)
    assert "accuracy" in pm.evaluate(result, tiny_data)


def test_label_log_likelihood_ignores_unlabelled_examples(tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=3)
    result = _fit(model, tiny_data, num_epochs=3)
    labels = tiny_data.labels.copy()
    hidden = labels != 0
    labels[hidden] = -1
    partial = pm.MultimodalData(tiny_data.features, labels=labels, num_classes=3)
    per_example = pm.log_likelihood(model, result.guide, model.prepare(tiny_data))
    expected = float(per_example[torch.as_tensor(~hidden)].mean())
    assert pm.evaluate(result, partial)["log_likelihood"] == pytest.approx(expected, rel=1e-5)


def test_prepare_refuses_unstandardised_models(tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims)
    with pytest.raises(ValueError, match="fit_standardization"):
        model.prepare(tiny_data)


def test_resume_from_a_folder_with_a_given_guide(tmp_path, tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=3)
    _fit(model, tiny_data, num_epochs=1, run_dir=tmp_path / "run")
    fresh = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=3)
    guide = pm.MultimodalGuide(fresh)
    resumed = _fit(fresh, tiny_data, num_epochs=2, guide=guide, resume_from=tmp_path / "run")
    assert resumed.guide is guide
    assert [row["epoch"] for row in resumed.history.epochs] == [0, 1]


def test_an_unsaveable_factor_fails_before_training(tmp_path, tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims, latent_dim=2, num_components=3,
                                   factors=[_Poison()])
    with pytest.raises(ValueError, match="not a registered factor"):
        pm.fit(model, tiny_data, num_epochs=50, run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


class _ValidationSpy(AuxiliaryFactor):
    """Records whether Pyro's argument validation is on while the model runs."""

    site_name = "spy"

    def __init__(self):
        super().__init__(weight=0.0)
        self.seen = []

    def model_loss(self, context):
        self.seen.append(pyro.infer.util.is_validation_enabled())
        return context.z.new_zeros(context.z.shape[0])


@pytest.mark.parametrize("validate_args", [False, True])
def test_argument_validation_during_steps_is_an_option(tiny_data, validate_args):
    spy = _ValidationSpy()
    model = pm.MultimodalDPMixture(tiny_data.dims, latent_dim=2, num_components=3,
                                   factors=[spy])
    before = pyro.infer.util.is_validation_enabled()
    _fit(model, tiny_data, num_epochs=1, batch_size=40, validate_args=validate_args)
    # The last three calls are the three SVI steps (before them: initialisation and
    # warm-up passes, under Pyro's own setting).
    assert spy.seen[-3:] == [validate_args] * 3
    assert pyro.infer.util.is_validation_enabled() == before
