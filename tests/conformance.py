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
        extra: ``grads -> dict`` of keyword arguments every ``update`` call gets (a loss
            ``value`` for reduce-on-plateau); ``make`` then returns the transform with them bound.
        float64_scalars: the state may hold 0-d float64 bookkeeping scalars (a best loss, an
            injected hparam's value) whatever the parameters' dtype.
    """

    name: str
    make: Callable[[], fo.Transform]
    complex: bool = True
    extra: Callable[[Any], dict] | None = None
    float64_scalars: bool = False

    def __post_init__(self):
        if self.extra is not None:
            make, extra = self.make, self.extra

            def bound():
                tx = make()

                def update(updates, state, params=None, hparams=None, **kwargs):
                    return tx.update(updates, state, params, hparams, **{**extra(updates),
                                                                         **kwargs})

                return fo.Transform(tx.init, update, tx.hparams)

            object.__setattr__(self, "make", bound)

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


# --------------------------------------------------------------------------------------------
# Schedules-as-transforms and combinators (functional_optim.combinators, reduce_on_plateau).


def _loss_like(grads):
    """A 0-d loss-like value computed from the gradients (on their device, batched under vmap)."""
    total = None
    for g in optree.tree_leaves(grads, none_is_leaf=True):
        if g is not None:
            term = (g.abs() ** 2).sum().to(torch.float64)
            total = term if total is None else total + term
    return {"value": total if total is not None else 1.0}


def _vectors(params):
    return fo.tree.map(lambda p: p.ndim < 2, params)


def _by_ndim(params):
    return fo.tree.map(lambda p: "adam" if p.ndim >= 2 else "sgd", params)


# regexes that match a name in each tree the suite uses (the sample tree and {"a", "frozen", "b"})
_RULES = [(r"^(a|linear\.bias)$", "no_decay"), ([r"^blocks\.1", r"^frozen$"], "frozen")]


def _partition_rules():
    return fo.partition({"no_decay": fo.adam(lr=0.01), "frozen": fo.freeze(),
                         "default": fo.adamw(lr=0.01, weight_decay=0.1)}, _RULES)


def _groups():
    return fo.parameter_groups(fo.adamw, [([r"^(a|linear\.bias)$"], {"weight_decay": 0.0,
                                                                     "lr": 0.02}),
                                          ([r"^(pair|frozen$)"], {"requires_grad": False})],
                               lr=0.01, weight_decay=0.1)


def _adam_lr_from_state(state, count):
    # a value computed from the inner state: shrink the lr as the step count grows
    return 0.1 / (1.0 + count.to(torch.float64))


CASES += [
    Case("reduce_on_plateau", lambda: fo.reduce_on_plateau(lr=0.1, patience=0, factor=0.5,
                                                           cooldown=1, min_lr=1e-3),
         extra=_loss_like, float64_scalars=True),
    Case("reduce_on_plateau_max_abs_in_chain",
         lambda: fo.chain(fo.scale_by_adam(), fo.reduce_on_plateau(
             lr=0.01, mode="max", threshold_mode="abs", threshold=0.1, patience=1,
             flip_sign=True)), extra=_loss_like, float64_scalars=True),
    Case("masked", lambda: fo.masked(fo.scale_by_adam(), _vectors)),
    Case("freeze_mask", lambda: fo.freeze(_vectors)),
    Case("freeze", fo.freeze),
    Case("partition_fn", lambda: fo.partition({"adam": fo.adam(lr=0.01),
                                               "sgd": fo.sgd(lr=0.1, momentum=0.9)}, _by_ndim)),
    Case("partition_regex", _partition_rules),
    Case("parameter_groups", _groups),
    Case("inject_hparams_alias", lambda: fo.inject_hparams(fo.adamw(lr=0.01, weight_decay=0.1),
                                                           {"lr": _warmup_cosine()}),
         float64_scalars=True),
    Case("inject_hparams_chain_paths",
         lambda: fo.inject_hparams(
             fo.chain(adam=fo.scale_by_adam(), momentum=fo.trace(0.9),
                      lr=fo.scale_by_learning_rate(0.1)),
             {"adam.eps": schedules.linear(1e-8, 1e-6, 10),
              "momentum.momentum": schedules.cosine_decay(0.9, 20, alpha=0.5)},
             from_state={"lr.lr": _adam_lr_from_state}),
         float64_scalars=True),
    Case("multi_steps", lambda: fo.multi_steps(fo.adam(lr=0.01), 3)),
    Case("multi_steps_k1", lambda: fo.multi_steps(fo.sgd(lr=0.1, momentum=0.9), 1)),
    Case("apply_if_finite", lambda: fo.apply_if_finite(fo.adam(lr=0.01), 2)),
    Case("zero_nans", fo.zero_nans),
    Case("centralize", fo.centralize),
    Case("lookahead", lambda: fo.lookahead(fo.sgd(lr=0.1, momentum=0.9), sync_period=2,
                                           alpha=0.5)),
    Case("ema", lambda: fo.ema(0.9)),
    Case("ema_no_debias", lambda: fo.ema(0.8, debias=False)),
    Case("average_params_swa", lambda: fo.chain(fo.adam(lr=0.01), fo.average_params())),
    Case("average_params_ema", lambda: fo.chain(fo.sgd(lr=0.1), fo.average_params(0.9))),
    Case("conditionally_every_k", lambda: fo.conditionally(fo.adam(lr=0.01), every_k=2)),
    Case("conditionally_predicate",
         lambda: fo.conditionally(fo.trace(0.9), predicate=lambda t: (t >= 1) & (t < 5))),
    Case("flatten_adam", lambda: fo.flatten(fo.adam(lr=0.01))),
    Case("flatten_chain", lambda: fo.flatten(fo.chain(fo.clip_by_global_norm(1.0),
                                                      fo.scale_by_adam(),
                                                      fo.add_decayed_weights(0.01),
                                                      fo.scale_by_learning_rate(0.1)))),
]
