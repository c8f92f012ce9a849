"""The factors use of the model exactly what :class:`FactorModel` lists: run through a
stand-in that exposes only the protocol's members, ARM, PMRL and the contribution
estimates work, and ARM's write of the fusion weights reaches the model."""


import pyro
import pytest
import torch

import pyro_mm as pm
from pyro_mm.factors import ARM, PMRL
from pyro_mm.model.factor_protocol import FactorContext, FactorModel, sampling_weights

MEMBERS = FactorModel.__protocol_attrs__


class OnlyTheProtocol:
    """``model`` seen through :class:`FactorModel`: any other name is an error."""

    def __init__(self, model):
        object.__setattr__(self, "_model", model)

    def __getattr__(self, name):
        if name not in MEMBERS:
            raise AttributeError(f"a factor read model.{name}, which FactorModel lacks")
        return getattr(self._model, name)

    def __setattr__(self, name, value):
        if name not in MEMBERS:
            raise AttributeError(f"a factor wrote model.{name}, which FactorModel lacks")
        setattr(self._model, name, value)


def test_the_protocol_lists_what_factors_read_and_write():
    assert {"modalities", "num_classes", "latent_dim", "representation", "training",
            "modality_weights", "fusion_name", "modality_dropout", "class_frequencies",
            "factors", "label_log_prob", "params_from_sites", "prepare", "train",
            "eval"} == set(MEMBERS)


def test_the_model_has_every_member_of_the_protocol(tiny_data):
    # hasattr, not a runtime-checkable isinstance: that looks attributes up statically,
    # and a module's submodules (``factors``) are found only through __getattr__.
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=3)
    assert [name for name in MEMBERS if not hasattr(model, name)] == []


@pytest.fixture
def trained(tiny_data):
    model = pm.MultimodalDPMixture(
        tiny_data.dims, num_classes=3, latent_dim=2, num_components=3, hidden=(8,),
        factors=[PMRL(weight=0.1), ARM(weight=0.1, resample=True)])
    return pm.fit(model, tiny_data, num_epochs=1, batch_size=60, seed=0, progress=False)


def test_factors_run_inside_the_model_through_the_protocol_alone(trained, tiny_data):
    model, guide = trained.model, trained.guide
    batch = model.prepare(tiny_data)
    part = batch.index(torch.arange(16))
    z, _ = guide.encode(part, guide.point_estimate())
    params = model.params_from_sites(guide.point_estimate())
    logged = {}
    context = FactorContext(OnlyTheProtocol(model), z, part, params,
                            lambda name, value: logged.update({name: value}))
    before = model.modality_weights.clone()
    model.train()
    with pyro.poutine.trace() as tr, pyro.plate("data", part.size):
        for factor in model.factors:
            factor.attach(context)
    assert {"pmrl", "arm", "arm_reinforce"} <= set(tr.trace.nodes)
    assert {"pmrl/loss", "arm/loss", "arm/phi_mi", "arm/fusion_weight/a"} <= set(logged)
    # ARM's dynamic fusion wrote the model's weights through the protocol
    assert not torch.equal(model.modality_weights, before)
    assert model.modality_weights.shape == (2,)


def test_sampling_weights_use_the_protocol_alone(trained, tiny_data):
    model, guide = trained.model, trained.guide
    batch = model.prepare(tiny_data)
    model.train()
    weights = sampling_weights(OnlyTheProtocol(model), guide, batch)
    assert weights.shape == (len(tiny_data),) and torch.isclose(weights.sum(),
                                                                torch.tensor(1.0))
    assert model.training  # the mode is restored
    # pm.modality_contributions is a user's entry point: it takes a posterior
    # (pyro_mm.model.posterior.as_posterior), which needs the model itself, so it is not
    # run on the stand-in.


def test_the_stand_in_refuses_what_the_protocol_lacks(tiny_data):
    seen = OnlyTheProtocol(pm.MultimodalDPMixture(tiny_data.dims, num_classes=3))
    with pytest.raises(AttributeError, match="decoders"):
        seen.decoders
    with pytest.raises(AttributeError, match="alpha"):
        seen.alpha = torch.tensor(2.0)
