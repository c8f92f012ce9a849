"""Batched global draws (the model, the guide, predict / impute / log_likelihood and the
diagnostics take a leading sample dimension), encoders registered on every path that
runs them, and the model's dtype followed end to end (issue 26, items 1, 3 and 4)."""

import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_mm as pm
from pyro_mm.data.container import TensorBatch
from pyro_mm.errors import DataValidationError

torch.set_num_threads(1)


def _data(n=40, seed=0, missing_rate=0.25):
    return pm.datasets.make_synthetic(num_examples=n, num_clusters=2, dims={"a": 3, "b": 2},
                                      missing_rate=missing_rate, seed=seed)


def _latent(data, **kwargs):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(data.dims, num_classes=2, latent_dim=2, num_components=3,
                                   hidden=(8,), **kwargs)
    model.fit_standardization(data)
    return model


# ---------------------------------------------------------------- encoders registered
def test_a_custom_global_guide_trains_the_librarys_encoders(guide_with_library_encoders):
    data = _data()
    model = _latent(data)
    batch = model.prepare(data)
    library = pm.MultimodalGuide(model)
    library.initialize(model, batch)
    global_guide, guide = guide_with_library_encoders(model, library)

    before = {k: v.detach().clone() for k, v in library.encoders.state_dict().items()}
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(3):
        svi.step(batch)
    after = library.encoders.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert sorted(moved) == sorted(before), f"frozen encoder weights: {set(before) - set(moved)}"
    names = set(pyro.get_param_store().keys())
    assert any("encoders" in n for n in names)


