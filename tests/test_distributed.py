"""Data-parallel fit() on torch.distributed: 2 gloo processes on the CPU.

Every test starts its ranks with ``torch.multiprocessing.spawn`` (``join=False``), a
file-based rendezvous and a 30 s process-group timeout, then joins them with a hard
deadline and kills whatever is left, so a bug can fail a test but never hang the suite.
Each rank writes what it saw (a result or the exception) to ``rank<r>.pt``.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pyro_mm as pm
from pyro_mm.cli.main import main
from pyro_mm.runtime import distributed as ddp
from pyro_mm.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="no torch.distributed")

#: Seconds a whole spawned test may take (start-up included) before its ranks are killed.
DEADLINE = 120


def _data():
    return pm.datasets.make_synthetic(num_examples=120, num_clusters=3,
                                      dims={"a": 4, "b": 3}, seed=0)


def _model(data, **kwargs):
    """Deterministic unless ``kwargs`` say otherwise: the observed representation and a
    MAP global guide have no noise, so both runs see the same loss."""
    pyro.set_rng_seed(0)
    # resolution_floor=False: a store's streamed statistics cannot give it, and these
    # runs compare training from a store with training in memory.
    options = dict(latent_dim=2, num_components=4, hidden=(8,),
                   representation="observed", modality_dropout=0.0, resolution_floor=False)
    options.update(kwargs)
    return pm.MultimodalDPMixture(data.dims, num_classes=data.num_classes, **options)


def _fit(data, model, **kwargs):
    guide = pm.MultimodalGuide(model, global_guide="map")
    options = dict(num_epochs=2, batch_size=20, device="cpu", progress=False, seed=0,
                   learning_rate=0.01)
    options.update(kwargs)
    return pm.fit(model, data, guide=guide, **options)


def _state(result):
    """Model and guide tensors by name (prefixed ``model.`` / ``guide.``)."""
    return {f"{part}.{k}": v.detach().clone()
            for part, module in (("model", result.model), ("guide", result.guide))
            for k, v in module.state_dict().items()}


# ------------------------------------------------------------------ what each rank runs
def _equivalence(rank, folder):
    result = _fit(_data(), _model(_data()), run_dir=f"{folder}/run")
    return {"state": _state(result), "losses": result.history.series("loss"),
            "world_size": dist.get_world_size()}


def _mismatch(rank, folder):
    data = _data()
    if rank == 1:
        data = data.split(test_fraction=0.25, seed=0)[0]
    _fit(data, _model(data))


def _arm(rank, folder):
    """ARM's fusion weights, re-sampling and early stopping, with guide noise."""
    train, val = _data().split(test_fraction=0.25, seed=0)
    model = _model(train, representation="latent", modality_dropout=0.2,
                   factors=[pm.factors.ARM(resample=True, reinforce=1.0)])
    result = _fit(train, model, val_data=val, early_stopping=1, num_epochs=4,
                  learning_rate=0.05)
    return {"state": _state(result), "epochs": result.history.epochs,
            "metrics": result.metrics}


def _dies(rank, folder):
    """Rank 1 vanishes (no exception, no clean-up) in its fifth step, in epoch 1."""
    if rank == 1:
        step = Trainer.step

        def dying_step(self, minibatch):
            if self.global_step == 4:
                os._exit(3)
            return step(self, minibatch)

        Trainer.step = dying_step
    _fit(_data(), _model(_data()), run_dir=f"{folder}/run", num_epochs=3)


def _non_finite(rank, folder):
    """Rank 1 alone meets a NaN loss in its third step: both ranks must skip it, with
    validation off (the NaN reaches the averaged gradients) and on (a collective on the
    loss decides)."""
    forward, out = pm.MultimodalDPMixture.forward, {}
    for validate in (False, True):
        calls = []

        def forward_with_a_nan(self, *args, **kwargs):
            value = forward(self, *args, **kwargs)
            if self.training and rank == 1:
                calls.append(1)
                if len(calls) == 3:
                    pyro.factor("boom", torch.tensor(float("nan")))
            return value

        pm.MultimodalDPMixture.forward = forward_with_a_nan
        try:
            result = _fit(_data(), _model(_data()), validate_args=validate)
        finally:
            pm.MultimodalDPMixture.forward = forward
        out[f"validate={validate}"] = {
            "state": _state(result), "steps": [r["step"] for r in result.history.steps]}
    return out


def _resume(rank, folder):
    """With guide noise: 3 epochs straight, and 1 epoch then resumed to 3."""
    train = _data()
    options = dict(model=dict(representation="latent"))

    def run(num_epochs, name, resume=False):
        model = _model(train, **options["model"])
        return pm.fit(model, train, num_epochs=num_epochs, batch_size=20, device="cpu",
                      progress=False, run_dir=f"{folder}/{name}",
                      resume_from=f"{folder}/{name}" if resume else None)

    whole = run(3, "whole")
    run(1, "cut")
    resumed = run(3, "cut", resume=True)
    return {"whole": _state(whole), "resumed": _state(resumed),
            "losses": (whole.history.series("loss"), resumed.history.series("loss"))}


