"""How a :class:`~functional_optim.optim.FunctionalOptimizer` loads a checkpoint: the strict
``load_state_dict`` (every rule of :mod:`functional_optim.optim._checkpoint` checked before
anything is loaded), each state entry as it is stored (dtypes from ``init``, the parameter's
device and memory layout, the precision policy's conversions), and the copies that keep loaded
state from sharing memory with the checkpoint.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..base import Transform
from . import _checkpoint, _layout, _precision

__all__ = ["CheckpointLoading", "stored_state"]

_OPTIONS = ("foreach", "differentiable")


class _Loaded:
    """A checked state entry ready to be stored (not a dict nor an iterable, so torch's cast
    in ``load_state_dict`` passes it through untouched)."""

    __slots__ = ("entry",)

    def __init__(self, entry: dict):
        self.entry = entry


def stored_state(state: dict) -> dict:
    """The loaded state as the optimizer keeps it: a checked entry unwrapped, else a copy (torch
    keeps tensors of the right dtype and device as they are; the step updates state in place,
    so it never shares storage with the checkpoint)."""
    out = copy.copy(state)  # keeps torch's defaultdict
    for p, entry in state.items():
        out[p] = entry.entry if isinstance(entry, _Loaded) else _own(entry, p)
    return out


def _own(value: Any, like: Any = None) -> Any:
    """``value`` with every tensor copied (``_layout.copy_like`` the parameter ``like``;
    dicts, lists and tuples rebuilt)."""
    if isinstance(value, torch.Tensor):
        return _layout.copy_like(value, like)
    if isinstance(value, _precision.Kept):  # converted by the precision policy: ours already
        return value.value
    if isinstance(value, dict):  # a defaultdict keeps its factory
        out = copy.copy(value)
        for k, v in value.items():
            out[k] = _own(v, like)
        return out
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_own(v, like) for v in value)
    return value



class CheckpointLoading:
    """The checkpoint half of :class:`~functional_optim.optim.FunctionalOptimizer` (a mixin
    before ``torch.optim.Optimizer``); the class provides ``_step_transform``, ``_names`` and
    ``defaults``."""

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's ``load_state_dict``, strict: once its pre-hooks ran (they may adapt an old
        checkpoint), the whole checkpoint is checked before anything is loaded. One that breaks
        a rule raises ``ValueError`` naming the parameter (its ``param_names`` entry, group and
        index in ``state_dict["state"]``), the state key, the expected and the received, and
        leaves the optimizer unchanged.

        The rules (the migration guide's "Loading checkpoints" lists them with examples): the
        groups list each parameter once, and state exists only for listed ones; a group lacking
        an option that older versions did not save gets its default, one lacking a
        hyperparameter is refused; a parameter's entry is empty (it starts fresh) or holds
        everything the optimizer keeps for it, and nothing it never keeps (``None`` counts as
        absent); each value is a tensor of the shape and kind ``init`` makes (complex for a
        complex parameter, real floating point for a real one); step counts are whole numbers
        >= 0.

        Each state tensor shaped like its parameter is loaded in the parameter's memory layout
        (a contiguous checkpoint into a channels_last model keeps the fused kernels).

        A ``FunctionalOptimizer`` loads each state leaf in the dtype ``init`` gives it, on the
        parameter's device (not torch's cast to the parameter's dtype): counts stay integers, a
        low-precision or ``scalar_state_dtype`` state keeps its dtype, and a resumed run is the
        uninterrupted one, bit for bit. The drop-in classes load as torch.optim does: every
        state tensor but ``step`` is cast to the parameter's dtype and device (NAdam's
        ``mu_product``, ASGD's ``eta`` and ``mu`` become float64 for float64 parameters, in
        torch as here), and a Python-number ``step`` of an older checkpoint becomes a tensor as
        torch's ``__setstate__`` makes it.
        """
        handle = self.register_load_state_dict_pre_hook(type(self)._check_checkpoint)
        try:  # registered last: it runs after the user's pre-hooks
            super().load_state_dict(state_dict)
        finally:
            handle.remove()

    def _check_checkpoint(self, state_dict: dict) -> dict | None:
        """The check of :meth:`load_state_dict`; returns ``state_dict`` with each entry as it is
        to be loaded (``None``: the numbers or sizes of the groups differ, torch raises)."""
        owner = f"{type(self).__name__}.load_state_dict"
        saved_groups, state = state_dict["param_groups"], state_dict["state"]
        if not _checkpoint.check_groups(owner, self.param_groups, saved_groups, state):
            return None
        loaded = dict(state)
        for index, (current, saved) in enumerate(zip(self.param_groups, saved_groups)):
            group = self._loaded_group(owner, index, current, saved)
            ids = saved["params"]
            loaded.update(self._check_group_state(
                owner, index, group, ids, {k: state[i] for k, i in enumerate(ids) if i in state}))
        return {**state_dict, "state": loaded}

    def _loaded_group(self, owner: str, index: int, current: dict, saved: dict) -> dict:
        """``saved`` as ``load_state_dict`` makes it the group of ``current``'s parameters
        (torch keeps the current ``param_names`` when the checkpoint has none), with the
        options it lacks filled in; a missing hyperparameter raises."""
        group = {**saved, "params": current["params"]}
        if "param_names" in current and "param_names" not in saved:
            group["param_names"] = current["param_names"]
        missing = [k for k in self._required_group_keys() if k not in group]
        if missing:
            raise ValueError(f"{owner}: param group {index}: expected the hyperparameters "
                             f"{self._required_group_keys()}, got a group without {missing} "
                             "(another optimizer's checkpoint?); nothing was loaded")
        self._fill_group(group)
        _checkpoint.check_names(owner, index, group)
        return group

    def _required_group_keys(self) -> list:
        """The group keys a checkpoint must carry: the transform's hyperparameters."""
        return [k for k in self.defaults if k not in _OPTIONS]

    def _fill_group(self, group: dict) -> None:
        """Gives ``group`` (loaded or unpickled) the keys it lacks: the optimizer's defaults."""
        for k, v in self.defaults.items():
            group.setdefault(k, v)

    def _check_group_state(self, owner: str, index: int, group: dict, ids: list,
                           entries: dict) -> dict:
        """Checks the saved state ``entries`` of ``group`` (by position in it; ``ids`` are the
        checkpoint's indices of its parameters); returns them, by index, as they are to be
        loaded (see :meth:`_loaded_entry`)."""
        expected = self._expected_state(self._step_transform(group), group)
        numbers = self._number_keys()
        policy = self.__dict__.get("_policy") is not None
        converted: list = []
        out = {}
        for k, entry in entries.items():
            where = _checkpoint.Where.of(owner, index, group, ids, k)
            full = expected[k]
            required = full if not policy else {  # the policy's own leaves are optional
                path: leaf for path, leaf in full.items() if path not in _precision.POLICY_PATHS}
            p = group["params"][k]
            if policy:
                entry = _precision.encoded(owner, p, entry, full, self._policy, converted)
            present = _checkpoint.check_entry(where, entry, required, self._known_state(full),
                                              numbers)
            if policy:
                entry = _precision.loaded(p, entry, present, full, converted)
            out[ids[k]] = self._loaded_entry(p, entry, present, full)
        _precision.warn_converted(owner, converted)
        return out

    def _expected_state(self, tx: Transform, group: dict) -> list[dict]:
        """What each parameter of ``group`` keeps: its stored key paths (see
        :meth:`_state_key`) and the leaves ``init`` makes for them (on the meta device)."""
        params = group["params"]
        names = self._names(group, params)
        template = tx.init({n: torch.empty_like(p, device="meta") for n, p in zip(names, params)})
        position = {n: k for k, n in enumerate(names)}
        own: list = [[] for _ in params]
        shared = []
        for path, owner, leaf in _layout.walk_state(template, frozenset(names)):
            if owner is None:
                shared.append((path, _checkpoint.Leaf(leaf, True)))
            else:
                own[position[owner]].append((path, _checkpoint.Leaf(leaf, False)))
        out = []
        for p, leaves in zip(params, own):
            keys = ((self._state_key(path, p), leaf) for path, leaf in leaves + shared)
            out.append({key: leaf for key, leaf in keys if key is not None})
        return out

    def _state_key(self, path: tuple, p: torch.Tensor) -> tuple | None:
        """Where the state leaf at ``path`` is stored in ``self.state[p]`` (nested keys), or
        ``None`` when it is not stored (derived from others)."""
        return path

    def _known_state(self, expected: dict) -> set:
        """Every key path a parameter's state may hold (here: what the transform keeps)."""
        return set(expected)

    def _number_keys(self) -> frozenset:
        """Key paths whose value may be a Python number (none here: state leaves are tensors)."""
        return frozenset()

    def _loaded_entry(self, p: torch.Tensor, entry: dict, present: dict, expected: dict) -> Any:
        """A checked entry as it is to be stored: every leaf in the dtype ``init`` gives it, on
        ``p``'s device, a copy in ``p``'s layout (``_layout.copy_like``; torch's cast passes
        the wrapper through)."""
        out: dict = {}
        for path, value in present.items():
            value = value.to(device=p.device, dtype=expected[path].like.dtype)
            _layout.nested_set(out, path, _layout.copy_like(value, p))
        return _Loaded(out)
