"""Validation of what :class:`~pyro_mm.data.container.MultimodalData` is given: features, masks
and labels are checked and copied here, at the boundary, so that the model never sees
NaN, a ragged example axis or an impossible label. Every error names the modality (or
``labels``) and the problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import DataValidationError

#: The label value of an unlabelled example.
MISSING_LABEL = -1


def as_numpy(value: Any, what: str) -> np.ndarray:
    """``value`` (array, tensor, nested lists) as a NumPy array."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as exc:  # pragma: no cover - numpy's own message is kept
        raise DataValidationError(f"{what}: cannot be read as an array ({exc})") from exc


def check_features(features: Mapping[str, Any], masks: Mapping[str, Any] | None
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """Checked float32 copies of ``features`` (zeros where unobserved), boolean masks
    for every modality, and the number of examples."""
    if not isinstance(features, Mapping) or len(features) == 0:
        raise DataValidationError("features: need at least one modality (got none)")
    masks = dict(masks or {})
    unknown = set(masks) - set(features)
    if unknown:
        raise DataValidationError(
            f"masks: modalities {sorted(unknown)} are not among the features "
            f"{list(features)}"
        )
    out_features: dict[str, np.ndarray] = {}
    out_masks: dict[str, np.ndarray] = {}
    num_examples = None
    for name, value in features.items():
        array = _check_array(name, value)
        if num_examples is None:
            num_examples = array.shape[0]
            first = name
        elif array.shape[0] != num_examples:
            raise DataValidationError(
                f"modality {name!r}: has {array.shape[0]} examples but modality "
                f"{first!r} has {num_examples}"
            )
        out_features[name], out_masks[name] = _check_values(name, array, masks.get(name))
    _check_some_observed(out_masks, int(num_examples))
    return out_features, out_masks, int(num_examples)


def check_masks(masks: Mapping[str, Any] | None, names, num_examples: int,
                every_example: bool = True) -> dict[str, np.ndarray]:
    """Checked boolean copies ``name -> (N,)`` of ``masks`` for every modality of
    ``names`` (one not named is fully observed): the masks of features whose values are
    checked elsewhere (on disk: as they are read). ``every_example``: also that every
    example observes a modality."""
    masks = dict(masks or {})
    unknown = set(masks) - set(names)
    if unknown:
        raise DataValidationError(
            f"masks: modalities {sorted(unknown)} are not among the features {list(names)}")
    out = {m: _check_mask(m, masks.get(m), num_examples).copy() for m in names}
    if every_example:
        _check_some_observed(out, num_examples)
    elif num_examples == 0:
        raise DataValidationError("features: the data set has no examples")
    return out


def _check_some_observed(masks: dict[str, np.ndarray], num_examples: int) -> None:
    """At least one example, and every example observes at least one modality."""
    if num_examples == 0:
        raise DataValidationError("features: the data set has no examples")
    observed = np.stack(list(masks.values()), axis=1)
    empty = np.flatnonzero(~observed.any(axis=1))
    if empty.size:
        raise DataValidationError(
            f"masks: {empty.size} example(s) have no observed modality "
            f"(first rows {empty[:5].tolist()}); remove them or observe one modality"
        )


def _check_array(name: Any, value: Any) -> np.ndarray:
    if not isinstance(name, str) or not name.isidentifier():
        raise DataValidationError(
            f"modality name {name!r}: must be a string usable as an identifier"
        )
    array = as_numpy(value, f"modality {name!r}")
    if array.ndim != 2:
        raise DataValidationError(
            f"modality {name!r}: expected a 2-D array (examples, features), "
            f"got shape {array.shape}"
        )
    return array


def _check_values(name: str, array: np.ndarray, mask: Any
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One modality's float32 copy (zeros where unobserved) and its boolean mask."""
    if array.shape[1] == 0:
        raise DataValidationError(f"modality {name!r}: has zero features")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise DataValidationError(
            f"modality {name!r}: expected real numbers, got dtype {array.dtype}"
        )
    mask = _check_mask(name, mask, array.shape[0])
    array = array.astype(np.float32, copy=True)
    bad = ~np.isfinite(array[mask])
    if bad.any():
        rows = np.flatnonzero(mask)[np.flatnonzero(bad.any(axis=1))]
        raise DataValidationError(
            f"modality {name!r}: {int(bad.sum())} NaN/inf value(s) in observed "
            f"examples (first rows {rows[:5].tolist()}); mark missing examples "
            "with `masks` instead"
        )
    array[~mask] = 0.0
    return array, mask.copy()


def _check_mask(name: str, mask: Any, num_examples: int) -> np.ndarray:
    if mask is None:
        return np.ones(num_examples, dtype=bool)
    mask = as_numpy(mask, f"mask of {name!r}")
    if mask.shape != (num_examples,):
        raise DataValidationError(
            f"mask of {name!r}: expected shape ({num_examples},), got {mask.shape}"
        )
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise DataValidationError(f"mask of {name!r}: must be boolean (True = observed)")
        mask = mask.astype(bool)
    return mask


def check_rows(name: str, block: np.ndarray, mask: np.ndarray, rows: np.ndarray
               ) -> np.ndarray:
    """A block of a stored modality, ``(B, d)`` float32, read from disk: zeros where
    unobserved (``mask`` ``(B,)``); NaN/inf in an observed row is an error naming the
    modality and the rows (``rows`` ``(B,)``: their positions in the store, the rows
    the user wrote, whatever subset of it is being read)."""
    block = np.array(block, dtype=np.float32)  # a private copy: zeroed below
    bad = ~np.isfinite(block[mask]).all(axis=1)
    if bad.any():
        first = np.unique(rows[np.flatnonzero(mask)[np.flatnonzero(bad)]])
        raise DataValidationError(
            f"modality {name!r}: NaN/inf value(s) in {first.size} observed "
            f"example(s) of the store (first rows {first[:5].tolist()}, in the store's "
            "own numbering); mark missing examples with masks instead")
    block[~mask] = 0.0
    return block


def check_labels(labels: Any, num_classes: int | None, num_examples: int
                 ) -> tuple[np.ndarray | None, int | None]:
    """``(N,)`` int64 labels (``-1``: missing; NaN in a float array is missing too) and
    the number of classes (inferred from the labels when ``None``)."""
    if labels is None:
        if num_classes is not None and int(num_classes) < 1:
            raise DataValidationError(f"num_classes: must be >= 1, got {num_classes}")
        return None, num_classes
    array = as_numpy(labels, "labels")
    if array.shape != (num_examples,):
        raise DataValidationError(
            f"labels: expected shape ({num_examples},), got {array.shape}"
        )
    if np.issubdtype(array.dtype, np.floating):
        missing = np.isnan(array)
        if np.isinf(array).any():
            raise DataValidationError("labels: contain inf")
        whole = np.where(missing, MISSING_LABEL, array)
        if not np.equal(np.round(whole), whole).all():
            raise DataValidationError("labels: must be whole numbers")
        array = whole.astype(np.int64)
    elif np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        array = array.astype(np.int64, copy=True)
    else:
        raise DataValidationError(f"labels: expected integers, got dtype {array.dtype}")
    if (array < MISSING_LABEL).any():
        raise DataValidationError(
            f"labels: negative value {int(array.min())}; use -1 for a missing label"
        )
    observed = array[array != MISSING_LABEL]
    if num_classes is None:
        num_classes = int(observed.max()) + 1 if observed.size else None
    else:
        num_classes = int(num_classes)
        if num_classes < 1:
            raise DataValidationError(f"num_classes: must be >= 1, got {num_classes}")
        if observed.size and observed.max() >= num_classes:
            raise DataValidationError(
                f"labels: value {int(observed.max())} is out of range for "
                f"num_classes={num_classes} (expected 0..{num_classes - 1})"
            )
    return array, num_classes


__all__ = ["MISSING_LABEL", "as_numpy", "check_features", "check_labels", "check_masks",
           "check_rows"]
