"""Shared fixtures: a clean Pyro param store and fixed seeds for every test; and a
check, when the run ends, that the tests wrote nothing into the checkout."""

import subprocess
import sys
from pathlib import Path

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


CHECKOUT = Path(__file__).resolve().parent.parent


@pytest.fixture
def guide_with_library_encoders():
    """A factory ``(model, library_guide) -> (global_guide, guide)``: an ``AutoNormal``
    over the model's global sites, and a guide that adds ``z`` from the library's
    encoders (the composing-models guide's recipe)."""
    import pyro.distributions as dist
    from pyro import poutine
    from pyro.infer.autoguide import AutoNormal

    def make(model, library):
        global_guide = AutoNormal(poutine.block(model, expose=list(library.global_sites)))

        def guide(batch, subsample=None, kl_weight=1.0):
            globals_ = global_guide(batch, subsample, kl_weight)
            with pyro.plate("data", batch.size, subsample=subsample) as idx:
                loc, scale = library.encode(batch.index(idx), globals_)
                pyro.sample("z", dist.Normal(loc, scale).to_event(2))

        return global_guide, guide

    return make


def untracked_files(root: Path = CHECKOUT) -> set[str] | None:
    """Untracked, not ignored files of the git checkout at ``root`` (``None`` where
    ``root`` is not one, or git is missing)."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "--others",
                              "--exclude-standard"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return set(out.splitlines())


def pytest_sessionstart(session):
    session.config._pyro_mm_untracked = untracked_files()


def pytest_sessionfinish(session, exitstatus):
    """Tests write only into temporary folders: a file that running the suite left in
    the checkout (as executing a guide once left ``mine.npz``) fails the run."""
    before = getattr(session.config, "_pyro_mm_untracked", None)
    after = untracked_files()
    if before is None or after is None:
        return
    left = sorted(after - before)
    if left:
        print(f"\ntests left files in the checkout: {left}", file=sys.stderr)
        session.exitstatus = 1
