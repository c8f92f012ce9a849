"""Shared fixtures: a clean Pyro param store and fixed seeds for every test."""

import pyro
import pytest

import pyro_mm


@pytest.fixture(autouse=True)
def _clean_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield


@pytest.fixture
def tiny_data():
    """120 examples, 3 clusters, modalities ``a`` (4 features) and ``b`` (3 features)."""
    return pyro_mm.datasets.make_synthetic(
        num_examples=120, num_clusters=3, dims={"a": 4, "b": 3}, seed=0
    )


def _assert_bounded(contributions):
    """No information estimate may exceed what information can be: ``H(y)``, plus three
    standard errors for the sampling noise of a mean over examples."""
    c = contributions
    for m, value in c.items():
        assert value <= c.label_entropy + 3 * c.se[m], (m, value, c.label_entropy)
    assert c.phi_mi <= c.label_entropy
    for m, value in (c.unimodal or {}).items():
        assert value <= c.label_entropy + 3 * c.unimodal_se[m], (m, value)


@pytest.fixture
def assert_bounded():
    """The check every test that estimates contributions runs on its estimates."""
    return _assert_bounded
