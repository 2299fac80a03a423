r"""The precision policy: state storage dtypes, stochastic rounding, Kahan and master weights.

Each piece is a transform applied to any chain, never a copy of an algorithm:

- :func:`with_state_dtype` stores the floating-point state of the transform it wraps in a
  narrower dtype (per state field: ``mu=torch.bfloat16``), computes in float32 and casts on
  store (to nearest, or stochastically);
- :func:`precision` is that plus how the *parameters* are written: ``"round"`` (``p + u`` to
  nearest, or stochastically with ``stochastic_rounding``), ``"kahan"`` (a compensation term in
  the state carries what the rounding dropped) or ``"master"`` (a float32 copy of the
  parameters in the state; the model sees them rounded);
- :func:`stochastic_rounding`, :func:`kahan_summation` and :func:`master_weights` are the three
  parameter writes as transforms to put last in a chain.

A parameter write returns the update :math:`\delta = \tilde p - p` (in the compute dtype) such
that :func:`~functional_optim.apply_updates`, which adds in the wider dtype and rounds once, gives
exactly the intended :math:`\tilde p` (both are representable in the parameter's dtype, their
difference is exact in float32, and :math:`p + \delta` rounds back to :math:`\tilde p`); so the
policy works on every path that applies updates: functional, the drop-in classes (the adapter),
their multi-tensor and flat layouts.

*Randomness.* Stochastic rounding draws from a key carried in the state
(:mod:`functional_optim._random`): a 0-d int64 ``rounding_key`` holding
:math:`\mathrm{stream} \cdot 2^{32} + \mathrm{counter}`, advanced once per update; leaf ``i`` of
the state uses salt ``2i``, parameter ``i`` salt ``2i + 1``. Reproducible, no global generator,
capturable; under ``vmap`` a batched ``seed`` (a 0-d int tensor per member) gives each member its
own stream. The flat layout (one leaf per buffer) draws other numbers of the same law.

*Storage.* A state field's storage is a :class:`Storage`: :class:`CastStorage` (``"bf16"``,
``"fp16"``, ``"fp32"`` or a dtype) here; a quantized storage (8-bit blockwise codes and scales)
is another :class:`Storage` whose ``encode`` returns its own NamedTuple of tensors, which this
module passes through the state as one unit (:meth:`Storage.holds`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import optree
import torch

from .. import _execute, _random
from .. import tree as _tree
from ..base import EmptyState, HParamError, Transform, check_state, missing_params

__all__ = [
    "Storage",
    "CastStorage",
    "storage",
    "stochastic_round",
    "PrecisionState",
    "with_state_dtype",
    "precision",
    "StochasticRoundingState",
    "stochastic_rounding",
    "KahanState",
    "kahan_summation",
    "MasterWeightsState",
    "master_weights",
]

_M32 = 0xFFFFFFFF
_PARAM_MODES = ("round", "kahan", "master")


# -- storage -----------------------------------------------------------------------------------

class Storage:
    """How one state field is kept between updates (a base class to subclass).

    ``encode(x, key, salt)`` turns the value computed in the compute dtype into what the state
    holds (a tensor, or a NamedTuple of tensors such as quantized codes and their scales);
    ``key`` is the update's 2-word random key (``None`` at ``init``) and ``salt`` the leaf's.
    ``decode(stored, dtype)`` gives the value back in ``dtype``, the compute dtype.
    ``holds(node)`` says whether ``node`` is one stored value (so it is decoded as a unit).
    """

    def encode(self, x: torch.Tensor, key: torch.Tensor | None, salt: int) -> Any:
        raise NotImplementedError

    def decode(self, stored: Any, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def holds(self, node: Any) -> bool:
        return isinstance(node, torch.Tensor)


class CastStorage(Storage):
    """A tensor stored in ``dtype``: to nearest, or stochastically (:func:`stochastic_round`)
    when ``stochastic`` and a key is given."""

    def __init__(self, dtype: torch.dtype, stochastic: bool = False):
        self.dtype = dtype
        self.stochastic = stochastic

    def encode(self, x, key, salt):
        if self.stochastic and key is not None and _narrower(self.dtype, x.dtype):
            return stochastic_round(x, self.dtype, key, salt)
        return x.to(self.dtype)

    def decode(self, stored, dtype):
        return stored.to(dtype)

    def __repr__(self) -> str:
        return f"CastStorage({self.dtype}, stochastic={self.stochastic})"


_NAMES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
          "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32,
          "fp64": torch.float64, "float64": torch.float64}


def storage(spec: Any, stochastic: bool = False, where: str = "state_dtype") -> Storage:
    """The :class:`Storage` that ``spec`` names: a :class:`Storage`, a floating ``torch.dtype``,
    or one of ``"bf16"``, ``"fp16"``, ``"fp32"``, ``"fp64"`` (and the dtypes' names)."""
    if isinstance(spec, Storage):
        return spec
    dtype = _NAMES.get(spec) if isinstance(spec, str) else spec
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise HParamError(f"{where}: expected a floating torch.dtype, one of {sorted(_NAMES)} or "
                          f"a Storage, got {spec!r}")
    return CastStorage(dtype, stochastic)


def _narrower(dtype: torch.dtype, than: torch.dtype) -> bool:
    return torch.finfo(dtype).bits < torch.finfo(than).bits


# -- stochastic rounding -------------------------------------------------------------------------

def _seed_key(seed: int | torch.Tensor) -> torch.Tensor:
    """The packed key of stream ``seed`` (31 bits) at counter 0, a 0-d int64 tensor."""
    if isinstance(seed, torch.Tensor):
        return (seed.to(torch.int64) & 0x7FFFFFFF) << 32
    return torch.tensor((int(seed) & 0x7FFFFFFF) << 32, dtype=torch.int64)


def _words(packed: torch.Tensor) -> torch.Tensor:
    """The 2-word key of :mod:`functional_optim._random` of a packed key."""
    return torch.stack([packed >> 32, packed & _M32])


def _advance(packed: torch.Tensor) -> torch.Tensor:
    return ((packed >> 32) << 32) | ((packed + 1) & _M32)


def stochastic_round(x: torch.Tensor, dtype: torch.dtype, key: torch.Tensor,
                     salt: int) -> torch.Tensor:
    r"""``x`` rounded to ``dtype`` stochastically, without bias.

    With :math:`r` the nearest value of ``dtype`` and :math:`o` its neighbour on the other side
    of :math:`x`, the result is :math:`o` with probability :math:`|x - r| / |o - r|`, else
    :math:`r`: its mean is :math:`x`. The uniform draw is :func:`functional_optim._random.uniform`
    of ``key`` (a 2-word key) and ``salt``; non-finite values round to nearest. Under autograd
    the gradient is the identity's (straight through).
    """
    r = x.to(dtype)
    wide_r = r.to(x.dtype)
    err = x - wide_r
    toward = torch.where(err > 0, float("inf"), float("-inf")).to(dtype)
    other = torch.nextafter(r, toward)
    chance = err.abs() / (other.to(x.dtype) - wide_r).abs()
    out = torch.where(_random.uniform(key, salt, x) < chance, other, r)
    if torch.is_grad_enabled() and x.requires_grad:
        out = (x + (out.to(x.dtype) - x).detach()).to(dtype)
    return out


# -- walking a state by field --------------------------------------------------------------------

def _is_namedtuple(node: Any) -> bool:
    return isinstance(node, tuple) and hasattr(node, "_fields")


def _map_state(fn, node: Any, old: Any, field: str | None, holds) -> Any:
    """``fn(new_leaf, old_leaf, field)`` on every tensor (or stored unit: ``holds(field,
    old)``) of ``node``, ``old`` being the same place in the stored state; ``field`` is the
    nearest enclosing NamedTuple field name."""
    if holds(field, old) or isinstance(node, torch.Tensor):
        return fn(node, old, field)
    if _is_namedtuple(node):
        return type(node)(*(_map_state(fn, v, o, f, holds)
                            for f, v, o in zip(node._fields, node, old)))
    if isinstance(node, Mapping):
        return type(node)({k: _map_state(fn, v, old[k], field, holds) for k, v in node.items()})
    if isinstance(node, (tuple, list)):
        return type(node)(_map_state(fn, v, o, field, holds) for v, o in zip(node, old))
    return node


def _fields_of(node: Any, found: set) -> set:
    if _is_namedtuple(node):
        found.update(node._fields)
        for v in node:
            _fields_of(v, found)
    elif isinstance(node, Mapping):
        for v in node.values():
            _fields_of(v, found)
    elif isinstance(node, (tuple, list)):
        for v in node:
            _fields_of(v, found)
    return found


def _floating(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


# -- parameter writes ----------------------------------------------------------------------------

def _round_delta(p: torch.Tensor, u: torch.Tensor, key: torch.Tensor | None,
                 salt: int) -> torch.Tensor:
    """The update that makes ``p`` its sum with ``u`` rounded to ``p``'s dtype: stochastically
    when ``key`` is given and ``p`` is narrower than the sum, else ``u`` (nearest, by
    ``apply_updates``)."""
    wide = torch.promote_types(torch.promote_types(p.dtype, u.dtype), torch.float32)
    if key is None or not _narrower(p.dtype, wide):
        return u
    pw = p.to(wide)
    return stochastic_round(pw + u.to(wide), p.dtype, key, salt).to(wide) - pw


def _kahan_delta(p: torch.Tensor, u: torch.Tensor, c: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Kahan's compensated sum: :math:`y = u + c`, :math:`\tilde p = \mathrm{rn}(p + y)`,
    :math:`\delta = \tilde p - p`, :math:`c' = y - \delta`; returns ``(δ, c')``."""
    wide = torch.promote_types(torch.promote_types(p.dtype, u.dtype), torch.float32)
    pw = p.to(wide)
    y = u.to(wide) + c.to(wide)
    delta = (pw + y).to(p.dtype).to(wide) - pw
    return delta, (y - delta).to(c.dtype)


def _master_delta(p: torch.Tensor, u: torch.Tensor, m: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Master weights: :math:`m' = m + u`, :math:`\delta = \mathrm{rn}_p(m') - p`; returns
    ``(δ, m')``."""
    wide = torch.promote_types(m.dtype, u.dtype)
    m = m + u.to(wide)
    return m.to(p.dtype).to(wide) - p.to(wide), m


class StochasticRoundingState(NamedTuple):
    """State of :func:`stochastic_rounding`: ``rounding_key``, the packed key (0-d int64)."""

    rounding_key: Any


class KahanState(NamedTuple):
    """State of :func:`kahan_summation`: ``compensation``, what rounding dropped, per
    parameter."""

    compensation: Any


class MasterWeightsState(NamedTuple):
    """State of :func:`master_weights`: ``master_param``, the parameters in full precision."""

    master_param: Any


def _each_param(name: str, updates: Any, params: Any, fn, *states: Any) -> tuple[Any, list]:
    """``fn(i, p, u, *state_leaves) -> (delta, *new_state_leaves)`` on every leaf with an
    update (others keep their state); returns the new updates and the new state columns."""
    spec = _tree.structure(updates)
    leaves_u = _tree.leaves(updates)
    leaves_p = _tree.flatten_like(params, spec, f"{name} params", "updates")
    columns = [_tree.flatten_like(s, spec, f"{name} state", "updates") for s in states]
    out_u, out_s = list(leaves_u), [list(c) for c in columns]
    for i, (u, p) in enumerate(zip(leaves_u, leaves_p)):
        if u is None:
            continue
        res = fn(i, p, u, *(c[i] for c in columns))
        out_u[i] = res[0]
        for col, value in zip(out_s, res[1:]):
            col[i] = value
    return (optree.tree_unflatten(spec, out_u),
            [optree.tree_unflatten(spec, col) for col in out_s])


def _write_params(mode: str | None, updates: Any, params: Any, state: Any,
                  key: torch.Tensor | None, name: str) -> tuple[Any, Any]:
    """The parameter write of ``mode`` (``None``/``"round"``, ``"kahan"``, ``"master"``) on
    every leaf; ``state`` is its :class:`KahanState`/:class:`MasterWeightsState` (else
    ``EmptyState``). Returns ``(updates, state)``."""
    if mode == "kahan":
        updates, (c,) = _each_param(name, updates, params,
                                    lambda i, p, u, c: _kahan_delta(p, u, c), state.compensation)
        return updates, KahanState(c)
    if mode == "master":
        updates, (m,) = _each_param(name, updates, params,
                                    lambda i, p, u, m: _master_delta(p, u, m), state.master_param)
        return updates, MasterWeightsState(m)
    if key is None:
        return updates, state
    updates, _ = _each_param(name, updates, params,
                             lambda i, p, u: (_round_delta(p, u, key, 2 * i + 1),))
    return updates, state


def _param_state(mode: str | None, params: Any, dtype: torch.dtype | None) -> Any:
    if mode == "kahan":
        return KahanState(_tree.map(lambda p: torch.zeros_like(p, dtype=dtype or p.dtype),
                                    params))
    if mode == "master":
        return MasterWeightsState(_tree.map(
            lambda p: p.detach().to(dtype or torch.promote_types(p.dtype, torch.float32),
                                    copy=True), params))
    return EmptyState()


def _param_transform(name: str, mode: str, state_cls: type, dtype: torch.dtype | None = None,
                     seed: Any = None) -> Transform:
    def init(params):
        if mode == "round":
            return StochasticRoundingState(_seed_key(seed).to(_execute.first_device(params)))
        return _param_state(mode, params, dtype)

    def update(updates, state, params=None, hparams=None, **extra):
        if missing_params(name, updates, params, "it writes them"):
            return updates, state
        check_state(name, state, state_cls)
        if mode == "round":
            updates, _ = _write_params(mode, updates, params, EmptyState(),
                                       _words(state.rounding_key), name)
            return updates, StochasticRoundingState(_advance(state.rounding_key))
        return _write_params(mode, updates, params, state, None, name)

    return Transform(init, update, {})


def stochastic_rounding(seed: int | torch.Tensor = 0) -> Transform:
    r"""The update that writes each low-precision parameter as :math:`p + u` rounded
    stochastically to its dtype (:func:`stochastic_round`; unbiased); put it last in a chain.
    Parameters of float32 or wider pass ``u`` through. Reads the parameters.

    Args:
        seed: the stream (an int, or a 0-d int tensor: batched under ``vmap``, one per member).
    """
    return _param_transform("stochastic_rounding", "round", StochasticRoundingState, seed=seed)


def kahan_summation(dtype: torch.dtype | None = None) -> Transform:
    r"""Compensated (Kahan) parameter updates; put it last in a chain. Reads the parameters.

    .. math::
        y = u + c, \qquad \tilde p = \mathrm{rn}(p + y), \qquad
        \delta = \tilde p - p, \qquad c \leftarrow y - \delta

    :math:`c` carries what rounding the parameter dropped into the next step (Kahan, 1965;
    for bfloat16 training, Zamirai et al., 2020, "Revisiting BFloat16 Training"), computed in
    float32 (or wider) and stored in ``dtype`` (default: the parameter's).
    """
    return _param_transform("kahan_summation", "kahan", KahanState, dtype=dtype)


def master_weights(dtype: torch.dtype | None = None) -> Transform:
    r"""Master weights; put it last in a chain. Reads the parameters.

    The state keeps :math:`m` (``dtype``, default float32 or the parameter's if wider), a copy
    of the parameters made at ``init``: :math:`m \leftarrow m + u`, and the update makes the
    parameter :math:`\mathrm{rn}(m)`, so the model sees its dtype and no update is lost.
    """
    return _param_transform("master_weights", "master", MasterWeightsState, dtype=dtype)


# -- the policy as a wrapper -----------------------------------------------------------------------

class PrecisionState(NamedTuple):
    """State of :func:`with_state_dtype` and :func:`precision`.

    Attributes:
        inner: the wrapped transform's state, its fields kept by their :class:`Storage`.
        rounding_key: the packed random key (0-d int64) with stochastic rounding, else an empty
            :class:`EmptyState`.
        params: :class:`KahanState` or :class:`MasterWeightsState` (``params="kahan"`` or
            ``"master"``), else an empty :class:`EmptyState`.

    The adapter stores ``inner``'s leaves under their own names and the others as
    ``rounding_key``, ``compensation`` and ``master_param``.
    """

    inner: Any
    rounding_key: Any = EmptyState()
    params: Any = EmptyState()

    _inline = ("inner", "params")  # (fields that add no level to the adapter's state names)


def _policy(name: str, inner: Transform, default: Any, fields: dict, stochastic: bool,
            mode: str | None, seed: Any, compute_dtype: torch.dtype,
            param_dtype: torch.dtype | None) -> Transform:
    if not isinstance(inner, Transform):
        raise TypeError(f"{name}: expected a functional_optim.Transform to wrap, got "
                        f"{type(inner).__name__}")
    if not (isinstance(compute_dtype, torch.dtype) and compute_dtype.is_floating_point):
        raise HParamError(f"{name}: compute_dtype must be a floating torch.dtype, got "
                          f"{compute_dtype!r}")
    if not isinstance(stochastic, bool):
        raise HParamError(f"{name}: stochastic_rounding must be True or False, got "
                          f"{stochastic!r}")
    base = None if default is None else storage(default, stochastic, f"{name}: state_dtype")
    stores = {f: storage(s, stochastic, f"{name}: {f}") for f, s in fields.items()}
    keyed = stochastic
    param_mode = mode if mode != "round" else None
    writes = param_mode is not None or (mode == "round" and keyed)  # (reads the parameters)

    def storage_of(field: str | None, leaf: Any) -> Storage | None:
        """A named field's storage, else the default for floating leaves of rank >= 1 (with
        stochastic rounding and no default: their own dtype, stochastically)."""
        if not _floating(leaf):  # (complex state keeps its dtype)
            return None
        if field in stores:
            return stores[field]
        if leaf.ndim == 0:
            return None
        return base if base is not None or not stochastic else CastStorage(leaf.dtype, True)

    def holds(field, old):
        s = stores.get(field)
        return s is not None and not isinstance(old, torch.Tensor) and s.holds(old)

    def init(params):
        state = inner.init(params)
        unknown = sorted(set(stores) - _fields_of(state, set()))
        if unknown:
            raise HParamError(f"{name}: no state field {unknown} in the wrapped transform's "
                              f"state (its fields: {sorted(_fields_of(state, set()))})")

        def encode(x, old, field):
            s = storage_of(field, x)
            return x if s is None else s.encode(x, None, 0)

        return PrecisionState(
            _map_state(encode, state, state, None, holds),
            _seed_key(seed).to(_execute.first_device(params)) if keyed else EmptyState(),
            _param_state(param_mode, params, param_dtype))

    def update(updates, state, params=None, hparams=None, **extra):
        check_state(name, state, PrecisionState)
        if writes and missing_params(name, updates, params, "it writes them"):
            return updates, state
        wide = compute_dtype
        for g in _tree.leaves(updates):
            if _floating(g):
                wide = torch.promote_types(wide, g.dtype)

        def up(x):
            return x.to(wide) if _floating(x) and _narrower(x.dtype, wide) else x

        def decode(x, old, field):
            s = storage_of(field, old)
            return s.decode(old, wide) if s is not None else up(old)

        inner_params = params
        if param_mode == "master":
            inner_params = state.params.master_param
        stored = state.inner
        given = _map_state(decode, stored, stored, None, holds)
        u, new = inner.update(optree.tree_map(up, updates, none_is_leaf=True), given,
                              None if inner_params is None else _tree.map(up, inner_params),
                              hparams, **extra)
        key = _words(state.rounding_key) if keyed else None
        salt = [0]  # state leaf i: salt 2i

        def encode(x, old, field):
            s = storage_of(field, old)
            if s is not None:
                salt[0] += 2
                return s.encode(x, key, salt[0] - 2)
            return x.to(old.dtype) if _floating(x) and x.dtype != old.dtype else x

        new = _map_state(encode, new, stored, None, holds)
        param_state = state.params
        if writes:
            u, param_state = _write_params(mode, u, params, param_state, key, name)
        return u, PrecisionState(new, _advance(state.rounding_key) if keyed else EmptyState(),
                                 param_state)

    return Transform(init, _execute.owning(update, [inner]), inner.hparams)


def with_state_dtype(inner: Transform, dtype: Any = None, *, stochastic_rounding: bool = False,
                     seed: int | torch.Tensor = 0, compute_dtype: torch.dtype = torch.float32,
                     **fields: Any) -> Transform:
    r"""``inner`` with its state stored in other dtypes; the math runs in ``compute_dtype``.

    Each update casts the gradients, the parameters and the stored state up to the compute
    dtype (float32, or wider where a leaf is: float64 stays float64), runs ``inner``, and
    stores each state leaf back by its field's storage: ``fields`` by the name of the state
    NamedTuple's field (``mu=torch.bfloat16, nu="fp32"`` for Adam's moments, ``exp_avg`` being
    ``mu``), ``dtype`` for every other floating state leaf of rank >= 1 (0-d ones, such as
    NAdam's ``mu_product``, keep their dtype unless named); a leaf with no storage is stored in
    the dtype it had (stochastically with ``stochastic_rounding``, when narrower than the
    compute dtype: bfloat16 state of bfloat16 parameters). A storage is a dtype, ``"bf16"``,
    ``"fp16"``, ``"fp32"`` or a :class:`Storage`. The updates come out in the compute dtype
    (:func:`~functional_optim.apply_updates` adds them to a bfloat16 parameter with one
    rounding). Hyperparameters are ``inner``'s.

    Args:
        inner: the transform (any chain or alias).
        dtype: the default storage (``None``: leaves keep their dtype).
        stochastic_rounding: store narrower state stochastically (:func:`stochastic_round`),
            from a key in the state (structural).
        seed: the random stream (an int or a 0-d int tensor, one per ``vmap`` member).
        compute_dtype: the narrowest dtype the math runs in (structural; default float32).
        **fields: storages by state field name (structural).
    """
    return _policy("with_state_dtype", inner, dtype, fields, stochastic_rounding, None, seed,
                   compute_dtype, None)


def precision(inner: Transform, state_dtype: Any = None, *, stochastic_rounding: bool = False,
              params: str = "round", seed: int | torch.Tensor = 0,
              compute_dtype: torch.dtype = torch.float32,
              param_dtype: torch.dtype | None = None, **fields: Any) -> Transform:
    r"""The precision policy applied to ``inner``: its state stored as :func:`with_state_dtype`
    says (``state_dtype`` the default storage, ``fields`` per field) and the parameters written
    by ``params``:

    - ``"round"``: :math:`p + u` rounded to the parameter's dtype, stochastically with
      ``stochastic_rounding`` (as :func:`stochastic_rounding`), else to nearest;
    - ``"kahan"``: compensated updates (as :func:`kahan_summation`; the compensation in
      ``param_dtype``, default the parameter's);
    - ``"master"``: master weights (as :func:`master_weights`, in ``param_dtype``, default
      float32); ``inner`` reads the master copy as its parameters (weight decay).

    ``stochastic_rounding`` also rounds narrower state stochastically. Every argument is
    structural; the hyperparameters are ``inner``'s. This is the policy the drop-in classes
    take (:meth:`functional_optim.optim.FunctionalOptimizer.use_precision`).
    """
    if params not in _PARAM_MODES:
        raise HParamError(f"precision: params must be one of {_PARAM_MODES}, got {params!r}")
    return _policy("precision", inner, state_dtype, fields, stochastic_rounding, params, seed,
                   compute_dtype, param_dtype)
