"""ARM: contribution estimators with known answers, reinforcement of a weak modality,
re-sampling, logging, errors, save/load and the command line."""

import math

import numpy as np
import pyro
import pytest
import torch

import pyro_mm as pm
from pyro_mm.cli.main import main
from pyro_mm.factors import ARM
from pyro_mm.factors.arm import example_scores
from pyro_mm.factors.contributions import LeaveOneOut, label_entropy, modality_contributions
from pyro_mm.train.monitoring import validation_metrics


@pytest.fixture(scope="module")
def strong_weak_noise():
    """``strong`` carries the label, ``noise`` carries nothing."""
    data = pm.datasets.make_synthetic(
        num_examples=600, num_clusters=3, dims={"strong": 6, "noise": 6},
        signal={"strong": 2.0, "noise": 0.0}, noise=1.0, seed=0)
    return data.split(0.3, seed=0)


def _fit(train, factors=(), epochs=20, seed=0, **kwargs):
    pyro.set_rng_seed(seed)
    # fusion "concat" unless a test says otherwise: ARM's thresholds here were measured
    # with it; "experts" counts redundant evidence twice (pyro_mm.model.fusion).
    model = pm.MultimodalDPMixture(train.dims, num_classes=train.num_classes, latent_dim=4,
                                   num_components=6, factors=list(factors),
                                   **{"fusion": "concat", **kwargs.pop("model", {})})
    return pm.fit(model, train, num_epochs=epochs, batch_size=64, seed=seed,
                  progress=False, **kwargs)


def test_a_useless_modality_contributes_nothing_and_the_informative_one_most(
        strong_weak_noise, assert_bounded):
    train, test = strong_weak_noise
    result = _fit(train)
    contributions = modality_contributions(result, test)
    assert abs(contributions["noise"]) < 0.05
    assert contributions["strong"] == max(contributions.values())
    assert contributions["strong"] > 0.5
    assert contributions.phi_mi <= contributions.label_entropy
    assert "noise" in str(contributions) and "phi_MI" in str(contributions)
    assert contributions.unimodal is None  # no ARM heads to measure it with
    assert_bounded(contributions)


def _with_and_without_arm(data, factor):
    """Same split, seed and budget; returns ``{"base"|"arm": (contributions, fused
    accuracy, linear-probe accuracy on z_weak)}`` on the held-out split."""
    from sklearn.linear_model import LogisticRegression

    train, test = data.split(0.25, seed=0)
    j = train.modalities.index("weak")
    runs = {}
    for name, factors in (("base", []), ("arm", [factor])):
        pyro.set_rng_seed(0)
        model = pm.MultimodalDPMixture(train.dims, num_classes=4, latent_dim=8,
                                       num_components=10, factors=factors)
        result = pm.fit(model, train, num_epochs=20, batch_size=64, seed=0, progress=False)
        held_out, fitted = pm.predict(result, test), pm.predict(result, train)
        probe = LogisticRegression(max_iter=3000).fit(fitted["latent_mean"][:, j],
                                                      train.labels)
        runs[name] = (modality_contributions(result, test),
                      float((held_out["probs"].argmax(1) == test.labels).mean()),
                      probe.score(held_out["latent_mean"][:, j], test.labels))
    return runs


def test_arm_reinforces_a_weak_modality_without_costing_fused_accuracy(assert_bounded):
    """``weak`` carries as much label information as ``strong``, but mirrored (each
    cluster at +-centre), so it is slow to learn and the fused classifier leans on
    ``strong``; its representation's linear probe is near chance without ARM."""
    data = pm.datasets.make_synthetic(num_examples=900, num_clusters=4,
                                      dims={"strong": 8, "weak": 8},
                                      signal={"strong": 1.0, "weak": 1.0},
                                      mirrored=["weak"], seed=0)
    runs = _with_and_without_arm(data, ARM())
    (base, base_acc, base_probe), (arm, arm_acc, arm_probe) = runs["base"], runs["arm"]
    # What z_weak adds given z_strong is bounded by the data; it rises a little (0.16 to
    # 0.22 nats over 5 seeds in benchmarks/arm.py), its probe a lot.
    assert arm["weak"] > base["weak"]
    assert_bounded(arm)
    assert_bounded(base)
    assert arm_probe > base_probe + 0.2
    assert arm_acc >= base_acc - 0.01


def test_leave_one_out_loss_weights_each_prediction_by_the_modalities_that_make_it():
    model = pm.MultimodalDPMixture({"a": 3, "b": 2, "c": 2}, num_classes=3, latent_dim=2,
                                   factors=[ARM()])
    model.modality_weights = torch.tensor([0.5, 1.0, 1.5])
    without = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -4.0, -0.1]])
    valid = torch.tensor([[True, True, True], [True, False, True]])
    loo = LeaveOneOut(torch.zeros(2), without, valid)
    u = torch.tensor([(1.0 + 1.5) / 2, (0.5 + 1.5) / 2, (0.5 + 1.0) / 2])
    expected = torch.stack([-(u * without[0]).sum() / 3,
                            -(u[0] * without[1, 0] + u[2] * without[1, 2]) / 3])
    torch.testing.assert_close(ARM.leave_one_out_loss(model, loo), expected)