# ---------------------------------------------------------------- dtype
@pytest.mark.parametrize("representation", ["latent", "observed"])
def test_a_double_model_fits_predicts_imputes_and_is_diagnosed_in_double(representation):
    data = _data(missing_rate=0.25 if representation == "latent" else 0.0)
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(data.dims, num_classes=2, latent_dim=2, num_components=3,
                                   hidden=(8,), representation=representation).double()
    result = pm.fit(model, data, num_epochs=2, batch_size=20, device="cpu", progress=False)
    assert all(p.dtype == torch.float64 for p in result.guide.parameters())
    assert all(v.dtype == torch.float64 for v in result.guide.point_estimate().values())
    pred = pm.predict(result, data, num_samples=3)
    assert pred["probs"].dtype == np.float64 and np.isfinite(pred["probs"]).all()
    assert np.isfinite(pm.evaluate(result, data)["log_likelihood"])
    # the observed model imputes from its components: hide cells of its complete data
    masked = data if representation == "latent" else data.mask_at_random(0.3, seed=1)
    imputed = pm.impute(result, masked, num_samples=3, quantiles=(0.1, 0.9))
    for m in ("a", "b"):
        hidden = imputed[f"{m}_missing"].values
        assert hidden.any()
        for key in ("mean", "sd", "quantiles"):
            assert np.isfinite(imputed[f"{m}_{key}"].values[..., hidden, :]).all()
    from pyro_mm.predictive.impute import impute_batch
    raw = impute_batch(pm.model.posterior.as_posterior(result), model.prepare(masked), 3,
                       (0.5,))
    assert all(v.dtype == torch.float64 for part in raw.values() for k, v in part.items()
               if k != "rows")
    tree = pm.to_datatree(result, data, num_samples=3, progress=False, seed=0)
    assert tree["posterior"].sizes["draw"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few draws: PSIS warns about its k
        report = pm.summary(result, data, tree=tree)
        k = pm.diagnostics.pareto_k(result, data, num_samples=25, progress=False)
    assert "Mixture" in str(report) and report.pareto_k is not None
    assert k.num_samples == 25 and not np.isnan(k.k) and np.isfinite(k.elbo)
    assert np.isfinite(np.asarray(k.log_ratios)).all()


@pytest.mark.parametrize("representation", ["latent", "observed"])
def test_a_batch_of_another_dtype_is_refused_by_the_model_naming_both(representation):
    data = _data()
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(data.dims, num_classes=2, latent_dim=2, num_components=3,
                                   hidden=(8,), representation=representation)
    model.fit_standardization(data)
    single = model.prepare(data)                       # float32
    model.double()
    with pytest.raises(DataValidationError,
                       match=r"torch\.float32 but the model is torch\.float64.*"
                             r"model\.prepare\(data\).*model\.to\(torch\.float32\)"):
        poutine.trace(model).get_trace(single)
    poutine.trace(model).get_trace(model.prepare(data))  # prepare converts: accepted
    model.float()
    double = model.prepare(data)
    double = TensorBatch({m: x.double() for m, x in double.features.items()}, double.masks,
                         double.labels, double.label_mask)  # built by hand, not prepared
    with pytest.raises(DataValidationError, match=r"torch\.float64 but the model is "
                                                  r"torch\.float32"):
        poutine.trace(model).get_trace(double, torch.arange(8))
    if representation == "observed":  # an autoguide traces the model first: the same error
        pyro.clear_param_store()
        svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
        with pytest.raises(DataValidationError, match="float64 but the model is"):
            svi.step(double)
    else:  # the library's guide runs its encoders before the model: the same error
        guide = pm.MultimodalGuide(model)
        guide.initialize(model, model.prepare(data))
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
        with pytest.raises(DataValidationError, match="float64 but the model is"):
            svi.step(double)


def test_a_custom_encoder_of_another_dtype_is_refused_by_name():
    data = _data()
    model = _latent(data).double()
    with pytest.raises(TypeError, match=r"encoders\['a'\].*float32.*float64"):
        pm.MultimodalGuide(model, encoders={"a": torch.nn.Linear(3, 4)})
    guide = pm.MultimodalGuide(model, encoders={"a": torch.nn.Linear(3, 4).double()})
    assert guide.encoders["a"].backbone.weight.dtype == torch.float64


# ---------------------------------------------------------------- batched draws
CASES = [("latent", {}), ("observed", {}),
         ("latent", dict(alpha="learned", component="studentt", mixture="independent")),
         ("latent", dict(fusion="dp"))]


def _fitted(representation, kwargs, missing_rate=0.25):
    data = _data(missing_rate=missing_rate)
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(data.dims, num_classes=2, latent_dim=2, num_components=3,
                                   hidden=(8,), representation=representation, **kwargs)
    result = pm.fit(model, data, num_epochs=1, batch_size=20, device="cpu", progress=False)
    return data, model, result


@pytest.mark.parametrize("representation,kwargs", CASES)
def test_parallel_predictive_and_vectorised_particles_run_on_batched_draws(representation,
                                                                          kwargs):
    from pyro.infer import Predictive
    data, model, result = _fitted(representation, kwargs)
    batch = model.prepare(data)
    out = Predictive(model, guide=result.guide, num_samples=5, parallel=True)(batch)
    assert out["sticks"].shape == (5, 1, 2) and out["y"].shape == (5, data.num_examples)
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(model, result.guide, batch)
    assert torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("representation,kwargs", CASES)
def test_the_model_scores_a_batch_of_draws_as_each_draw_alone(representation, kwargs):
    """The log densities of a trace of the model conditioned on S draws at once are,
    draw for draw, those of the model conditioned on each draw alone."""
    data, model, result = _fitted(representation, kwargs)
    batch = model.prepare(data)
    posterior = pm.model.posterior.as_posterior(result)
    block = next(posterior.draw_blocks(batch, 3, seed=0))
    z = None
    if representation == "latent":  # one z for every draw, so only the globals differ
        z = result.guide.encode(batch, posterior.point_estimate())[0]

    def scores(values):
        data_ = {**values, **({} if z is None else {"z": z})}
        trace = poutine.trace(poutine.condition(model, data=data_)).get_trace(batch)
        trace.compute_log_prob()
        return {n: s["log_prob"] for n, s in trace.nodes.items()
                if s["type"] == "sample" and n in ("x", "z", "y", "sticks")}

    batched = scores({k: v[:, None] for k, v in block.values.items()})  # (S, 1, ...)
    for s in range(block.size):
        alone = scores({k: v[s] for k, v in block.values.items()})
        for name, value in alone.items():
            torch.testing.assert_close(batched[name][s].reshape(value.shape), value,
                                       rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("representation,kwargs",
                         CASES + [("latent", dict(fusion="experts")),
                                  ("observed", dict(mixture="independent"))])
def test_predict_with_draws_agrees_draw_for_draw_with_one_draw_at_a_time(representation,
                                                                          kwargs):
    from pyro_mm.predictive.predict import _predict_batch, predict_batch
    data, model, result = _fitted(representation, kwargs)
    batch = model.prepare(data)
    posterior = pm.model.posterior.as_posterior(result)
    torch.manual_seed(5)
    batched = predict_batch(model, posterior, batch, chunk_size=16, num_samples=7)
    torch.manual_seed(5)
    alone = [_predict_batch(posterior, batch, 16, (d.values, model.params_from_sites(d.values)))
             for d in posterior.draws(batch, 7)]
    for key in alone[0]:
        stacked = torch.stack([d[key] for d in alone])
        torch.testing.assert_close(batched[key], stacked.mean(0))
        if key != "latent_mean":
            torch.testing.assert_close(batched[f"{key}_sd"], stacked.std(0, correction=0))


def test_draw_blocks_are_the_draws_and_a_small_budget_splits_them(monkeypatch):
    from pyro_mm.model import posterior as post_module
    from pyro_mm.predictive.predict import predict_batch
    data, model, result = _fitted("observed", {}, missing_rate=0.0)
    batch = model.prepare(data)
    posterior = post_module.as_posterior(result)
    draws = list(posterior.draws(batch, 5, seed=3))
    blocks = list(posterior.draw_blocks(batch, 5, seed=3))
    for name in posterior.global_sites:
        torch.testing.assert_close(torch.cat([b.values[name] for b in blocks]),
                                   torch.stack([d.values[name] for d in draws]))
    torch.manual_seed(2)
    whole = predict_batch(model, posterior, batch, num_samples=5)
    predict_module = __import__("importlib").import_module("pyro_mm.predictive.predict")
    monkeypatch.setattr(predict_module, "draws_per_pass", lambda *a: 2)
    torch.manual_seed(2)
    split = predict_batch(model, posterior, batch, num_samples=5)
    for key in whole:
        torch.testing.assert_close(split[key], whole[key])


@pytest.mark.parametrize("representation", ["latent", "observed"])
def test_impute_in_one_pass_agrees_with_one_draw_at_a_time(representation, monkeypatch):
    """A budget of one draw per pass is the one-at-a-time loop; both runs make the same
    global draws (``draw_blocks`` with the same seed) and must give the same means, sds
    and quantiles, value for value.

    The random numbers drawn *per draw* must also be the same. The observed model picks
    one component per (draw, example) with ``torch.multinomial``, which on the CPU uses
    the generator row by row, so a pass over ``S`` draws uses the same numbers as ``S``
    passes over one. The latent model's representation noise is one ``randn_like`` of
    shape ``(S, B, M, D)``, and the CPU's normal sampler fills blocks of 16 from one
    uniform stream: that equals ``S`` calls of shape ``(1, B, M, D)`` only when
    ``B * M * D`` is a multiple of 16. So during the test ``randn_like`` of a batch of
    draws draws them one draw after the other (what each pass of one draw does),
    whatever ``B``; the values are then a deterministic function of the same draws and
    the same numbers, and agree to rounding."""
    impute_module = __import__("importlib").import_module("pyro_mm.predictive.impute")
    data, model, result = _fitted(representation, {})
    masked = data.mask_at_random(0.37, seed=1)  # 30 rows to impute: 30 * 2 * 2 = 120,
    randn_like = torch.randn_like               # not a multiple of 16

    def per_draw_randn_like(tensor, *args, **kwargs):
        return torch.cat([randn_like(piece, *args, **kwargs) for piece in tensor.split(1)])

    calls = []
    original = impute_module._draw_gaussians

    def draw_gaussians(*args):
        calls.append(args[-1])
        with monkeypatch.context() as patch:
            patch.setattr(torch, "randn_like", per_draw_randn_like)
            return original(*args)

    monkeypatch.setattr(impute_module, "_draw_gaussians", draw_gaussians)
    torch.manual_seed(4)
    batched = pm.impute(result, masked, num_samples=6, seed=None, quantiles=(0.1, 0.9))
    assert set(calls) == {6}
    calls.clear()
    monkeypatch.setattr(impute_module, "draws_per_pass", lambda *a: 1)
    torch.manual_seed(4)
    alone = pm.impute(result, masked, num_samples=6, seed=None, quantiles=(0.1, 0.9))
    assert set(calls) == {1}
    compared = 0
    for name in batched.data_vars:
        a, b = batched[name].values, alone[name].values
        assert a.shape == b.shape
        if a.dtype == bool:
            np.testing.assert_array_equal(a, b)
            continue
        seen = np.isfinite(a)
        assert seen.any() and (seen == np.isfinite(b)).all()
        np.testing.assert_allclose(a[seen], b[seen], rtol=1e-5, atol=1e-6, err_msg=name)
        compared += int(seen.sum())
    assert compared > 0
    # a different seed gives other values: the comparison is not vacuous
    torch.manual_seed(5)
    other = pm.impute(result, masked, num_samples=6, seed=None, quantiles=(0.1, 0.9))
    seen = np.isfinite(other["a_mean"].values)
    assert not np.allclose(other["a_mean"].values[seen], alone["a_mean"].values[seen])


@pytest.mark.parametrize("representation,kwargs",
                         CASES + [("latent", dict(fusion="experts")),
                                  ("observed", dict(mixture="independent"))])
def test_diagnostic_draws_in_one_pass_agree_with_one_draw_at_a_time(representation, kwargs,
                                                                    monkeypatch):
    """to_datatree's sampling loop evaluates passes of draws at once; with ``z`` held at
    its encoder's mean (the only randomness left is the draws, seeded alike), every
    per-draw output equals the one-draw-at-a-time evaluation, which models with factors
    take, across several passes and chunks."""
    import pyro.distributions as dist

    from pyro_mm.diagnostics import sampling
    from pyro_mm.model.posterior import as_posterior, seeded
    data, model, result = _fitted(representation, kwargs)
    batch = model.prepare(data)
    posterior = as_posterior(result)

    def at_the_mean(self, values, part, S):
        loc, scale = (self.posterior.encode_draws(part, values, S) if self.vectorised
                      else self.posterior.encode(part, values))
        return loc, dist.Normal(loc, scale).to_event(2).log_prob(loc)

    monkeypatch.setattr(sampling._Sampler, "local_draws", at_the_mean)
    monkeypatch.setattr(sampling, "draws_per_pass", lambda *a: 3)  # passes of 3, 3, 1
    plan = sampling.make_plan(model, batch, False, 7, predictive=False)
    outs = {}
    for vectorise in (True, False):
        monkeypatch.setattr(sampling._Sampler, "vectorise", vectorise)
        with seeded(0, batch.device):
            outs[vectorise] = sampling.sample_draws(posterior, batch, plan, 7, 16, False)
    assert plan.ll_vars and np.isfinite(outs[True]["lp"]).all()
    flat = {True: {}, False: {}}
    for key, value in outs[True].items():
        for way in (True, False):
            found = outs[way][key]
            flat[way].update({f"{key}/{k}": v for k, v in found.items()}
                             if isinstance(found, dict) else {key: found})
    if model.component != "studentt":
        del flat[True]["df"]  # allocated, never written
    for key, value in flat[True].items():
        np.testing.assert_allclose(value, flat[False][key], rtol=1e-5, atol=1e-4,
                                   err_msg=key)
    assert not np.allclose(outs[True]["lp"][0], outs[True]["lp"][1])  # draws differ


def test_a_model_with_factors_is_diagnosed_one_draw_at_a_time():
    """A factor is user code that need not take draw dims: to_datatree evaluates such a
    model draw by draw, and its factor enters every draw's lp."""
    from pyro_mm.factors import PMRL
    data = _data()
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(data.dims, num_classes=2, latent_dim=2, num_components=3,
                                   hidden=(8,), factors=[PMRL(weight=0.1)])
    result = pm.fit(model, data, num_epochs=1, batch_size=20, device="cpu", progress=False)
    tree = pm.to_datatree(result, data, num_samples=4, seed=0, progress=False)
    lp = tree["sample_stats"]["lp"].values
    assert lp.shape == (1, 4) and np.isfinite(lp).all() and len(np.unique(lp)) == 4
    model.factors[0].weight = 0.0  # the factor's term leaves lp: the same draws differ
    without = pm.to_datatree(result, data, num_samples=4, seed=0, progress=False)
    assert not np.allclose(without["sample_stats"]["lp"].values, lp)
