"""The trainer's phases (pyro_mm.train.trainer): driven one by one they give exactly what
fit() gives, and a step or an epoch takes minibatches from any source."""

import math

import pyro
import torch

import pyro_mm as pm
from pyro_mm.train.trainer import Minibatch, Settings, Trainer


def _model(data):
    pyro.set_rng_seed(0)
    return pm.MultimodalDPMixture(data.dims, num_classes=data.num_classes, latent_dim=2,
                                  num_components=5, hidden=(8,))


def test_phases_by_hand_match_fit(tiny_data):
    expected = pm.fit(_model(tiny_data), tiny_data, num_epochs=2, batch_size=32,
                      device="cpu", progress=False)

    pyro.clear_param_store()
    trainer = Trainer(_model(tiny_data), Settings(num_epochs=2, batch_size=32,
                                                  device="cpu", progress=False))
    trainer.prepare(tiny_data)
    trainer.build_optimizer()
    for trainer.epoch in range(2):
        minibatches, resampled = trainer.minibatches(trainer.epoch)
        losses = trainer.epoch_losses(iter(minibatches))  # any iterable will do
        _, stop = trainer.validate(losses, 0.0, resampled)
        trainer.checkpoint(stop)
    result = trainer.finish(stopped_early=False)

    assert [r["loss"] for r in result.history.steps] == [
        r["loss"] for r in expected.history.steps]
    assert result.config == expected.config
    for key, value in expected.model.state_dict().items():
        assert torch.equal(result.model.state_dict()[key], value), key


def test_a_step_takes_a_prepared_minibatch(tiny_data):
    trainer = Trainer(_model(tiny_data), Settings(batch_size=16, device="cpu",
                                                  progress=False))
    trainer.prepare(tiny_data)
    trainer.build_optimizer()
    chunks = (Minibatch(trainer.batch, idx) for idx in trainer.batch.chunk_indices(40))
    losses = trainer.epoch_losses(chunks)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert [row["step"] for row in trainer.history.steps] == [0, 1, 2]
    assert trainer.global_step == 3
