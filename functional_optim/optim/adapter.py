"""The stateful adapter: any :class:`~functional_optim.Transform` as a ``torch.optim.Optimizer``.

``param_groups`` *are* the hyperparameters: every step reads them, so
``torch.optim.lr_scheduler``, ``group["lr"] = x`` and per-group values just work. State lives per
parameter in ``self.state[p]`` (see :mod:`functional_optim.optim._layout` for the layout). The
transform itself is never put in a param group.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import operator
import pickle
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import optree
import torch

from .. import _execute, _fused, groups
from .. import tree as _tree
from ..base import HParamError, Transform
from . import _flat, _layout, _precision
from ._loading import CheckpointLoading, stored_state

__all__ = ["FunctionalOptimizer"]

class FunctionalOptimizer(CheckpointLoading, torch.optim.Optimizer):
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
    they are ``"clip.max_norm"``, ``"betas"``, ``"adam.eps"``, ``"adam.eps_root"`` and
    ``"lr"``: the one leaf named ``lr``, the one named ``betas`` and the one named ``momentum``
    are exposed under that name, as torch.optim's classes name them, so that torch's schedulers
    drive them (``OneCycleLR``/``CyclicLR`` with ``cycle_momentum=True`` cycle ``betas[0]`` or
    ``momentum``). For an alias (``fo.adamw(...)``) the keys are torch's flat names.

    A :func:`~functional_optim.parameter_groups` transform takes named parameters
    (``model.named_parameters()``) and makes torch's param groups, as
    ``torch.optim.AdamW(make_parameter_groups(...))`` has them: one per unfrozen group, last the
    default group, each with that group's hyperparameters under its transform's keys (``lr``,
    ``betas``, ``weight_decay``, ... for an alias) and run by that group's transform; frozen
    parameters are left out. (Param-group dicts given instead are each run by the transform of
    the group their ``param_names`` belong to.)
    """

    def __init__(self, params: Iterable, transform: Transform | Callable[[], Transform], *,
                 foreach: bool | None = None, differentiable: bool = False, **defaults: Any):
        self._source = transform
        self._cache: dict = {}
        tx = self._base_transform()
        grouped = groups.groups_of(tx)
        if grouped is not None:
            if defaults:
                raise HParamError(
                    f"{type(self).__name__}: a parameter_groups transform carries its groups' "
                    f"hyperparameters; give {sorted(defaults)} to parameter_groups(...) instead")
            params = _torch_groups(params, grouped, type(self).__name__)
            tx = grouped.transform(len(grouped.groups))
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
        """The transform that runs ``group``: the one given (subclasses vary it), or for a
        :func:`~functional_optim.parameter_groups` transform that of the group's parameters."""
        index = self._group_index(group)
        tx = self._cache.get(("base", index))
        if tx is None:
            tx = self._base_transform()
            if index is not None:
                tx = groups.groups_of(tx).transform(index)
            if tx.fused is None:  # a chain that is Adam(W) in blocks runs torch's kernel
                tx = tx._replace(fused=_fused.chain_step(tx))
            self._cache[("base", index)] = tx
        return tx

    def _step_transform(self, group: dict) -> Transform:
        """The transform that steps ``group``: :meth:`_transform_for`'s, under the precision
        policy when :meth:`use_precision` set one."""
        tx = self._transform_for(group)
        policy = self.__dict__.get("_policy")
        return tx if policy is None else _precision.wrap(self._cache, tx, policy)

    def _group_index(self, group: dict) -> int | None:
        """For a :func:`~functional_optim.parameter_groups` transform, the index of the group
        that the parameters of ``group`` (by ``param_names``) belong to; else ``None``."""
        grouped = self._cache.get("grouped")
        if grouped is None:
            grouped = self._cache["grouped"] = groups.groups_of(self._base_transform()) or False
        if grouped is False:
            return None
        names = tuple(group.get("param_names", ()))
        index = self._cache.get(("group", names))
        if index is None:
            found = sorted(set(groups.assign(names, grouped.groups)[0]))
            if len(found) > 1:
                raise ValueError(
                    f"{type(self).__name__}: a param group holds parameters of different "
                    f"parameter_groups groups ({found}; {len(grouped.groups)} is the default "
                    f"group): {list(names)}")
            index = self._cache[("group", names)] = found[0] if found else len(grouped.groups)
        return index

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
        _layout.nested_set_column(stores, path, values)

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
        for key in ("_flat", "_policy"):  # the copy keeps the layout and the policy
            if self.__dict__.get(key) is not None:
                state[key] = self.__dict__[key]
        return state

    def __setstate__(self, state: dict) -> None:
        if "defaults" not in state:  # from load_state_dict, checked by its last pre-hook
            state = {**state, "state": stored_state(state["state"])}
        super().__setstate__(state)
        for group in self.param_groups:
            self._fill_group(group)
        self.__dict__.setdefault("_cache", {})
        self._cache = {}

    # deepcopy and pickle go through __getstate__/__setstate__: hooks are dropped, as torch's are

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run one update of every group (params without ``.grad`` are skipped).

        Returns the closure's loss when a closure is given.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._update_all({})
        return loss

    #: the attribute of each parameter that holds its gradient (a class that steps on
    #: per-example gradients reads Opacus's ``grad_sample``)
    _GRADIENT = "grad"

    def _update_all(self, extras: dict, defer: bool = False) -> None:
        """One update of every group; ``extras``: keyword arguments of every ``update`` (a
        Hessian-vector product, a norm over all groups: see ``registry.DropInProtocol``).
        ``defer``: every group's update is computed before any parameter moves (a graph
        through the parameters, such as a closure's ``create_graph`` gradients, stays valid
        for every group; no fused step then)."""
        self._check_step()
        flat = self.__dict__.get("_flat")
        self._extras = extras
        self._pending = [] if defer else None
        try:
            for group in self.param_groups:
                # the flat layout builds and rehomes its buffers in Python: never traced
                if flat is None or not _untraced(self._flat_step, group, flat["rehome"],
                                                 flat["compile"]):
                    self._step_group(group)
            for add in self._pending or ():
                add()
        finally:
            del self._extras, self._pending

    def _check_step(self) -> None:
        """Checks of the groups before any of them steps (subclasses add torch's)."""

    def use_flat(self, *, params: bool = True, compile: bool = False) -> FunctionalOptimizer:
        """Switch to the flat layout (:mod:`functional_optim.optim._flat`); returns ``self``.

        From the next step, each group keeps its gradients and every state leaf in one
        contiguous buffer per (device, dtype) and runs the transform once per buffer;
        ``self.state[p]`` holds views of the buffers (``state_dict`` is unchanged).

        Args:
            params: also move the parameters into one buffer (``p.data`` becomes a view of it,
                with the parameter's strides: channels_last stays channels_last), so that the
                parameter update is one kernel; ``False`` leaves them where they are (one more
                pass per step, to gather them), as does a group holding a strided view of
                another tensor (``big[:, ::2]``: moving it would cut it off from ``big``).
            compile: run the update of each buffer as one ``torch.compile``'d graph (the number
                hyperparameters become 0-d tensors, so schedulers do not recompile it). This is
                how a flat step compiles: within a ``torch.compile``'d ``step`` (or train step)
                the flat step runs as it would eagerly (a graph break; ``fullgraph=True``
                refuses it).

        A group whose parameters do not all have a dense gradient steps in the usual layout
        (those without one are skipped, as torch does; sparse ones stay sparse), and the next
        full step gathers the buffers again. So does a group after ``load_state_dict``. Use
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

    def use_precision(self, state_dtype: Any = None, *, stochastic_rounding: bool = False,
                      params: str = "round", seed: int = 0, **fields: Any
                      ) -> FunctionalOptimizer:
        """Run every group under the precision policy :func:`functional_optim.precision`
        (the one mechanism of every class here); returns ``self``.

        ``state_dtype`` (a dtype, ``"bf16"``, ``"fp16"``, ``"fp32"``, ``"int8"``/``"int4"``
        (blockwise-quantized codes) or a :class:`~functional_optim.transforms.storage.Storage`)
        stores the floating state tensors shaped like their parameter (``fields`` per state
        field of the transform, e.g. ``mu=torch.bfloat16``); the math runs in float32.
        ``stochastic_rounding`` rounds every narrower store stochastically (state, and with
        ``params="round"`` the parameters); ``params`` is ``"round"``, ``"kahan"`` (a
        ``compensation`` per parameter) or ``"master"`` (a float32 ``master_param``). ``seed``
        starts ``rounding_key``.

        The state keeps its names (``exp_avg`` in the policy's dtype); ``state_dict`` saves the
        policy's leaves too and round-trips exactly. Loading converts explicitly, by the rule of the
        "Low precision and memory" guide: each floating state tensor to the dtype the policy stores
        it in (a float32 torch.optim checkpoint into bfloat16 state: rounded to nearest, with a
        warning naming the keys and dtypes; into quantized state: encoded by the storage as
        ``exp_avg.codes`` and ``exp_avg.absmax``, with the same warning), on the parameter's device;
        the policy's leaves start fresh when absent; an optimizer without the policy refuses them.
        The fused kernels do not run under a policy (the multi-tensor, per-leaf and flat paths do;
        the flat layout draws other random numbers, of the same law).
        """
        policy = dict(state_dtype=state_dtype, stochastic_rounding=stochastic_rounding,
                      params=params, seed=seed, **fields)
        self._policy = _precision.check(type(self).__name__, policy)
        self._cache = {}
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
            tx = self._step_transform(group)
            try:
                flat = _flat.FlatGroup(self, group, tx, rehome=rehome, compile=compile)
            except _flat.NotFlat as e:
                index = next(i for i, g in enumerate(self.param_groups) if g is group)
                warnings.warn(f"{type(self).__name__}: param group {index} keeps the usual "
                              f"layout: {e}", RuntimeWarning, stacklevel=3)
                self._cache[key] = False
                return False
            self._cache[key] = flat
        if not flat.gather_grads():  # a sparse gradient: this step takes the usual layout
            self._cache.pop(key)
            return False
        flat.step(self._hparams_for(flat.tx, group))
        return True

    def _check_sparse(self, group: dict) -> None:
        """Called before a step of ``group`` in which a gradient is sparse: raises where this
        optimizer refuses them (the drop-in classes raise torch's errors; here the transform
        decides: a block that cannot take a sparse update raises a ``TypeError`` naming it)."""

    def _step_group(self, group: dict) -> None:
        everything = group["params"]
        grads = [getattr(p, self._GRADIENT, None) for p in everything]
        params = [p for p, g in zip(everything, grads) if g is not None]
        if not params:
            return
        grads = [g for g in grads if g is not None]
        if _any_sparse(grads):
            self._check_sparse(group)
            # dynamo cannot trace sparse tensors: under torch.compile this step runs eagerly
            # as a whole (no piece of it compiled on its own)
            _untraced(self._run_group, group, params, grads, True)
        else:
            self._run_group(group, params, grads, False)

    def _run_group(self, group: dict, params: list, grads: list, sparse: bool) -> None:
        """One step of ``group``'s ``params`` (those with a gradient, ``grads``; ``sparse``:
        some are sparse, which the fused steps do not take)."""
        everything = group["params"]
        names = self._names(group, params)
        by_name = dict(zip(names, params))
        grads = dict(zip(names, grads))
        tx = self._step_transform(group)
        hparams = self._hparams_for(tx, group)
        spec, template, plan, columns, order = self._plan(tx, names, params)

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
                    with torch.no_grad():  # (a copy of a parameter is state, not a graph)
                        init = tx.init(dict(by_name))
                    if not _execute.donates_to(tx):  # a user's init may return params
                        init = _layout.unshared(init, params)
                    fresh.update({(pa, ow): leaf for pa, ow, leaf in
                                  _layout.walk_state(init, frozenset(names))})
                positions = _layout.positions(at)
                for k in missing:
                    values[k] = self._fresh_leaf(cp[k], path, fresh[plan[positions[k]]], group)
                    made.add(positions[k])
            _layout.assign(leaves, at, values)
        before = [_FRESH if k in made else v for k, v in enumerate(leaves)] if made else leaves
        state = optree.tree_unflatten(
            optree.tree_structure(template) if spec is None else spec, leaves)
        differentiable = group.get("differentiable", False)
        multi = group.get("foreach") is not False and not differentiable
        new_state = None
        pending = self.__dict__.get("_pending")
        if tx.fused is not None and group.get("foreach") is None and not differentiable and \
                not sparse and pending is None and not torch.compiler.is_compiling():
            with torch.no_grad():
                new_state = _untraced(tx.fused, by_name, grads, state, hparams)
        if new_state is None:
            new_state = self._update_group(tx, by_name, grads, state, hparams, multi,
                                           differentiable, self.__dict__.get("_extras", {}),
                                           pending)
        elif new_state is state and not made:
            return  # updated in place: self.state holds the new values already
        new_leaves = _layout.leaves_along(spec, new_state)
        for path, at, owners, shared in columns:
            new = _layout.take(new_leaves, at)
            if shared:
                # shared leaves go to every parameter of the group (also those without a grad
                # now), so that the next step reads the current value whichever comes first
                self._store_column([state_of[p] for p in everything], path,
                                   new * len(everything), group)
                continue
            cs = ordered[0] if owners is None else [state_of[params[i]] for i in owners]
            changed = [(s, v) for s, v, o in zip(cs, new, _layout.take(before, at)) if v is not o]
            if changed:
                self._store_column([s for s, _ in changed], path, [v for _, v in changed],
                                   group)

    @staticmethod
    def _update_group(tx: Transform, by_name: dict, grads: dict, state: Any, hparams: Any,
                      multi: bool, differentiable: bool, extras: dict,
                      pending: list | None = None) -> Any:
        """The chain's ``update`` (with the keyword arguments ``extras``) and ``p += u`` (or,
        with a ``pending`` list, that addition appended to it, to run later); returns the new
        state. The state buffers are this optimizer's, so the library's own transforms may
        update them in place (:func:`~functional_optim._execute.donates_to`)."""
        library = _execute.donates_to(tx)
        with torch.set_grad_enabled(differentiable), _execute.multi_tensor(multi, donate=library):
            updates, new_state = tx.update(grads, state, dict(by_name), hparams, **extras)
            if not library:  # a user's update may keep its inputs (params, grads) as state
                new_state = _layout.unshared(new_state, [*by_name.values(), *grads.values()])
            pairs = [(p, updates[n]) for n, p in by_name.items() if updates[n] is not None]
            if pending is None:
                FunctionalOptimizer._add_updates(pairs, multi)
        if pending is not None:
            pending.append(functools.partial(FunctionalOptimizer._add_updates, pairs, multi,
                                             differentiable))
        return new_state

    @staticmethod
    def _add_updates(pairs: list, multi: bool, differentiable: bool | None = None) -> None:
        """``p += u`` for each pair (``differentiable``: in that grad mode, else the
        current one)."""
        with contextlib.nullcontext() if differentiable is None else \
                torch.set_grad_enabled(differentiable):
            if multi and all(u.dtype == p.dtype for p, u in pairs):
                for members in _tree.by_layout([p for p, _ in pairs]):
                    torch._foreach_add_([pairs[i][0] for i in members],
                                        [pairs[i][1] for i in members])
            else:
                for p, u in pairs:
                    p.add_(u)  # (another dtype: added in the wider one, rounded once)

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
        return [n for n, p in zip(all_names, everything)
                if getattr(p, self._GRADIENT, None) is not None]

    def _plan(self, tx: Transform, names: list, params: list) -> tuple:
        """How the state tree is read and written, cached by transform and names.

        Returns its treespec (``None`` while dynamo traces: see below) and ``init``'s result on
        meta tensors; per leaf in optree order, its ``(path, owner)``; the leaves by
        path, ``(path, at, owners, shared)``: ``at`` where they sit among the leaves (a slice
        when evenly spaced), ``owners`` as indices into ``names`` (a leaf shared by the group is
        read from the first parameter), ``None`` for a leaf every parameter has; and ``order``,
        the indices of ``names`` in the order of those leaves (sorted), ``None`` when it is
        theirs.

        A treespec made eagerly is not one dynamo traces, and one made while tracing is not a
        real one (once returned to eager code: a frame dynamo runs eagerly calls this one
        compiled): while tracing, the plan is made anew, not cached, and has no treespec; the
        caller takes the template's."""
        compiling = torch.compiler.is_compiling()
        key = ("plan", id(tx), tuple(names))
        plan = None if compiling else self._cache.get(key)
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
            columns = [(path, _layout.slice_of(positions), None if owners == order and not shared
                        else owners, shared)
                       for (path, shared), (positions, owners) in by_path.items()]
            order = None if order == list(range(len(names))) else order
            spec = None if compiling else optree.tree_structure(template)
            plan = (spec, template, leaves, columns, order)
            if not compiling:
                self._cache[key] = plan
        return plan


