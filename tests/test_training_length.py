"""fit(num_epochs=None): the package's schedule (steps by N, early stopping on a held-out
ELBO, internal validation split, best epoch restored); an explicit num_epochs as before."""

import importlib

import numpy as np
import pyro
import pytest

import pyro_mm as pm
from pyro_mm.train.fit import auto_schedule

fit_module = importlib.import_module("pyro_mm.train.fit")  # the package exports fit()


def test_schedule_scales_with_the_number_of_examples():
    assert auto_schedule(36, 128) == (2000, 400)       # one step an epoch
    assert auto_schedule(1440, 128) == (334, 34)      # 12 steps an epoch
    assert auto_schedule(90_000, 128) == (10, 5)      # 704 steps an epoch: the floor
    for n in (40, 1000, 100_000):
        epochs, _ = auto_schedule(n, 128)
        assert epochs * -(-n // 128) >= min(4000, 10 * -(-n // 128))


def test_default_holds_out_a_seeded_split_and_restores_the_best_epoch(tiny_data,
                                                                     monkeypatch):
    monkeypatch.setattr(fit_module, "AUTO_STEPS", 30)
    monkeypatch.setattr(fit_module, "AUTO_PATIENCE_STEPS", 5)
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=3)
    result = pm.fit(model, tiny_data, batch_size=40, progress=False, seed=0, device="cpu")
    # 12 of 120 rows held out (stratified), so 108 train: 3 steps an epoch, 10 epochs
    assert result.config["num_examples"] == 108
    assert result.metrics["num_examples"] == 12
    assert result.config["num_epochs"] == 10 and result.config["early_stopping"] == 5
    epochs = result.history.epochs
    assert all("val_loss" in row for row in epochs)
    best = result.config["best_epoch"]
    assert epochs[best]["val_loss"] == min(row["val_loss"] for row in epochs)
    # the parameters are the best epoch's: its validation ELBO is met again (same noise
    # is not available, so compare the deterministic label NLL instead)
    train, val = tiny_data.split(0.1, seed=0)
    assert pm.evaluate(result, val)["log_likelihood"] == pytest.approx(
        -epochs[best]["val_nll"], rel=1e-5)


def test_the_internal_split_is_seeded(tiny_data, monkeypatch):
    monkeypatch.setattr(fit_module, "AUTO_STEPS", 6)
    runs = []
    for _ in range(2):
        pyro.set_rng_seed(0)  # the same initial weights
        model = pm.MultimodalDPMixture(tiny_data.dims, latent_dim=2, num_components=3)
        runs.append(pm.fit(model, tiny_data, batch_size=60, progress=False, seed=3,
                           device="cpu"))
    assert [r["val_loss"] for r in runs[0].history.epochs] == [
        r["val_loss"] for r in runs[1].history.epochs]


def test_given_validation_data_is_used_and_training_data_kept_whole(tiny_data,
                                                                   monkeypatch):
    monkeypatch.setattr(fit_module, "AUTO_STEPS", 6)
    train, val = tiny_data.split(0.25, seed=1)
    model = pm.MultimodalDPMixture(tiny_data.dims, latent_dim=2, num_components=3)
    result = pm.fit(model, train, val_data=val, batch_size=45, progress=False, seed=0,
                    device="cpu")
    assert result.config["num_examples"] == len(train)
    assert result.metrics["num_examples"] == len(val)


def test_tiny_data_sets_are_not_split(tiny_data, monkeypatch):
    monkeypatch.setattr(fit_module, "AUTO_STEPS", 12)
    small = tiny_data.subset(np.arange(15))
    model = pm.MultimodalDPMixture(small.dims, latent_dim=2, num_components=3)
    result = pm.fit(model, small, progress=False, seed=0, device="cpu")
    assert result.config["num_examples"] == 15
    assert result.config["num_epochs"] == 12
    assert "val_loss" not in result.history.epochs[0]


def test_explicit_epochs_keep_the_old_behaviour(tiny_data):
    model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                   num_components=3)
    result = pm.fit(model, tiny_data, num_epochs=4, progress=False, seed=0, device="cpu")
    assert result.config["num_examples"] == 120
    assert len(result.history.epochs) == 4
    assert result.config["early_stopping"] is None
    assert result.metrics == {}


def test_metrics_data_is_reported_on_but_never_chooses_when_to_stop(tiny_data,
                                                                    monkeypatch):
    """What ``pyro-mm train`` does with its test split: the schedule stops on an internal
    split of the training rows, and ``result.metrics`` are the test split's."""
    monkeypatch.setattr(fit_module, "AUTO_STEPS", 30)
    monkeypatch.setattr(fit_module, "AUTO_PATIENCE_STEPS", 5)
    train, test = tiny_data.split(0.25, seed=1)
    runs = {}
    for name, extra in {"plain": {}, "reported": {"metrics_data": test}}.items():
        pyro.set_rng_seed(0)
        model = pm.MultimodalDPMixture(tiny_data.dims, num_classes=3, latent_dim=2,
                                       num_components=3)
        runs[name] = pm.fit(model, train, batch_size=40, progress=False, seed=0,
                            device="cpu", **extra)
    plain, reported = runs["plain"], runs["reported"]
    # the same training: stopping did not look at the test split
    assert [r["val_loss"] for r in plain.history.epochs] == [
        r["val_loss"] for r in reported.history.epochs]
    assert reported.config["best_epoch"] == plain.config["best_epoch"]
    assert reported.metrics["num_examples"] == len(test)
    assert reported.metrics == pytest.approx(pm.evaluate(reported, test))
