"""Batched global draws (the model, the guide, predict / impute / log_likelihood and the
diagnostics take a leading sample dimension), encoders registered on every path that
runs them, and the model's dtype followed end to end (issue 26, items 1, 3 and 4)."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyro_mm as pm

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
def test_a_custom_global_guide_trains_the_librarys_encoders():
    data = _data()
    model = _latent(data)
    batch = model.prepare(data)
    library = pm.MultimodalGuide(model)
    library.initialize(model, batch)
    global_guide = AutoNormal(poutine.block(model, expose=list(library.global_sites)))

    def guide(batch, subsample=None, kl_weight=1.0):
        globals_ = global_guide(batch, subsample, kl_weight)
        with pyro.plate("data", batch.size, subsample=subsample) as idx:
            loc, scale = library.encode(batch.index(idx), globals_)
            pyro.sample("z", dist.Normal(loc, scale).to_event(2))

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
    if representation == "latent":
        imputed = pm.impute(result, data, num_samples=3)
        assert np.isfinite(imputed["a_mean"].values[imputed["a_missing"].values]).all()
    tree = pm.to_datatree(result, data, num_samples=3, progress=False, seed=0)
    assert tree["posterior"].sizes["draw"] == 3


def test_a_custom_encoder_of_another_dtype_is_refused_by_name():
    data = _data()
    model = _latent(data).double()
    with pytest.raises(TypeError, match=r"encoders\['a'\].*float32.*float64"):
        pm.MultimodalGuide(model, encoders={"a": torch.nn.Linear(3, 4)})
    guide = pm.MultimodalGuide(model, encoders={"a": torch.nn.Linear(3, 4).double()})
    assert guide.encoders["a"].backbone.weight.dtype == torch.float64
