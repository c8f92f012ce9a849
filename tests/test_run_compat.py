"""Run folders written by pyro_mm 0.1.0 before the package was split into layers still
load, predict and score what they scored when they were written.

``tests/data/run-0.1.0-*`` were written by ``pyro-mm train`` at commit 0a07816 (the
synthetic data set, two epochs): a latent model with ``dp`` fusion and both auxiliary
factors, and an observed model with Student-t components and ``experts`` fusion. Their
``metrics.json`` is what that version measured on the held-out split.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import pyro_mm as pm
from pyro_mm.cli import main
from pyro_mm.runs.run_data import held_out_data

DATA = Path(__file__).resolve().parent / "data"
RUNS = sorted(DATA.glob("run-0.1.0-*"))


def test_both_fixtures_are_present():
    assert [r.name for r in RUNS] == ["run-0.1.0-latent_dp_factors",
                                      "run-0.1.0-observed_experts_studentt"]


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.name)
def test_an_old_run_folder_loads_and_scores_as_recorded(run, tmp_path, capsys):
    copy = shutil.copytree(run, tmp_path / run.name)  # loading must not need to write
    recorded = json.loads((run / "metrics.json").read_text())
    result = pm.load(copy)
    assert result.model.config()["dims"] == {"a": 16, "b": 8}
    capsys.readouterr()
    assert main(["evaluate", str(copy), "--json"]) == 0
    measured = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("accuracy", "ari", "effective_components"):
        assert measured[key] == pytest.approx(recorded[key], rel=1e-5, abs=1e-6), key
    if result.model.representation == "latent":
        assert measured["log_likelihood"] == pytest.approx(recorded["log_likelihood"],
                                                           rel=1e-5)
    else:
        # 0.1.0 reported log p(x) for an observed model with a classifier; it is now
        # log p(y | x) (at most 0). The recorded log p(x), from the loaded parameters:
        assert measured["log_likelihood"] <= 0
        assert _feature_log_density(result, held_out_data(copy)) == pytest.approx(
            recorded["log_likelihood"], rel=1e-5)


def _feature_log_density(result, data) -> float:
    """Mean ``log p(x_i)`` of the original features at the point estimate, computed
    from the mixture directly."""
    model = result.model
    batch = model.prepare(data)
    params = model.params_from_sites(result.guide.point_estimate())
    x = batch.concatenated(model.modalities)
    with torch.no_grad():
        mixture = params.mixture(model.mixture, mask=batch.masks, batch_size=batch.size,
                                 stacked=False)
        return float((mixture.log_prob(x) + model.feature_log_jacobian(batch.masks)).mean())


@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.name)
def test_an_old_run_folder_resumes_with_its_optimiser_state(run, tmp_path):
    """The optimiser's state is matched to the parameters by position: the parts that
    became submodules kept their parameters' place, so training goes on from it."""
    copy = shutil.copytree(run, tmp_path / run.name)
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    flat = list(saved["model_state"])
    model = pm.load(copy).model
    names = [n.split(".", 1)[1] if n.startswith(("label_head.", "standardization.")) else n
             for n, _ in model.named_parameters()]
    positions = [flat.index(n) for n in names]
    assert positions == sorted(positions)
    moments = saved["optimizer_state"]["state"]
    assert [moments[i]["exp_avg"].shape for i in range(len(names))] == [
        p.shape for p in model.parameters()]
    epochs = len(saved["history"]["epochs"])
    assert main(["train", "--resume", str(copy), "--epochs", str(epochs + 1), "--quiet"]) == 0
    resumed = pm.load(copy)
    assert len(resumed.history.epochs) == epochs + 1
    assert all(math.isfinite(loss) for loss in resumed.history.series("loss"))
