"""The Pyro model and guide: site shapes, scaling, masks, composition with user code."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

import pyro_mm as pm
from pyro_mm.model.guide import MultimodalGuide


def _prepared(data, **kwargs):
    model = pm.MultimodalDPMixture(data.dims, **kwargs)
    model.fit_standardization(data)
    batch = model.prepare(data)
    guide = MultimodalGuide(model)
    guide.initialize(model, batch, torch.Generator().manual_seed(0))
    return model, guide, batch


def _traces(model, guide, batch, subsample=None):
    guide_trace = poutine.trace(guide).get_trace(batch, subsample)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        batch, subsample)
    return model_trace, guide_trace


@pytest.mark.parametrize("mixture", ["joint", "independent"])
@pytest.mark.parametrize("fusion", ["concat", "dp", "experts"])
def test_latent_site_shapes(tiny_data, mixture, fusion):
    model, guide, batch = _prepared(tiny_data, num_classes=3, latent_dim=2,
                                    num_components=5, mixture=mixture, fusion=fusion)
    idx = torch.arange(10)
    model_trace, _ = _traces(model, guide, batch, idx)
    model_trace.compute_log_prob()
    nodes = model_trace.nodes
    assert nodes["sticks"]["value"].shape == (4,)
    assert nodes["component_loc_a"]["value"].shape == (5, 2)
    assert nodes["component_scale_b"]["value"].shape == (5, 2)
    assert nodes["z"]["value"].shape == (10, 2, 2)
    assert nodes["z"]["log_prob"].shape == (10,)
    assert nodes["x_a"]["log_prob"].shape == (10,)
    assert nodes["y"]["log_prob"].shape == (10,)
    assert torch.isfinite(nodes["z"]["log_prob"]).all()


def test_observed_site_shapes(tiny_data):
    model, guide, batch = _prepared(tiny_data, num_components=4, representation="observed")
    model_trace, guide_trace = _traces(model, guide, batch)
    assert "z" not in model_trace.nodes
    assert model_trace.nodes["x"]["value"].shape == (len(tiny_data), 7)
    sampled = {name for name in guide_trace.stochastic_nodes
               if not name.endswith("_unconstrained")}  # AutoNormal's auxiliary sites
    assert sampled == set(guide.global_sites)


def test_minibatch_scaling_is_n_over_b(tiny_data):
    model, guide, batch = _prepared(tiny_data, latent_dim=2, num_components=3)
    idx = torch.arange(12)
    model_trace, _ = _traces(model, guide, batch, idx)
    assert model_trace.nodes["z"]["scale"] == pytest.approx(len(tiny_data) / 12)
    assert model_trace.nodes["x_a"]["scale"] == pytest.approx(len(tiny_data) / 12)
    assert model_trace.nodes["sticks"]["scale"] == 1.0


def test_learned_alpha_is_a_latent_site(tiny_data):
    model, guide, batch = _prepared(tiny_data, latent_dim=2, num_components=3,
                                    alpha="learned")
    model_trace, guide_trace = _traces(model, guide, batch)
    assert "alpha" in model_trace.nodes and "alpha" in guide_trace.nodes
    assert guide_trace.nodes["alpha"]["value"] > 0


def test_missing_modality_never_reaches_a_likelihood(tiny_data):
    """Garbage in a masked-out row changes no loss and no gradient."""
    masks = {"a": torch.arange(len(tiny_data)) % 3 != 0}
    data = pm.MultimodalData(tiny_data.features, labels=tiny_data.labels,
                             masks={k: v.numpy() for k, v in masks.items()})
    model, guide, batch = _prepared(data, num_classes=3, latent_dim=2, num_components=3)
    poisoned = dict(batch.features)
    poisoned["a"] = torch.where(batch.masks[:, :1], batch.features["a"],
                                torch.full_like(batch.features["a"], 1e6))
    losses = []
    for features in (batch.features, poisoned):
        pyro.set_rng_seed(3)
        b = pm.TensorBatch(features, batch.masks, batch.labels, batch.label_mask)
        losses.append(Trace_ELBO().differentiable_loss(model, guide, b))
    assert torch.isfinite(losses[0])
    assert torch.equal(losses[0], losses[1])


def test_missing_modality_posterior_comes_from_the_mixture(tiny_data):
    model, guide, batch = _prepared(tiny_data, latent_dim=2, num_components=3)
    masks = batch.masks.clone()
    masks[:5, 0] = False
    part = pm.TensorBatch(batch.features, masks)
    loc, scale = guide.encode(part, guide.point_estimate())
    own_loc, _ = guide.encode_present(part)
    assert torch.allclose(loc[5:], own_loc[5:])
    assert not torch.allclose(loc[:5, 0], own_loc[:5, 0])
    point = guide.point_estimate()
    hull = point["component_loc_a"]
    # A moment-matched mixture mean lies inside the components' bounding box.
    assert (loc[:5, 0] >= hull.min(0).values - 1e-5).all()
    assert (loc[:5, 0] <= hull.max(0).values + 1e-5).all()
    assert (scale[:5, 0] > 0).all()


def test_semi_supervised_unlabelled_examples_only_drop_the_label_term(tiny_data):
    labels = tiny_data.labels.copy()
    labels[::2] = -1
    data = pm.MultimodalData(tiny_data.features, labels=labels, num_classes=3)
    model, guide, batch = _prepared(data, num_classes=3, latent_dim=2, num_components=3)
    model_trace, _ = _traces(model, guide, batch)
    model_trace.compute_log_prob()
    y = model_trace.nodes["y"]
    assert torch.equal(y["log_prob"] == 0, ~batch.label_mask)


def test_user_model_composes_with_ours(tiny_data):
    """A user's own model calls ours and adds a site; ordinary Pyro SVI trains both."""
    model, guide, batch = _prepared(tiny_data, num_classes=3, latent_dim=2,
                                    num_components=3)

    def user_model(batch):
        z = model(batch)
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
        pyro.factor("user_penalty", -(z.mean() - shift) ** 2)
        return z

    def user_guide(batch):
        guide(batch)
        loc = pyro.param("shift_loc", torch.tensor(0.5))
        pyro.sample("shift", dist.Normal(loc, 0.1))

    trace = poutine.trace(user_model).get_trace(batch)
    assert {"shift", "user_penalty", "z", "y", "sticks"} <= set(trace.nodes)
    svi = SVI(user_model, user_guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    before = {k: v.detach().clone() for k, v in model.state_dict().items()
              if k.startswith("label_head.classifier")}
    losses = [svi.step(batch) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    after = {k: v for k, v in model.state_dict().items()
             if k.startswith("label_head.classifier")}
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert pyro.param("shift_loc").item() != 0.5


def test_two_models_in_one_session_do_not_share_parameters(tiny_data):
    """Pyro's global store would hand a second same-named module the first's weights."""
    first, first_guide, batch = _prepared(tiny_data, num_classes=3, latent_dim=2,
                                          num_components=3)
    second, second_guide, _ = _prepared(tiny_data, num_classes=3, latent_dim=2,
                                        num_components=3)
    Trace_ELBO().differentiable_loss(first, first_guide, batch)
    Trace_ELBO().differentiable_loss(second, second_guide, batch)
    assert not torch.equal(first.classifier[0].weight,
                           second.classifier[0].weight)
    assert first_guide.global_guide.locs.sticks is not second_guide.global_guide.locs.sticks
    names = set(pyro.get_param_store().keys())
    assert any(n.startswith(first._pyro_name + ".") for n in names)
    assert any(n.startswith(second._pyro_name + ".") for n in names)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_components": 1}, "num_components"),
    ({"mixture": "shared"}, "mixture"),
    ({"representation": "raw"}, "representation"),
    ({"representation": "observed", "reconstruct": True}, "reconstruct"),
    ({"fusion": "sum"}, "fusion"),
    ({"alpha": -1.0}, "alpha"),
    ({"num_classes": 1}, "num_classes"),
    ({"prior_scale": 0.0}, "prior_scale"),
])
def test_bad_model_arguments_name_the_argument(tiny_data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pm.MultimodalDPMixture(tiny_data.dims, **kwargs)


def test_prepare_standardises_with_stored_training_statistics(tiny_data):
    train, test = tiny_data.split(0.5, seed=0)
    model = pm.MultimodalDPMixture(train.dims, representation="observed")
    model.fit_standardization(train)
    batch = model.prepare(train)
    assert torch.allclose(batch.features["a"].mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(batch.features["a"].std(0, unbiased=False), torch.ones(4), atol=1e-4)
    loc, scale = model.standardization.statistics("a")
    expected = (torch.tensor(test.features["a"]) - loc) / scale
    assert torch.allclose(model.prepare(test).features["a"], expected)


def test_model_to_moves_hyperparameters_as_buffers(tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims)
    names = dict(model.named_buffers())
    for key in ("alpha", "prior_loc_scale", "prior_log_scale",
                "standardization.feature_loc_a", "label_head.modality_weights"):
        assert key in names


def _experts_model():
    """Three modalities, ``D = 2``, 4 classes, ``fusion="experts"``, with an unequal
    class prior so that the prior correction cannot pass unnoticed."""
    torch.manual_seed(0)
    model = pm.MultimodalDPMixture({"a": 3, "b": 2, "c": 1}, num_classes=4, latent_dim=2,
                                   num_components=3, fusion="experts", hidden=(5,))
    model.class_frequencies.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    return model


def _experts_inputs():
    z = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[True, True, True], [True, False, True],
                         [False, False, True], [False, True, False]])
    return z, mask


