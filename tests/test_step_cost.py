"""The step's speed-ups (issue 16) change no result.

Reference loss trajectories: the first eight step losses of ``pm.fit`` (two epochs of
four minibatches) for five model variants, computed with the code before the
speed-ups (commit 7146b83, extracted with ``git archive 7146b83 pyro_mm`` and run with
the same seed and settings as :func:`_losses` below, one torch thread). The batched
mixture densities sum in a different order, so the values agree to float tolerance, not
bit for bit.
"""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

import pyro_mm as pm
from pyro_mm.model._pyro_module import without_param_statements
from pyro_mm.model.distributions import MultimodalMixture
from pyro_mm.train.optim import finite_gradients

REFERENCE = {
    "default": [30.411094, 30.041152, 30.439003, 28.292957, 29.267314, 27.013497,
                24.252541, 24.684416],
    "arm": [39.095003, 38.993266, 39.763981, 36.868502, 38.622648, 35.894613,
            32.621057, 33.023142],
    "dp": [30.427291, 30.0322, 30.411989, 28.277612, 29.252179, 27.004976, 24.269879,
           24.734133],
    "observed": [11.436799, 11.073135, 11.278681, 11.913497, 11.79251, 9.813602,
                 9.454329, 9.933515],
    "studentt": [29.147351, 27.324974, 29.916199, 27.061676, 27.407463, 24.537435,
                 24.386011, 23.399882],
}
VARIANTS = {"default": {}, "arm": {"arm": True}, "dp": {"fusion": "dp"},
            # the prior the recorded trajectory was fitted with (observed features now
            # default to the inverse-gamma prior of the component variances)
            "observed": {"representation": "observed", "scale_prior": "lognormal",
                         "scale_floor": 0.05, "resolution_floor": False}, "studentt": {"component": "studentt"}}


def _data():
    return pm.datasets.make_synthetic(240, num_clusters=3, dims={"a": 5, "b": 4, "c": 3},
                                      missing_rate=0.2, seed=0)


def _model(data, arm=False, **kwargs):
    factors = [pm.factors.ARM()] if arm else []
    return pm.MultimodalDPMixture(data.dims, num_classes=3, latent_dim=3, num_components=5,
                                  hidden=(16,), factors=factors, **kwargs)


def _losses(**kwargs):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    data = _data()
    model = _model(data, **kwargs)
    result = pm.fit(model, data, num_epochs=2, batch_size=60, device="cpu", progress=False,
                    seed=0)
    return [row["loss"] for row in result.history.steps]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_loss_trajectory_matches_the_code_before_the_speedups(variant):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses = _losses(**VARIANTS[variant])
    finally:
        torch.set_num_threads(threads)
    assert losses == pytest.approx(REFERENCE[variant], rel=1e-5, abs=1e-5)


class _CountParams(Messenger):
    def __init__(self):
        super().__init__()
        self.names = []

    def _pyro_param(self, msg):
        self.names.append(msg["name"])


def _prepared():
    data = _data()
    model = _model(data, arm=True)
    model.fit_standardization(data)
    batch = model.prepare(data)
    guide = pm.MultimodalGuide(model)
    guide.initialize(model, batch)
    return model, guide, batch


def test_each_weight_gets_one_param_statement_per_call_and_none_when_quiet():
    model, guide, batch = _prepared()
    with _CountParams() as counter:
        poutine.trace(model).get_trace(batch, torch.arange(32))
    weights = {name for name, _ in model.named_parameters()}
    assert len(counter.names) == len(set(counter.names))  # once each, not per access
    assert len(counter.names) == len(weights)  # and every weight is registered
    with _CountParams() as quiet, without_param_statements():
        poutine.trace(model).get_trace(batch, torch.arange(32))
    assert quiet.names == []


def test_classic_svi_still_trains_every_weight():
    model, guide, batch = _prepared()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO())
    svi.step(batch, torch.arange(32))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    svi.step(batch, torch.arange(32, 64))
    changed = [k for k, v in model.named_parameters() if not torch.equal(before[k], v)]
    # every decoder, the classifier and ARM's heads move
    assert {".".join(k.split(".")[:2]) for k in changed} >= {
        "decoders.a", "label_head.classifier", "factors.0"}


def test_the_mixture_computes_each_values_densities_once(monkeypatch):
    model, guide, batch = _prepared()
    calls = []
    original = MultimodalMixture._compute_unmasked
    monkeypatch.setattr(MultimodalMixture, "_compute_unmasked",
                        lambda self, value: calls.append(1) or original(self, value))
    model.train()
    guide_trace = poutine.trace(guide).get_trace(batch, torch.arange(32))
    before = len(calls)
    trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(batch, torch.arange(32))
    trace.compute_log_prob()
    # z with gradients (the prior) and z detached (the fills: the label head's and ARM's
    # three leave-one-out predictions), instead of once per use
    assert len(calls) - before == 2


def test_finite_grads_check_sees_nan_and_inf_anywhere():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    assert finite_gradients(params)  # no gradients yet
    params[0].grad = torch.ones(3)
    params[1].grad = torch.full((2, 2), 3e38)
    assert finite_gradients(params)  # huge but finite
    for bad in (math.nan, math.inf, -math.inf):
        params[1].grad = torch.tensor([[0.0, bad], [0.0, 0.0]])
        assert not finite_gradients(params)


