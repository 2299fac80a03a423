"""The conformance registry: every public transform, alias and chain under test.

Register a transform once here and ``test_conformance.py`` checks it for everything DESIGN.md §2
promises: purity, ``torch.func.grad`` vs finite differences, ``vmap`` vs a loop, ``torch.compile``
with ``fullgraph=True`` and no recompile, capturability (fake-CUDA trace, trace/replay), ``None``
leaves, empty and nested trees, dtypes and complex parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import optree
import torch

import functional_optim as fo
from functional_optim import schedules


@dataclasses.dataclass(frozen=True)
class Case:
    """One registered transform.

    Attributes:
        name: test id.
        make: builds the transform (default hyperparameters are plain numbers).
        complex: the transform supports complex parameters.
    """

    name: str
    make: Callable[[], fo.Transform]
    complex: bool = True

    def __repr__(self) -> str:
        return self.name


def _warmup_cosine():
    return schedules.warmup_cosine_decay(0.0, 0.1, 2, 20, end_value=0.01)


def _no_decay_on_vectors(params):
    return fo.tree.map(lambda p: p.ndim >= 2, params)


CASES: list[Case] = [
    Case("identity", fo.identity),
    Case("set_to_zero", fo.set_to_zero),
    Case("scale", lambda: fo.scale(0.5)),
    Case("sign", fo.sign),
    Case("clip", lambda: fo.clip(0.3), complex=False),
    Case("clip_by_norm", lambda: fo.clip_by_norm(0.5)),
    Case("clip_by_global_norm", lambda: fo.clip_by_global_norm(0.5)),
    Case("scale_by_learning_rate", lambda: fo.scale_by_learning_rate(0.1)),
    Case("scale_by_learning_rate_schedule", lambda: fo.scale_by_learning_rate(_warmup_cosine())),
    Case("scale_by_adam", fo.scale_by_adam),
    Case("scale_by_adam_amsgrad_eps_root",
         lambda: fo.scale_by_adam(betas=(0.8, 0.99), eps=1e-6, eps_root=1e-8, amsgrad=True)),
    Case("scale_by_rms", fo.scale_by_rms),
    Case("scale_by_rms_centered", lambda: fo.scale_by_rms(alpha=0.9, centered=True)),
    Case("trace", lambda: fo.trace(0.9)),
    Case("trace_nesterov", lambda: fo.trace(0.9, nesterov=True)),
    Case("trace_dampening", lambda: fo.trace(0.8, dampening=0.3)),
    Case("add_decayed_weights", lambda: fo.add_decayed_weights(0.1)),
    Case("add_decayed_weights_mask",
         lambda: fo.add_decayed_weights(0.1, mask=_no_decay_on_vectors)),
    Case("sgd", lambda: fo.sgd(lr=0.1)),
    Case("sgd_momentum_wd_nesterov",
         lambda: fo.sgd(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True, maximize=True)),
    Case("adam", lambda: fo.adam(lr=0.01)),
    Case("adam_amsgrad_wd_maximize",
         lambda: fo.adam(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True)),
    Case("adamw", lambda: fo.adamw(lr=0.01)),
    Case("adamw_schedule", lambda: fo.adamw(lr=_warmup_cosine(), weight_decay=0.1)),
    Case("chain", lambda: fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(),
                                   fo.add_decayed_weights(0.01),
                                   fo.scale_by_learning_rate(_warmup_cosine()))),
    Case("chain_named", lambda: fo.chain(clip=fo.clip_by_norm(1.0),
                                         momentum=fo.trace(0.9),
                                         rms=fo.scale_by_rms(centered=True),
                                         lr=fo.scale_by_learning_rate(0.05))),
]


class Pair(NamedTuple):
    first: Any
    second: Any


def sample_tree(make: Callable[[tuple], torch.Tensor]) -> Any:
    """A nested tree (dict, list, tuple, NamedTuple, a 0-d leaf) built by ``make(shape)``."""
    return {
        "linear": {"weight": make((4, 3)), "bias": make((3,))},
        "blocks": [make((2, 2)), (make(()), make((5,)))],
        "pair": Pair(make((3, 2)), make((2,))),
    }


def random_tree(seed: int, dtype=torch.float64, device="cpu", batch: tuple = ()) -> Any:
    gen = torch.Generator().manual_seed(seed)

    def make(shape):
        if torch.device(device).type != "cpu":  # fake device tensors: values do not matter
            return torch.randn((*batch, *shape), dtype=dtype, device=device)
        x = torch.randn((*batch, *shape), generator=gen, dtype=torch.float64)
        if dtype.is_complex:
            x = torch.complex(x, torch.randn((*batch, *shape), generator=gen, dtype=torch.float64))
        return x.to(dtype=dtype, device=device)

    return sample_tree(make)


def _fill(template: Any, pick: Callable[[Any], Any]) -> Any:
    """``template`` with each number replaced by ``pick(number)`` (plain recursion: no treespec
    is closed over, so ``torch.compile`` traces it)."""
    if isinstance(template, dict):
        return {k: _fill(v, pick) for k, v in template.items()}
    if isinstance(template, (tuple, list)):
        return type(template)(_fill(v, pick) for v in template)
    return pick(template)


def tensor_hparams(hparams: Any, dtype=torch.float64, device="cpu") -> tuple[list, Callable]:
    """Turn every nonzero float hyperparameter into a 0-d tensor.

    Returns the list of tensors and ``rebuild(tensors) -> hparams``. Integers (step counts) and
    zeros (blocks an alias left out) stay Python numbers.
    """
    chosen = lambda x: isinstance(x, float) and x != 0.0  # noqa: E731
    values = []
    _fill(hparams, lambda x: values.append(torch.tensor(x, dtype=dtype, device=device))
          if chosen(x) else None)

    def rebuild(tensors):
        it = iter(tensors)
        return _fill(hparams, lambda x: next(it) if chosen(x) else x)

    return values, rebuild


def float_state(state: Any) -> tuple[list, Callable]:
    """The floating-point leaves of ``state`` and ``rebuild(floats) -> state``."""
    leaves, spec = optree.tree_flatten(state, none_is_leaf=True)
    where = [i for i, x in enumerate(leaves)
             if isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex())]

    def rebuild(floats):
        out = list(leaves)
        for i, t in zip(where, floats):
            out[i] = t
        return optree.tree_unflatten(spec, out)

    return [leaves[i] for i in where], rebuild
