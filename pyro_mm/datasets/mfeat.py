"""UCI "Multiple Features": 2,000 handwritten digits seen through six feature views."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import numpy as np

from ..data.container import MultimodalData
from ..errors import DataValidationError

#: View name -> what the features are (and how many there are).
MFEAT_VIEWS = {
    "fou": "76 Fourier coefficients of the character shapes",
    "fac": "216 profile correlations",
    "kar": "64 Karhunen-Loeve coefficients",
    "pix": "240 pixel averages in 2 x 3 windows",
    "zer": "47 Zernike moments",
    "mor": "6 morphological features",
}

CITATION = (
    "Duin, R. (1998). Multiple Features [Dataset]. UCI Machine Learning Repository. "
    "https://doi.org/10.24432/C5HC70 (CC BY 4.0)"
)


def load_mfeat(views: Sequence[str] | None = None) -> MultimodalData:
    """Load the bundled UCI Multiple Features data set (offline).

    Args:
        views: which views, in order (default: all six, ``fou fac kar pix zer mor``).

    Returns:
        :class:`MultimodalData` with 2,000 examples, labels 0-9 (200 per class) and the
        citation in ``metadata["citation"]``.
    """
    names = list(MFEAT_VIEWS) if views is None else list(views)
    unknown = [v for v in names if v not in MFEAT_VIEWS]
    if unknown or not names:
        raise DataValidationError(
            f"views: unknown {unknown or 'empty selection'}; choose from {list(MFEAT_VIEWS)}"
        )
    source = resources.files(__package__).joinpath("_data/mfeat.npz")
    with source.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
        features = {v: archive[v] for v in names}
        labels = archive["labels"]
    return MultimodalData(
        features,
        labels=labels,
        num_classes=10,
        metadata={"name": "mfeat", "citation": CITATION,
                  "views": {v: MFEAT_VIEWS[v] for v in names}},
    )
