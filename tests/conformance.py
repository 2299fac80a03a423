"""The conformance registry: every public transform, alias and chain under test.

Register a transform once here and ``test_conformance.py`` checks it for everything DESIGN.md §2
promises: purity, ``torch.func.grad`` vs finite differences, ``vmap`` vs a loop, ``torch.compile``
with ``fullgraph=True`` and no recompile, capturability (fake-CUDA trace, trace/replay), ``None``
leaves, empty and nested trees, dtypes and complex parameters.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import optree
import torch

import functional_optim as fo
from functional_optim import schedules


@dataclasses.dataclass(frozen=True)
class Live:
    """How ``test_hparams_live.py`` exercises one float hyperparameter of a case (every one is
    checked; this only says how, where the defaults do not fit).

    Attributes:
        value: the other value of check (b) and the point of checks (c, d); ``None``: derived
            from the default (:func:`other_value`).
        grads_scale: the gradients are multiplied by this (e.g. tiny gradients, so that an
            ``eps`` that only floors a norm takes effect).
        params_scale: the parameters are multiplied by this (e.g. tiny parameters, so that a
            floor on their RMS takes effect).
        steps: updates in a trajectory (more, where the hyperparameter acts late).
        values: the ``value=`` passed at each step (a loss sequence that exercises a plateau
            threshold); ``None``: the case's ``extra``.
        others: other hyperparameters set (as numbers) in every trajectory of this cell, by
            dotted path (e.g. a nonzero momentum, without which a dampening does nothing).
        excluded: ``(check, reason)`` pairs, ``check`` one of :data:`LIVE_CHECKS`: the checks
            that cannot hold by construction, each with its reason.
    """

    value: float | None = None
    grads_scale: float = 1.0
    params_scale: float = 1.0
    steps: int = 3
    values: tuple[float, ...] | None = None
    others: dict[str, float] = dataclasses.field(default_factory=dict)
    excluded: tuple[tuple[str, str], ...] = ()


LIVE_CHECKS = ("same_value", "other_value", "vmap", "grad", "compile")


def other_value(value: float) -> float:
    """Another valid value for check (b): 0 becomes 0.05, a decay in [0.5, 1) moves towards
    0.5 (betas 0.9 -> 0.85, 0.999 -> 0.9985: still in [0, 1)), a value above 1 grows by a
    quarter (``etas[1]``, ``d``), any other shrinks by a fifth."""
    if value == 0:
        return 0.05
    if 0.5 <= value < 1:
        return 1 - (1 - value) * 1.5
    return value * 1.25 if value > 1 else value * 0.8


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
        shape: maps each sample leaf's shape to one the transform accepts (params and grads
            alike; e.g. :func:`_as_matrix` for Muon's 2-D-only blocks). ``None``: as sampled.
        grads: maps each (dense) gradient leaf the suite makes to the kind the transform takes
            (e.g. a sparse COO tensor for SparseAdam, per-example gradients for DP-SGD), leaf
            of one member: a batched tree (``vmap``) is mapped member by member. ``None``: as
            made.
        excluded: ``(test function name, reason)`` pairs: checks of ``test_conformance.py``
            that do not hold for this transform, each with the documented reason. They are
            reported as skipped with that reason (never silently), and
            ``test_algorithms_special.py`` checks that every name is a real test and every
            reason is given.
        live: per float hyperparameter (dotted path patterns), how the live-value checks
            exercise it (:class:`Live`); every float hyperparameter is checked whether listed
            or not.
        precision: the dtype whose ulps bound the live-value comparisons when the transform
            computes in a narrower one than the parameters' (Muon's bfloat16 Newton-Schulz);
            ``None``: the parameters' dtype.
        ulps: the live-value comparisons' budget where the transform amplifies rounding
            differences beyond the op-count model (an iteration); ``None``: the default
            (``test_hparams_live.ULPS``). Say why next to the case.
        half_in_float32: the transform computes float16/bfloat16 parameters in float32, with
            float32 state and updates (HuggingFace's Adafactor).
        rounded_params: the parameters are stored stochastically rounded from a wider master
            copy, so an update is the difference of two rounded parameters: an ulp-level change
            of the computation may move the stored parameter by one of its ulps, and the update
            by that ulp, however small the update. The live-value comparisons then bound every
            output in ulps of the parameters' scale where that is larger than its own.
    """

    name: str
    make: Callable[[], fo.Transform]
    complex: bool = True
    extra: Callable[[Any], dict] | None = None
    float64_scalars: bool = False
    shape: Callable[[tuple], tuple] | None = None
    grads: Callable[[torch.Tensor], torch.Tensor] | None = None
    excluded: tuple[tuple[str, str], ...] = ()
    live: dict[str, Live] = dataclasses.field(default_factory=dict)
    precision: torch.dtype | None = None
    ulps: int | None = None
    half_in_float32: bool = False
    rounded_params: bool = False

    def exclusion(self, test_name: str) -> str | None:
        """The documented reason ``test_name`` is excluded for this case, or ``None``."""
        return dict(self.excluded).get(test_name)

    def live_for(self, path: str) -> Live:
        """How hyperparameter ``path`` (dotted, e.g. ``"betas.0"``) is exercised: the entry of
        ``live`` whose key matches it (``fnmatch`` patterns, e.g. ``"ns_coefficients.*"``)."""
        for pattern, how in self.live.items():
            if fnmatch.fnmatchcase(path, pattern):
                return how
        return Live()

    def params_tree(self, seed: int, dtype=torch.float64, device="cpu", batch: tuple = ()):
        """A sample parameter tree this transform accepts (see ``shape``)."""
        return random_tree(seed, dtype, device, batch, shape=self.shape)

    def grads_tree(self, seed: int, dtype=torch.float64, device="cpu", batch: tuple = ()):
        """A sample gradient tree this transform accepts (see ``shape`` and ``grads``)."""
        return self.adapt_grads(random_tree(seed, dtype, device, batch, shape=self.shape),
                                len(batch))

    def adapt_grads(self, tree: Any, batch_dims: int = 0) -> Any:
        if self.grads is None:
            return tree
        fn = self.grads
        for _ in range(batch_dims):
            fn = torch.func.vmap(fn)
        return optree.tree_map(lambda g: None if g is None else fn(g), tree, none_is_leaf=True)

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


