"""Where a transform's state and hyperparameters live in a ``torch.optim.Optimizer``.

*Hyperparameters*: a transform's (possibly nested) hparams tree is flattened into param-group keys,
one per leaf, named by the dotted path (``"clip.max_norm"``, ``"adam.betas"``); a tuple of numbers
(``betas``) stays one value. The one leaf named ``lr`` (if there is exactly one) is exposed as plain
``"lr"`` so that ``torch.optim.lr_scheduler`` drives it; so are the one ``betas`` and the one
``momentum`` leaf, as ``"betas"``/``"momentum"`` (``OneCycleLR``/``CyclicLR`` with
``cycle_momentum=True``). A name several leaves share (a :func:`~functional_optim.partition` of
two ``adam``, :func:`~functional_optim.parameter_groups`) keeps their dotted keys.

*State*: the adapter runs a group's transform on a dict ``{name: param}``. Every state subtree that
is a dict with exactly those names is per-parameter; the rest is shared by the group. Per-parameter
leaves are stored in ``optimizer.state[p]`` as nested dicts keyed by their path (without the
parameter name): ``{"adam": {"step": ..., "mu": ..., "nu": ...}}``. Shared leaves are stored in
every
parameter's state of the group (the same tensor) and read back from the first.

*Memory*: a stored state tensor owns its memory (:func:`unshared`: never a parameter or a
gradient, which the step and backward write in place), and one shaped like its parameter has
the parameter's layout once loaded (:func:`copy_like`), as the fused kernels need.
"""

from __future__ import annotations

from collections.abc import Iterator
from numbers import Number
from typing import Any

import optree
import torch

from .._fused import dense

Path = tuple


def _is_namedtuple(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")


def _is_value_tuple(node: Any) -> bool:
    return isinstance(node, tuple) and not _is_namedtuple(node) and all(
        isinstance(x, (Number, torch.Tensor)) for x in node)


#: the leaves exposed under their own name when a transform has exactly one of each: the keys
#: torch's schedulers write (``lr``; ``betas``/``momentum`` for ``cycle_momentum``)
SCHEDULED = ("lr", "betas", "momentum")


def hparam_keys(hparams: Any) -> dict[str, Path]:
    """Flat group key -> path into ``hparams``, for every hyperparameter leaf."""
    paths: list[Path] = []

    def walk(node: Any, path: Path) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (k,))
        elif isinstance(node, (tuple, list)) and not _is_value_tuple(node):
            for i, v in enumerate(node):
                walk(v, path + (i,))
        else:
            paths.append(path)

    walk(hparams, ())
    keys = {".".join(map(str, p)): p for p in paths}
    for name in SCHEDULED:
        found = [k for k, p in keys.items() if p and p[-1] == name]
        if len(found) == 1 and name not in keys:
            keys[name] = keys.pop(found[0])
    return keys


def get_path(tree: Any, path: Path) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def hparams_from_group(defaults: Any, keys: dict[str, Path], group: dict) -> Any:
    """The transform's hparams tree with every leaf read from ``group``."""
    by_path = {p: group[k] for k, p in keys.items()}

    def build(node: Any, path: Path) -> Any:
        if path in by_path:
            value = by_path[path]
            return tuple(value) if isinstance(node, tuple) else value
        if isinstance(node, dict):
            return {k: build(v, path + (k,)) for k, v in node.items()}
        return tuple(build(v, path + (i,)) for i, v in enumerate(node))

    return build(defaults, ())


def walk_state(node: Any, names: frozenset, path: Path = (), owner: Any = None
               ) -> Iterator[tuple[Path, Any, Any]]:
    """``(path, owner, leaf)`` for every leaf, in optree's leaf order (dict keys sorted);
    ``owner`` is the parameter name or ``None``."""
    if isinstance(node, dict) and owner is None and names and frozenset(node) == names:
        for name in sorted(node):
            yield from walk_state(node[name], names, path, name)
    elif isinstance(node, dict):
        for k in sorted(node):
            yield from walk_state(node[k], names, path + (str(k),), owner)
    elif _is_namedtuple(node):
        inline = getattr(type(node), "_inline", ())  # (a wrapper's fields that add no level)
        for field in node._fields:
            yield from walk_state(getattr(node, field), names,
                                  path if field in inline else path + (field,), owner)
    elif isinstance(node, (tuple, list)):
        for i, v in enumerate(node):
            yield from walk_state(v, names, path + (str(i),), owner)
    elif node is not None:
        yield path, owner, node


