"""The stateful adapter: any :class:`~functional_optim.Transform` as a ``torch.optim.Optimizer``.

``param_groups`` *are* the hyperparameters: every step reads them, so
``torch.optim.lr_scheduler``, ``group["lr"] = x`` and per-group values just work. State lives per
parameter in ``self.state[p]`` (see :mod:`functional_optim.optim._layout` for the layout). The
transform itself is never put in a param group.
"""

from __future__ import annotations

import copy
import pickle
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import optree
import torch

from .. import _execute, _fused
from ..base import HParamError, Transform
from . import _flat, _layout

__all__ = ["FunctionalOptimizer"]

_OPTIONS = ("foreach", "differentiable")


def _own(value: Any) -> Any:
    """``value`` with every tensor cloned (dicts, lists and tuples rebuilt)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):  # a defaultdict keeps its factory
        out = copy.copy(value)
        for k, v in value.items():
            out[k] = _own(v)
        return out
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_own(v) for v in value)
    return value


class FunctionalOptimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that runs a functional transform.

    Args:
        params: an iterable of tensors, of ``(name, tensor)`` pairs, or of param-group dicts.
        transform: a :class:`~functional_optim.Transform`, or a zero-argument factory returning one
            (e.g. ``functools.partial(fo.adamw, lr=1e-3)``; a factory made of importable functions
            makes the optimizer picklable).
        foreach: ``None`` runs the transform's fused step when it has one and can take the
            group (an alias backed by a torch fused kernel or a cache-blocked step, see
            :class:`Transform`), else the multi-tensor path when no autograd is involved;
            ``True`` the multi-tensor path; ``False`` the per-leaf path. All give the same
            numbers (a fused step up to rounding order).
        **defaults: default values of hyperparameters, by group key (see below).

    Group keys are the transform's hyperparameters flattened to dotted paths: for
    ``chain(clip=clip_by_global_norm(1.0), adam=scale_by_adam(), lr=scale_by_learning_rate(1e-3))``
    they are ``"clip.max_norm"``, ``"adam.betas"``, ``"adam.eps"``, ``"adam.eps_root"`` and
    ``"lr"`` (the one leaf named ``lr`` is exposed under that name, for lr schedulers). For an alias
    (``fo.adamw(...)``) they are torch's flat names.
    """

    def __init__(self, params: Iterable, transform: Transform | Callable[[], Transform], *,
                 foreach: bool | None = None, differentiable: bool = False, **defaults: Any):
        self._source = transform
        self._cache: dict = {}
        tx = self._base_transform()
        keys = _layout.hparam_keys(tx.hparams)
        unknown = sorted(set(defaults) - set(keys))
        if unknown:
            raise HParamError(
                f"{type(self).__name__}: unknown hyperparameter(s) {unknown}; this transform's "
                f"group keys are {sorted(keys)}"
            )
        values = {k: _layout.get_path(tx.hparams, p) for k, p in keys.items()}
        values.update(defaults)
        values.update(foreach=foreach, differentiable=differentiable)
        super().__init__(params, values)

    # -- the transform -----------------------------------------------------------------------

    def _base_transform(self) -> Transform:
        source = self._source
        tx = source if isinstance(source, Transform) else source()
        if not isinstance(tx, Transform):
            raise TypeError(
                f"{type(self).__name__}: transform must be a functional_optim.Transform or a "
                f"factory returning one, got {type(tx).__name__}"
            )
        return tx

    def _transform_for(self, group: dict) -> Transform:
        """The transform that runs ``group`` (one for all groups here; subclasses vary it)."""
        tx = self._cache.get("base")
        if tx is None:
            tx = self._base_transform()
            if tx.fused is None:  # a chain that is Adam(W) in blocks runs torch's kernel
                tx = tx._replace(fused=_fused.chain_step(tx))
            self._cache["base"] = tx
        return tx

    def _hparams_for(self, tx: Transform, group: dict) -> Any:
        keys = self._cache.get(("keys", id(tx)))
        if keys is None:
            keys = self._cache[("keys", id(tx))] = _layout.hparam_keys(tx.hparams)
        return _layout.hparams_from_group(tx.hparams, keys, group)

    # -- state codec (subclasses map paths to torch's names) --------------------------------

    def _load_leaf(self, store: dict, path: tuple, p: torch.Tensor, group: dict) -> Any:
        """The value of ``path`` in a parameter's ``store`` (``None`` when absent)."""
        return _layout.nested_get(store, path) if _layout.nested_has(store, path) else None

    def _load_column(self, stores: list, path: tuple, params: list, group: dict) -> list:
        """:meth:`_load_leaf` of ``path`` for several parameters (one call per step and path:
        a subclass may read the column at once)."""
        if type(self)._load_leaf is not FunctionalOptimizer._load_leaf:
            return [self._load_leaf(s, path, p, group) for s, p in zip(stores, params)]
        return _layout.nested_column(stores, path)

    def _store_leaf(self, store: dict, path: tuple, value: Any, group: dict) -> None:
        _layout.nested_set(store, path, value)

    def _store_column(self, stores: list, path: tuple, values: list, group: dict) -> None:
        """:meth:`_store_leaf` of ``path`` for several parameters."""
        if type(self)._store_leaf is not FunctionalOptimizer._store_leaf:
            for store, value in zip(stores, values):
                self._store_leaf(store, path, value, group)
            return
        *inner, last = path
        for store, value in zip(stores, values):
            for k in inner:
                store = store.setdefault(k, {})
            store[last] = value

    def _fresh_leaf(self, p: torch.Tensor, path: tuple, value: Any, group: dict) -> Any:
        """The initial value of a state leaf (``value`` is what ``transform.init`` gave)."""
        return value

    # -- torch.optim.Optimizer ---------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        """torch's ``add_param_group``; a group must not carry the transform itself."""
        if "transform" in param_group:
            raise TypeError(
                f"{type(self).__name__}: a param group contains 'transform'. The transform is "
                "never stored in param groups (they must pickle); with ZeroRedundancyOptimizer "
                "pass optimizer_class=functools.partial(FunctionalOptimizer, transform=tx)."
            )
        super().add_param_group(param_group)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        source = self._source
        state["_source"] = _Source(source, type(self).__name__) if isinstance(
            source, Transform) else source
        if self.__dict__.get("_flat") is not None:  # the copy keeps the layout choice
            state["_flat"] = self._flat
        return state

    def __setstate__(self, state: dict) -> None:
        if "defaults" not in state:  # from load_state_dict, after its pre-hooks: check before
            self._check_loaded(state["param_groups"], state["state"])  # anything changes
            # torch's cast keeps tensors of the right dtype and device as they are; the step
            # updates state in place, so never share storage with the checkpoint's tensors
            state = {**state, "state": _own(state["state"])}
        super().__setstate__(state)
        self.__dict__.setdefault("_cache", {})
        self._cache = {}

    # deepcopy and pickle go through __getstate__/__setstate__: hooks are dropped, as torch's are

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's ``load_state_dict``; after its pre-hooks ran, every state tensor's shape is
        checked against what this optimizer's transform keeps for that parameter: a mismatch
        raises ``ValueError`` and leaves the optimizer unchanged."""
        super().load_state_dict(state_dict)

    def _check_loaded(self, groups: list, state: dict) -> None:
        for current, group in zip(self.param_groups, groups, strict=True):
            group = {**current, **group}  # keys an older checkpoint lacks: the current values
            tx = self._transform_for(group)
            for index, p in enumerate(group["params"]):
                if p in state:
                    self._check_saved(tx, group, p, index, state[p])

    def _check_saved(self, tx: Transform, group: dict, p: torch.Tensor, index: int,
                     saved: dict) -> None:
        template = tx.init({"p": torch.empty_like(p, device="meta")})
        for path, owner, leaf in _layout.walk_state(template, frozenset(["p"])):
            if owner is None or not isinstance(leaf, torch.Tensor):
                continue
            value = self._load_leaf(saved, path, p, group)
            if isinstance(value, torch.Tensor) and value.shape != leaf.shape:
                label = group.get("param_names", [None] * (index + 1))[index] or f"#{index}"
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: state {'.'.join(path)!r} of "
                    f"parameter {label} has shape {tuple(value.shape)}, expected "
                    f"{tuple(leaf.shape)}; nothing was loaded"
                )

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run one update of every group (params without ``.grad`` are skipped).

        Returns the closure's loss when a closure is given.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        flat = self.__dict__.get("_flat")
        for group in self.param_groups:
            if flat is None or not self._flat_step(group, **flat):
                self._step_group(group)
        return loss

    def use_flat(self, *, params: bool = True, compile: bool = False) -> FunctionalOptimizer:
        """Switch to the flat layout (:mod:`functional_optim.optim._flat`); returns ``self``.

        From the next step, each group keeps its gradients and every state leaf in one
        contiguous buffer per (device, dtype) and runs the transform once per buffer;
        ``self.state[p]`` holds views of the buffers (``state_dict`` is unchanged).

        Args:
            params: also move the parameters into one buffer (``p.data`` becomes a view of it),
                so that the parameter update is one kernel; ``False`` leaves them where they are
                (one more pass per step, to gather them).
            compile: run the update of each buffer as one ``torch.compile``'d graph (the number
                hyperparameters become 0-d tensors, so schedulers do not recompile it).

        A group whose parameters do not all have a gradient steps in the usual layout (those
        without one are skipped, as torch does), and the next full step gathers the buffers
        again. So does a group after ``load_state_dict``. Use
        ``zero_grad(set_to_none=False)`` to keep backward accumulating straight into the flat
        gradient buffer (else each step copies the gradients in).
        """
        for name, value in (("params", params), ("compile", compile)):
            if not isinstance(value, bool):
                raise TypeError(f"{type(self).__name__}.use_flat: {name} must be True or False, "
                                f"got {type(value).__name__} {value!r}")
        self._flat = {"rehome": params, "compile": compile}
        self._cache = {k: v for k, v in self._cache.items() if not _is_flat_key(k)}
        return self

    def _flat_step(self, group: dict, rehome: bool, compile: bool) -> bool:
        """One step of ``group`` in the flat layout; ``False``: it must take the usual one."""
        key = ("flat", id(group))
        if group.get("differentiable") or any([p.grad is None for p in group["params"]]) or \
                not group["params"]:
            if self._cache.get(key) is not False:  # the usual step may replace state tensors
                self._cache.pop(key, None)
            return False
        flat = self._cache.get(key)
        if flat is False:
            return False
        if flat is None or not flat.valid():
            tx = self._transform_for(group)
            try:
                flat = _flat.FlatGroup(self, group, tx, rehome=rehome, compile=compile)
            except _flat.NotFlat as e:
                index = next(i for i, g in enumerate(self.param_groups) if g is group)
                warnings.warn(f"{type(self).__name__}: param group {index} keeps the usual "
                              f"layout: {e}", RuntimeWarning, stacklevel=3)
                self._cache[key] = False
                return False
            self._cache[key] = flat
        flat.step(self._hparams_for(flat.tx, group))
        return True

    def _step_group(self, group: dict) -> None:
        everything = group["params"]
        grads = [p.grad for p in everything]
        params = [p for p, g in zip(everything, grads) if g is not None]
        if not params:
            return
        names = self._names(group, params)
        by_name = dict(zip(names, params))
        grads = dict(zip(names, [g for g in grads if g is not None]))
        tx = self._transform_for(group)
        hparams = self._hparams_for(tx, group)
        spec, plan, columns, order = self._plan(tx, names, params)

        state_of = self.state
        # the parameters as a per-parameter state leaf lists them (sorted names), and their
        # stores; a column with other owners reads its own
        in_order = params if order is None else [params[i] for i in order]
        ordered = (([state_of[p] for p in in_order] if plan else []), in_order)
        leaves: list = [None] * len(plan)
        fresh: dict = {}
        made: set = set()  # positions of leaves made by ``init`` now (stored even if unchanged)
        for path, at, owners, _ in columns:
            cs, cp = ordered if owners is None else (
                [state_of[params[i]] for i in owners], [params[i] for i in owners])
            values = self._load_column(cs, path, cp, group)
            missing = [k for k, v in enumerate(values) if v is None]
            if missing:
                if not fresh:
                    init = tx.init(dict(by_name))
                    fresh.update({(pa, ow): leaf for pa, ow, leaf in
                                  _layout.walk_state(init, frozenset(names))})
                positions = _positions(at)
                for k in missing:
                    values[k] = self._fresh_leaf(cp[k], path, fresh[plan[positions[k]]], group)
                    made.add(positions[k])
            _assign(leaves, at, values)
        before = [_FRESH if k in made else v for k, v in enumerate(leaves)] if made else leaves
        state = optree.tree_unflatten(spec, leaves)
        differentiable = group.get("differentiable", False)
        multi = group.get("foreach") is not False and not differentiable
        new_state = None
        if tx.fused is not None and group.get("foreach") is None and not differentiable and \
                not torch.compiler.is_compiling():
            with torch.no_grad():
                new_state = tx.fused(by_name, grads, state, hparams)
        if new_state is None:
            new_state = self._update_group(tx, by_name, grads, state, hparams, multi,
                                           differentiable)
        elif new_state is state and not made:
            return  # updated in place: self.state holds the new values already
        new_leaves = optree.tree_leaves(new_state)
        for path, at, owners, shared in columns:
            new = _take(new_leaves, at)
            if shared:
                # shared leaves go to every parameter of the group (also those without a grad
                # now), so that the next step reads the current value whichever comes first
                self._store_column([state_of[p] for p in everything], path,
                                   new * len(everything), group)
                continue
            cs = ordered[0] if owners is None else [state_of[params[i]] for i in owners]
            changed = [(s, v) for s, v, o in zip(cs, new, _take(before, at)) if v is not o]
            if changed:
                self._store_column([s for s, _ in changed], path, [v for _, v in changed],
                                   group)

    @staticmethod
    def _update_group(tx: Transform, by_name: dict, grads: dict, state: Any, hparams: Any,
                      multi: bool, differentiable: bool) -> Any:
        """The chain's ``update`` and ``p += u``; returns the new state."""
        with torch.set_grad_enabled(differentiable), _execute.multi_tensor(multi, donate=True):
            updates, new_state = tx.update(grads, state, dict(by_name), hparams)
            pairs = [(p, updates[n]) for n, p in by_name.items() if updates[n] is not None]
            if multi and all(u.dtype == p.dtype for p, u in pairs):
                torch._foreach_add_([p for p, _ in pairs], [u for _, u in pairs])
            else:
                for p, u in pairs:
                    p.add_(u if u.dtype == p.dtype else u.to(p.dtype))
        return new_state

    def _names(self, group: dict, params: list) -> list:
        """The names of ``params`` (those of ``group`` with a gradient): ``param_names``, or
        their indices in the group."""
        all_names = group.get("param_names")
        everything = group["params"]
        if len(params) == len(everything):
            if all_names is not None:
                return all_names
            names = self._cache.get(("names", len(params)))
            if names is None:
                names = self._cache[("names", len(params))] = [str(i) for i in
                                                               range(len(params))]
            return names
        if all_names is None:
            all_names = self._names(group, everything)
        return [n for n, p in zip(all_names, everything) if p.grad is not None]

    def _plan(self, tx: Transform, names: list, params: list) -> tuple:
        """How the state tree is read and written, cached by transform and names.

        Returns its treespec; per leaf in optree order, its ``(path, owner)``; the leaves by
        path, ``(path, at, owners, shared)``: ``at`` where they sit among the leaves (a slice
        when evenly spaced), ``owners`` as indices into ``names`` (a leaf shared by the group is
        read from the first parameter), ``None`` for a leaf every parameter has; and ``order``,
        the indices of ``names`` in the order of those leaves (sorted), ``None`` when it is
        theirs."""
        key = ("plan", id(tx), tuple(names))
        plan = self._cache.get(key)
        if plan is None:
            meta = {n: torch.empty_like(p, device="meta") for n, p in zip(names, params)}
            template = tx.init(meta)
            leaves = [(path, owner) for path, owner, _ in _layout.walk_state(template,
                                                                            frozenset(names))]
            index = {n: i for i, n in enumerate(names)}
            order = [index[n] for n in sorted(names)]
            by_path: dict = {}
            for position, (path, owner) in enumerate(leaves):
                column = by_path.setdefault((path, owner is None), ([], []))
                column[0].append(position)
                column[1].append(0 if owner is None else index[owner])
            columns = [(path, _slice(positions), None if owners == order and not shared
                        else owners, shared)
                       for (path, shared), (positions, owners) in by_path.items()]
            order = None if order == list(range(len(names))) else order
            plan = self._cache[key] = (optree.tree_structure(template), leaves, columns, order)
        return plan