_SCHEDULE_TAIL = {"*lr.end_value": Live(steps=5), "*lr.exponent": Live(steps=5)}
"""A warmup-cosine schedule's end value and exponent act after its warmup (2 steps)."""


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
    Case("scale_by_learning_rate_schedule", lambda: fo.scale_by_learning_rate(_warmup_cosine()),
         live=_SCHEDULE_TAIL),
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
    Case("sgd", lambda: fo.sgd(lr=0.1), live={"dampening": Live(others={"momentum": 0.9})}),
    Case("sgd_momentum_wd_nesterov",
         lambda: fo.sgd(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True, maximize=True)),
    Case("adam", lambda: fo.adam(lr=0.01)),
    Case("adam_amsgrad_wd_maximize",
         lambda: fo.adam(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True)),
    Case("adamw", lambda: fo.adamw(lr=0.01)),
    Case("adamw_schedule", lambda: fo.adamw(lr=_warmup_cosine(), weight_decay=0.1),
         live=_SCHEDULE_TAIL),
    Case("chain", lambda: fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(),
                                   fo.add_decayed_weights(0.01),
                                   fo.scale_by_learning_rate(_warmup_cosine())),
         live=_SCHEDULE_TAIL),
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


def random_tree(seed: int, dtype=torch.float64, device="cpu", batch: tuple = (),
                shape: Callable[[tuple], tuple] | None = None) -> Any:
    gen = torch.Generator().manual_seed(seed)

    def make(shape_):
        shape = shape_ if shape_fn is None else shape_fn(shape_)
        if torch.device(device).type != "cpu":  # fake device tensors: values do not matter
            return torch.randn((*batch, *shape), dtype=dtype, device=device)
        x = torch.randn((*batch, *shape), generator=gen, dtype=torch.float64)
        if dtype.is_complex:
            x = torch.complex(x, torch.randn((*batch, *shape), generator=gen, dtype=torch.float64))
        return x.to(dtype=dtype, device=device)

    shape_fn = shape
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
    """Turn every float hyperparameter into a 0-d tensor (zeros too: every block is live).

    Returns the list of tensors and ``rebuild(tensors) -> hparams``. Integers (step counts,
    patience) and ``None`` (a structural "absent") stay as they are.
    """
    chosen = lambda x: isinstance(x, float)  # noqa: E731
    values = []
    _fill(hparams, lambda x: values.append(torch.tensor(x, dtype=dtype, device=device))
          if chosen(x) else None)

    def rebuild(tensors):
        it = iter(tensors)
        return _fill(hparams, lambda x: next(it) if chosen(x) else x)

    return values, rebuild


