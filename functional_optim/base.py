"""The contract: :class:`Transform`, :func:`chain`, :func:`apply_updates`, hyperparameter plumbing.

A transform is two pure functions and its default hyperparameters::

    state = tx.init(params)
    updates, state = tx.update(updates, state, params=None, hparams=None, **extra)

``hparams=None`` means ``tx.hparams``. A hyperparameter is a Python number or a 0-d tensor; a
tensor may require grad, be batched under :func:`torch.func.vmap`, or be changed in place between
CUDA-graph replays. Keyword ``**extra`` arguments (a loss ``value``, say) are passed down a chain
to every transform; transforms ignore the ones they do not use.

*Donation.* ``update(..., donate=True)`` gives up ``state``: the update may reuse its memory
(the library's rules then update it in place on the multi-tensor path, and write into it under
``torch.compile``), so the returned state may share tensors with it, and the old state must not
be read again (its tensors may hold the new values). The numbers are the same either way; a
transform may ignore the keyword (a user's transform, or one that keeps no state to reuse), and
a library transform that holds a user's transform donates nothing to it (see
:func:`functional_optim._execute.donating`). :func:`apply_updates_` donates the parameters, and
:func:`functional_optim.step` runs a whole donated step on the fastest path there is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from numbers import Number
from typing import Any, NamedTuple

import optree
import torch

from . import _execute
from . import tree as _tree
from ._execute import DonatedStateError, MissingParamsError, Pointwise, PointwiseCall
from .tree import TreeMismatchError

__all__ = [
    "Transform",
    "EmptyState",
    "HParamError",
    "DonatedStateError",
    "MissingParamsError",
    "TreeMismatchError",
    "chain",
    "Pointwise",
    "PointwiseCall",
    "pointwise_transform",
    "reparametrize",
    "apply_updates",
    "apply_updates_",
    "resolve_hparams",
    "check_hparam",
    "missing_params",
    "check_pair",
    "check_betas",
    "check_choice",
    "check_dtype_option",
    "check_init_value",
    "check_state",
]


class HParamError(ValueError):
    """A hyperparameter has an unknown name, a wrong shape or an invalid value."""


class EmptyState(NamedTuple):
    """The state of a stateless transform."""


class _CheckedInit:
    """``init`` that first checks its argument is a tree of tensors (:func:`tree.check_params`),
    so that ``init(model.parameters())`` and ``init(model)`` say what to pass instead, and
    gives each tensor of the state its own memory (:func:`tree.unshared`: a state can live in
    static buffers). A class, not a closure: a transform of picklable functions stays
    picklable."""

    __slots__ = ("__wrapped__",)

    def __init__(self, init: Callable[[Any], Any]):
        self.__wrapped__ = init

    def __call__(self, params: Any) -> Any:
        _tree.check_params(params, "init(params)")
        return _tree.unshared(self.__wrapped__(params))

    def __repr__(self) -> str:
        return repr(self.__wrapped__)


class Transform(NamedTuple):
    """A pure optimizer transform.

    Attributes:
        init: ``init(params) -> state``; ``params`` is a pytree of tensors (``None`` leaves
            allowed), anything else (``model.parameters()``, a module, torch.optim param
            groups) a ``TypeError`` saying what to pass instead. The check wraps the given
            function when the transform is constructed.
        update: ``update(updates, state, params=None, hparams=None, **extra)
            -> (updates, state)``; never mutates its inputs, unless the caller donates the
            state (``donate=True``, see the module docstring).
        hparams: the default hyperparameters: a pytree (usually a dict) of numbers or 0-d tensors.
        fused: optional in-place step ``fused(params, grads, state, hparams) -> state | None``
            that the stateful adapter runs instead of ``update`` + ``apply_updates`` when it
            can (``None`` back: it cannot, run the chain). Aliases set it to torch's fused
            kernels (:mod:`functional_optim._fused`) or to a cache-blocked in-place step
            (:mod:`functional_optim._blocked`); a chain of blocks has none.
        pointwise: optional :class:`~functional_optim._execute.Pointwise`: the update as one
            pointwise rule, which a chain fuses with its pointwise neighbours on the eager
            multi-tensor path (see :func:`pointwise_transform`).
    """

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]
    hparams: Any = None
    fused: Callable[..., Any] | None = None
    pointwise: Pointwise | None = None


_new_transform = Transform.__new__


def _new_checked(cls, init, update, hparams=None, fused=None, pointwise=None):
    """``Transform(...)`` with ``init`` wrapped in :class:`_CheckedInit` (once).

    Set after the class: a NamedTuple body cannot define ``__new__``, and a subclass would
    make ``torch.compile`` trace transforms as user-defined tuples (it fails on their fields).
    ``_replace`` and unpickling keep the wrapped ``init``.
    """
    if not isinstance(init, _CheckedInit):
        init = _CheckedInit(init)
    return _new_transform(cls, init, update, hparams, fused, pointwise)


Transform.__new__ = _new_checked


def pointwise_transform(init: Callable[[Any], Any], defaults: Any, spec: Pointwise) -> Transform:
    """The transform whose ``update`` runs ``spec``'s rule; chains fuse it with neighbours.

    ``spec.prepare(updates, state, params, hparams)`` resolves the hyperparameters, checks the
    state and returns a :class:`PointwiseCall`: the rule (math on one tensor, out-of-place ops
    only: the same function runs per leaf under ``vmap``/``grad``/``compile`` and over tensor
    lists with foreach kernels), its hparams, the state and input trees it reads, and how to
    rebuild the state. ``scale_by_adam``, ``trace``, ``scale_by_rms``, ``add_decayed_weights``,
    ``scale``, ``scale_by_learning_rate``, ``clip_by_global_norm`` and ``identity`` are built
    this way.
    """

    def update(updates, state, params=None, hparams=None, **extra):
        with _execute.donating(extra.get("donate")):
            return _execute.run_pointwise(spec, updates, state, params, hparams)

    return Transform(init, update, defaults, pointwise=spec)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"


def resolve_hparams(defaults: Any, given: Any, where: str = "hparams",
                    structural: Mapping | None = None) -> Any:
    """Merge ``given`` hyperparameters over ``defaults``.

    ``None`` (anywhere) means "the default". A dict may give a subset of the keys; an unknown key
    is an error naming the known ones (and, for a key of ``structural``, saying that it is fixed
    at construction). Tuples (a chain's hparams, ``betas``) must have the defaults' length. A
    leaf must be a Python number or a 0-d tensor. Values are not inspected (that would be a host
    sync), only their type and shape.
    """
    if given is None or given is defaults:  # (a chain hands its members their own defaults)
        return defaults
    if type(defaults) is dict or isinstance(defaults, Mapping):
        if type(given) is not dict and not isinstance(given, Mapping):
            raise HParamError(
                f"{where}: expected a dict with keys {sorted(defaults)}, got {_describe(given)}"
            )
        unknown = [k for k in given if k not in defaults]
        if unknown:
            fixed = [k for k in unknown if structural is not None and k in structural]
            if fixed:
                raise HParamError(
                    f"{where}: {', '.join(map(str, fixed))} "
                    f"{'is' if len(fixed) == 1 else 'are'} structural, fixed at construction ("
                    + ", ".join(f"{k}={structural[k]!r}" for k in fixed)
                    + "), not a hyperparameter: construct a new transform to change "
                    f"{'it' if len(fixed) == 1 else 'them'}; hyperparameters: "
                    f"{sorted(map(str, defaults))}"
                )
            raise HParamError(
                f"{where}: unknown hyperparameter(s) {sorted(map(str, unknown))}; "
                f"known: {sorted(map(str, defaults))}"
            )
        return {k: _resolve_entry(v, given.get(k), where, k) for k, v in defaults.items()}
    if isinstance(defaults, tuple):
        if not isinstance(given, (tuple, list)) or len(given) != len(defaults):
            raise HParamError(
                f"{where}: expected a tuple of {len(defaults)} entries, got {_describe(given)}"
            )
        return tuple(resolve_hparams(d, g, f"{where}[{i}]") for i, (d, g) in enumerate(
            zip(defaults, given)))
    if isinstance(given, torch.Tensor):
        if given.ndim != 0:
            raise HParamError(
                f"{where}: expected a Python number or a 0-d tensor, got {_describe(given)}"
            )
        if given.is_complex() or (given.dtype == torch.bool
                                  and not isinstance(defaults, bool)):
            raise HParamError(f"{where}: expected a real number, got {_describe(given)}")
        return given
    if isinstance(given, bool) and not isinstance(defaults, bool):
        raise HParamError(f"{where}: expected a Python number or a 0-d tensor, got bool {given!r}")
    if type(given) is float or isinstance(given, Number) and not isinstance(given, complex):
        return given
    raise HParamError(f"{where}: expected a Python number or a 0-d tensor, got {_describe(given)}")


def _resolve_entry(default: Any, given: Any, where: str, key: Any) -> Any:
    """One entry of a dict of hyperparameters (:func:`resolve_hparams`): a Python float or int
    over a number's default (or a tensor's, or ``None``) as it is, without formatting the
    entry's name for an error that cannot happen."""
    if given is None:
        return default
    if type(given) in (float, int) and type(default) in _NUMBER_DEFAULTS:
        return given
    return resolve_hparams(default, given, f"{where}[{key!r}]")