def _product(model, z, present, weights=(1.0, 1.0, 1.0)):
    """Brute force: ``log pi + sum_{m in S} w_m [log q_m(y | z_m) - log pi]``."""
    log_pi = torch.log(model.class_frequencies)
    heads = model.classifier.heads
    return log_pi + sum(weights[j] * (torch.log_softmax(heads[j](z[j]), -1) - log_pi)
                        for j in range(3) if present[j])


def test_experts_logits_are_the_product_of_the_present_modalities_heads():
    model = _experts_model()
    z, mask = _experts_inputs()
    expected = torch.stack([_product(model, z[i], mask[i]) for i in range(4)])
    params = model.sample_globals()
    torch.testing.assert_close(model.class_logits(z, params, mask), expected,
                               rtol=0, atol=1e-6)
    # One modality present: exactly that head's own prediction.
    single = torch.log_softmax(model.class_logits(z, params, mask)[2], -1)
    own = torch.log_softmax(model.classifier.heads[2](z[2, 2]), -1)
    torch.testing.assert_close(single, own, rtol=0, atol=1e-6)
    # An absent slot's value is never read, not even a non-finite one.
    garbage = torch.where(mask.unsqueeze(-1), z, torch.full_like(z, float("nan")))
    torch.testing.assert_close(model.class_logits(garbage, params, mask), expected,
                               rtol=0, atol=1e-6)
    # All present (mask None) multiplies every head.
    full = torch.stack([_product(model, z[i], [True] * 3) for i in range(4)])
    torch.testing.assert_close(model.class_logits(z, params), full, rtol=0, atol=1e-6)