def _store(rank, folder):
    """The equivalence scenario's fit, from a Zarr store (written before the launch):
    each rank reads its own shard of every epoch from disk."""
    data = pm.MultimodalData.open_zarr(f"{folder}/data.zarr")
    result = _fit(data, _model(data), num_workers=1)
    return {"state": _state(result), "losses": result.history.series("loss")}


def _unlabelled(rank, folder):
    """A classifier model on data without labels: its weights get no gradient in any
    step, which the warm-up must notice (else DDP waits for them and fails)."""
    data = _data()
    data = pm.MultimodalData({m: data.features[m] for m in data.modalities})
    pyro.set_rng_seed(0)
    model = pm.MultimodalDPMixture(data.dims, num_classes=3, latent_dim=2,
                                   num_components=4, hidden=(8,))
    result = _fit(data, model)
    return {"state": _state(result), "steps": len(result.history.steps)}


SCENARIOS = {"unlabelled": _unlabelled, "equivalence": _equivalence, "mismatch": _mismatch, "arm": _arm,
             "dies": _dies, "non_finite": _non_finite, "resume": _resume, "store": _store}


def _worker(rank, world, folder, names):
    """Join the group, run the named scenarios in order and save each one's result or
    exception; the file is rewritten after every scenario, so a rank that dies leaves
    what it finished."""
    torch.set_num_threads(1)
    out = {}
    dist.init_process_group("gloo", init_method=f"file://{folder}/rdzv", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=30))
    try:
        for name in names:
            try:
                out[name] = {"ok": True, **(SCENARIOS[name](rank, folder) or {})}
            except Exception as exc:  # reported to the test, which asserts on it
                out[name] = {"ok": False, "type": type(exc).__name__, "message": str(exc)}
            torch.save(out, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _launch(folder: Path, names, world=2):
    """Run the scenarios ``names`` on ``world`` spawned ranks; what each reported."""
    folder.mkdir(parents=True, exist_ok=True)
    context = mp.spawn(_worker, args=(world, str(folder), names), nprocs=world,
                       join=False)
    deadline = time.monotonic() + DEADLINE
    for process in context.processes:
        process.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in context.processes if p.is_alive()]
    for process in hung:
        process.kill()
    assert not hung, f"{len(hung)} rank(s) still running after {DEADLINE} s"
    paths = [folder / f"rank{r}.pt" for r in range(world)]
    return [torch.load(p, weights_only=False) if p.is_file() else {} for p in paths]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-rank session (start-up is most of the cost) running every scenario; the
    mismatch comes first, and the group must still work after it."""
    folder = tmp_path_factory.mktemp("ddp")
    _data().to_zarr(folder / "data.zarr")
    return folder, _launch(folder, ["mismatch", "equivalence", "arm", "non_finite",
                                    "resume", "store", "unlabelled"])


def _ok(ranks, name):
    for rank, report in enumerate(ranks):
        assert report.get(name, {}).get("ok"), (rank, report.get(name))
    return [report[name] for report in ranks]


# ------------------------------------------------------------------ the tests
def test_two_ranks_match_one_process_on_the_union_batches(two_ranks):
    folder, ranks = two_ranks
    ranks = _ok(ranks, "equivalence")
    assert ranks[0]["world_size"] == 2
    # Rank r takes every 2nd example of the shared permutation, 20 per step, so the two
    # ranks' step-j minibatches are together the step-j minibatch of batch_size=40.
    single = _fit(_data(), _model(_data()), batch_size=40)
    expected = _state(single)
    assert expected.keys() == ranks[0]["state"].keys()
    for key, value in expected.items():
        # DDP keeps the ranks bit-identical.
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
        # The union's gradient is summed in another order: float32 rounding only
        # (measured: at most 2e-6 after 6 steps).
        torch.testing.assert_close(ranks[0]["state"][key], value, rtol=1e-5, atol=1e-5,
                                   msg=key)
    assert ranks[0]["losses"] == pytest.approx(single.history.series("loss"), rel=1e-5)

    # Rank 0's run folder loads and predicts in one process like the one-process fit.
    loaded = pm.load(folder / "run")
    assert loaded.config["num_epochs"] == 2
    torch.testing.assert_close(pm.predict(loaded, _data())["probs"],
                               pm.predict(single, _data())["probs"], rtol=1e-4, atol=1e-5)


def test_two_ranks_training_from_a_store_match_two_ranks_in_memory(two_ranks):
    _, ranks = two_ranks
    memory, disk = _ok(ranks, "equivalence"), _ok(ranks, "store")
    for in_memory, on_disk in zip(memory, disk):
        assert on_disk["losses"] == pytest.approx(in_memory["losses"], rel=1e-6)
        for name, value in in_memory["state"].items():
            torch.testing.assert_close(on_disk["state"][name], value)


def test_mismatched_data_is_a_clear_error_on_every_rank(two_ranks):
    _, ranks = two_ranks
    for report in ranks:
        assert report["mismatch"]["type"] == "DistributedError", report["mismatch"]
        message = report["mismatch"]["message"]
        assert "rank 1 differs from rank 0" in message and "num_examples" in message


def test_arm_fusion_weights_resampling_and_early_stopping_agree(two_ranks):
    _, ranks = two_ranks
    ranks = _ok(ranks, "arm")
    first, second = ranks
    for key, value in first["state"].items():
        assert torch.equal(value, second["state"][key]), key
    weights = first["state"]["model.label_head.modality_weights"]
    assert not torch.allclose(weights, torch.ones_like(weights))  # ARM moved them
    assert first["epochs"] == [{**row, "seconds": a["seconds"]}
                               for row, a in zip(second["epochs"], first["epochs"])]
    assert any(row["resampled"] for row in first["epochs"])
    assert first["metrics"] == second["metrics"]


def test_a_non_finite_loss_on_one_rank_is_skipped_on_both(two_ranks):
    _, ranks = two_ranks
    first, second = _ok(ranks, "non_finite")
    for validate in ("validate=False", "validate=True"):
        # 6 steps, one skipped
        assert first[validate]["steps"] == second[validate]["steps"] == [0, 1, 2, 3, 4]
        for key, value in first[validate]["state"].items():
            assert torch.equal(value, second[validate]["state"][key]), (validate, key)


def test_parameters_no_step_reaches_do_not_stall_the_ranks(two_ranks):
    first, second = _ok(two_ranks[1], "unlabelled")
    assert first["steps"] == second["steps"] == 6
    for key, value in first["state"].items():
        assert torch.equal(value, second["state"][key]), key


def test_a_resumed_data_parallel_run_matches_an_uninterrupted_one(two_ranks):
    """Each rank's noise state is in the checkpoint, so resuming on as many ranks
    continues bit for bit."""
    _, ranks = two_ranks
    for report in _ok(ranks, "resume"):
        assert report["losses"][0] == report["losses"][1]
        for key, value in report["whole"].items():
            assert torch.equal(report["resumed"][key], value), key


def test_the_global_autoguide_sees_no_local_site(tiny_data):
    """Pyro issue 3468: an autoguide over a site in the data plate draws its own
    subsample unless given the model's (create_plates). Ours covers the global sites
    only; the local ``z`` comes from the encoders inside the guide's own data plate."""
    trace = pm.fit(_model(tiny_data, representation="latent"), tiny_data, num_epochs=1,
                   device="cpu", progress=False).guide.global_guide.prototype_trace
    sites = [s for s in trace.nodes.values() if s["type"] == "sample"]
    assert sites and all(f.name != "data" for s in sites for f in s["cond_indep_stack"])


