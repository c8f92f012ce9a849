"""The command line, and what `import pyro_mm` pulls in."""

import json
import subprocess
import sys

import numpy as np

from pyro_mm.cli import main


def test_train_then_evaluate_synthetic(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--dataset", "synthetic", "--epochs", "2", "--latent-dim", "2",
                 "--components", "4", "--out", str(run), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "held-out accuracy" in out and "effective number of components" in out
    assert str(run.resolve()) in out
    for name in ("checkpoint.pt", "config.json", "metrics.json", "history.json", "data.json"):
        assert (run / name).is_file(), name
    recorded = json.loads((run / "metrics.json").read_text())
    assert main(["evaluate", str(run), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.isclose(printed["accuracy"], recorded["accuracy"])


def test_train_mfeat_views_and_evaluate_on_a_file(tmp_path, capsys):
    import pyro_mm as pm

    run = tmp_path / "run"
    assert main(["train", "--views", "mor", "kar", "--epochs", "1", "--out", str(run),
                 "--quiet", "--mixture", "independent", "--fusion", "dp"]) == 0
    data = pm.datasets.load_mfeat(views=("mor", "kar")).subset(np.arange(50))
    np.savez(tmp_path / "mine.npz", labels=data.labels, **data.features)
    assert main(["evaluate", str(run), "--data", str(tmp_path / "mine.npz")]) == 0
    assert "examples evaluated" in capsys.readouterr().out


def test_bad_input_gives_a_clear_error_and_exit_code_2(tmp_path, capsys):
    assert main(["train", "--views", "nope", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "views" in err and "nope" in err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "pyro_mm.cli", "--help"],
                            capture_output=True, text=True, check=True)
    assert "train" in result.stdout and "evaluate" in result.stdout


def test_import_needs_neither_arviz_nor_matplotlib():
    code = ("import sys, pyro_mm; bad = [m for m in ('arviz', 'matplotlib', 'sklearn') "
            "if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    subprocess.run([sys.executable, "-c", code], check=True)
