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
:math:`\mathrm{stream} \cdot 2^{32} + \mathrm{counter}`, advanced once per update; the state's
leaves use even salts (see *Storage*), parameter ``i`` salt ``2i + 1``. Reproducible, no
global generator, capturable; under ``vmap`` a batched ``seed`` (a 0-d int tensor per member)
gives each member its own stream. The flat layout (one leaf per buffer) draws other numbers
of the same law.

*Storage.* A state field's storage is a :class:`~functional_optim.transforms.storage.Storage`
(:mod:`functional_optim.transforms.storage`): :class:`CastStorage` (``"bf16"``, ``"fp16"``,
``"fp32"`` or a dtype) or :class:`QuantizedStorage` (``"int8"``, ``"int4"``: blockwise codes and
their float32 scales, a :class:`~functional_optim.transforms.quantized.Quantized` that the state
walk passes through as one unit; :func:`quantized_state` is its name). One mechanism runs them
(:mod:`functional_optim.transforms._stored`): around one pointwise rule (a moment block, or an
alias that fuses into one rule, such as :func:`~functional_optim.adamw`), chunk by chunk of
leaves, each chunk's state decoded, the rule run on the multi-tensor path, the new state
encoded, each storage's leaves at once; around any other transform, the whole state at once.
With stochastic rounding, state leaf ``i`` in walk order draws with salt ``2i`` (around a
pointwise rule, leaf ``i`` of state column ``j`` of ``n`` leaves: ``2 (j n + i)``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import optree
import torch

from .. import _execute
from .. import tree as _tree
from ..base import EmptyState, HParamError, Transform, check_state, missing_params
from ._stored import (
    fields_of,
    floating,
    resolver,
    run_chunked,
    run_whole,
    store_fresh,
)
from .storage import (
    QuantizedStorage,
    advance,
    narrower,
    seed_key,
    stochastic_round,
    storage,
    words,
)

__all__ = [
    "PrecisionState",
    "with_state_dtype",
    "precision",
    "StochasticRoundingState",
    "stochastic_rounding",
    "KahanState",
    "kahan_summation",
    "MasterWeightsState",
    "master_weights",
    "quantized_state",
    "quantize_tree",
]

_PARAM_MODES = ("round", "kahan", "master")


# -- parameter writes ----------------------------------------------------------------------------

def _round_delta(p: torch.Tensor, u: torch.Tensor, key: torch.Tensor | None,
                 salt: int) -> torch.Tensor:
    """The update that makes ``p`` its sum with ``u`` rounded to ``p``'s dtype: stochastically
    when ``key`` is given and ``p`` is narrower than the sum, else ``u`` (nearest, by
    ``apply_updates``)."""
    wide = torch.promote_types(torch.promote_types(p.dtype, u.dtype), torch.float32)
    if key is None or not narrower(p.dtype, wide):
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
            return StochasticRoundingState(seed_key(seed).to(_execute.first_device(params)))
        return _param_state(mode, params, dtype)

    def update(updates, state, params=None, hparams=None, **extra):
        if missing_params(name, updates, params, "it writes them"):
            return updates, state
        check_state(name, state, state_cls)
        if mode == "round":
            updates, _ = _write_params(mode, updates, params, EmptyState(),
                                       words(state.rounding_key), name)
            return updates, StochasticRoundingState(advance(state.rounding_key))
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
    if compute_dtype is not None and not (isinstance(compute_dtype, torch.dtype) and
                                          compute_dtype.is_floating_point):
        raise HParamError(f"{name}: compute_dtype must be a floating torch.dtype or None, got "
                          f"{compute_dtype!r}")
    if not isinstance(stochastic, bool):
        raise HParamError(f"{name}: stochastic_rounding must be True or False, got "
                          f"{stochastic!r}")
    base = None if default is None else storage(default, stochastic, f"{name}: state_dtype")
    stores = {f: storage(s, stochastic, f"{name}: {f}") for f, s in fields.items()}
    keyed = stochastic
    param_mode = mode if mode != "round" else None
    writes = param_mode is not None or (mode == "round" and keyed)  # (reads the parameters)

    storage_of = resolver(base, {f: s.for_field(f) for f, s in stores.items()}, stochastic)
    spec = inner.pointwise
    chunked = spec is not None and not spec.parts and not spec.reads_updates

    def holds(field, old):
        return not isinstance(old, torch.Tensor) and storage_of(field, old) is not None

    def init(params):
        state = inner.init(params)
        unknown = sorted(set(stores) - fields_of(state, set()))
        if unknown:
            raise HParamError(f"{name}: no state field {unknown} in the wrapped transform's "
                              f"state (its fields: {sorted(fields_of(state, set()))})")
        return PrecisionState(
            store_fresh(state, storage_of),
            seed_key(seed).to(_execute.first_device(params)) if keyed else EmptyState(),
            _param_state(param_mode, params, param_dtype))

    def update(updates, state, params=None, hparams=None, **extra):
        check_state(name, state, PrecisionState)
        if writes and missing_params(name, updates, params, "it writes them"):
            return updates, state
        wide = compute_dtype
        for g in _tree.leaves(updates) if wide is not None else ():
            if floating(g):
                wide = torch.promote_types(wide, g.dtype)

        def up(x):
            return x.to(wide) if wide is not None and floating(x) and \
                narrower(x.dtype, wide) else x

        inner_params = params
        if param_mode == "master":
            inner_params = state.params.master_param
        key = words(state.rounding_key) if keyed else None
        run = run_chunked if chunked else run_whole
        u, new = run(name, inner, storage_of, holds, up, wide, key,
                     optree.tree_map(up, updates, none_is_leaf=True), state.inner,
                     None if inner_params is None else _tree.map(up, inner_params), hparams,
                     extra)
        param_state = state.params
        if writes:
            u, param_state = _write_params(mode, u, params, param_state, key, name)
        return u, PrecisionState(new, advance(state.rounding_key) if keyed else EmptyState(),
                                 param_state)

    return Transform(init, _execute.owning(update, [inner]), inner.hparams)


def with_state_dtype(inner: Transform, dtype: Any = None, *, stochastic_rounding: bool = False,
                     seed: int | torch.Tensor = 0,
                     compute_dtype: torch.dtype | None = torch.float32,
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
    ``"fp16"``, ``"fp32"``, ``"int8"``/``"int4"`` (:class:`QuantizedStorage`: blockwise codes
    and float32 scales, the unsigned map for ``nu``/``nu_max``) or any :class:`Storage`; a
    state already quantized by an inner policy passes through whole. The updates come out in
    the compute dtype (:func:`~functional_optim.apply_updates` adds them to a bfloat16
    parameter with one rounding). Hyperparameters are ``inner``'s. Around one pointwise rule
    (a moment block, or an alias that fuses into one, such as :func:`~functional_optim.adamw`)
    the state is decoded, updated and encoded chunk by chunk of leaves; around any other
    transform, whole.

    Args:
        inner: the transform (any chain or alias).
        dtype: the default storage (``None``: leaves keep their dtype).
        stochastic_rounding: store narrower state stochastically (:func:`stochastic_round`),
            from a key in the state (structural).
        seed: the random stream (an int or a 0-d int tensor, one per ``vmap`` member).
        compute_dtype: the narrowest dtype the math runs in (structural; default float32);
            ``None``: each leaf's own dtype (the state decoded into the update's dtype, the
            updates keep theirs: what a block inside a chain needs).
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


def quantized_state(inner: Transform, bits: int = 8, block_size: int | None = None, *,
                    min_size: int = 4096,
                    unsigned: tuple[str, ...] = ("nu", "nu_max")) -> Transform:
    r"""``inner`` with its state stored blockwise-quantized in ``bits`` (8 or 4) bits: a name
    for ``with_state_dtype(inner, QuantizedStorage(bits, block_size, min_size=min_size,
    unsigned=unsigned))`` (:class:`~functional_optim.transforms.storage.QuantizedStorage`).

    The floating state leaves of at least ``min_size`` elements become
    :class:`~functional_optim.transforms.quantized.Quantized` pairs (smaller ones keep their
    dtype, as bitsandbytes' ``min_8bit_size``); the state fields named in ``unsigned`` (Adam's
    nonnegative ``nu`` and ``nu_max``) use the unsigned map. Each update dequantizes the state
    into the updates' dtype (``compute_dtype=None``: the updates keep their dtype, as the next
    block of a chain needs), runs ``inner`` and quantizes the new state:

    .. math:: s_t = Q\bigl(\mathrm{rule}(g_t, Q^{-1}(s_{t-1}))\bigr)

    When ``inner`` is one pointwise block (a moment block such as
    :func:`~functional_optim.scale_by_adam`: what the quantized aliases wrap), this runs chunk by
    chunk of leaves (at most 4M elements decoded at once), the rule on the multi-tensor path over
    each chunk, so the float copies of the state never exceed one chunk; any other transform has its
    whole state decoded for the update. Quantization is a rounding: gradients flow through the
    dequantized values and the block maxima, not through the choice of code. The state is per block,
    not elementwise: the adapter's flat layout refuses it. Every argument is structural.
    """
    return with_state_dtype(inner, QuantizedStorage(bits, block_size, min_size=min_size,
                                                    unsigned=unsigned), compute_dtype=None)


def quantize_tree(state: Any, *, bits: int = 8, block_size: int | None = None,
                  min_size: int = 4096, unsigned: tuple[str, ...] = ("nu", "nu_max")) -> Any:
    """``state`` (a float state, e.g. a checkpoint of the unquantized transform) with each leaf
    that :func:`quantized_state` stores quantized encoded as it does: the explicit conversion
    (the fields are the NamedTuple fields on a leaf's path)."""
    return store_fresh(state, resolver(QuantizedStorage(bits, block_size, min_size=min_size,
                                                          unsigned=unsigned), {}, False))
