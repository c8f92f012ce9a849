"""What a checkpoint says it was trained on, and the check that a resumed fit is given
the same: :func:`data_fingerprint` (recorded in every checkpoint) and
:func:`check_resume` (compares the data, the model's and the guide's configuration).

The fingerprint of data in memory hashes every row (features, masks, labels: a few
milliseconds for mfeat). Data on disk is never read whole: its fingerprint hashes the
masks, labels, sizes and the arrays' shapes, dtypes and chunks, so a store whose
feature values changed in place with everything else the same is not caught.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..data.container import MultimodalData
from ..errors import CheckpointError, DataValidationError


def data_fingerprint(data: MultimodalData) -> dict[str, Any]:
    """A JSON-able summary of ``data``: ``modalities``, ``dims``, ``num_examples``,
    ``labels`` (whether it has any), ``hashed`` (``"rows"`` or ``"store"``: what the hash
    covers) and ``sha256``. Uses only ``MultimodalData``'s public attributes."""
    digest = hashlib.sha256()
    masks, labels = data.masks, data.labels
    for name in data.modalities:
        digest.update(name.encode() + b"\0")
        digest.update(np.ascontiguousarray(masks[name]).tobytes())
    if labels is not None:
        digest.update(b"labels\0" + np.ascontiguousarray(labels).tobytes())
    hashed = "store" if data.on_disk else "rows"
    if data.on_disk:
        try:
            arrays = data.features
        except DataValidationError:  # a split of a store: its sizes, masks and labels
            arrays = {}
        for name, array in arrays.items():
            meta = [name, list(array.shape), str(array.dtype), list(array.chunks)]
            digest.update(json.dumps(meta).encode())
    else:
        for name, array in data.features.items():
            digest.update(name.encode() + b"\0")
            digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return {"modalities": list(data.modalities), "dims": dict(data.dims),
            "num_examples": int(data.num_examples), "labels": labels is not None,
            "hashed": hashed, "sha256": digest.hexdigest()}


def data_differences(recorded: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """How ``given`` (a :func:`data_fingerprint`) differs from ``recorded``, one phrase
    per difference (``[]``: the same data)."""
    out = [f"{key}: the run's {recorded.get(key)!r}, given {given.get(key)!r}"
           for key in ("modalities", "num_examples", "labels")
           if recorded.get(key) != given.get(key)]
    dims_r, dims_g = recorded.get("dims", {}), given.get("dims", {})
    out += [f"features of {m!r}: the run's {dims_r[m]}, given {dims_g[m]}"
            for m in dims_r if m in dims_g and dims_r[m] != dims_g[m]]
    if not out and recorded.get("sha256") != given.get("sha256"):
        what = "rows" if given.get("hashed") == "rows" else "masks, labels or arrays"
        out.append(f"the same sizes but other {what} (sha256 "
                   f"{str(recorded.get('sha256'))[:12]}..., given "
                   f"{str(given.get('sha256'))[:12]}...)")
    return out


def config_differences(recorded: Mapping[str, Any], given: Mapping[str, Any],
                       prefix: str = "") -> list[str]:
    """The keys whose values differ between two JSON-able configurations, as
    ``"prefix.key: the run's A, given B"``; tuples and lists compare equal."""
    given = json.loads(json.dumps(dict(given), default=str))
    recorded = json.loads(json.dumps(dict(recorded), default=str))
    return [f"{prefix}{key}: the run's {recorded.get(key)!r}, given {given.get(key)!r}"
            for key in list(recorded) + [k for k in given if k not in recorded]
            if recorded.get(key) != given.get(key)]


def check_resume(state: Mapping[str, Any], *, source, model_config: Mapping[str, Any],
                 guide_config: Mapping[str, Any] | None, fingerprint: Mapping[str, Any],
                 new_data: bool = False) -> None:
    """Refuse to resume the run ``state`` (what
    :func:`~pyro_mm.runs.result.resume_state` read from ``source``) with a model, guide
    or data other than its own.

    ``new_data=True`` skips the data check (training continues on other data on
    purpose). A checkpoint of an earlier version has no fingerprint: one warning says
    the data cannot be checked.

    Raises:
        CheckpointError: listing every difference.
    """
    differ = []
    if "model_config" in state:
        differ += config_differences(state["model_config"], model_config, "model.")
    if guide_config is not None and "guide_config" in state:
        differ += config_differences(state["guide_config"], guide_config, "guide.")
    recorded = state.get("data_fingerprint")
    if recorded is None and not new_data:
        warnings.warn(f"resume_from {source}: the checkpoint has no fingerprint of its "
                      "training data (written by an earlier pyro_mm), so the data given "
                      "cannot be checked against it", UserWarning, stacklevel=4)
    elif recorded is not None and not new_data:
        differ += [f"data: {d}" for d in data_differences(recorded, fingerprint)]
    if differ:
        raise CheckpointError(
            f"resume_from {source}: not what the run was trained with; "
            + "; ".join(differ)
            + ". Resume with the run's own model (MultimodalDPMixture.from_config of its "
            "config.json 'model') and data, or pass new_data=True (pyro-mm train "
            "--new-data) to continue on other data on purpose")


#: The settings of ``fit`` that shape the optimisation a resumed run continues: one that
#: differs from the run's makes the continuation other than the run it resumes.
OPTIMISATION_SETTINGS = ("batch_size", "learning_rate", "clip_norm", "lr_decay",
                         "kl_warmup_epochs", "num_particles", "elbo", "seed")


def warn_of_other_settings(state: Mapping[str, Any], settings: Mapping[str, Any], *,
                           source) -> list[str]:
    """Warn, naming each, of the optimisation settings (:data:`OPTIMISATION_SETTINGS`)
    that differ between the resumed run ``state`` and this fit's ``settings``: allowed
    (a lower learning rate to fine-tune is a fair wish) but no longer an exact resume.
    Returns the differences (``[]``: none)."""
    recorded = state.get("fit_config") or {}
    keys = [k for k in OPTIMISATION_SETTINGS if k in recorded and k in settings]
    differ = config_differences({k: recorded[k] for k in keys},
                                {k: settings[k] for k in keys})
    if differ:
        warnings.warn(f"resume_from {source}: continuing with other settings than the "
                      "run's, so this is not an exact resume: " + "; ".join(differ),
                      UserWarning, stacklevel=4)
    return differ


__all__ = ["OPTIMISATION_SETTINGS", "check_resume", "config_differences",
           "data_differences", "data_fingerprint", "warn_of_other_settings"]