_FRESH = object()  # marks a state leaf made by ``init`` this step (it must be stored)


def _slice(positions: list) -> slice | list:
    """``positions`` as a slice when evenly spaced, else the list (:func:`_take` and
    :func:`_assign` read and write either)."""
    if len(positions) == 1:
        return slice(positions[0], positions[0] + 1, 1)
    step = positions[1] - positions[0]
    if step > 0 and positions == list(range(positions[0], positions[-1] + 1, step)):
        return slice(positions[0], positions[-1] + 1, step)
    return positions


def _positions(at: slice | list) -> Any:
    return range(at.start, at.stop, at.step) if isinstance(at, slice) else at


def _take(seq: list, at: slice | list) -> list:
    return seq[at] if isinstance(at, slice) else [seq[k] for k in at]


def _assign(seq: list, at: slice | list, values: list) -> None:
    if isinstance(at, slice):
        seq[at] = values
    else:
        for k, v in zip(at, values):
            seq[k] = v


def _is_flat_key(key: Any) -> bool:
    return isinstance(key, tuple) and bool(key) and key[0] == "flat"


class _Source:
    """A :class:`Transform` instance in ``__getstate__``: deepcopy passes it through, pickle
    pickles it when its functions can be, else raises a clear error naming the remedy."""

    def __init__(self, transform: Transform, owner: str):
        self.transform, self.owner = transform, owner

    def __deepcopy__(self, memo: dict) -> Transform:
        return copy.deepcopy(self.transform, memo)

    def __reduce__(self):
        try:
            pickle.dumps(self.transform)
        except (pickle.PicklingError, AttributeError, TypeError) as e:
            raise pickle.PicklingError(
                f"{self.owner}: cannot pickle an optimizer built from a Transform instance whose "
                f"functions are closures ({e}); pass a factory instead, e.g. "
                "FunctionalOptimizer(params, functools.partial(fo.adamw, lr=1e-3)) "
                "(deepcopy works either way)"
            ) from None
        return _identity, (self.transform,)


def _identity(x: Any) -> Any:
    return x
