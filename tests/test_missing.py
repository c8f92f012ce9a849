"""Missing modalities end to end: masking at random, imputation with known answers,
Bayesian model averaging, ``pyro.infer.Predictive``, and masks that really mask."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import Predictive, Trace_ELBO

import pyro_mm as pm
from pyro_mm.cli.main import main
from pyro_mm.errors import DataValidationError

NOISE = 0.3


def _synthetic(n=300, seed=0):
    return pm.datasets.make_synthetic(num_examples=n, num_clusters=3,
                                      dims={"a": 6, "b": 4, "c": 3}, seed=seed)


# ---------------------------------------------------------------------- mask_at_random
def test_mask_at_random_hides_exact_count_keeps_floor_and_copies():
    data = _synthetic()
    before = {m: v.copy() for m, v in data.features.items()}
    for fraction, keep in ((0.0, 1), (0.3, 1), (0.5, 1), (2 / 3, 1), (0.2, 2)):
        masked = data.mask_at_random(fraction, seed=1, keep_at_least=keep)
        observed = np.stack(list(masked.masks.values()), 1)
        assert (~observed).sum() == round(fraction * observed.size)
        assert observed.sum(1).min() >= keep
        for j, m in enumerate(data.modalities):   # observed values are untouched
            np.testing.assert_array_equal(masked.features[m][observed[:, j]],
                                          before[m][observed[:, j]])
        np.testing.assert_array_equal(masked.labels, data.labels)
    assert all(v.all() for v in data.masks.values())    # the original is not mutated
    a = data.mask_at_random(0.4, seed=3).masks
    b = data.mask_at_random(0.4, seed=3).masks
    c = data.mask_at_random(0.4, seed=4).masks
    assert all(np.array_equal(a[m], b[m]) for m in a)
    assert not all(np.array_equal(a[m], c[m]) for m in a)


def test_mask_at_random_counts_cells_already_missing():
    data = _synthetic().mask_at_random(0.3, seed=0)
    again = data.mask_at_random(0.5, seed=1)
    old, new = (np.stack(list(d.masks.values()), 1) for d in (data, again))
    assert not (new & ~old).any()                      # nothing is un-hidden
    assert (~new).sum() == round(0.5 * new.size)
    with pytest.raises(DataValidationError, match="missing already"):
        data.mask_at_random(0.1)


@pytest.mark.parametrize("fraction, keep, match", [
    (-0.1, 1, r"fraction: must be in \[0, 1\]"), (1.5, 1, r"must be in \[0, 1\]"),
    (0.7, 1, "at most 0.667"), (0.5, 2, "keep_at_least=2"),
    (0.1, 0, "keep_at_least: must be between 1 and 3"), (0.1, 4, "between 1 and 3")])
def test_mask_at_random_rejects_impossible_requests(fraction, keep, match):
    with pytest.raises(DataValidationError, match=match):
        _synthetic(60).mask_at_random(fraction, keep_at_least=keep)


def test_example_with_every_modality_missing_is_rejected_by_position():
    x = np.zeros((5, 2))
    masks = {"a": np.array([1, 1, 1, 0, 1], bool), "b": np.array([1, 0, 1, 0, 1], bool)}
    with pytest.raises(DataValidationError, match=r"no observed modality \(first rows \[3\]"):
        pm.MultimodalData({"a": x, "b": x}, masks=masks)


# ---------------------------------------------------------------------- imputation
@pytest.fixture(scope="module")
def linear_map():
    """``b = A a + N(0, 0.3^2)`` with ``a`` 1-D from five overlapping clusters; an
    observed-representation model (the mixture on the features) fitted on 1000
    examples with 20 % of cells missing; 500 held-out examples with ``b`` hidden."""
    rng = np.random.default_rng(0)
    n = 1500
    centres = rng.normal(0, 2, size=(5, 1))
    a = centres[rng.integers(5, size=n)] + 0.5 * rng.normal(size=(n, 1))
    A = rng.normal(0, 0.8, size=(3, 1))
    b = a @ A.T + NOISE * rng.normal(size=(n, 3))
    train = pm.MultimodalData({"a": a[:1000], "b": b[:1000]}).mask_at_random(0.2, seed=0)
    test = pm.MultimodalData({"a": a[1000:], "b": b[1000:]},
                             masks={"b": np.arange(500) % 5 != 0})  # 400 b's hidden
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(train.dims, num_components=20, representation="observed")
    result = pm.fit(model, train, num_epochs=30, batch_size=100, progress=False)
    return result, test, b[1000:]


def test_imputation_of_a_linear_map_reaches_the_noise_level_and_is_calibrated(linear_map):
    result, test, truth = linear_map
    out = pm.impute(result, test, num_samples=100, quantiles=(0.05, 0.95), seed=0)
    hidden = ~test.masks["b"]
    mean, q = out["b_mean"].values[hidden], out["b_quantiles"].values[:, hidden]
    rmse = np.sqrt(((mean - truth[hidden]) ** 2).mean())
    assert rmse <= 1.2 * NOISE, rmse
    coverage = ((truth[hidden] >= q[0]) & (truth[hidden] <= q[1])).mean()
    assert 0.85 <= coverage <= 0.95, coverage
    assert np.all(out["b_sd"].values[hidden] > 0.8 * NOISE)


def test_impute_returns_nan_where_present_and_validates(linear_map):
    result, test, _ = linear_map
    out = pm.impute(result, test, num_samples=8, seed=1)
    hidden = ~test.masks["b"]
    assert out["b_mean"].dims == ("example", "feature_b")
    assert np.isnan(out["b_mean"].values[~hidden]).all()
    assert np.isfinite(out["b_sd"].values[hidden]).all()
    assert np.isnan(out["a_mean"].values).all() and not out["a_missing"].values.any()
    assert "b_quantiles" not in out
    again = pm.impute(result, test, num_samples=8, seed=1)
    np.testing.assert_array_equal(out["b_mean"].values, again["b_mean"].values)
    for kwargs, match in (({"num_samples": 0}, "num_samples"),
                          ({"quantiles": (0.5, 1.0)}, "quantiles"),
                          ({"chunk_size": -1}, "chunk_size")):
        with pytest.raises(ValueError, match=match):
            pm.impute(result, test, **kwargs)


def test_impute_latent_model_and_cli(tmp_path, capsys):
    data = _synthetic(200).mask_at_random(0.3, seed=0)
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(data.dims, num_classes=3, latent_dim=4,
                                   num_components=6, hidden=(32,))
    pm.fit(model, data, num_epochs=2, batch_size=100, progress=False, run_dir=tmp_path / "run")
    np.savez(tmp_path / "gaps.npz", labels=data.labels, **data.features,
             **{f"{m}_mask": v for m, v in data.masks.items()})
    out = tmp_path / "imputed.nc"
    assert main(["impute", str(tmp_path / "run"), "--data", str(tmp_path / "gaps.npz"),
                 "--out", str(out), "--num-samples", "5"]) == 0
    import xarray as xr

    with xr.open_dataset(out) as ds:
        for j, m in enumerate(data.modalities):
            missing = ~data.masks[m]
            assert np.isfinite(ds[f"{m}_quantiles"].values[:, missing]).all()
            assert np.isnan(ds[f"{m}_mean"].values[~missing]).all()
    assert "missing cells" in capsys.readouterr().out
    no_decoder = pm.MultimodalDPMixture(data.dims, reconstruct=False, num_classes=3)
    with pytest.raises(ValueError, match="decoder"):
        pm.impute(pm.FitResult(no_decoder, None, pm.History(), {}), data)


def test_impute_warns_where_a_decoder_predicts_far_outside_the_training_data():
    import warnings

    data = _synthetic(200).mask_at_random(0.3, seed=0)
    result = _fit_small(data, epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm.impute(result, data, num_samples=4)
    assert not [w for w in caught if "training standard deviations" in str(w.message)]
    # What a latent model trained far past its stopping point does (issue 25's mfeat
    # run: imputed means thousands of training sds out): its decoder, shifted here.
    m = data.modalities[1]
    last = [layer for layer in result.model.decoders[m].modules()
            if isinstance(layer, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.bias[0] += 50.0
    hidden = int((~data.masks[m]).sum())
    with pytest.warns(UserWarning, match=rf"'{m}': {hidden} of {hidden * data.dims[m]} "
                                         r"cells, largest [\d.]+ sd"):
        out = pm.impute(result, data, num_samples=4)
    assert np.isfinite(out[f"{m}_mean"].values[~data.masks[m]]).all()   # still reported


# ---------------------------------------------------------------------- prediction
def _fit_small(data, global_guide="meanfield", epochs=3, fusion="concat"):
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(data.dims, num_classes=3, latent_dim=4,
                                   num_components=6, hidden=(32,), fusion=fusion)
    guide = pm.MultimodalGuide(model, global_guide=global_guide)
    return pm.fit(model, data, guide=guide, num_epochs=epochs, batch_size=100,
                  progress=False)


def test_model_averaging_with_a_map_guide_equals_plug_in():
    data = _synthetic(200).mask_at_random(0.3, seed=0)
    result = _fit_small(data, "map")
    plug_in = pm.predict(result, data)
    averaged = pm.predict(result, data, num_samples=4)
    for key in ("probs", "responsibilities", "latent_mean"):
        np.testing.assert_allclose(averaged[key], plug_in[key], atol=1e-6)
    assert np.all(averaged["probs_sd"] < 1e-6)
    meanfield = pm.predict(_fit_small(data, fusion="experts"), data, num_samples=4)
    # The "experts" classifier reads no global parameter, so only the responsibilities
    # vary across global draws; with "concat" (the default) the fill reads them.
    assert meanfield["responsibilities_sd"].max() > 0
    np.testing.assert_allclose(meanfield["probs_sd"], 0.0, atol=1e-6)
    concat = pm.predict(_fit_small(data, fusion="concat"), data, num_samples=4)
    assert concat["probs_sd"].max() > 0
    np.testing.assert_allclose(meanfield["probs"].sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="num_samples"):
        pm.predict(result, data, num_samples=0)


def test_predictive_samples_labels_and_missing_features():
    data = _synthetic(200)
    result = _fit_small(data, epochs=10)
    model, guide = result.model, result.guide
    gaps = pm.MultimodalData(data.features, masks={"b": np.arange(200) % 2 == 0})
    batch = model.prepare(gaps)                         # no labels, b half missing
    out = Predictive(model, guide=guide, num_samples=5)(batch)
    assert out["y"].shape == (5, 200) and out["x_b"].shape == (5, 200, 4)
    seen = batch.masks[:, 1]
    assert torch.equal(out["x_b"][:, seen], batch.features["b"][seen].expand(5, -1, -1))
    assert out["x_b"][:, ~seen].std(0).min() > 0       # drawn, not a placeholder
    labels = np.where(np.arange(200) < 100, data.labels, -1)
    half = model.prepare(pm.MultimodalData(data.features, labels=labels))
    y = Predictive(model, guide=guide, num_samples=5, return_sites=["y"])(half)["y"]
    assert torch.equal(y[:, :100], half.labels[:100].expand(5, -1))
    assert (y[:, 100:] == torch.as_tensor(data.labels[100:])).float().mean() > 0.5


# ---------------------------------------------------------------------- masks mask
def _garbage(batch, seed):
    """The batch with every missing cell (and missing label) overwritten by noise."""
    gen = torch.Generator().manual_seed(seed)
    features = {m: torch.where(batch.masks[:, j:j + 1], x,
                               1e3 * torch.randn(x.shape, generator=gen))
                for j, (m, x) in enumerate(batch.features.items())}
    labels = torch.where(batch.label_mask, batch.labels,
                         torch.randint(3, batch.labels.shape, generator=gen))
    return pm.TensorBatch(features, batch.masks, labels, batch.label_mask)


@pytest.mark.parametrize("representation", ["latent", "observed"])
def test_values_in_masked_cells_never_influence_the_fit(representation):
    data = _synthetic(200).mask_at_random(0.4, seed=0)
    labels = np.where(np.arange(200) % 3 == 0, -1, data.labels)
    data = pm.MultimodalData(data.features, labels=labels, masks=data.masks)
    runs = []
    for seed in (1, 2):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model = pm.MultimodalDPMixture(data.dims, num_classes=3, latent_dim=4,
                                       num_components=6, hidden=(16,),
                                       representation=representation)
        model.fit_standardization(data)
        batch = _garbage(model.prepare(data), seed)
        guide = pm.MultimodalGuide(model)
        guide.initialize(model, batch, torch.Generator().manual_seed(0))
        loss_fn = Trace_ELBO()(model, guide)
        loss_fn(batch, torch.arange(50))
        optim = torch.optim.Adam(loss_fn.parameters(), lr=0.01)
        losses = []
        for step in range(5):
            optim.zero_grad()
            loss = loss_fn(batch, torch.arange(step * 40, step * 40 + 40))
            loss.backward()
            optim.step()
            losses.append(float(loss.detach()))
        runs.append((losses, [p.detach().clone() for p in loss_fn.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


@pytest.mark.filterwarnings("error")
def test_half_the_views_missing_trains_without_warnings():
    data = _synthetic(600, seed=1)
    train, test = data.split(0.25, seed=0)
    train, test = train.mask_at_random(0.5, seed=0), test.mask_at_random(0.5, seed=1)
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(train.dims, num_classes=3, latent_dim=4,
                                   num_components=8, hidden=(32,))
    result = pm.fit(model, train, num_epochs=15, batch_size=100, progress=False)
    losses = result.history.series("loss", per="epochs")
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert pm.evaluate(result, test)["accuracy"] > 0.8
