"""Which data a run folder was trained on: the data set named on the command line and
the held-out split that ``pyro-mm train`` records in the run folder's ``data.json``.

Both ``pyro-mm evaluate`` and ``pyro-mm diagnose`` (:mod:`pyro_mm.cli.diagnose`)
rebuild that split from here; the rest of the run folder is :mod:`pyro_mm.runs.checkpoint`.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from .. import datasets
from ..data.container import MultimodalData
from ..errors import CheckpointError
from .checkpoint import read_json

#: The ``data.json`` file of a run folder.
DATA_SPEC = "data.json"


def load_dataset(spec) -> MultimodalData:
    """The data set described by ``spec`` (command-line arguments or a ``data.json``,
    as attributes): ``data`` (a file) or ``dataset`` (``"mfeat"`` or ``"synthetic"``),
    ``views`` (modalities to keep, ``None``: all) and ``seed`` (of the synthetic data)."""
    if spec.data:
        data = MultimodalData.load(spec.data)
    elif spec.dataset == "mfeat":
        return datasets.load_mfeat(views=spec.views)
    else:
        data = datasets.make_synthetic(num_examples=2000, num_clusters=4,
                                       dims={"a": 16, "b": 8}, signal={"a": 3.0, "b": 1.5},
                                       seed=spec.seed)
    return data.select(spec.views) if spec.views else data


def run_splits(run_dir: str | Path) -> tuple[MultimodalData, MultimodalData]:
    """The training and held-out splits a run was trained on, rebuilt from the
    ``data.json`` that ``pyro-mm train`` writes into its run folder."""
    spec_path = Path(run_dir) / DATA_SPEC
    if not spec_path.is_file():
        raise CheckpointError(
            f"{spec_path}: not found (the run was not trained by `pyro-mm train`); "
            "pass the data with --data FILE")
    spec = read_json(spec_path)
    data = load_dataset(SimpleNamespace(**spec))
    return data.split(test_fraction=spec["test_fraction"], seed=spec["seed"],
                      stratify=data.labels is not None)


def held_out_data(run_dir: str | Path) -> MultimodalData:
    """The held-out split a run was trained beside (see :func:`run_splits`)."""
    return run_splits(run_dir)[1]


__all__ = ["DATA_SPEC", "held_out_data", "load_dataset", "run_splits"]