def float_hparams(hparams: Any) -> list[tuple[str, float]]:
    """``(dotted path, value)`` of every float hyperparameter (the live-value checks' cells)."""
    paths, leaves, _ = optree.tree_flatten_with_path(hparams, none_is_leaf=True)
    return [(".".join(map(str, path)), value) for path, value in zip(paths, leaves)
            if isinstance(value, float)]


def with_hparam(hparams: Any, path: str, value: Any) -> Any:
    """``hparams`` with the leaf at dotted ``path`` replaced by ``value`` (plain recursion)."""
    head, _, rest = path.partition(".")
    if isinstance(hparams, dict):
        key = next(k for k in hparams if str(k) == head)
        return {**hparams, key: with_hparam(hparams[key], rest, value) if rest else value}
    index = int(head)
    out = list(hparams)
    out[index] = with_hparam(hparams[index], rest, value) if rest else value
    return type(hparams)(out)


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


_FLAT = (1.0, 1.0, 1.0, 1.0)


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
_RULES = [(r"^(a|linear\.bias)$", "no_decay"), ([r"^(blocks\.1|frozen$)"], "frozen")]


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
         extra=_loss_like, float64_scalars=True, live={
             # a flat loss: the second measurement is a plateau, the lr drops 0.1 -> 0.05
             "factor": Live(steps=4, values=_FLAT),
             "min_lr": Live(value=0.09, steps=4, values=_FLAT),
             "eps": Live(value=0.06, steps=4, values=_FLAT),
             # improvements of 5e-5 (relative): a plateau for 1e-4, not for 1e-5
             "threshold": Live(value=1e-5, steps=4, values=(1.0, 0.99995, 0.9999, 0.99985))}),
    Case("reduce_on_plateau_max_abs_in_chain",
         lambda: fo.chain(fo.scale_by_adam(), fo.reduce_on_plateau(
             lr=0.01, mode="max", threshold_mode="abs", threshold=0.1, patience=1,
             flip_sign=True)), extra=_loss_like, float64_scalars=True, live={
             "1.eps": Live(value=0.05, steps=4, values=_FLAT),
             # increments of 0.05: a plateau for a threshold of 0.1, not for 0.01
             "1.threshold": Live(value=0.01, steps=4, values=(1.0, 1.05, 1.1, 1.15))}),
    Case("masked", lambda: fo.masked(fo.scale_by_adam(), _vectors)),
    Case("freeze_mask", lambda: fo.freeze(_vectors)),
    Case("freeze", fo.freeze),
    Case("partition_fn", lambda: fo.partition({"adam": fo.adam(lr=0.01),
                                               "sgd": fo.sgd(lr=0.1, momentum=0.9)}, _by_ndim)),
    Case("partition_regex", _partition_rules),
    Case("parameter_groups", _groups),
    Case("inject_hparams_alias", lambda: fo.inject_hparams(fo.adamw(lr=0.01, weight_decay=0.1),
                                                           {"lr": _warmup_cosine()}),
         float64_scalars=True, live=_SCHEDULE_TAIL),
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
    Case("average_params_ema", lambda: fo.chain(fo.sgd(lr=0.1), fo.average_params(0.9)),
         live={"0.dampening": Live(others={"0.momentum": 0.9})}),
    Case("conditionally_every_k", lambda: fo.conditionally(fo.adam(lr=0.01), every_k=2)),
    Case("conditionally_predicate",
         lambda: fo.conditionally(fo.trace(0.9), predicate=lambda t: (t >= 1) & (t < 5))),
    Case("flatten_adam", lambda: fo.flatten(fo.adam(lr=0.01))),
    Case("flatten_chain", lambda: fo.flatten(fo.chain(fo.clip_by_global_norm(1.0),
                                                      fo.scale_by_adam(),
                                                      fo.add_decayed_weights(0.01),
                                                      fo.scale_by_learning_rate(0.1)))),
]


