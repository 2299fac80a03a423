"""Running a transform with its state kept by storages
(:class:`~functional_optim.transforms.storage.Storage`; the mechanism of
:func:`~functional_optim.transforms.with_state_dtype`): walking a state by field, resolving
each leaf's storage, decoding and encoding batched by storage, and the two ways to run the
wrapped transform (whole, or chunk by chunk of leaves for one pointwise rule)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optree
import torch

from .. import _execute
from .. import tree as _tree
from .quantized import Quantized
from .storage import CastStorage, Storage


def _is_namedtuple(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")


#: what the walk treats as one state value: tensors, and quantized codes with their scales (a
#: policy around a quantized state passes it through whole: its float32 scales stay float32)
_UNITS = (torch.Tensor, Quantized)


def _map_state(fn, node: Any, old: Any, field: str | None, holds, like: Any = None,
               match=None) -> Any:
    """``fn(new_leaf, old_leaf, field, like)`` on every tensor and :data:`_UNITS` value (or
    stored unit: ``holds(field, old)``) of ``node``, ``old`` being the same place in the stored
    state; ``field`` is the nearest enclosing NamedTuple field name, ``like`` the update leaf
    at that place where the field's value has the updates' structure (``match(value)`` gives
    the updates), else ``None``."""
    if holds(field, old) or isinstance(node, _UNITS):
        return fn(node, old, field, like if isinstance(like, torch.Tensor) else None)
    if _is_namedtuple(node):
        return type(node)(*(_map_state(fn, v, o, f, holds, match and match(o), match)
                            for f, v, o in zip(node._fields, node, old)))
    if isinstance(node, Mapping):
        return type(node)({k: _map_state(fn, v, old[k], field, holds,
                                         like.get(k) if isinstance(like, Mapping) else None,
                                         match) for k, v in node.items()})
    if isinstance(node, (tuple, list)):
        likes = like if isinstance(like, (tuple, list)) and len(like) == len(node) else \
            (None,) * len(node)
        return type(node)(_map_state(fn, v, o, field, holds, w, match)
                          for v, o, w in zip(node, old, likes))
    return node


def _matcher(updates: Any):
    """``match(value)``: ``updates`` where ``value`` has their structure (its subtrees at the
    updates' leaves: a stored unit counts as one), else ``None``."""
    spec = optree.tree_structure(updates, none_is_leaf=True)

    def match(value):
        try:
            spec.flatten_up_to(value)
        except (ValueError, TypeError):
            return None
        return updates

    return match


def _batched(units: list, run) -> list:
    """``run(storage, args)`` on the ``units`` (``(storage, *args)``) of each storage at once
    (one call per storage, in their order); the results in the units' order."""
    groups: dict = {}
    for i, (s, *_) in enumerate(units):
        groups.setdefault(id(s), (s, []))[1].append(i)
    out: list = [None] * len(units)
    for s, where in groups.values():
        for i, value in zip(where, run(s, [units[i][1:] for i in where])):
            out[i] = value
    return out


def _decode(units: list, dtype: torch.dtype) -> list:
    """The values of ``(storage, stored, like)`` units in ``dtype``, batched by storage."""
    return _batched(units, lambda s, a: s.decode_all([x for x, _ in a], dtype,
                                                     [w for _, w in a]))


def _encode(units: list, key: torch.Tensor | None) -> list:
    """What ``(storage, value, salt)`` units store, batched by storage."""
    return _batched(units, lambda s, a: s.encode_all([x for x, _ in a], key,
                                                     [k for _, k in a]))


def resolver(base: Storage | None, stores: dict, stochastic: bool):
    """``storage_of(field, leaf)``: the storage of a state leaf (a fresh tensor, or what the
    state holds): a named field's, else the default's for floating leaves of rank >= 1 (with
    stochastic rounding and no default: their own dtype, stochastically); ``None`` where the
    leaf keeps its dtype (complex, integer, or a tensor the storage does not take)."""
    def storage_of(field: str | None, leaf: Any) -> Storage | None:
        s = stores.get(field)
        if s is None and base is not None:
            s = base.for_field(field)
        if not isinstance(leaf, torch.Tensor):
            return s if s is not None and s.holds(leaf) else None
        if not leaf.is_floating_point():
            return None
        if field not in stores:
            if leaf.ndim == 0:
                return None
            if s is None and stochastic:
                s = CastStorage(leaf.dtype, True)
        return s if s is not None and s.takes(leaf) else None

    return storage_of


def store_fresh(state: Any, storage_of) -> Any:
    """A fresh (``init``'s) state with each leaf as its storage keeps it."""
    def encode(x, old, field, like):
        s = storage_of(field, x)
        return x if s is None else s.encode(x, None, 0)

    return _map_state(encode, state, state, None,
                      lambda f, old: not isinstance(old, torch.Tensor) and
                      storage_of(f, old) is not None)


def _stored_as(name: str, s: Storage, field: str | None, old: Any, leaf=lambda: "") -> Storage:
    """``s``, after checking that it holds ``old`` (a float tensor where quantized codes are
    expected is refused, never read as a float state); ``leaf()`` names the place (called only
    for the error)."""
    if not s.holds(old):
        what = "tensor" if isinstance(old, torch.Tensor) else type(old).__name__
        raise _tree.TreeMismatchError(
            f"{name}: {leaf()}state field {field!r}: got a {what} of shape "
            f"{tuple(getattr(old, 'shape', ()))} and dtype {getattr(old, 'dtype', None)}, "
            f"expected what {s!r} stores: convert a float state explicitly (quantize_tree, "
            "or the adapter's load_state_dict)")
    return s


#: at most this many elements of the state are decoded at once (per state field) when the
#: wrapped transform is one pointwise rule
CHUNK = 1 << 22


def _chunks(leaves: list) -> list[list[int]]:
    """Consecutive leaf indices in runs of at most :data:`CHUNK` elements (a larger leaf alone)."""
    out: list[list[int]] = [[]]
    size = 0
    for i, x in enumerate(leaves):
        n = x.numel() if isinstance(x, torch.Tensor) else 0
        if out[-1] and size + n > CHUNK:
            out.append([])
            size = 0
        out[-1].append(i)
        size += n
    return out


def fields_of(node: Any, found: set) -> set:
    if _is_namedtuple(node):
        found.update(node._fields)
        for v in node:
            fields_of(v, found)
    elif isinstance(node, Mapping):
        for v in node.values():
            fields_of(v, found)
    elif isinstance(node, (tuple, list)):
        for v in node:
            fields_of(v, found)
    return found


def _field_names(node: Any, field: str | None, found: dict) -> dict:
    """``id(subtree) -> field``: the nearest enclosing NamedTuple field name of every container
    subtree of ``node`` (a fused rule's state columns are such subtrees)."""
    found[id(node)] = field
    if _is_namedtuple(node):
        children = zip(node._fields, node)
    elif isinstance(node, Mapping):
        children = ((field, v) for v in node.values())
    elif isinstance(node, (tuple, list)):
        children = ((field, v) for v in node)
    else:
        return found
    for f, v in children:
        if not isinstance(v, _UNITS) and v is not None:
            _field_names(v, f, found)
    return found


def floating(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _kept(x: Any, old: Any) -> Any:
    """A new state leaf without a storage, in the dtype it had."""
    return x.to(old.dtype) if floating(x) and isinstance(old, torch.Tensor) and \
        x.dtype != old.dtype else x


def run_whole(name, inner, storage_of, holds, up, wide, key, updates, stored, params, hparams,
               extra):
    """The policy around any transform: the whole state decoded (each storage's leaves at
    once), ``inner.update``, the new state encoded; state leaf ``i`` (in walk order) draws
    with salt ``2i``."""
    match = _matcher(updates)
    units: list = []

    def read(x, old, field, like):
        s = storage_of(field, old)
        if s is not None:
            units.append((_stored_as(name, s, field, old), old, like))
        return old

    _map_state(read, stored, stored, None, holds, None, match)
    values = iter(_decode(units, wide))
    given = _map_state(lambda x, old, field, like: next(values) if storage_of(field, old)
                       is not None else up(old), stored, stored, None, holds)
    u, new = inner.update(updates, given, params, hparams, **extra)
    units = []

    def write(x, old, field, like):
        s = storage_of(field, old)
        if s is not None:
            units.append((s, x, 2 * len(units)))
        return x

    _map_state(write, new, stored, None, holds)
    values = iter(_encode(units, key))
    return u, _map_state(lambda x, old, field, like: next(values) if storage_of(field, old)
                         is not None else _kept(x, old), new, stored, None, holds)


def run_chunked(name, inner, storage_of, holds, up, wide, key, updates, stored, params,
                 hparams, extra):
    """The policy around one pointwise rule (:attr:`Transform.pointwise`), chunk by chunk
    (:func:`_chunks`): each chunk's state decoded (each storage's leaves at once), the rule run
    on it (per leaf, or the multi-tensor path over the chunk's leaves), its new state encoded;
    so the decoded copies of the state never exceed one chunk. The state column of field ``f``
    (matched by identity in the wrapped state) has its storage; leaf ``i`` of column ``j``
    draws with salt ``2 (j n + i)`` (``n`` leaves)."""
    spec = inner.pointwise
    call = spec.prepare(updates, stored, params, hparams)
    leaves, treespec = optree.tree_flatten(updates, none_is_leaf=True)
    named = _field_names(stored, None, {})
    fields = [named.get(id(column)) for column in call.states]
    states = [treespec.flatten_up_to(column) for column in call.states]
    inputs = [treespec.flatten_up_to(x) for x in call.inputs]
    n = len(leaves)
    new_leaves, new_states = list(leaves), [list(column) for column in states]
    for chunk in _chunks(leaves):
        at = {i: k for k, i in enumerate(chunk)}
        places = [(j, i, storage_of(field, column[i])) for j, (field, column) in
                  enumerate(zip(fields, states)) for i in chunk if leaves[i] is not None]
        places = [(j, i, _stored_as(name, s, fields[j], states[j][i],
                                    lambda i=i: f"leaf {_tree.leaf_label(updates, i)}: "))
                  for j, i, s in places if s is not None]
        decoded = dict(zip([(j, i) for j, i, _ in places],
                           _decode([(s, states[j][i], leaves[i]) for j, i, s in places], wide)))
        got = _execute.elementwise(
            call.rule, call.hparams, [leaves[i] for i in chunk],
            tuple([decoded[j, i] if (j, i) in decoded else up(column[i]) for i in chunk]
                  for j, column in enumerate(states)),
            tuple([x[i] for i in chunk] for x in inputs), name=f"{name}({spec.name})",
            complex_as_real=spec.complex == "as_real", real_only=spec.real_only,
            input_names=call.input_names, donate_state=call.donate_state or False,
            sparse=False, state_like=call.state_like)
        encoded = dict(zip([(j, i) for j, i, _ in places],
                           _encode([(s, got[1 + j][at[i]], 2 * (j * n + i))
                                    for j, i, s in places], key)))
        for k, i in enumerate(chunk):
            new_leaves[i] = got[0][k]
            for j, column in enumerate(states):
                new_states[j][i] = encoded[j, i] if (j, i) in encoded else \
                    _kept(got[1 + j][k], column[i])
    return (optree.tree_unflatten(treespec, new_leaves),
            call.finish(tuple(optree.tree_unflatten(treespec, column)
                              for column in new_states)))