def test_no_arm_term_can_improve_by_making_a_prediction_worse(strong_weak_noise):
    """Every ARM term is a non-negative combination of label log-likelihoods of fitted
    predictions: its gradient with respect to each of them is <= 0 (raising any
    prediction's log-likelihood never raises the loss), and the full prediction ``l``
    (whose loss would be lowered by failing without a modality) does not enter it."""
    train, _ = strong_weak_noise
    result = _fit(train, factors=[ARM()], epochs=1)
    model = result.model
    model.modality_weights = torch.tensor([0.3, 1.7])
    full = torch.randn(8, requires_grad=True)
    without = torch.randn(8, 2, requires_grad=True)
    valid = torch.rand(8, 2) < 0.8
    ARM.leave_one_out_loss(model, LeaveOneOut(full, without, valid)).sum().backward()
    assert full.grad is None
    assert bool((without.grad <= 0).all()) and bool((without.grad[valid] < 0).all())
    log_q = torch.randn(8, 2, requires_grad=True)
    ARM.unimodal_loss(model, log_q, valid).sum().backward()
    assert bool((log_q.grad <= 0).all())


def test_unimodal_loss_weights_each_observed_modality_by_its_fusion_weight():
    model = pm.MultimodalDPMixture({"a": 3, "b": 2}, num_classes=3, latent_dim=2,
                                   factors=[ARM()])
    model.modality_weights = torch.tensor([0.5, 1.5])
    log_q = torch.tensor([[-1.0, -2.0], [-0.5, -4.0]])
    observed = torch.tensor([[True, True], [True, False]])
    loss = ARM.unimodal_loss(model, log_q, observed)
    torch.testing.assert_close(loss, torch.tensor([0.5 * 1.0 + 1.5 * 2.0, 0.5 * 0.5]))


def test_unimodal_heads_are_built_for_the_model_only_when_reinforcing():
    dims = {"a": 3, "b": 2}
    (factor,) = pm.MultimodalDPMixture(dims, num_classes=5, latent_dim=4,
                                       factors=[ARM(reinforce=2.0)]).factors
    assert [tuple(h.weight.shape) for h in factor.heads] == [(5, 4), (5, 4)]
    log_q = factor.unimodal_log_prob(torch.randn(7, 2, 4), torch.arange(7) % 5)
    assert log_q.shape == (7, 2) and bool((log_q < 0).all())
    (off,) = pm.MultimodalDPMixture(dims, num_classes=5, factors=[ARM(reinforce=0)]).factors
    assert len(off.heads) == 0
    with pytest.raises(ValueError, match="reinforce"):
        ARM(reinforce=-1.0)


@pytest.mark.parametrize("reinforce", [0.0, 3.0])
def test_reinforcement_is_its_own_per_example_factor(strong_weak_noise, reinforce):
    train, _ = strong_weak_noise
    result = _fit(train, factors=[ARM(reinforce=reinforce)], epochs=1)
    model, guide = result.model, result.guide
    batch = model.prepare(train)
    subsample = torch.arange(16)
    guide_trace = pyro.poutine.trace(guide).get_trace(batch, subsample)
    trace = pyro.poutine.trace(pyro.poutine.replay(model, guide_trace)).get_trace(
        batch, subsample)
    if not reinforce:
        assert "arm_reinforce" not in trace.nodes
        return
    site = trace.nodes["arm_reinforce"]
    assert site["fn"].batch_shape == (16,)
    log_q = model.factors[0].unimodal_log_prob(trace.nodes["z"]["value"], batch.labels[:16])
    expected = reinforce * (model.modality_weights * log_q).sum(-1)
    torch.testing.assert_close(site["fn"].log_prob(site["value"]), expected)


def test_unimodal_bounds_separate_the_informative_modality_from_noise(strong_weak_noise,
                                                                     assert_bounded):
    train, test = strong_weak_noise
    result = _fit(train, factors=[ARM()], epochs=15)
    last = [row for row in result.history.steps if row["epoch"] == 14]
    assert last
    entropy = math.log(3)  # >= H(y) of any 3-class label distribution
    strong = np.mean([row["arm/unimodal/strong"] for row in last])
    noise = np.mean([row["arm/unimodal/noise"] for row in last])
    assert all(row["arm/unimodal/strong"] <= entropy + 1e-6 for row in last)
    assert strong > 0.5
    assert abs(noise) < 0.15
    assert all(math.isfinite(row["arm/reinforce"]) for row in last)
    held_out = modality_contributions(result, test)
    assert held_out.unimodal["strong"] > 0.5
    assert abs(held_out.unimodal["noise"]) < 0.15
    assert max(held_out.unimodal.values()) <= held_out.label_entropy
    assert "I(y; z_m) >=" in str(held_out)
    assert_bounded(held_out)
    assert held_out.to_dict()["unimodal"] == held_out.unimodal


