"""ARM: contribution estimators with known answers, reinforcement of a weak modality,
re-sampling, logging, errors, save/load and the command line."""

import math

import numpy as np
import pyro
import pytest
import torch

import pyro_mm as pm
from pyro_mm.cli import main
from pyro_mm.factors import ARM
from pyro_mm.factors.arm import example_scores, label_entropy, modality_contributions
from pyro_mm.training import validation_metrics


@pytest.fixture(scope="module")
def strong_weak_noise():
    """``strong`` carries the label, ``noise`` carries nothing."""
    data = pm.datasets.make_synthetic(
        num_examples=600, num_clusters=3, dims={"strong": 6, "noise": 6},
        signal={"strong": 2.0, "noise": 0.0}, noise=1.0, seed=0)
    return data.split(0.3, seed=0)


def _fit(train, factors=(), epochs=20, seed=0, **kwargs):
    pyro.set_rng_seed(seed)
    model = pm.MultimodalDPMixture(train.dims, num_classes=train.num_classes, latent_dim=4,
                                   num_components=6, factors=list(factors),
                                   **kwargs.pop("model", {}))
    return pm.fit(model, train, num_epochs=epochs, batch_size=64, seed=seed,
                  progress=False, **kwargs)


def test_a_useless_modality_contributes_nothing_and_the_informative_one_most(
        strong_weak_noise):
    train, test = strong_weak_noise
    result = _fit(train)
    contributions = modality_contributions(result, test)
    assert abs(contributions["noise"]) < 0.05
    assert contributions["strong"] == max(contributions.values())
    assert contributions["strong"] > 0.5
    assert contributions.phi_mi <= contributions.label_entropy
    assert "noise" in str(contributions) and "phi_MI" in str(contributions)


def test_arm_raises_the_weak_modality_contribution():
    """Imbalanced data: ``strong`` and a weak but informative ``weak`` modality."""
    data = pm.datasets.make_synthetic(num_examples=900, num_clusters=4,
                                      dims={"strong": 8, "weak": 8},
                                      signal={"strong": 1.2, "weak": 0.8}, seed=0)
    train, test = data.split(0.3, seed=0)
    runs = {}
    for name, factors in (("base", []), ("arm", [ARM(weight=0.5)])):
        pyro.set_rng_seed(0)
        model = pm.MultimodalDPMixture(train.dims, num_classes=4, latent_dim=8,
                                       num_components=10, factors=factors)
        result = pm.fit(model, train, num_epochs=20, batch_size=64, seed=0, progress=False,
                        val_data=test)
        runs[name] = (modality_contributions(result, test), result.metrics["accuracy"])
    (base, base_acc), (arm, arm_acc) = runs["base"], runs["arm"]
    assert arm["weak"] > base["weak"] + 0.03
    assert arm["strong"] - arm["weak"] < base["strong"] - base["weak"]
    assert arm_acc >= base_acc - 0.03


def test_joint_contribution_never_exceeds_the_label_entropy(strong_weak_noise):
    train, test = strong_weak_noise
    result = _fit(train, epochs=1)
    contributions = modality_contributions(result, test)
    entropy = label_entropy(result.model.class_frequencies)
    assert contributions.label_entropy == pytest.approx(float(entropy))
    assert entropy == pytest.approx(math.log(3), abs=0.01)
    assert contributions.phi_mi <= contributions.label_entropy


def test_history_logs_every_arm_value(strong_weak_noise):
    train, _ = strong_weak_noise
    result = _fit(train, factors=[ARM(weight=0.1)], epochs=1)
    row = result.history.steps[-1]
    for key in ("arm/phi/strong", "arm/phi/noise", "arm/phi_mi", "arm/balance",
                "arm/fusion_weight/strong", "arm/fusion_weight/noise"):
        assert key in row and math.isfinite(row[key]), key
    weights = torch.tensor([row["arm/fusion_weight/strong"], row["arm/fusion_weight/noise"]])
    assert weights.sum() == pytest.approx(2.0, abs=1e-4)
    # The weaker (noise) modality is amplified.
    assert row["arm/fusion_weight/noise"] > row["arm/fusion_weight/strong"]