def test_experts_dropping_a_modality_removes_exactly_its_term():
    model = _experts_model()
    z, mask = _experts_inputs()
    params = model.sample_globals()
    labels = torch.tensor([0, 1, 2, 3])
    for j in range(3):
        kept = mask.clone()
        kept[:, j] = False
        expected = torch.stack([torch.log_softmax(_product(model, z[i], kept[i]), -1)[labels[i]]
                                for i in range(4)])
        torch.testing.assert_close(model.label_log_prob(z, params, labels, mask, drop=j),
                                   expected, rtol=0, atol=1e-6)
    # Example 1 lacks b, so dropping b changes nothing there; example 0 has b.
    dropped = model.label_log_prob(z, params, labels, mask, drop=1)
    full = model.label_log_prob(z, params, labels, mask)
    assert dropped[1] == full[1] and dropped[0] != full[0]


def test_experts_heads_are_fitted_alone_and_the_product_passes_no_gradient():
    """The factor ``y_experts`` is ``sum over present, labelled cells of log q_m(y | z_m)``;
    the ``y`` site scores the product but sends no gradient to the heads or to ``z``."""
    model = _experts_model()
    z, mask = _experts_inputs()
    z.requires_grad_(True)
    labels = torch.tensor([0, 1, 2, -1])  # the last label is missing
    batch = pm.MultimodalData.from_arrays(
        {"a": np.zeros((4, 3)), "b": np.zeros((4, 2)), "c": np.zeros((4, 1))},
        labels=np.array([0, 1, 2, -1]), num_classes=4,
        masks={m: mask[:, j].numpy() for j, m in enumerate("abc")})
    model.fit_standardization(batch)
    model.class_frequencies.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    part = model.prepare(batch)
    with pyro.poutine.trace() as tr:
        model.label_head.observe(z, model.sample_globals(), part)
    heads = model.classifier.heads
    expected = torch.stack([
        sum(torch.log_softmax(heads[j](z[i, j]), -1)[labels[i]] for j in range(3)
            if mask[i, j]) if labels[i] >= 0 else torch.tensor(0.0) for i in range(4)])
    factor = tr.trace.nodes["y_experts"]["fn"].log_factor
    torch.testing.assert_close(factor, expected, rtol=0, atol=1e-6)
    logits = tr.trace.nodes["y"]["fn"].base_dist.logits
    assert not logits.requires_grad
    torch.testing.assert_close(logits - logits.logsumexp(-1, keepdim=True),
                               torch.stack([torch.log_softmax(_product(model, z[i], mask[i]), -1)
                                            for i in range(4)]), rtol=0, atol=1e-6)


