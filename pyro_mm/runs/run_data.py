"""Which data a run folder was trained on: the data set named on the command line and
the held-out split that ``pyro-mm train`` records in every checkpoint, and beside it,
for people to read, in the run folder's ``data.json``. The checkpoint's record is the
one read: a write that failed between the checkpoint and ``data.json`` cannot pair
one run's weights with another run's split.

Both ``pyro-mm evaluate`` and ``pyro-mm diagnose`` (:mod:`pyro_mm.cli.diagnose`)
rebuild that split from here; the rest of the run folder is :mod:`pyro_mm.runs.checkpoint`.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from .. import datasets
from ..data.container import MultimodalData
from ..errors import CheckpointError
from .checkpoint import CHECKPOINT, load_checkpoint, read_json

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


def data_source(run_dir: str | Path) -> dict | None:
    """How a run's data are rebuilt (``data``, ``dataset``, ``views``, ``seed``,
    ``test_fraction``): the record in its checkpoint, else its ``data.json`` (a run
    folder of an earlier version), else ``None`` (trained in Python on data of its
    own)."""
    run_dir = Path(run_dir)
    if (run_dir / CHECKPOINT).is_file():
        recorded = load_checkpoint(run_dir / CHECKPOINT).get("data_source")
        if recorded is not None:
            return dict(recorded)
    spec_path = run_dir / DATA_SPEC
    return read_json(spec_path) if spec_path.is_file() else None


def run_splits(run_dir: str | Path) -> tuple[MultimodalData, MultimodalData]:
    """The training and held-out splits a run was trained on, rebuilt from the record
    :func:`data_source` reads."""
    spec = data_source(run_dir)
    if spec is None:
        raise CheckpointError(
            f"{Path(run_dir) / DATA_SPEC}: not found, and the checkpoint records no data "
            "(the run was not trained by `pyro-mm train`); pass the data with --data FILE")
    data = load_dataset(SimpleNamespace(**spec))
    return data.split(test_fraction=spec["test_fraction"], seed=spec["seed"],
                      stratify=data.labels is not None)


def held_out_data(run_dir: str | Path) -> MultimodalData:
    """The held-out split a run was trained beside (see :func:`run_splits`)."""
    return run_splits(run_dir)[1]


__all__ = ["DATA_SPEC", "data_source", "held_out_data", "load_dataset", "run_splits"]
