"""Pytree helpers built on optree.

Every function here treats ``None`` as a leaf that stands for "no tensor" (a frozen parameter, a
missing gradient): it passes through as ``None`` and costs nothing. Trees are any optree pytree:
dicts, lists, tuples, NamedTuples, nested.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import optree
import torch
import torch.autograd.forward_ad as _forward_ad

__all__ = [
    "TreeMismatchError",
    "check_params",
    "leaf_mismatch",
    "check_leaves",
    "leaf_label",
    "leaves",
    "structure",
    "flatten_like",
    "map",
    "zeros_like",
    "add",
    "sub",
    "scale",
    "cast",
    "global_norm",
    "num_leaves",
    "num_elements",
    "named_leaves",
    "names",
    "unshared",
]

_NONE_IS_LEAF = {"none_is_leaf": True}


class TreeMismatchError(ValueError):
    """Two trees that must match do not: their structures differ, or a leaf's shape, dtype or
    device differs from its parameter's or its state's."""


_NAMED = "dict(model.named_parameters())"


def _mistake(x: Any) -> str | None:
    """What to pass instead of ``x``, when it is a usual mistake for a tree of parameters."""
    if isinstance(x, Iterator):
        return (f"a {type(x).__name__} (model.parameters()?), which optree takes for one leaf "
                f"and which yields the tensors only once, unnamed: pass {_NAMED}")
    if isinstance(x, torch.nn.Module):
        return f"a torch.nn.Module ({type(x).__name__}): pass {_NAMED}"
    if isinstance(x, (list, tuple)) and x and all(
            isinstance(g, Mapping) and "params" in g for g in x):
        return (f"torch.optim param groups (dicts with a 'params' entry): pass the parameters "
                f"as one tree, {_NAMED}, and give per-group hyperparameters with "
                "functional_optim.partition or parameter_groups (or use the param groups with "
                "functional_optim.optim.FunctionalOptimizer)")
    return None


def check_params(params: Any, where: str = "init") -> None:
    """Raise ``TypeError`` unless ``params`` is a pytree whose leaves are tensors or ``None``.

    A bare tensor is a valid tree (one leaf). The usual mistakes (``model.parameters()``, a
    module, torch.optim param groups) are named with what to pass instead.
    """
    mistake = _mistake(params)
    if mistake is not None:
        raise TypeError(f"{where}: expected a pytree of tensors, got {mistake}")
    flat = leaves(params)
    if all(x is None or isinstance(x, torch.Tensor) for x in flat):
        return
    name, x = next((n, x) for n, x in named_leaves(params)
                   if x is not None and not isinstance(x, torch.Tensor))
    where_x = f"leaf {name!r} is" if name else "got"  # (a tree that is one leaf)
    raise TypeError(f"{where}: expected a pytree of tensors (or None), but {where_x} "
                    + (_mistake(x) or f"a {type(x).__name__}"))


def leaves(tree: Any) -> list:
    """The leaves of ``tree`` in optree order, ``None`` leaves included."""
    return optree.tree_leaves(tree, **_NONE_IS_LEAF)


def structure(tree: Any) -> optree.PyTreeSpec:
    """The structure of ``tree`` (``None`` counts as a leaf)."""
    return optree.tree_structure(tree, **_NONE_IS_LEAF)


def _paths(spec: optree.PyTreeSpec) -> list[str]:
    return [_path_name(p) for p in spec.paths()]


def _describe(spec: optree.PyTreeSpec, limit: int = 400) -> str:
    text = repr(spec)
    return text if len(text) <= limit else text[:limit] + "...)"


def mismatch_message(name_a: str, spec_a, name_b: str, spec_b) -> str:
    """A message naming both structures and the first paths that differ."""
    only_a = [p for p in _paths(spec_a) if p not in set(_paths(spec_b))]
    only_b = [p for p in _paths(spec_b) if p not in set(_paths(spec_a))]
    lines = [
        f"{name_a} and {name_b} have different tree structures.",
        f"  {name_a}: {_describe(spec_a)}",
        f"  {name_b}: {_describe(spec_b)}",
    ]
    if only_a:
        lines.append(f"  only in {name_a}: {only_a[:5]}")
    if only_b:
        lines.append(f"  only in {name_b}: {only_b[:5]}")
    return "\n".join(lines)


def flatten_like(tree: Any, spec: optree.PyTreeSpec, name: str, ref_name: str) -> list:
    """Flatten ``tree``, raising :class:`TreeMismatchError` unless its structure is ``spec``.

    Eagerly flattened along ``spec`` in C (a dict's keys are not sorted again); what that
    leaves open (a subtree where ``spec`` has a leaf) is settled by the leaves being tensors or
    ``None``, else by flattening ``tree`` on its own."""
    if not torch.compiler.is_compiling():  # (dynamo traces optree's functions, not this)
        try:
            flat = spec.flatten_up_to(tree)
        except (ValueError, TypeError):
            flat = None
        if flat is not None and all([x is None or isinstance(x, torch.Tensor) for x in flat]):
            return flat
    flat, tree_spec = optree.tree_flatten(tree, **_NONE_IS_LEAF)
    if tree_spec != spec:
        raise TreeMismatchError(mismatch_message(ref_name, spec, name, tree_spec))
    return flat


def leaf_mismatch(g: torch.Tensor, x: Any, what: str, shape: bool = True,
                  dtype: bool = True) -> str | None:
    """``None`` when ``x`` is a tensor on the update ``g``'s device with its shape and dtype
    (each where asked); else the first difference, for an error message.

    The rule of the functional API: an update leaf, its parameter and its state tensors agree
    in shape, dtype and device; nothing is broadcast, promoted or moved implicitly. Reads
    metadata only: static under ``torch.compile`` and ``make_fx`` (checked once, when
    tracing), logical shapes under ``vmap``.
    """
    if not isinstance(x, torch.Tensor):
        return f"its {what} must be a tensor, got {type(x).__name__}"
    if shape and x.shape != g.shape:
        return (f"the update has shape {tuple(g.shape)} but its {what} has shape "
                f"{tuple(x.shape)}")
    if dtype and x.dtype != g.dtype:
        return (f"the update has dtype {g.dtype} but its {what} has dtype {x.dtype} (no "
                "implicit casts: an update, its parameter and its state share one dtype)")
    if x.device != g.device:
        return (f"the update is on device {g.device} but its {what} is on {x.device} (move "
                "them to the same device)")
    return None


def check_leaves(owner: str, updates: Any, tree: Any, tree_name: str, what: str,
                 dtype: bool = True) -> None:
    """Raise :class:`TreeMismatchError` unless ``tree`` has the structure of ``updates`` and
    each of its leaves matches its update (:func:`leaf_mismatch`; ``None`` leaves skipped).

    A pass of its own over the leaves: for paths that are not hot, or to name the leaf after
    torch raised."""
    flatten_like(tree, structure(updates), tree_name, "updates")
    rows: list = []
    optree.tree_map(lambda *xs: rows.append(xs), updates, tree, **_NONE_IS_LEAF)
    for i, (g, x) in enumerate(rows):
        if g is not None and x is not None:
            problem = leaf_mismatch(g, x, what, dtype=dtype)
            if problem is not None:
                raise TreeMismatchError(f"{owner}: leaf {leaf_label(updates, i)}: {problem}")


def leaf_label(tree: Any, i: int) -> str:
    """The dotted path of leaf ``i`` of ``tree``, quoted, for error messages (``'enc.0.weight'``,
    ``'<root>'`` for a tree that is one leaf). ``i`` counts in ``optree.tree_map``'s order, which
    under ``torch.compile`` follows a dict's insertion order where optree's paths are sorted:
    the leaf is found by identity."""
    flat: list = []
    optree.tree_map(flat.append, tree, **_NONE_IS_LEAF)
    return repr(next(n for n, x in named_leaves(tree) if x is flat[i]) or "<root>")


def unshared(tree: Any) -> Any:
    """``tree`` with every tensor that is an earlier leaf again cloned: each leaf its own buffer
    (a state made of one ``zero`` used twice would otherwise be written through both names by an
    in-place step, see :func:`functional_optim.capture.inplace_step`). Leaves are compared by
    identity: by ``id`` eagerly, by ``is`` inside a ``torch.compile`` trace (where ``id`` of a
    traced tensor is not the eager one's)."""
    traced = torch.compiler.is_compiling()
    seen: list = []
    ids: set = set()

    def own(x):
        if not isinstance(x, torch.Tensor):
            return x
        again = any(x is y for y in seen) if traced else id(x) in ids
        if again:
            return x.clone()
        if traced:
            seen.append(x)
        else:
            ids.add(id(x))
        return x

    return optree.tree_map(own, tree, none_is_leaf=True)


def map(fn: Callable, tree: Any, *rest: Any) -> Any:  # noqa: A001 - mirrors tree_map
    """``fn`` applied leaf-wise; ``None`` in ``tree`` stays ``None`` without calling ``fn``."""
    try:
        return optree.tree_map(lambda x, *r: None if x is None else fn(x, *r), tree, *rest,
                               **_NONE_IS_LEAF)
    except ValueError:
        spec = structure(tree)
        for i, r in enumerate(rest):
            flatten_like(r, spec, f"tree {i + 2}", "tree 1")
        raise


def zeros_like(tree: Any, dtype: torch.dtype | None = None) -> Any:
    """A tree of zeros shaped like ``tree`` (optionally of another dtype)."""
    return map(lambda x: torch.zeros_like(x, dtype=dtype), tree)


def add(a: Any, b: Any, alpha: float | torch.Tensor = 1) -> Any:
    """``a + alpha * b`` leaf-wise; a ``None`` in ``b`` leaves ``a``'s leaf as it is."""
    return map(lambda x, y: x if y is None else x + alpha * y, a, b)


def sub(a: Any, b: Any) -> Any:
    """``a - b`` leaf-wise."""
    return add(a, b, -1)


def scale(tree: Any, factor: float | torch.Tensor) -> Any:
    """``factor * x`` for every leaf."""
    return map(lambda x: x * factor, tree)


def cast(tree: Any, dtype: torch.dtype | None, *, floating_only: bool = True) -> Any:
    """Floating-point leaves cast to ``dtype``; integer, bool and complex leaves unchanged
    (``floating_only=False``: every leaf cast). ``dtype=None`` returns ``tree`` as it is."""
    if dtype is None:
        return tree
    return map(lambda x: x.to(dtype) if x.is_floating_point() or not floating_only else x, tree)


def global_norm(tree: Any) -> torch.Tensor:
    r"""The L2 norm of all leaves together, :math:`\sqrt{\sum_i \|x_i\|_2^2}`.

    Computed as :func:`torch.nn.utils.clip_grad_norm_` does: one ``vector_norm`` per leaf, then
    the norm of those norms, on the first leaf's device. Its gradient at zero is zero, not NaN.
    An empty tree (or one of ``None`` only) has norm ``0.0``.

    DTensor leaves (FSDP2, tensor parallel) are grouped by device mesh: each group's norm is
    reduced across its shards by DTensor itself (one all-reduce per mesh, no host sync) and
    comes back as a plain (replicated) tensor; leaves on different meshes and plain tensors
    (taken as replicated) then combine locally. The result is the norm of the full tensors.
    """
    xs = [x for x in leaves(tree) if x is not None]
    if not xs:
        return torch.zeros(())
    if all(layout(x) is None for x in xs):
        return torch.linalg.vector_norm(torch.stack(_norms(xs, xs[0].device)))
    return reduce_by_mesh(xs, torch.linalg.vector_norm, torch.linalg.vector_norm)


def reduce_by_mesh(xs: list, leaf: Callable, combine: Callable, *others: list) -> torch.Tensor:
    """``combine(stack([leaf(x, *o) for x, *o in zip(xs, *others)]))`` for tensors that may be
    DTensors on several device meshes, as a plain tensor on the first tensor's device
    (``others``: lists of tensors laid out as ``xs``, e.g. the second operands of dot products).

    ``combine`` must be a reduction that composes (a norm of norms, a sum of sums). The tensors
    of each mesh are combined first and that result is reduced across the mesh's shards by
    DTensor (one all-reduce per mesh dimension, no host sync); plain tensors (taken as
    replicated) are combined on the first tensor's device; the per-mesh results are combined
    last. DTensor cannot stack the partial results of several meshes, hence the grouping.
    """
    device = xs[0].device
    groups: dict = {}
    for x, *o in zip(xs, *others):
        key = layout(x)
        groups.setdefault(None if key is None else key[0], []).append((x, *o))
    totals = []
    for mesh, group in groups.items():
        values = [leaf(*x) if mesh is not None else leaf(*x).to(device) for x in group]
        total = combine(torch.stack(values))
        if mesh is not None:  # a partial result: its reduction is this mesh's all-reduce
            total = total.full_tensor()
        totals.append(total.to(device))
    return totals[0] if len(totals) == 1 else combine(torch.stack(totals))


def traced() -> bool:
    """Whether ops are being traced or transformed, so that eager shortcuts (foreach kernels
    standing for per-tensor ops) must not run: ``torch.compile``, a ``torch.func`` transform, a
    dispatch mode (fake tensors, ``make_fx``) or forward-mode AD."""
    return bool(torch.compiler.is_compiling()
                or torch._C._functorch.peek_interpreter_stack() is not None
                or torch._C._len_torch_dispatch_stack()
                or _forward_ad._current_level >= 0)


def _norms(xs: list, device: torch.device) -> list:
    """The L2 norm of each tensor of ``xs``, on ``device``.

    Eager and untraced (:func:`traced`), where no tensor of ``xs`` requires grad (or grad mode
    is off), one ``torch._foreach_norm`` per (device, dtype) group, as
    ``clip_grad_norm_(foreach=True)`` does (on CPU it runs the same per-tensor kernel);
    otherwise one ``vector_norm`` per tensor, which every transformation traces.
    """
    if traced() or torch.is_grad_enabled() and any([x.requires_grad for x in xs]):
        return [torch.linalg.vector_norm(x).to(device) for x in xs]
    keys = [(x.device, x.dtype) for x in xs]
    if keys.count(keys[0]) == len(keys):  # the usual case: one group
        groups = {keys[0]: range(len(xs))}
    else:
        groups = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
    norms: list = [None] * len(xs)
    for (on, _), members in groups.items():
        group = torch._foreach_norm([xs[i] for i in members])
        if on != device:
            group = [n.to(device) for n in group]
        for i, n in zip(members, group):
            norms[i] = n
    return norms


def layout(x: Any) -> tuple | None:
    """A DTensor's ``(device_mesh, placements)``; ``None`` for a plain tensor.

    DTensor runs a multi-tensor (``torch._foreach_*``) op only on operands of one mesh, so the
    multi-tensor paths group leaves by this key (with device and dtype), and a reduction across
    shards covers the leaves of one mesh (:func:`global_norm`).
    """
    if type(x) is torch.Tensor:
        return None
    dtensor = _dtensor_class()
    return (x.device_mesh, x.placements) if dtensor is not None and isinstance(x, dtensor) \
        else None


def by_layout(xs: list) -> list[list[int]]:
    """The indices of ``xs`` grouped by :func:`layout`, in order of first appearance (one group
    when no leaf is a DTensor)."""
    keys = [layout(x) for x in xs]
    if keys.count(None) == len(keys):
        return [list(range(len(xs)))]
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _dtensor_class() -> type | None:
    """``DTensor`` if ``torch.distributed.tensor`` is loaded (no DTensor exists otherwise)."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else getattr(module, "DTensor", None)


def num_leaves(tree: Any) -> int:
    """How many tensor leaves (``None`` leaves are not counted)."""
    return sum(x is not None for x in leaves(tree))


def num_elements(tree: Any) -> int:
    """How many scalar elements all tensor leaves hold together."""
    return sum(x.numel() for x in leaves(tree) if x is not None)


def _path_name(path: tuple) -> str:
    return ".".join(str(k) for k in path)


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
    """``(name, leaf)`` pairs, the name being the dotted key path (``"layer.0.weight"``)."""
    paths, flat, _ = optree.tree_flatten_with_path(tree, **_NONE_IS_LEAF)
    return [(_path_name(p), x) for p, x in zip(paths, flat)]


def names(tree: Any) -> Any:
    """A tree of the same structure whose leaves are their dotted key paths."""
    paths, _, spec = optree.tree_flatten_with_path(tree, **_NONE_IS_LEAF)
    return optree.tree_unflatten(spec, [_path_name(p) for p in paths])