@pytest.mark.parametrize("fusion", ["concat", "dp"])
def test_fusion_weights_move_only_in_training(strong_weak_noise, fusion):
    train, test = strong_weak_noise
    result = _fit(train, factors=[ARM(weight=0.1)], epochs=1, model={"fusion": fusion})
    weights = result.model.modality_weights.clone()
    assert not torch.allclose(weights, torch.ones(2))
    validation_metrics(result.model, result.guide, result.model.prepare(test))
    pm.evaluate(result, test)
    assert torch.equal(result.model.modality_weights, weights)


def test_smooth_balance_bounds_the_hard_gap():
    phi = torch.tensor([0.1, 0.9, 0.4])
    hard = ARM().balance(phi)
    assert hard == pytest.approx(0.8)
    smooth = ARM(smooth=0.05).balance(phi)
    assert hard <= smooth <= hard + 2 * 0.05 * math.log(3)


def test_resampling_prefers_examples_with_weak_contributions(strong_weak_noise):
    train, _ = strong_weak_noise
    factor = ARM(weight=0.1, resample=True, resample_strength=2.0)
    result = _fit(train, factors=[factor], epochs=3)
    assert [row["resampled"] for row in result.history.epochs] == [0.0, 1.0, 1.0]
    assert all(math.isfinite(row["loss"]) for row in result.history.steps)
    batch = result.model.prepare(train)
    result.model.eval()
    scores = example_scores(result.model, result.guide, batch)
    weights = factor.sampling_weights(result.model, result.guide, batch)
    assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    low = scores <= scores.quantile(0.25)
    high = scores >= scores.quantile(0.75)
    assert weights[low].mean() > 2 * weights[high].mean()
    order = torch.argsort(scores)
    assert torch.all(weights[order][:-1] >= weights[order][1:] - 1e-7)


def test_arm_needs_two_modalities_and_labels():
    with pytest.raises(ValueError, match="two modalities"):
        pm.MultimodalDPMixture({"a": 3}, num_classes=2, factors=[ARM()])
    with pytest.raises(ValueError, match="num_classes"):
        pm.MultimodalDPMixture({"a": 3, "b": 2}, factors=[ARM()])
    with pytest.raises(ValueError, match="fusion_momentum"):
        ARM(fusion_momentum=2.0)


def test_save_and_load_keep_the_factor_and_its_fusion_weights(tmp_path, strong_weak_noise):
    train, test = strong_weak_noise
    result = _fit(train, factors=[ARM(weight=0.2, smooth=0.1, resample=True)], epochs=2)
    result.save(tmp_path / "run")
    loaded = pm.load(tmp_path / "run")
    (factor,) = loaded.model.factors
    assert isinstance(factor, ARM)
    assert factor.config() == result.model.factors[0].config()
    assert torch.equal(loaded.model.modality_weights, result.model.modality_weights)
    np.testing.assert_allclose(pm.predict(loaded, test)["probs"],
                               pm.predict(result, test)["probs"], atol=1e-6)


def test_cli_trains_with_arm_and_pmrl_and_reports_contributions(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--views", "fou", "mor", "--epochs", "1", "--latent-dim", "4",
                 "--out", str(run), "--quiet", "--factor", "arm:weight=0.1,smooth=0.5",
                 "--factor", "pmrl:weight=0.1"]) == 0
    assert main(["evaluate", str(run), "--contributions"]) == 0
    out = capsys.readouterr().out
    assert "phi_m" in out and "fou" in out and "mor" in out
    assert main(["train", "--factor", "arm:nope=1", "--out", str(tmp_path / "x")]) == 2
    assert main(["train", "--factor", "magic", "--out", str(tmp_path / "y")]) == 2