def test_experts_config_round_trip_keeps_the_classifier():
    model = _experts_model()
    model.modality_weights = torch.tensor([0.5, 1.5, 1.0])
    copy = pm.MultimodalDPMixture.from_config(model.config())
    assert copy.config()["fusion"] == "experts"
    copy.load_state_dict(model.state_dict())
    z, mask = _experts_inputs()
    params = model.sample_globals()
    torch.testing.assert_close(copy.class_logits(z, params, mask),
                               model.class_logits(z, params, mask), rtol=0, atol=0)
    # The modality weights (ARM's dynamic fusion) temper each term.
    expected = _product(model, z[0], [True] * 3, weights=(0.5, 1.5, 1.0))
    torch.testing.assert_close(copy.class_logits(z, params, mask)[0], expected,
                               rtol=0, atol=1e-6)


def test_classifier_prior_is_a_gaussian_log_density_of_the_weights():
    model = pm.MultimodalDPMixture({"a": 3, "b": 2}, num_classes=3, latent_dim=2,
                                   num_components=3, fusion="experts",
                                   representation="observed", hidden=(),
                                   classifier_prior_scale=0.5)
    with pyro.poutine.trace() as tr:
        model.label_head.classifier_prior()
    weights = [h[-1].weight if isinstance(h, torch.nn.Sequential) else h.weight
               for h in model.classifier.heads]
    expected = sum(torch.distributions.Normal(0.0, 0.5).log_prob(w).sum()
                   - w.numel() * torch.distributions.Normal(0.0, 0.5).log_prob(
                       torch.tensor(0.0)) for w in weights)
    torch.testing.assert_close(tr.trace.nodes["classifier_prior"]["fn"].log_factor,
                               expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="classifier_prior_scale"):
        pm.MultimodalDPMixture({"a": 3}, num_classes=3, classifier_prior_scale=0)


def test_classifier_prior_shrinks_the_weights_fit_trains():
    """The prior reaches the weights through ``fit``'s optimiser: a tight one leaves
    the heads' weights far smaller than no prior does, from the same start."""
    data = pm.datasets.make_synthetic(num_examples=200, num_clusters=3,
                                      dims={"a": 4, "b": 3}, seed=0)
    norms = {}
    for sigma in (None, 0.01):
        pyro.set_rng_seed(0)
        model = pm.MultimodalDPMixture(data.dims, num_classes=data.num_classes,
                                       num_components=3, representation="observed",
                                       fusion="experts", hidden=(),
                                       classifier_prior_scale=sigma)
        result = pm.fit(model, data, num_epochs=30, batch_size=25, progress=False)
        norms[sigma] = sum(float(p.detach().norm()) for n, p in
                           result.model.classifier.named_parameters() if n.endswith("weight"))
    assert norms[0.01] < 0.2 * norms[None]
