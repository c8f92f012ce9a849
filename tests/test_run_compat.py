"""Run folders written by pyro_mm 0.1.0 before the package was split into layers still
load, predict and score what they scored when they were written.

``tests/data/run-0.1.0-*`` were written by ``pyro-mm train`` at commit 0a07816 (the
synthetic data set, two epochs): a latent model with ``dp`` fusion and both auxiliary
factors, and an observed model with Student-t components and ``experts`` fusion. Their
``metrics.json`` is what that version measured on the held-out split.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import pyro_mm as pm
from pyro_mm.cli import main

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
    for key in ("accuracy", "log_likelihood", "ari", "effective_components"):
        assert measured[key] == pytest.approx(recorded[key], rel=1e-5, abs=1e-6), key
