"""States saved before part of a module became a submodule of its own still load.

Up to 0.1.0 the model's standardisation statistics, scale floors, class frequencies,
modality weights and classifier sat on the model itself (``feature_loc_a``,
``classifier.0.weight``); they now belong to its submodules ``standardization`` and
``label_head`` (``standardization.feature_loc_a``, ``label_head.classifier.0.weight``).
:func:`flat_names_into` makes a load-state pre-hook that moves such flat entries to
their new names before ``load_state_dict`` matches keys, so run folders written by the
earlier layout load unchanged (``tests/test_run_compat.py``). The parameters keep their
order (the submodule sits where its parts were registered), so an optimiser state saved
with them resumes too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn


def flat_names_into(children: Sequence[str]) -> Callable[..., None]:
    """A load-state pre-hook (``with_module=True``) for a module whose submodules
    ``children`` hold entries that an older state has flat on the module itself: every
    ``<prefix><key>`` that is one of child ``c``'s state keys is renamed
    ``<prefix>c.<key>``, unless the new name is already there.

    The user's dict is not touched (``load_state_dict`` hooks receive its copy); an
    entry that matches no child stays where it is and is reported as unexpected, as
    any unknown key is."""

    def hook(module: nn.Module, state_dict, prefix: str, *args) -> None:
        for name in children:
            child = module._modules[name]  # not getattr: no Pyro statement inside a call
            for key in child.state_dict(keep_vars=True):
                old, new = prefix + key, f"{prefix}{name}.{key}"
                if old in state_dict and new not in state_dict:
                    state_dict[new] = state_dict.pop(old)

    return hook
