"""The precision policy in the stateful adapter (:meth:`FunctionalOptimizer.use_precision`).

Every optimizer of :mod:`functional_optim.optim` (the generic adapter, the torch.optim drop-ins,
the generated classes) takes the policy the same way: ``opt.use_precision(...)`` wraps the
transform of each group in :func:`functional_optim.precision`. The wrapped state keeps the
names it had (:class:`~functional_optim.transforms.low_precision.PrecisionState`'s ``inner`` adds no
level); the policy's own leaves are stored as ``rounding_key``, ``compensation`` and
``master_param``.

Loading a checkpoint (the rule, also in the "Low precision and memory" guide):

- each floating state tensor is converted to the dtype the policy stores it in (round to
  nearest) on the parameter's device, not cast to the parameter's dtype as torch.optim does; a
  conversion that changes a dtype (a float32 torch.optim checkpoint into bfloat16 state) warns
  once per ``load_state_dict``, naming the keys and dtypes;
- a floating state tensor where the policy keeps quantized codes and scales
  (:class:`~functional_optim.transforms.storage.QuantizedStorage`: ``exp_avg.codes`` and
  ``exp_avg.absmax``) is encoded by that storage (each element to its nearest code), with the
  same warning;
- the policy's own leaves are optional: a checkpoint without them (torch.optim's) starts them
  fresh at the next step (the key from the seed, a zero compensation, master weights copied
  from the parameters); a checkpoint that has them round-trips exactly;
- an optimizer without the policy refuses a checkpoint holding the policy's leaves (state it
  never keeps).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..base import HParamError, Transform
from ..transforms.low_precision import precision, storage
from ..transforms.quantized import Quantized
from ..transforms.storage import QuantizedStorage
from . import _layout

__all__ = ["POLICY_PATHS", "Kept", "check", "wrap", "encoded", "loaded", "warn_converted"]

# where the policy's own leaves are stored in a parameter's state
POLICY_PATHS = frozenset({("rounding_key",), ("compensation",), ("master_param",)})


class Kept:
    """A converted state value that torch's cast in ``load_state_dict`` must pass through (not a
    tensor, dict or iterable); the adapter unwraps it when it stores the entry."""

    __slots__ = ("value",)

    def __init__(self, value: torch.Tensor):
        self.value = value


def check(owner: str, policy: dict) -> dict:
    """``policy`` (the arguments of :func:`functional_optim.precision`) validated now, with
    ``precision``'s messages; returns it."""
    fields = {k: v for k, v in policy.items() if k not in _OPTIONS}
    for name, spec in fields.items():
        storage(spec, where=f"{owner}.use_precision: {name}")
    options = {k: v for k, v in policy.items() if k in _OPTIONS}
    try:
        precision(Transform(lambda p: (), lambda u, s, p=None, h=None: (u, s), {}), **options)
    except HParamError as e:
        raise HParamError(f"{owner}.use_precision: "
                          + str(e).removeprefix("precision: ")) from None
    return policy


_OPTIONS = ("state_dtype", "stochastic_rounding", "params", "seed", "compute_dtype",
            "param_dtype")


def wrap(cache: dict, tx: Transform, policy: dict) -> Transform:
    """``tx`` under the policy (cached by ``tx``)."""
    key = ("precision", id(tx))
    wrapped = cache.get(key)
    if wrapped is None:
        wrapped = cache[key] = precision(tx, **policy)
    return wrapped


def encoded(owner: str, p: torch.Tensor, entry: Any, expected: dict, policy: dict,
            converted: list) -> Any:
    """``entry`` with each floating tensor of ``p``'s shape where the policy keeps quantized
    codes and scales (a float checkpoint's moment) encoded by the policy's
    :class:`~functional_optim.transforms.storage.QuantizedStorage` (the map the optimizer's
    own state uses there); each conversion appended to ``converted``."""
    spots = sorted(k[:-1] for k in expected
                   if k[-1] == "codes" and k[:-1] + ("absmax",) in expected)
    if not spots or not isinstance(entry, dict):
        return entry
    out = entry
    for path in spots:
        value = _layout.nested_get(entry, path) if _layout.nested_has(entry, path) else None
        if not (isinstance(value, torch.Tensor) and value.is_floating_point() and
                value.shape == p.shape):
            continue
        s = _quantized_storage(owner, policy, path)
        codes = expected[path + ("codes",)].like
        s = QuantizedStorage(s.bits, s.block_size, min_size=s.min_size, unsigned=s.unsigned,
                             signed=codes.dtype == torch.int8)
        q = s.encode(value.to(p.device), None, 0)
        if out is entry:
            out = _copy_dicts(entry)
        _layout.nested_set(out, path, q._asdict())
        converted.append((".".join(map(str, path)), value.dtype, f"{s.bits}-bit codes"))
    return out


def _quantized_storage(owner: str, policy: dict, path: tuple) -> QuantizedStorage:
    """The policy's quantized storage (one configuration, else the error naming ``path``)."""
    specs = [v for k, v in policy.items() if k not in _OPTIONS] + [policy.get("state_dtype")]
    found = {(s.bits, s.block_size, s.min_size): s for s in
             (storage(spec) for spec in specs if spec is not None)
             if isinstance(s, QuantizedStorage)}
    if len(found) != 1:
        raise ValueError(f"{owner}: state {'.'.join(map(str, path))!r}: a float tensor where the "
                         "policy keeps quantized codes, and the policy has "
                         f"{len(found)} quantized storages ({sorted(found)}) to encode it: "
                         "convert it before loading; nothing was loaded")
    return next(iter(found.values()))


def loaded(p: torch.Tensor, entry: dict, present: dict, expected: dict,
           converted: list) -> dict:
    """``entry`` with every floating state tensor and policy leaf converted to what the policy
    stores (see the module's rule), as :class:`Kept` values; ``present`` updated in place;
    each dtype change appended to ``converted`` as ``(key, from, to)``."""
    out = _copy_dicts(entry)
    for path, value in present.items():
        leaf = expected.get(path)
        if leaf is None or not isinstance(value, torch.Tensor) or not (
                leaf.like.is_floating_point() or path in POLICY_PATHS or
                path[-1] in Quantized._fields):  # (codes kept as they are, not torch's cast)
            continue
        if value.dtype != leaf.like.dtype and value.is_floating_point():
            converted.append((".".join(map(str, path)), value.dtype, leaf.like.dtype))
        value = _layout.copy_like(value.to(device=p.device, dtype=leaf.like.dtype), p)
        present[path] = value
        _layout.nested_set(out, path, Kept(value))
    return out


def _copy_dicts(node: Any) -> Any:
    return {k: _copy_dicts(v) for k, v in node.items()} if isinstance(node, dict) else node


def warn_converted(owner: str, converted: list) -> None:
    if converted:
        kinds = sorted({f"{k} {a} -> {b}" for k, a, b in converted})
        warnings.warn(f"{owner}: converted {len(converted)} state tensor(s) to the precision "
                      f"policy's storage (round to nearest): {', '.join(kinds)}", UserWarning,
                      stacklevel=4)