def leaves_along(spec: Any, tree: Any) -> list:
    """The leaves of ``tree``, flattened along ``spec`` (the plan's structure: the state's dicts
    of names are not sorted again) when it has that structure; else (and while dynamo traces)
    flattened on their own."""
    if spec is not None:
        try:
            return spec.flatten_up_to(tree)
        except ValueError:
            pass
    return optree.tree_leaves(tree)


def nested_get(store: dict, path: Path) -> Any:
    for k in path:
        store = store[k]
    return store


def nested_set(store: dict, path: Path, value: Any) -> None:
    nested_set_column([store], path, [value])


def nested_set_column(stores: list, path: Path, values: list) -> None:
    """``nested_set(store, path, value)`` for each store and value (the loop inlined: this runs
    every step, once per state leaf)."""
    *inner, last = path
    for store, value in zip(stores, values):
        for k in inner:
            store = store.setdefault(k, {})
        store[last] = value


def nested_column(stores: list, path: Path) -> list:
    """``nested_get(store, path)`` of each store, ``None`` where ``nested_has`` is false."""
    column = stores
    try:
        for k in path[:-1]:
            column = [x.get(k, _NO_DICT) for x in column]
        return [x.get(path[-1]) for x in column]
    except AttributeError:  # a value on the way that is not a dict: the exact walk
        return [nested_get(s, path) if nested_has(s, path) else None for s in stores]


_NO_DICT: dict = {}  # what a missing level reads as (never written)


def nested_has(store: dict, path: Path) -> bool:
    for k in path:
        if not isinstance(store, dict) or k not in store:
            return False
        store = store[k]
    return True


def plain(x: Any) -> bool:
    """Whether ``x`` is a plain strided tensor or parameter (not sparse, not a DTensor or other
    subclass)."""
    return type(x) in (torch.Tensor, torch.nn.Parameter) and x.layout == torch.strided


def copy_like(value: torch.Tensor, like: Any) -> torch.Tensor:
    """A copy of the loaded state tensor ``value``; one shaped like the parameter ``like`` takes
    its memory layout where that is dense, so that a checkpoint saved in another layout
    (contiguous, loaded after ``model.to(memory_format=torch.channels_last)``) keeps the fused
    kernels (:func:`functional_optim._fused.linear`)."""
    if plain(like) and plain(value) and value.shape == like.shape and \
            value.stride() != like.stride() and dense(like):
        return torch.empty_like(like, dtype=value.dtype, device=value.device).copy_(value)
    return value.clone()


def unshared(state: Any, tensors: list) -> Any:
    """``state`` with a copy of each plain tensor that shares memory with one of ``tensors``:
    the parameters (the step adds to them in place) and their gradients (backward and
    ``zero_grad`` write them), which a pure transform may keep as state."""
    storages = {t.untyped_storage().data_ptr() for t in tensors if plain(t)}
    return optree.tree_map(lambda x: x.clone() if plain(x) and
                           x.untyped_storage().data_ptr() in storages else x, state)


# -- where a column (one state path, every parameter) sits in the flat list of state leaves

def slice_of(positions: list) -> slice | list:
    """``positions`` as a slice when evenly spaced, else the list (:func:`take` and
    :func:`assign` read and write either)."""
    if len(positions) == 1:
        return slice(positions[0], positions[0] + 1, 1)
    step = positions[1] - positions[0]
    if step > 0 and positions == list(range(positions[0], positions[-1] + 1, step)):
        return slice(positions[0], positions[-1] + 1, step)
    return positions


def positions(at: slice | list) -> Any:
    """The indices that ``at`` (a :func:`slice_of`) names."""
    return range(at.start, at.stop, at.step) if isinstance(at, slice) else at


def take(seq: list, at: slice | list) -> list:
    return seq[at] if isinstance(at, slice) else [seq[k] for k in at]


def assign(seq: list, at: slice | list, values: list) -> None:
    if isinstance(at, slice):
        seq[at] = values
    else:
        for k, v in zip(at, values):
            seq[k] = v
