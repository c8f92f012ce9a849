"""The command line, and what `import pyro_mm` pulls in."""

import json
import subprocess
import sys

import numpy as np
import torch

import pyro_mm as pm
from pyro_mm.cli.main import main


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


def test_train_the_missing_views_recipe(tmp_path, capsys):
    """Observed features, one linear logistic head per view, a Gaussian prior on them."""
    run = tmp_path / "run"
    assert main(["train", "--dataset", "synthetic", "--epochs", "1", "--components", "4",
                 "--representation", "observed", "--fusion", "experts", "--hidden",
                 "--classifier-prior-scale", "0.5", "--experts-pool", "mean",
                 "--component", "studentt", "--resolution-floor",
                 "--out", str(run), "--quiet"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())["model"]
    assert config["fusion"] == "experts" and config["representation"] == "observed"
    assert config["hidden"] == [] and config["classifier_prior_scale"] == 0.5
    assert config["experts_pool"] == "mean" and config["component"] == "studentt"
    assert config["resolution_floor"] is True
    assert pm.load(run).model.classifier.pool == "mean"


def test_train_an_imputer_with_factor_components(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "synthetic", "--epochs", "1", "--components", "4",
                 "--representation", "observed", "--component", "factor", "--rank", "2",
                 "--unsupervised", "--out", str(run), "--quiet"]) == 0
    config = json.loads((run / "config.json").read_text())["model"]
    assert config["component"] == "factor" and config["rank"] == 2
    assert pm.load(run).model.rank == 2


def test_bad_input_gives_a_clear_error_and_exit_code_2(tmp_path, capsys):
    assert main(["train", "--views", "nope", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "views" in err and "nope" in err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_help_lists_the_commands():
    result = subprocess.run([sys.executable, "-m", "pyro_mm.cli.main", "--help"],
                            capture_output=True, text=True, check=True)
    assert "train" in result.stdout and "evaluate" in result.stdout


def test_import_needs_neither_arviz_nor_matplotlib():
    code = ("import sys, pyro_mm; bad = [m for m in ('arviz', 'matplotlib', 'sklearn') "
            "if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_resume_continues_a_stopped_run_like_an_uninterrupted_one(tmp_path, capsys):
    import pyro_mm as pm

    options = ["--dataset", "synthetic", "--latent-dim", "2", "--components", "4",
               "--batch-size", "256", "--quiet"]
    assert main(["train", *options, "--epochs", "3", "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", *options, "--epochs", "1", "--out", str(tmp_path / "cut")]) == 0
    # --resume takes the data, model and settings from the run folder: options that
    # differ from the run's are refused by name, and nothing is written.
    before = (tmp_path / "cut" / "checkpoint.pt").read_bytes()
    assert main(["train", "--resume", str(tmp_path / "cut"), "--epochs", "3", "--quiet",
                 "--seed", "7", "--lr", "0.5", "--latent-dim", "2"]) == 2
    err = capsys.readouterr().err
    assert "--seed 7: the run's is 0" in err and "--lr 0.5: the run's is 0.01" in err
    assert "latent-dim" not in err  # the same as the run's: accepted
    assert (tmp_path / "cut" / "checkpoint.pt").read_bytes() == before
    assert main(["train", "--resume", str(tmp_path / "cut"), "--epochs", "3", "--quiet",
                 "--latent-dim", "2", "--batch-size", "256"]) == 0
    assert "resuming" in capsys.readouterr().out
    whole, resumed = pm.load(tmp_path / "whole"), pm.load(tmp_path / "cut")
    assert len(resumed.history.epochs) == 3
    assert resumed.history.series("loss") == whole.history.series("loss")
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert resumed.metrics == whole.metrics


def test_resume_needs_a_run_folder(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing"), "--quiet"]) == 2
    assert "not found" in capsys.readouterr().err
