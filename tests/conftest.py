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