def test_fits_elbo_equals_pyros_with_the_same_gradients():
    from pyro.infer import Trace_ELBO

    from pyro_mm.train.elbo import TraceELBO

    model, guide, batch = _prepared()
    model.eval()  # ARM would move its fusion weights between the two evaluations
    losses, grads = [], []
    for elbo in (Trace_ELBO(), TraceELBO()):
        pyro.set_rng_seed(3)
        loss_fn = elbo(model, guide)
        loss = loss_fn(batch, torch.arange(40))
        params = list(loss_fn.parameters())
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, params, allow_unused=True))
    assert float(losses[1].detach()) == pytest.approx(float(losses[0].detach()), rel=1e-6)
    for a, b in zip(*grads):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fused_clipped_adam_updates_exactly_as_clipped_adam():
    from pyro.optim.clipped_adam import ClippedAdam

    from pyro_mm.train.optim import FusedClippedAdam

    torch.manual_seed(0)
    shapes = [(5, 3), (7,), (2, 4, 3), (1,)]
    plain = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    fused = [torch.nn.Parameter(p.detach().clone()) for p in plain]
    optimisers = (ClippedAdam(plain, lr=0.01, clip_norm=1.0, lrd=0.999),
                  FusedClippedAdam(fused, lr=0.01, clip_norm=1.0, lrd=0.999))
    for step in range(30):
        grads = [3 * torch.randn(s) for s in shapes]
        for params, optimiser in zip((plain, fused), optimisers):
            for i, (p, g) in enumerate(zip(params, grads)):
                p.grad = None if (step % 7 == 3 and i == 1) else g.clone()  # skipped
            optimiser.step()
    assert all(torch.equal(a, b) for a, b in zip(plain, fused))
    states = [o.state_dict()["state"] for o in optimisers]
    assert states[0][1]["step"] == states[1][1]["step"] < 30
    assert all(torch.equal(states[0][i][k], states[1][i][k])
               for i in range(len(shapes)) for k in ("exp_avg", "exp_avg_sq"))


@pytest.mark.parametrize("mode", [False, True])
def test_denormals_are_flushed_inside_the_block_and_the_mode_restored(mode):
    from pyro_mm.runtime.devices import flush_denormals, flushing_denormals

    if not torch.set_flush_denormal(mode):
        pytest.skip("this CPU cannot flush subnormals")
    try:
        assert flushing_denormals() is mode
        tiny = torch.tensor(1e-39)  # a float32 subnormal
        assert float(tiny * 1.0) != 0.0 or mode
        with flush_denormals():
            assert flushing_denormals()
            assert float(tiny * 1.0) == 0.0
        assert flushing_denormals() is mode
    finally:
        torch.set_flush_denormal(False)


def test_a_training_step_leaves_the_floating_point_mode_as_it_found_it():
    from pyro_mm.runtime.devices import flushing_denormals

    data = pm.datasets.make_synthetic(num_examples=60, num_clusters=2,
                                      dims={"a": 3, "b": 2}, seed=0)
    model = pm.MultimodalDPMixture(data.dims, num_classes=data.num_classes,
                                   latent_dim=2, num_components=3)
    trainer = pm.train.trainer.Trainer(model, pm.train.trainer.Settings(
        batch_size=20, device="cpu", progress=False))
    trainer.prepare(data)
    trainer.build_optimizer()
    minibatch = next(iter(trainer.minibatches(0)[0]))
    assert not flushing_denormals()
    assert trainer.step(minibatch) is not None
    assert not flushing_denormals()


def test_a_steps_model_and_guide_share_one_gather_of_the_minibatch():
    data = pm.datasets.make_synthetic(num_examples=30, num_clusters=2,
                                      dims={"a": 3, "b": 2}, seed=0)
    batch = data.to_tensors()
    idx = torch.tensor([4, 1, 7])
    rows = batch.index(idx)
    assert batch.index(idx) is rows  # the same tensor again: no second copy
    assert torch.equal(rows.features["a"], batch.features["a"][idx])
    assert batch.index(idx.clone()) is not rows  # another tensor: gathered anew
    idx[0] = 2  # changed in place: its version moves, so the rows are read again
    again = batch.index(idx)
    assert again is not rows and torch.equal(again.features["a"], batch.features["a"][idx])

    model = pm.MultimodalDPMixture(data.dims, latent_dim=2, num_components=3)
    guide = pm.MultimodalGuide(model)
    model.fit_standardization(data)
    prepared = model.prepare(data)
    guide.initialize(model, prepared)
    calls = []
    gather = type(prepared).index

    def counting(self, i):
        calls.append(i)
        return gather(self, i)

    type(prepared).index = counting
    try:
        pyro.infer.Trace_ELBO().differentiable_loss(model, guide, prepared, idx)
    finally:
        type(prepared).index = gather
    assert len(calls) == 2 and calls[0] is calls[1]  # model and guide: the same tensor