_NUMBER_DEFAULTS = (float, int, bool, type(None), torch.Tensor)


def check_hparam(
    owner: str,
    name: str,
    value: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> None:
    """Validate a default hyperparameter at construction (never inside ``update``).

    Numbers and readable 0-d tensors are checked against the bounds; tensors that cannot be read
    here (batched under ``vmap``, fake) are only checked for shape.
    """
    if isinstance(value, torch.Tensor):
        if value.ndim != 0:
            raise HParamError(
                f"{owner}: {name} must be a Python number or a 0-d tensor, got {_describe(value)}"
            )
        if value.is_complex() or value.dtype == torch.bool:
            raise HParamError(f"{owner}: {name} must be real, got {_describe(value)}")
        if torch.compiler.is_compiling():
            return  # reading the value would be a data-dependent guard (a transform built
            # inside a compiled step, e.g. the adapter's first step): shape checked only
        try:
            number = float(value.detach())
        except (RuntimeError, NotImplementedError):
            return
    elif isinstance(value, Number) and not isinstance(value, (complex, bool)):
        number = float(value)
    else:
        raise HParamError(
            f"{owner}: {name} must be a Python number or a 0-d tensor, got {_describe(value)}"
        )
    bounds = [
        (ge, lambda b: number >= b, ">="),
        (gt, lambda b: number > b, ">"),
        (lt, lambda b: number < b, "<"),
        (le, lambda b: number <= b, "<="),
    ]
    wanted = " and ".join(f"{op} {b}" for b, _, op in bounds if b is not None) or "not NaN"
    if number != number or not all(ok(b) for b, ok, _ in bounds if b is not None):
        raise HParamError(f"{owner}: invalid {name}: expected a value {wanted}, got {value!r}")


def check_pair(owner: str, name: str, value: Any) -> None:
    """A hyperparameter that must be a pair (``betas``, ``etas``, ``step_sizes``)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise HParamError(f"{owner}: {name} must be a pair, got {value!r}")


def check_betas(owner: str, betas: Any) -> None:
    """``betas`` must be a pair of values in ``[0, 1)``."""
    check_pair(owner, "betas", betas)
    check_hparam(owner, "betas[0]", betas[0], ge=0, lt=1)
    check_hparam(owner, "betas[1]", betas[1], ge=0, lt=1)


def check_choice(owner: str, name: str, value: Any, choices: tuple) -> None:
    """A structural option that is one of ``choices`` (a variant, a placement, ...)."""
    if value not in choices:
        raise HParamError(f"{owner}: {name} must be one of {choices}, got {value!r}")


def check_dtype_option(owner: str, name: str, dtype: Any) -> None:
    """A structural dtype option (a state's dtype): ``None`` or a floating dtype."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise HParamError(f"{owner}: {name} must be None or a floating dtype, got {dtype!r}")


def check_init_value(owner: str, name: str, value: Any) -> float:
    """A structural initial value of a state (read by ``init``, so a number, ``>= 0``)."""
    if isinstance(value, torch.Tensor):
        raise HParamError(f"{owner}: {name} is read at init; give a number")
    check_hparam(owner, name, value, ge=0)
    return float(value)


def missing_params(owner: str, updates: Any, params: Any, why: str = "") -> bool:
    """For transforms that read the parameters, called first in ``update``.

    Returns True when ``params`` is ``None`` but there is nothing to do (every update is
    ``None``): the caller returns the updates unchanged. Raises :class:`MissingParamsError` when
    ``params`` is ``None`` and there are updates; returns False when ``params`` is given.
    """
    if params is not None:
        return False
    if _tree.num_leaves(updates) == 0:
        return True
    raise MissingParamsError(
        f"{owner} needs the parameters{f' ({why})' if why else ''}: call "
        "update(updates, state, params)"
    )


def _check_transform(tx: Any, where: str) -> None:
    if not isinstance(tx, Transform):
        hint = ""
        if callable(tx) and not isinstance(tx, type):
            hint = f" (did you forget to call it: {getattr(tx, '__name__', 'fn')}(...)?)"
        raise TypeError(
            f"{where}: expected a functional_optim.Transform, got {type(tx).__name__}{hint}"
        )


def check_state(owner: str, state: Any, cls: type) -> None:
    """Raise :class:`TreeMismatchError` unless ``state`` is a ``cls`` (the state ``init`` made)."""
    if not isinstance(state, cls):
        raise TreeMismatchError(
            f"{owner}: expected its state, a {cls.__name__}, got {type(state).__name__} "
            "(the state of another transform, or of another chain?)"
        )


def chain(*transforms: Transform, **named: Transform) -> Transform:
    """Compose transforms: each one's output updates are the next one's input.

    ``chain(a, b)`` has state ``(sa, sb)`` and hparams ``(ha, hb)``; the named form
    ``chain(clip=a, adam=b)`` has state ``{"clip": sa, "adam": sb}`` and hparams
    ``{"clip": ha, "adam": hb}``, so every hyperparameter stays addressable by its path.
    """
    if transforms and named:
        raise TypeError("chain: give transforms either all positionally or all by name, not both")
    keys: tuple = tuple(named) if named else tuple(range(len(transforms)))
    txs = tuple(named.values()) if named else transforms
    for key, tx in zip(keys, txs):
        _check_transform(tx, f"chain: transform {key!r}")
    pack = (lambda xs: dict(zip(keys, xs))) if named else tuple
    defaults = pack(tx.hparams for tx in txs)
    specs = [tx.pointwise for tx in txs]
    runs = _fused_runs(specs)

    def init(params):
        return pack(tx.init(params) for tx in txs)

    def check(state):
        if named:
            if not isinstance(state, Mapping) or set(state) != set(keys):
                raise TreeMismatchError(
                    f"chain: expected a state dict with keys {list(keys)}, got "
                    f"{sorted(state) if isinstance(state, Mapping) else type(state).__name__}"
                )
        elif not isinstance(state, tuple) or len(state) != len(txs):
            raise TreeMismatchError(
                f"chain: expected a state tuple of {len(txs)} entries, got "
                f"{type(state).__name__}"
                + (f" of {len(state)} entries" if isinstance(state, tuple) else "")
            )

    def update(updates, state, params=None, hparams=None, **extra):
        # (scalars_once: compiled, the members that loop over their leaves themselves compute
        # each 0-d coefficient once too, as elementwise's rules do)
        with _execute.donating(extra.get("donate")), _execute.scalars_once():
            return run(updates, state, params, hparams, extra)

    def run(updates, state, params, hparams, extra):
        hparams = resolve_hparams(defaults, hparams, "chain hparams")
        check(state)
        new_state = []
        if runs and _execute.fusing(updates, params, hparams):
            for start, stop, spec in runs:
                part = keys[start:stop]
                if spec is None:
                    (key,) = part
                    updates, s = txs[start].update(updates, state[key], params, hparams[key],
                                                   **extra)
                    new_state.append(s)
                    continue
                try:
                    updates, ss = _execute.run_pointwise(spec, updates, [state[k] for k in part],
                                                         params, [hparams[k] for k in part])
                except (TreeMismatchError, MissingParamsError, TypeError):
                    _name_the_member(txs[start:stop], part, updates, state, params, hparams)
                    raise
                new_state.extend(ss)
            return updates, pack(new_state)
        for key, tx in zip(keys, txs):
            updates, s = tx.update(updates, state[key], params, hparams[key], **extra)
            new_state.append(s)
        return updates, pack(new_state)

    whole = None
    if _execute.fusable(specs):
        inner = _execute.fuse(specs, _chain_name(specs))

        def prepare(updates, state, params, hparams):
            hparams = resolve_hparams(defaults, hparams, "chain hparams")
            check(state)
            call = inner.prepare(updates, [state[k] for k in keys], params,
                                 [hparams[k] for k in keys])
            return call._replace(finish=lambda new: pack(call.finish(new)))

        whole = inner._replace(prepare=prepare, parts=tuple(zip(keys, specs)))
    return Transform(init, _execute.owning(update, txs), defaults, pointwise=whole)


def _name_the_member(txs: tuple, keys: tuple, updates: Any, state: Any, params: Any,
                     hparams: Any) -> None:
    """A fused run raised (a structure, shape, dtype or missing-parameters check, before any
    work): run its transforms one by one (donating nothing) for the error that names the
    transform it concerns."""
    with _execute.keep_state():
        for key, tx in zip(keys, txs):
            updates, _ = tx.update(updates, state[key], params, hparams[key])


def _chain_name(specs: list) -> str:
    return f"chain({', '.join(s.name for s in specs)})"


def _fused_runs(specs: list) -> list:
    """The chain's members as runs ``(start, stop, spec)``: consecutive pointwise transforms
    fused into one spec, the others alone (``spec`` None); empty when nothing fuses."""
    runs, start = [], 0
    while start < len(specs):
        stop = start + 1
        while stop < len(specs) and _execute.fusable(specs[start:stop + 1]):
            stop += 1
        part = specs[start:stop]
        runs.append((start, stop, _execute.fuse(part, _chain_name(part)) if stop - start > 1
                     else None))
        start = stop
    return runs if any(spec is not None for _, _, spec in runs) else []


def reparametrize(inner: Transform, hparams: dict, to_inner: Callable[[dict], Any],
                  name: str = "hparams", structural: Mapping | None = None) -> Transform:
    """``inner`` exposed with other hyperparameters: ``to_inner`` maps them to ``inner``'s.

    This is how an alias (``adamw``, ``sgd``) shows one flat dict with PyTorch's names
    (``lr``, ``betas``, ``weight_decay``) over a chain of building blocks. ``structural`` maps
    the construction-time options (``amsgrad``, ``nesterov``, ...) to their values, for the
    error raised when one is given as a hyperparameter.
    """
    _check_transform(inner, "reparametrize")

    def update(updates, state, params=None, hparams_=None, **extra):
        resolved = resolve_hparams(hparams, hparams_, name, structural)
        # (an alias's combinators too: see chain; donated, as a chain, for an inner block that
        # is no chain: Adafactor's)
        with _execute.donating(extra.get("donate")), _execute.scalars_once():
            return inner.update(updates, state, params, to_inner(resolved), **extra)

    inner_spec, spec = inner.pointwise, None
    if inner_spec is not None:
        def prepare(updates, state, params, hparams_):
            return inner_spec.prepare(
                updates, state, params,
                to_inner(resolve_hparams(hparams, hparams_, name, structural)))

        spec = inner_spec._replace(prepare=prepare, parts=())  # (the parts take inner hparams)
    return Transform(inner.init, _execute.owning(update, [inner]), hparams, pointwise=spec)


def _pairs(params: Any, updates: Any, where: str) -> tuple[list, list, list, list, list, Any]:
    """The leaves of ``params`` and ``updates`` (the structures checked), the indices of the
    leaves where both are given and those leaves of each (shapes and devices checked: a
    mismatch names the leaf), and the structure of ``params``."""
    flat_p, spec = optree.tree_flatten(params, none_is_leaf=True)
    try:
        flat_u = _tree.flatten_like(updates, spec, "updates", "params")
    except TreeMismatchError:
        raise TreeMismatchError(_tree.mismatch_message(
            "params", spec, "updates", _tree.structure(updates))) from None
    both = [i for i, (p, u) in enumerate(zip(flat_p, flat_u)) if p is not None and u is not None]
    pb, ub = [flat_p[i] for i in both], [flat_u[i] for i in both]
    try:  # every leaf checked before any is computed or changed (a column at a time)
        same = [u.shape for u in ub] == [p.shape for p in pb] and [
            u.device for u in ub] == [p.device for p in pb]
    except AttributeError:  # (a leaf that is no tensor)
        same = False
    if not same:
        _tree.check_leaves(where, updates, params, "params", "parameter", dtype=False)
    return flat_p, flat_u, both, pb, ub, spec


def _foreach_groups(both: list, pb: list, ub: list) -> tuple[list, list]:
    """``both`` (whose parameters ``pb`` and updates ``ub`` share devices: see :func:`_pairs`)
    split into groups for one foreach kernel each (same device, dtype, tensor type and layout
    on both sides) and the rest (an update of another dtype: one rounding)."""
    dtypes, devices = [p.dtype for p in pb], [p.device for p in pb]
    if pb and all([type(x) is torch.Tensor for x in pb + ub]) and dtypes.count(dtypes[0]) == len(
            pb) and devices.count(devices[0]) == len(pb) and [u.dtype for u in ub] == dtypes:
        return [list(both)], []  # (the usual case, checked a column at a time)
    groups: dict = {}
    rest = []
    for i, p, u in zip(both, pb, ub):
        if u.dtype != p.dtype or type(u) is not type(p):
            rest.append(i)
            continue
        layout = None if type(p) is torch.Tensor else _tree.layout(p)
        groups.setdefault((p.device, p.dtype, type(p), layout), []).append(i)
    return list(groups.values()), rest


def apply_updates(params: Any, updates: Any) -> Any:
    """``params + updates`` leaf-wise, in each parameter's dtype; pure (new tensors).

    A ``None`` update leaves its parameter as it is. An update of another dtype (a float32
    update of a bfloat16 parameter) is added in the wider dtype and the sum rounded once. Where
    the updates run multi-tensor (:class:`~functional_optim._execute.multi_tensor`: eager,
    nothing requires grad), the sums are one ``torch._foreach_add`` per group of leaves.
    """
    ps, us, both, pb, ub, spec = _pairs(params, updates, "apply_updates")
    out = list(ps)
    if _execute.multi_tensor_wanted([ps, us]):
        groups, rest = _foreach_groups(both, pb, ub)
        for members in groups:
            for i, x in zip(members, torch._foreach_add([ps[i] for i in members],
                                                        [us[i] for i in members])):
                out[i] = x
    else:
        rest = both
    for i in rest:
        p, u = ps[i], us[i]
        out[i] = p + u if u.dtype == p.dtype else (p + u).to(p.dtype)  # (one rounding)
    return optree.tree_unflatten(spec, out)


def check_distinct(leaves: Any, tree: Any, name: str, where: str) -> None:
    """Raises ``ValueError`` where one tensor is two leaves of ``tree`` (``leaves``: its
    leaves, or a dict's values), a tree updated in place: that tensor would take both leaves'
    updates in turn, neither leaf's result (a tied weight given twice)."""
    seen = [id(x) for x in leaves if x is not None]
    if len(set(seen)) == len(seen):
        return
    named = [(n, x) for n, x in _tree.named_leaves(tree) if x is not None]
    first: dict = {}
    for n, x in named:
        if id(x) in first:
            raise ValueError(
                f"{where}: {name} leaves {first[id(x)]!r} and {n!r} are the same tensor; "
                "updated in place, it would take both leaves' updates in turn. Give each leaf "
                "its own tensor (a tied weight once, as model.named_parameters() gives it), or "
                "update out of place")
        first[id(x)] = n


def apply_updates_(params: Any, updates: Any) -> Any:
    """In-place ``p += u`` under ``torch.no_grad()`` (for stateful use, and for a caller that
    donates its parameters); returns ``params``. Every leaf is checked before any changes (a
    tensor that is two leaves of ``params`` is an error: :func:`check_distinct`); the sums are
    foreach kernels per group of leaves, as in :func:`apply_updates`."""
    ps, us, both, pb, ub, _ = _pairs(params, updates, "apply_updates_")
    check_distinct(ps, params, "params", "apply_updates_")
    with torch.no_grad():
        groups, rest = (_foreach_groups(both, pb, ub) if _execute.multi_tensor_wanted([ps, us])
                        else ([], both))
        for members in groups:
            torch._foreach_add_([ps[i] for i in members], [us[i] for i in members])
        for i in rest:
            _execute.writable(ps[i]).add_(us[i])  # (in the wider dtype, rounded once)
    return params