# --------------------------------------------------------------------------------------------
# The classic adaptive blocks and their aliases (transforms/adaptive.py; Adagrad ... ASGD).


def _radam_rectified():
    """scale_by_radam with the step count started at 10, so that the rectified branch runs."""
    tx = fo.scale_by_radam(betas=(0.9, 0.99))

    def init(params):
        state = tx.init(params)
        return state._replace(step=fo.tree.map(lambda s: s + 10, state.step))

    return fo.Transform(init, tx.update, tx.hparams)


_F64 = torch.float64
# step sizes start at 0.01 and move by the etas (0.5, 1.2): bounds next to 0.01 take effect
_RPROP_BOUNDS = {"step_sizes.0": Live(value=0.009), "step_sizes.1": Live(value=0.011)}
# RAdam's eps and eps_root act once the rectification starts (rho_t > 5 from the 6th step,
# beta2 0.999); a threshold of 4.5 starts it at the 5th
_RADAM_EPS = {"eps": Live(steps=7)}
_RADAM = {**_RADAM_EPS, "eps_root": Live(steps=7), "threshold": Live(value=4.5, steps=7)}

CASES += [
    Case("scale_by_rss", fo.scale_by_rss),
    Case("scale_by_rss_decay_init",
         lambda: fo.scale_by_rss(lr_decay=0.01, initial_accumulator_value=0.1, eps=1e-8)),
    Case("scale_by_adadelta", fo.scale_by_adadelta),
    Case("scale_by_adamax", fo.scale_by_adamax),
    Case("scale_by_nadam", lambda: fo.scale_by_nadam(scalar_state_dtype=_F64),
         float64_scalars=True),
    Case("scale_by_radam", fo.scale_by_radam, live=_RADAM),
    # (rho_t is 10.9, 11.8, 12.7 at the counts 11-13: a threshold of 11.5 moves the switch)
    Case("scale_by_radam_rectified", _radam_rectified,
         live={"threshold": Live(value=11.5)}),
    Case("scale_by_rprop", fo.scale_by_rprop, live=_RPROP_BOUNDS),
    Case("scale_by_asgd", lambda: fo.scale_by_asgd(lr=0.05, lambd=0.01, t0=0.5,
                                                   scalar_state_dtype=_F64),
         float64_scalars=True),
    Case("adagrad", lambda: fo.adagrad(lr=0.1, lr_decay=0.01, weight_decay=0.1,
                                       initial_accumulator_value=0.1, maximize=True)),
    Case("adadelta", lambda: fo.adadelta(weight_decay=0.1)),
    Case("adamax", lambda: fo.adamax(lr=0.01, weight_decay=0.1, maximize=True)),
    Case("nadam", lambda: fo.nadam(lr=0.01, weight_decay=0.1, scalar_state_dtype=_F64),
         float64_scalars=True),
    Case("nadam_decoupled", lambda: fo.nadam(lr=0.01, weight_decay=0.1,
                                             decoupled_weight_decay=True, maximize=True,
                                             scalar_state_dtype=_F64), float64_scalars=True),
    Case("radam", lambda: fo.radam(lr=0.01, weight_decay=0.1), live=_RADAM_EPS),
    Case("radam_decoupled", lambda: fo.radam(lr=0.01, weight_decay=0.1,
                                             decoupled_weight_decay=True, maximize=True),
         live=_RADAM_EPS),
    Case("rmsprop", lambda: fo.rmsprop(lr=0.01)),
    Case("rmsprop_centered_momentum", lambda: fo.rmsprop(lr=0.01, momentum=0.9, centered=True,
                                                         weight_decay=0.1, maximize=True)),
    Case("rprop", lambda: fo.rprop(lr=0.01, maximize=True), live=_RPROP_BOUNDS),
    Case("asgd", lambda: fo.asgd(lr=0.05, lambd=0.01, t0=0.5, weight_decay=0.1,
                                 scalar_state_dtype=_F64), float64_scalars=True),
]