def test_joint_contribution_never_exceeds_the_label_entropy(strong_weak_noise,
                                                            assert_bounded):
    train, test = strong_weak_noise
    result = _fit(train, epochs=1)
    contributions = modality_contributions(result, test)
    entropy = label_entropy(result.model.class_frequencies)
    assert contributions.label_entropy == pytest.approx(float(entropy))
    assert entropy == pytest.approx(math.log(3), abs=0.01)
    assert_bounded(contributions)


def test_history_logs_every_arm_value(strong_weak_noise):
    train, _ = strong_weak_noise
    result = _fit(train, factors=[ARM(weight=0.1)], epochs=1)
    row = result.history.steps[-1]
    for key in ("arm/phi/strong", "arm/phi/noise", "arm/phi_mi", "arm/loss",
                "arm/fusion_weight/strong", "arm/fusion_weight/noise"):
        assert key in row and math.isfinite(row[key]), key
    weights = torch.tensor([row["arm/fusion_weight/strong"], row["arm/fusion_weight/noise"]])
    assert weights.sum() == pytest.approx(2.0, abs=1e-4)
    # The weaker (noise) modality is amplified.
    assert row["arm/fusion_weight/noise"] > row["arm/fusion_weight/strong"]


@pytest.mark.parametrize("fusion", ["concat", "dp", "experts"])
def test_fusion_weights_move_only_in_training(strong_weak_noise, fusion):
    train, test = strong_weak_noise
    result = _fit(train, factors=[ARM(weight=0.1)], epochs=1, model={"fusion": fusion})
    weights = result.model.modality_weights.clone()
    assert not torch.allclose(weights, torch.ones(2))
    validation_metrics(result.model, result.guide, result.model.prepare(test))
    pm.evaluate(result, test)
    assert torch.equal(result.model.modality_weights, weights)


def test_dp_gate_of_an_example_with_nothing_present_is_concat_and_keeps_gradients_finite():
    """ARM's leave-one-out of an example's only view leaves no modality present; the
    ``dp`` gate of that row is 1 everywhere (as ``concat``), with finite gradients."""
    from pyro_mm.model.fusion import DPGateFusion

    log_density = torch.tensor([[-1.0, -3.0, -math.inf], [-math.inf] * 3],
                               requires_grad=True)
    gate = DPGateFusion().gate(torch.zeros(2, 3, 4), log_density)
    expected = 3 * torch.softmax(torch.tensor([-1.0, -3.0, -math.inf]) / 4, -1)
    torch.testing.assert_close(gate[0], expected)
    assert torch.equal(gate[1], torch.ones(3))
    gate.pow(2).sum().backward()
    assert torch.isfinite(log_density.grad).all()


def test_arm_with_dp_fusion_trains_on_data_with_missing_views():
    """Examples with one present view made every step's gradients NaN through the dp
    gate (the fit used to stop with TrainingDivergedError after its first epoch)."""
    data = pm.datasets.make_synthetic(num_examples=120, num_clusters=3,
                                      dims={"a": 4, "b": 3, "c": 5}, missing_rate=0.3,
                                      seed=0)
    assert (sum(mask.astype(int) for mask in data.masks.values()) == 1).any()
    result = _fit(data, factors=[ARM()], epochs=3, model={"fusion": "dp"})
    assert all(math.isfinite(row["loss"]) for row in result.history.steps)
    assert torch.isfinite(result.model.modality_weights).all()
    assert math.isfinite(pm.evaluate(result, data)["log_likelihood"])


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
    result = _fit(train, factors=[ARM(weight=0.2, resample=True)], epochs=2)
    result.save(tmp_path / "run")
    loaded = pm.load(tmp_path / "run")
    (factor,) = loaded.model.factors
    assert isinstance(factor, ARM)
    assert factor.config() == result.model.factors[0].config()
    assert torch.equal(loaded.model.modality_weights, result.model.modality_weights)
    for name, value in result.model.factors[0].heads.state_dict().items():
        assert torch.equal(factor.heads.state_dict()[name], value), name
    np.testing.assert_allclose(pm.predict(loaded, test)["probs"],
                               pm.predict(result, test)["probs"], atol=1e-6)


def test_cli_trains_with_arm_and_pmrl_and_reports_contributions(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--views", "fou", "mor", "--epochs", "1", "--latent-dim", "4",
                 "--out", str(run), "--quiet", "--factor", "arm:weight=0.5,reinforce=1",
                 "--factor", "pmrl:weight=0.1"]) == 0
    assert main(["evaluate", str(run), "--contributions"]) == 0
    out = capsys.readouterr().out
    assert "phi_m" in out and "fou" in out and "mor" in out
    assert main(["train", "--factor", "arm:nope=1", "--out", str(tmp_path / "x")]) == 2
    assert main(["train", "--factor", "magic", "--out", str(tmp_path / "y")]) == 2
