"""The execution mechanism: an update rule written once as math on tensors, run leaf by leaf.

A *rule* is a function ``rule(h, g, *states, *inputs) -> (u, *states)`` on single tensors: ``h`` is
the hyperparameter tree with tensor entries cast to the leaf's scalar dtype, ``g`` the incoming
update, ``states`` the leaf's state tensors (returned, updated) and ``inputs`` read-only tensors
(the parameter, a mask entry). Rules use only out-of-place torch ops, so the per-leaf path is pure
and works under ``torch.func`` transforms, ``torch.compile`` and CUDA-graph capture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optree
import torch

from . import _foreach
from . import tree as _tree
from ._modes import (  # noqa: F401 - the modes, imported from here too
    _FLAGS,
    ADAPTER,
    DONATED,
    _requires_grad,
    donates_to,
    donating,
    fusing,
    keep_state,
    multi_tensor,
    multi_tensor_wanted,
    owning,
    pure_multi_tensor,
)


class MissingParamsError(ValueError):
    """A transform that reads the parameters was called without them."""


# What the leaves of a state share with their update (``elementwise``'s ``state_like``): LIKE
# shape, dtype and device (a moment); SHAPED shape and device (an ``accumulator_dtype``); TYPED
# dtype and device (factored statistics). _SHARES: (same shape, same dtype) for each.
LIKE, SHAPED, TYPED = "like", "shaped", "typed"
_SHARES = {LIKE: (True, True), SHAPED: (True, False), TYPED: (False, True)}


def scalar_dtype(like: torch.Tensor) -> torch.dtype:
    """The dtype of the 0-d coefficients (bias corrections, tensor hparams) used on a leaf.

    float64, as torch.optim's Python-float arithmetic computes them (``1 - 0.999**t`` loses five
    digits in float32), on devices that have it (float32 on MPS). Elementwise math on the leaf
    itself stays in the leaf's dtype: a 0-d coefficient does not promote the tensor it scales.
    """
    return torch.float32 if like.device.type == "mps" else torch.float64


def cast_hparams(hparams: Any, like: torch.Tensor) -> Any:
    """Tensor hyperparameters cast to ``scalar_dtype(like)`` (and moved to ``like``'s device when
    they sit on another accelerator: a CPU 0-d tensor combines with any device); numbers left as
    they are."""
    dtype = scalar_dtype(like)

    def cast(h: Any) -> Any:
        if not isinstance(h, torch.Tensor):
            return h
        device = like.device if h.device.type != "cpu" and h.device != like.device else h.device
        return h if h.dtype == dtype and device == h.device else h.to(device=device, dtype=dtype)

    return optree.tree_map(cast, hparams)


def _as_real(x):
    return torch.view_as_real(x) if x is not None and x.is_complex() else x


def elementwise(
    rule: Callable,
    hparams: Any,
    updates: Any,
    states: tuple = (),
    inputs: tuple = (),
    *,
    name: str,
    complex_as_real: bool = False,
    real_only: bool = False,
    input_names: tuple[str, ...] = (),
    donate_state: bool | tuple[bool, ...] = False,
    sparse: bool = False,
    own_update_dtype: bool = False,
    state_like: tuple[str | None, ...] = (),
    pointwise: bool = False,
) -> tuple:
    """Run ``rule`` on every leaf of ``updates``; return ``(new_updates, *new_states)``.

    A ``None`` update leaf stays ``None`` and keeps its state. Every tree in ``states`` and
    ``inputs`` must have the structure of ``updates`` (else :class:`TreeMismatchError`).

    Args:
        complex_as_real: run the rule on ``torch.view_as_real`` views of complex leaves (how
            torch.optim treats complex parameters: real and imaginary parts as separate reals).
        real_only: raise a clear ``TypeError`` for complex leaves.
        input_names: names of the ``inputs`` trees in error messages (e.g. ``("params",)``).
        donate_state: the rule reads each old state once, so under
            ``multi_tensor(donate=True)`` its state may be updated in place (one flag per
            state, or one for all).
        sparse: the rule takes sparse COO update leaves (``nn.Embedding(sparse=True)``
            gradients): they run leaf by leaf, complex ones as they are (torch.optim's sparse
            paths do not view them as reals); else a sparse leaf is a ``TypeError``.
        own_update_dtype: the update keeps the dtype the rule gives it (a rule that computes
            half-precision leaves in float32 returns float32 updates, which
            :func:`~functional_optim.apply_updates` and the adapter apply with one rounding).
        state_like: for each state, what its leaves share with their update: ``LIKE``,
            ``SHAPED``, ``TYPED``, or ``None`` (a step count, a 0-d scalar in a dtype
            of its own); missing entries are ``None``.
        pointwise: the rule is pointwise (:class:`PointwiseCall`), so leaves of any rank
            share a multi-tensor group (0-d leaves keep theirs); else a group's leaves
            also share ``ndim``, which a rule may branch on.

    Each update leaf must match its tensor inputs (the parameters) and its states
    (``state_like``), else :class:`TreeMismatchError` names the leaf, the expected and the
    received (:func:`~functional_optim.tree.leaf_mismatch`): checked in the loop that groups
    the leaves (the per-leaf path, which ``compile``/``vmap``/``make_fx`` trace, checks it all;
    the eager multi-tensor path what could pass silently, and diagnoses torch's errors).

    A 0-d leaf runs as a one-element vector on every path (:func:`_one_element`), so that
    its math happens in its dtype. Each result keeps the dtype of the tensor it replaces
    (except the update with ``own_update_dtype``) and must keep its shape: a result whose
    shape differs (a rule that broadcast) raises :class:`TreeMismatchError`.
    """
    n_states = len(states)
    shares = [(k, *_SHARES[like]) for k, like in enumerate(state_like[:n_states])
              if like is not None]
    # the states in dtypes of their own (step counts): a multi-tensor group shares their
    # dtypes, as a list of 0-d tensors runs stacked (float32 and float64 counts: in float64)
    own = tuple(k for k in range(n_states) if k >= len(state_like) or state_like[k] is None)

    def input_name(k: int) -> str:
        return input_names[k] if k < len(input_names) else "input"

    def check(i: int, g: Any, leaf_states: list, leaf_inputs: list) -> None:
        if leaf_states and leaf_states[-1] is None:
            raise _tree.TreeMismatchError(
                f"{name}: update leaf {_tree.leaf_label(updates, i)} has no state (its parameter "
                "was None at init)"
            )
        if not isinstance(g, torch.Tensor):
            raise TypeError(
                f"{name}: update leaf {_tree.leaf_label(updates, i)} must be a tensor or None, got "
                f"{type(g).__name__}"
            )
        if g.is_sparse and not sparse:
            raise TypeError(
                f"{name} does not support sparse updates (leaf {_tree.leaf_label(updates, i)})")
        if not (g.is_floating_point() or g.is_complex()):
            raise TypeError(
                f"{name} needs floating-point or complex updates (leaf "
                f"{_tree.leaf_label(updates, i)}, dtype {g.dtype})"
            )
        if real_only and g.is_complex():
            raise TypeError(
                f"{name} does not support complex updates (leaf {_tree.leaf_label(updates, i)}, "
                f"dtype {g.dtype})"
            )
        for k, x in enumerate(leaf_inputs):
            if x is None:
                raise MissingParamsError(
                    f"{name}: leaf {_tree.leaf_label(updates, i)} has an update but its "
                    f"{input_name(k)} is None"
                )
        # (tree.leaf_mismatch inlined.) Multi-tensor: dtypes and the inputs' shapes only; another
        # state shape or device raises in torch or changes a result's shape: diagnosed in apply
        shape, dtype, device = g.shape, g.dtype, None if multi else g.device
        for x in leaf_inputs:
            if isinstance(x, torch.Tensor) and (x.shape != shape or x.dtype != dtype or (
                    device is not None and x.device != device)):
                diagnose(i)
        for k, same_shape, same_dtype in shares:
            x = leaf_states[k]
            if not isinstance(x, torch.Tensor) or (same_dtype and x.dtype != dtype) or (
                    device is not None and (x.device != device
                                            or (same_shape and x.shape != shape))):
                diagnose(i)

    def diagnose(i: int) -> None:
        """Raise :class:`TreeMismatchError` if leaf ``i``'s tensor inputs or states differ."""
        g = flats[0][i]
        problems = [_tree.leaf_mismatch(g, f[i], input_name(k))
                    for k, f in enumerate(input_flats) if isinstance(f[i], torch.Tensor)] + [
            _tree.leaf_mismatch(g, state_flats[k][i], "state", same_shape, same_dtype)
            for k, same_shape, same_dtype in shares]
        for problem in filter(None, problems):
            raise _tree.TreeMismatchError(f"{name}: leaf {_tree.leaf_label(updates, i)}: {problem}")

    def apply(i: int, h: Any, g: Any, leaf_states: list, leaf_inputs: list,
              likes: list[list]) -> list[list]:
        """The rule on one leaf or one group (``TensorList``s); results matched to ``likes``."""
        members = i if isinstance(i, list) else [i]
        as_real = complex_as_real and likes[0][0].is_complex() and not likes[0][0].is_sparse
        try:
            if as_real:
                res = rule(h, _as_real(g), *(_as_real(a) for a in leaf_states + leaf_inputs))
            elif likes[0][0].ndim == 0:  # (0-d leaves: as one-element vectors)
                res = _one_element(rule, h, g, leaf_states, leaf_inputs, shares, likes)
            else:
                res = rule(h, g, *leaf_states, *leaf_inputs)
        except RuntimeError:  # (multi-tensor path: torch's error for a shape or a device)
            for k in members:
                diagnose(k)
            raise
        u, like = _sample(res[0]), likes[0][0]
        if isinstance(u, torch.Tensor) and u.device != like.device:
            for k in members:  # (once per group: a state or input on another device that
                diagnose(k)  # torch combined without raising, a meta update with CPU state)
        out = []
        for j, (r, like_col) in enumerate(zip(res, likes)):
            values = r.items if isinstance(r, _foreach.TensorList) else [r]
            if not as_real and _same_layout(values, like_col, not (own_update_dtype and j == 0)):
                out.append(values)  # (the common case, checked a column at a time)
                continue
            column = []
            for k, (v, like) in enumerate(zip(values, like_col)):
                if as_real and v is not None and like is not None and like.is_complex():
                    v = torch.view_as_complex(v)
                if not (isinstance(v, torch.Tensor) and isinstance(like, torch.Tensor)
                        and (v.dtype == like.dtype or own_update_dtype and j == 0)
                        and v.shape == like.shape):
                    if isinstance(v, torch.Tensor) and isinstance(like, torch.Tensor) \
                            and v.shape != like.shape:
                        diagnose(members[k])  # (a broadcast: the input or state to name)
                    v = _like(v, like, name, updates, members[k], j,
                              keep_dtype=own_update_dtype and j == 0)
                column.append(v)
            out.append(column)
        return out

    trees = (updates, *states, *inputs)
    compiling = torch.compiler.is_compiling()
    try:  # one traversal that checks the structures and collects the leaves
        if compiling:  # (tree_map: what dynamo traces)
            rows: list = []
            optree.tree_map(lambda *xs: rows.append(xs), *trees, none_is_leaf=True)
            flats = [list(col) for col in zip(*rows)] if rows else [[] for _ in trees]
        else:  # (each tree flattened in C)
            spec = _tree.structure(updates)
            flats = [spec.flatten_up_to(tree) for tree in trees]
    except ValueError:
        _check_structures(updates, trees, n_states, name, input_name)
        raise
    results = [list(flats[j]) for j in range(1 + n_states)]
    multi = multi_tensor_wanted(flats, hparams)
    flags = donate_state if isinstance(donate_state, tuple) else (donate_state,) * n_states
    level = _FLAGS.value[1]
    donate = [multi and bool(level) and flag for flag in flags]
    state_flats, input_flats = flats[1:1 + n_states], flats[1 + n_states:]
    first = next((i for i, g in enumerate(flats[0]) if g is not None), None)
    if first is not None and (multi or not compiling):
        for f in state_flats:  # (one leaf a state: a whole state passed again, cheaply)
            if getattr(f[first], _GIVEN_UP, False):
                raise DonatedStateError(
                    f"{name}: the state given (leaf {_tree.leaf_label(updates, first)}) was "
                    "donated to an earlier update (update(..., donate=True) or "
                    "step(..., donate=True)), which replaced it: pass the state that update "
                    "returned")
    plain = _plain_groups(flats, n_states, shares, own, pointwise, real_only) if multi else None
    groups: dict = plain or {}
    for i, g in enumerate(flats[0] if plain is None else ()):
        if g is None:
            continue
        leaf_states = [f[i] for f in state_flats]
        leaf_inputs = [f[i] for f in input_flats]
        check(i, g, leaf_states, leaf_inputs)
        if multi and not (sparse and g.is_sparse):
            # a DTensor's mesh and placements too (plain tensors skip the call)
            statics = tuple([x for x in leaf_inputs if not isinstance(x, torch.Tensor)])
            layout = None if type(g) is torch.Tensor else _tree.layout(g)
            key = (g.dtype, g.device, type(g), g.ndim == 0 if pointwise else g.ndim, statics,
                   layout, tuple([getattr(leaf_states[k], "dtype", None) for k in own]))
            groups.setdefault(key, []).append(i)
        else:  # (a sparse leaf runs alone: the foreach kernels take dense tensors)
            groups[i] = [i]
    cache: dict = {}
    # (multi-tensor: nothing requires grad, no graph to record, and rules take their cheaper
    # no-autograd forms, e.g. safe_sqrt's; compiled: each 0-d coefficient computed once)
    with torch.no_grad() if multi else scalars_once():
        _run_groups(groups, cache, hparams, flats, n_states, donate, results, apply)
    if level == DONATED and multi and first is not None:
        for j, flag in enumerate(donate, start=1):  # (the state's first leaf marks it)
            old = flats[j][first]
            if flag and results[j][first] is not old:
                setattr(old, _GIVEN_UP, True)
    elif level == DONATED and compiling:  # (and every state shaped like its update: traced,
        # a rule reads its old state as it likes)
        marked = {k for k, *_ in shares}
        _write_back(flats, results, [flag or k in marked for k, flag in enumerate(flags)])
    if not compiling:  # (eager: the treespec's own unflatten, faster than tree_map)
        return tuple(spec.unflatten(r) for r in results)
    return tuple(_unflatten_like(updates, r) for r in results)


def _plain_groups(flats: list, n_states: int, shares: list, own: tuple, pointwise: bool,
                  real_only: bool) -> dict | None:
    """The one multi-tensor group of :func:`elementwise`'s leaves when they are plain dense
    tensors of one dtype, device and rank (class) that pass its checks column by column (list
    comparisons in C, not a Python loop per leaf): floating-point updates (real with
    ``real_only``), a last state and tensor inputs for every update, the inputs' shapes and
    dtypes and the ``shares`` states' dtypes those of the updates, one dtype in each ``own``
    state. ``None`` otherwise: the loop over the leaves checks them, names the leaf and keys
    the groups."""
    gs = flats[0]
    if any([g is None for g in gs]):
        live = [i for i, g in enumerate(gs) if g is not None]
        gs = [gs[i] for i in live]
        columns = [[f[i] for i in live] for f in flats[1:]]
    else:  # (every leaf has an update: the columns as they are)
        live, columns = list(range(len(gs))), flats[1:]
    if not gs or not all([type(g) is torch.Tensor for g in gs]) or any(
            [g.is_sparse for g in gs]):
        return None
    dtypes = [g.dtype for g in gs]
    if any(not (d.is_floating_point or d.is_complex) or real_only and d.is_complex
           for d in set(dtypes)):
        return None
    shapes = [g.shape for g in gs]
    if n_states and any([x is None for x in columns[n_states - 1]]):
        return None
    try:
        for col in columns[n_states:]:
            if [x.shape for x in col] != shapes or [x.dtype for x in col] != dtypes:
                return None
        for k, _, same_dtype in shares:
            col = columns[k]
            if not all([isinstance(x, torch.Tensor) for x in col]) or (
                    same_dtype and [x.dtype for x in col] != dtypes):
                return None
    except AttributeError:  # (a static input: a mask's bools)
        return None
    try:
        for k in own:
            kinds = [x.dtype for x in columns[k]]
            if kinds.count(kinds[0]) != len(kinds):
                return None
    except AttributeError:  # (a leaf that is no tensor: the loop keys the groups)
        return None
    ranks = [g.ndim == 0 for g in gs] if pointwise else [g.ndim for g in gs]
    devices = [g.device for g in gs]
    if dtypes.count(dtypes[0]) == devices.count(devices[0]) == ranks.count(ranks[0]) == len(gs):
        return {(dtypes[0], devices[0], torch.Tensor, ranks[0], (), None,
                 tuple([getattr(columns[k][0], "dtype", None) for k in own])): live}
    return None  # (several groups: the loop keys them)


class DonatedStateError(RuntimeError):
    """An update was given a state that the caller had donated to an earlier update."""


_GIVEN_UP = "_functional_optim_donated"
"""The attribute that marks a donated state tensor that its update replaced instead of updating
in place (a step count): :func:`elementwise` looks at one leaf of each state it is given (a few
attribute reads a call), so passing a donated state again raises :class:`DonatedStateError`."""


def given_up(column: dict) -> bool:
    """Whether a state given as a dict of leaves was replaced by a donated update: marked on
    its first leaf in optree's order (the keys sorted, where they sort), which is where
    :func:`elementwise` marks and reads it (a dict's first key in its own order is another
    leaf where the keys were not made sorted, as ``named_parameters`` makes them)."""
    if not column:
        return False
    try:
        head = min(column)
    except TypeError:  # (keys that do not sort: optree keeps their order)
        head = next(iter(column))
    return getattr(column[head], _GIVEN_UP, False)


def _write_back(flats: list, results: list, flags: list) -> None:
    """Each new state leaf of a donated state (``flags``) copied into the old one, which takes its
    place: compiled, the rule then computes into the caller's buffers (no allocation). Where
    the old leaf cannot hold the new one as it is (another shape or dtype) or is a tensor
    written already (one tensor in two leaves), the new leaf stays."""
    written: set = set()
    for j, flag in enumerate(flags, start=1):
        if flag:
            results[j] = [_written(old, new, written) for old, new in zip(flats[j], results[j])]


def _written(old: Any, new: Any, written: set) -> Any:
    """``old`` holding ``new`` (:func:`_write_back`), or ``new``."""
    if old is None or new is old:
        return old
    if not isinstance(old, torch.Tensor) or id(old) in written or old.shape != new.shape or \
            old.dtype != new.dtype:
        return new
    written.add(id(old))
    writable(old).copy_(new)
    return old


def _run_groups(groups: dict, cache: dict, hparams: Any, flats: list, n_states: int,
                donate: list, results: list, apply: Callable) -> None:
    """``apply`` on each group of leaves (a tuple key: a multi-tensor group), into ``results``."""
    for key, members in groups.items():
        first = flats[0][members[0]]
        hkey = (first.dtype, first.device)
        h = cache.get(hkey)
        if h is None:
            h = cache[hkey] = cast_hparams(hparams, first)
        likes = [[flats[j][i] for i in members] for j in range(1 + n_states)]
        if isinstance(key, tuple):
            out = apply(members, h, _pack(flats[0], members),
                        [_pack(f, members, d) for f, d in zip(flats[1:1 + n_states], donate)],
                        [_pack(f, members) for f in flats[1 + n_states:]], likes)
        else:
            (i,) = members
            out = apply(i, h, flats[0][i], [f[i] for f in flats[1:1 + n_states]],
                        [f[i] for f in flats[1 + n_states:]], likes)
        for j, column in enumerate(out):
            for i, v in zip(members, column):
                results[j][i] = v


def _pack(flat: list, members: list, donate: bool = False) -> Any:
    """The ``members`` of ``flat`` as one :class:`~functional_optim._foreach.TensorList` (a
    static input stays one value)."""
    if isinstance(flat[members[0]], torch.Tensor):
        return _foreach.TensorList([flat[i] for i in members], donated=donate)
    return flat[members[0]]


def _unflatten_like(tree: Any, flat: list) -> Any:
    """``flat`` in the structure of ``tree`` (with ``tree_map``, which compiles)."""
    it = iter(flat)
    return optree.tree_map(lambda _: next(it), tree, none_is_leaf=True)


def _check_structures(updates: Any, trees: tuple, n_states: int, name: str,
                      input_name: Callable) -> None:
    spec = _tree.structure(updates)
    names = [f"{name} state"] * n_states + [f"{name} {input_name(k)}"
                                             for k in range(len(trees) - 1 - n_states)]
    for tree, tree_name in zip(trees[1:], names):
        _tree.flatten_like(tree, spec, tree_name, "updates")


def _one_element(rule: Callable, h: Any, g: Any, states: list, inputs: list, shares: list,
                 likes: list[list]) -> tuple:
    """``rule`` on a 0-d leaf or a group of them (``TensorList``) as one-element vectors: the
    update, the states shaped like it (``shares``) and the tensor inputs; its results of 0-d
    ``likes`` back to 0-d, and a vector the rule passed through (or updated in place) back to
    the tensor it views.

    Between two 0-d tensors torch promotes: a float32 leaf times a float64 bias correction
    (:func:`scalar_dtype`) would compute in float64 and round back, a last bit away at times
    from any leaf of one or more dimensions, which a 0-d coefficient does not promote. As a
    vector, a 0-d leaf's math happens in its dtype (DESIGN.md §3), the same on every path."""
    pairs: list = []
    shaped = {k for k, same_shape, _ in shares if same_shape}

    def vector(x: Any) -> Any:
        if isinstance(x, _foreach.TensorList):
            return _foreach.TensorList([vector(y) for y in x.items], donated=x.donated)
        if not isinstance(x, torch.Tensor) or x.ndim:
            return x
        pairs.append((x.reshape(1), x))
        return pairs[-1][0]

    def back(r: Any, like: Any) -> Any:
        if isinstance(r, _foreach.TensorList):  # (a stacked list of 0-d values stays)
            return r if r.scalar else _foreach.TensorList([back(y, like) for y in r.items])
        for view, x in pairs:
            if r is view:
                return x
        return r.reshape(()) if isinstance(r, torch.Tensor) and r.shape == (1,) and isinstance(
            like, torch.Tensor) and like.ndim == 0 else r

    res = rule(h, vector(g), *(vector(x) if k in shaped else x for k, x in enumerate(states)),
               *(vector(x) for x in inputs))
    return tuple(back(r, like[0]) for r, like in zip(res, likes))


def _same_layout(values: list, likes: list, dtypes: bool) -> bool:
    """Whether each tensor of ``values`` has the shape (and, with ``dtypes``, the dtype) of the
    tensor of ``likes`` it replaces."""
    try:
        return [v.shape for v in values] == [x.shape for x in likes] and (
            not dtypes or [v.dtype for v in values] == [x.dtype for x in likes])
    except AttributeError:  # (a value or a like that is no tensor: checked one by one)
        return False


def _like(r: Any, like: Any, name: str, updates: Any, i: int, j: int,
          keep_dtype: bool = False) -> Any:
    """``r`` in ``like``'s dtype (unless ``keep_dtype``); a clear error when a broadcast changed
    its shape."""
    if not isinstance(r, torch.Tensor) or not isinstance(like, torch.Tensor):
        return r
    if r.shape != like.shape:
        what = "update" if j == 0 else f"state {j - 1}"
        raise _tree.TreeMismatchError(
            f"{name}: leaf {_tree.leaf_label(updates, i)}: the {what} came out with shape "
            f"{tuple(r.shape)} instead of {tuple(like.shape)}; the update, its state and its "
            "parameter must all have the same shape"
        )
    return r if r.dtype == like.dtype or keep_dtype else r.to(like.dtype)


# the math rules are written with, and the pointwise transforms and their fusion, live beside:
# the names stay importable from here
from ._pointwise import (  # noqa: E402, F401
    Pointwise,
    PointwiseCall,
    fusable,
    fuse,
    run_pointwise,
)
from ._rulemath import (  # noqa: E402, F401
    _sample,
    borrowed,
    decayed,
    ema_square,
    first_device,
    full,
    full_like,
    init_count,
    is_off,
    lerp,
    mean_over,
    placed_like,
    safe_sqrt,
    scalars_once,
    writable,
    zeros_in,
)