# --------------------------------------------------------------------------------------------
# Adafactor, Muon, SparseAdam, L-BFGS (transforms/factored.py, orthogonal.py, sparse.py,
# lbfgs.py).


def _as_matrix(shape: tuple) -> tuple:
    """Muon's blocks take 2-D leaves only: a vector becomes a column, a scalar a 1x1 matrix."""
    if len(shape) == 2:
        return shape
    n = 1
    for s in shape:
        n *= s
    return (max(n, 1), 1)


def _at_least_1d(shape: tuple) -> tuple:
    return shape or (1,)


def _sparse_rows(g: torch.Tensor) -> torch.Tensor:
    """A sparse COO gradient (as ``nn.Embedding(sparse=True)`` makes) with the leaf's values."""
    return g.to_sparse(1)


_SPARSE_EXCLUDED = tuple((test, reason) for test, reason in [
    ("test_grad_matches_finite_differences",
     "sparse COO gradients have no torch.func.grad support, and coalesce() is not "
     "differentiable"),
    ("test_vmap_equals_loop", "torch.func.vmap has no batching rules for sparse COO tensors"),
    ("test_compile_fullgraph_no_recompile",
     "torch.compile does not trace sparse COO tensors (coalesce has data-dependent sizes)"),
    ("test_capturable_fake_cuda_trace",
     "coalesce() sorts and deduplicates indices: data-dependent output sizes, not capturable"),
    ("test_trace_once_replay_with_new_hparams",
     "make_fx cannot trace sparse COO inputs"),
])

# L-BFGS's stopping tests, curvature test and line search are Python decisions on values
_LBFGS_HOST = ("L-BFGS decides on values in Python (stopping tests, the curvature test "
               "y's > 1e-10, the line search), as torch.optim.LBFGS: it syncs with the host")
_LBFGS_EXCLUDED = (
    ("test_grad_matches_finite_differences",
     _LBFGS_HOST + "; step lengths and history indices become Python numbers, which "
     "torch.func.grad cannot trace"),
    ("test_vmap_equals_loop", _LBFGS_HOST + "; vmap cannot branch per member"),
    ("test_compile_fullgraph_no_recompile", _LBFGS_HOST + "; fullgraph=True forbids graph "
     "breaks"),
    ("test_capturable_fake_cuda_trace", _LBFGS_HOST + "; not CUDA-graph capturable"),
    ("test_trace_once_replay_with_new_hparams", _LBFGS_HOST + "; a trace bakes the branches"),
    ("test_complex", "complex leaves are supported as real pairs (as torch), so the flat state "
     "vectors are real, not complex; complex parameters are checked against torch in "
     "test_algorithms_special.py"),
)


# the tolerances only stop iterations: a gradient tolerance above the gradients' max stops
# before the first; a change tolerance of 1e3 stops after the first of several iterations
_LBFGS_TOLERANCES = {"tolerance_grad": Live(value=10.0), "tolerance_change": Live(value=1e3)}


def _lbfgs_extra(grads):
    """A loss value and a ``value_fn`` (a quadratic's value and gradient) for line searches."""
    def value_fn(params):
        value = sum(((p.abs() ** 2).sum().to(torch.float64) for p in
                     optree.tree_leaves(params) if p is not None),
                    torch.zeros((), dtype=torch.float64))
        return value, params

    return {**_loss_like(grads), "value_fn": value_fn}


# eps2 floors the parameters' RMS (about 1 here): tiny parameters make it act; eps1 floors the
# second moment (1e-60 squared): gradients of 1e-31 make it act
_ADAFACTOR_FLOORS = {"eps2": Live(params_scale=1e-6), "eps.1": Live(params_scale=1e-6),
                     "eps.0": Live(grads_scale=1e-31),
                     # d clips the update's RMS, which is 1 for vectors at the first step and
                     # about 1 later: 0.8 (below torch's construction bound d >= 1, as
                     # HuggingFace's clip_threshold allows) clips every step, away from the
                     # kink at RMS = d
                     "d": Live(value=0.8)}