def test_a_rank_that_dies_is_an_error_on_the_other_and_the_checkpoint_survives(tmp_path):
    started = time.monotonic()
    ranks = _launch(tmp_path, ["dies"])
    assert "dies" not in ranks[1]  # it vanished mid-step
    report = ranks[0]["dies"]
    assert report["type"] == "DistributedError", report
    assert "rank 0 of 2" in report["message"] and "checkpoint" in report["message"]
    # One line naming the lost rank and the likely cause; gloo's own text is not in it.
    assert "lost rank 1" in report["message"] and "\n" not in report["message"]
    assert "gloo" not in report["message"].lower() and "GLHF" not in report["message"]
    assert time.monotonic() - started < DEADLINE
    saved = pm.load(tmp_path / "run")  # epoch 0's checkpoint, written before the death
    assert saved.state["epoch"] == 1 and len(saved.history.epochs) == 1


def test_shards_cover_the_order_and_take_equal_steps():
    order = torch.randperm(7)
    groups = [ddp.Group(rank, 3, rank) for rank in range(3)]
    shards = [ddp.shard(g, order) for g in groups]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert set(torch.cat(shards).tolist()) == set(range(7))
    assert torch.equal(ddp.shard(None, order), order)
    assert ddp.mean(None, {"a": 1.0}) == {"a": 1.0}
    assert ddp.all_finite(None, torch.tensor(2.0)) is True
    assert ddp.all_finite(None, torch.tensor(float("inf"))) is False
    assert ddp.mean_each(None, [1.0, 2.0]) == [1.0, 2.0]


def test_cli_nproc_launches_torchrun_and_its_run_resumes_in_one_process(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "OMP_NUM_THREADS": "1", "PYRO_MM_DIST_TIMEOUT": "30"}
    command = [sys.executable, "-m", "pyro_mm.cli.main", "train", "--nproc", "2",
               "--dataset", "synthetic", "--epochs", "1", "--latent-dim", "2",
               "--components", "4", "--batch-size", "256", "--out", str(run), "--quiet"]
    # Its own process group, so that a timeout kills torchrun's workers too.
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-3000:]
    assert stdout.count("Run folder:") == 1  # rank 0 alone reports
    assert json.loads((run / "config.json").read_text())["fit"]["world_size"] == 2
    # A run of 2 processes continues in one (each rank's noise state is not used then).
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    assert len(pm.load(run).history.epochs) == 2