def _any_sparse(grads: list) -> bool:
    """Whether a gradient is sparse: eagerly one C-level pass (this runs every step: a generator
    costs a Python call per gradient), traced a plain loop (dynamo cannot trace attrgetter)."""
    if torch.compiler.is_compiling():
        return any(g.is_sparse for g in grads)
    return any(map(_IS_SPARSE, grads))


_IS_SPARSE = operator.attrgetter("is_sparse")
_FRESH = object()  # marks a state leaf made by ``init`` this step (it must be stored)


@torch.compiler.disable
def _untraced(fn: Callable, *args: Any) -> Any:
    """``fn(*args)``, never traced by dynamo, even when a ``torch.compile``'d caller runs
    eagerly (a frame dynamo falls back on, which would compile each call it makes on its own):
    for torch's fused kernels (no fake implementation on the CPU) and sparse gradients."""
    return fn(*args)


def _torch_groups(params: Iterable, grouped: groups.ParameterGroups, owner: str) -> list:
    """torch's param groups for a :func:`~functional_optim.parameter_groups` transform: from
    ``(name, tensor)`` pairs, one group per unfrozen group (the default last) with its
    transform's hyperparameters; param-group dicts are kept as given."""
    items = list(params)
    if items and all(isinstance(x, dict) for x in items):
        return items
    if not all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in items):
        raise TypeError(f"{owner}: a parameter_groups transform assigns parameters by name: "
                        "pass model.named_parameters() (or (name, tensor) pairs)")
    index = grouped.check([n for n, _ in items], [p.numel() for _, p in items])
    out = []
    for k, g in enumerate([*grouped.groups, None]):
        if g is not None and g.frozen:
            continue
        hparams = grouped.transform(k).hparams
        values = {key: _layout.get_path(hparams, path)
                  for key, path in _layout.hparam_keys(hparams).items()}
        members = [x for x, j in zip(items, index) if j == k]
        out.append({"params": [p for _, p in members], "param_names": [n for n, _ in members],
                    **values})
    return out


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