# Newton-Schulz: eps floors the norm (tiny gradients make it act); the coefficients move a
# little (a quarter more would diverge in 5 iterations)
# Number coefficients take torch's fused addmm, tensor ones the unfused polynomial: ~10 ops per
# iteration round differently (2 ulps each), and each iteration multiplies an earlier difference
# by up to the slope a = 3.44 of its polynomial: 20 (1 + 3.44 + ... + 3.44^4) ~ 3800 ulps
_NS_ULPS = 3800
_NS = {"eps": Live(grads_scale=1e-9), "ns_coefficients.0": Live(value=3.5),
       "ns_coefficients.1": Live(value=-4.8), "ns_coefficients.2": Live(value=2.05)}

CASES += [
    Case("scale_by_factored_rms",
         lambda: fo.scale_by_factored_rms(lr=0.05, weight_decay=0.1), complex=False,
         live=_ADAFACTOR_FLOORS),
    Case("adafactor", lambda: fo.adafactor(lr=0.05, eps=(1e-30, 1e-3), d=1.5, maximize=True),
         complex=False, live=_ADAFACTOR_FLOORS),
    Case("scale_by_newton_schulz", lambda: fo.scale_by_newton_schulz(ns_dtype=None),
         complex=False, shape=_as_matrix, live=_NS, ulps=_NS_ULPS),
    Case("scale_by_muon", lambda: fo.scale_by_muon(ns_dtype=None, adjust_lr_fn="match_rms_adamw"),
         complex=False, shape=_as_matrix, live=_NS, ulps=_NS_ULPS),
    Case("muon", lambda: fo.muon(lr=0.02, nesterov=False, ns_dtype=None), complex=False,
         shape=_as_matrix, live=_NS, ulps=_NS_ULPS),
    Case("muon_bfloat16", lambda: fo.muon(lr=0.02), complex=False, shape=_as_matrix,
         excluded=(("test_grad_matches_finite_differences",
                    "the Newton-Schulz iteration runs in bfloat16 (torch.optim.Muon's "
                    "precision): float64 finite differences see bfloat16 rounding; the "
                    "ns_dtype=None cases check the gradients"),),
         live=_NS, precision=torch.bfloat16),
    Case("sparse_adam", lambda: fo.sparse_adam(lr=0.01, maximize=True), complex=False,
         shape=_at_least_1d, grads=_sparse_rows, excluded=_SPARSE_EXCLUDED),
    # AllenNLP's DenseSparseAdam: dense gradients take every check; sparse ones SparseAdam's
    Case("dense_sparse_adam", lambda: fo.dense_sparse_adam(lr=0.01)),
    Case("dense_sparse_adam_sparse_grads", lambda: fo.dense_sparse_adam(lr=0.01), complex=False,
         shape=_at_least_1d, grads=_sparse_rows, excluded=_SPARSE_EXCLUDED),
    Case("lbfgs", lambda: fo.lbfgs(lr=0.1, max_iter=1, history_size=3), float64_scalars=True,
         excluded=_LBFGS_EXCLUDED, live={
             **_LBFGS_TOLERANCES,
             "tolerance_change": Live(excluded=(("other_value", (
                 "with max_iter=1 (structural) the change tests come after the only "
                 "iteration, where the iteration limit stops it anyway; lbfgs_strong_wolfe "
                 "(max_iter=3) checks tolerance_change")),))}),
    Case("lbfgs_strong_wolfe",
         lambda: fo.lbfgs(max_iter=3, history_size=2, line_search_fn="strong_wolfe"),
         extra=_lbfgs_extra, float64_scalars=True, excluded=_LBFGS_EXCLUDED,
         live=_LBFGS_TOLERANCES),
]

SUMS_IN_BLOCKS = {"adafactor", "lamb"}
"""Aliases whose multi-tensor pure update reduces over each leaf in blocks (``_program_reduce``,
on float32/float64 CPU trees of any structure): the per-leaf numbers up to the order of the
blocks' sums (float32: ``test_program_reduce.py``), not bit for bit."""

# The cases of each further family live in a module of their own, ``conformance_<family>.py``
# beside this one (HuggingFace's optimizers and block options: conformance_hf.py), each with a
# ``CASES`` list: all are collected here, in name order.
for _path in sorted(pathlib.Path(__file__).parent.glob("conformance_*.py")):
    CASES += importlib.import_module(_path.stem).CASES
