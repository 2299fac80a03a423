"""optax's wrappers outside the optimizers (``functional_optim.combinators``) against their
formulas written out plainly, following optax's definitions: float64 trajectories of 20+ steps
on a few parameter shapes, non-default arguments too."""

from __future__ import annotations

import functools
import math

import pytest
import torch

import functional_optim as fo
from functional_optim import tree_math

F64 = torch.float64
STEPS = 24
SHAPES = {"w": (4, 3), "b": (5,), "s": ()}


def _tree(seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen, dtype=F64) * scale for k, s in SHAPES.items()}


def _grads(t):
    g = _tree(100 + t, 0.5 + 0.05 * t)
    if t in (5, 11):  # non-finite micro-steps
        g["b"] = g["b"].clone()
        g["b"][1] = math.nan if t == 5 else math.inf
    return g


def _close(a, b, rtol=1e-10):
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=1e-14)


def _momentum_sgd(lr, mu):
    """torch's SGD with momentum as a reference closure: step(g) -> update."""
    buf = {}

    def step(g):
        for k, x in g.items():
            buf[k] = x.clone() if k not in buf else mu * buf[k] + x
        return {k: -lr * v for k, v in buf.items()}

    return step


@pytest.mark.parametrize("use_mean", [True, False])
def test_multi_steps_with_a_schedule_and_skipping(use_mean):
    """optax's MultiSteps: every_k_schedule of the gradient step, should_skip_update_fn."""
    def every_k(gradient_step):
        return 2 + torch.remainder(gradient_step, 3)  # windows of 2, 3, 4, 2, ...

    tx = fo.multi_steps(fo.sgd(lr=0.1, momentum=0.9), every_k,
                        reduction="mean" if use_mean else "sum",
                        should_skip=fo.skip_not_finite)
    params = _tree(0)
    state = tx.init(params)
    inner = _momentum_sgd(0.1, 0.9)
    acc, mini, gstep = {k: torch.zeros_like(v) for k, v in params.items()}, 0, 0
    for t in range(STEPS):
        g = _grads(t)
        u, state = tx.update(g, state, params)
        if any(not torch.isfinite(x).all() for x in g.values()):  # skipped: nothing happens
            expected = {k: torch.zeros_like(v) for k, v in g.items()}
            assert int(state.skip_state["num_not_finite"]) == 1
        else:
            k = 2 + gstep % 3
            acc = {key: acc[key] + g[key] for key in acc}
            if mini == k - 1:
                expected = inner({key: v / k if use_mean else v for key, v in acc.items()})
                acc = {key: torch.zeros_like(v) for key, v in acc.items()}
                gstep += 1
                mini = 0
            else:
                expected = {key: torch.zeros_like(v) for key, v in g.items()}
                mini += 1
            assert bool(fo.combinators.has_updated(state)) == (mini == 0)
        _close(u, expected)
        assert int(state.mini_step) == mini and int(state.gradient_step) == gstep
        params = fo.apply_updates(params, u)


def test_skip_large_updates_and_apply_every():
    bound = 3.0
    skip = functools.partial(fo.skip_large_updates, max_squared_norm=bound)
    tx = fo.multi_steps(fo.identity(), 3, reduction="sum", should_skip=skip)  # apply_every(3)
    state = tx.init(_tree(0))
    acc, mini = None, 0
    for t in range(STEPS):
        g = _tree(200 + t, 0.3)
        squared = sum(float(x.pow(2).sum()) for x in g.values())
        u, state = tx.update(g, state)
        assert float(state.skip_state["norm_squared"]) == pytest.approx(squared, rel=1e-12)
        if squared >= bound:
            expected = {k: torch.zeros_like(v) for k, v in g.items()}
        else:
            acc = g if mini == 0 else {k: acc[k] + g[k] for k in g}
            mini = (mini + 1) % 3
            expected = acc if mini == 0 else {k: torch.zeros_like(v) for k, v in g.items()}
        _close(u, expected)


@pytest.mark.parametrize("otherwise", ["zeros", "identity"])
def test_conditionally(otherwise):
    """optax's conditionally_mask / conditionally_transform, with extra arguments forwarded."""
    def predicate(count, value):
        return (torch.remainder(count, 3) != 1) & (value < 5.0)

    tx = fo.conditionally(fo.sgd(lr=0.1, momentum=0.9), predicate=predicate,
                          otherwise=otherwise, forward_extra_args=True)
    params = _tree(0)
    state = tx.init(params)
    inner = _momentum_sgd(0.1, 0.9)
    for t in range(STEPS):
        g, value = _tree(300 + t), float(t % 7)
        u, state = tx.update(g, state, params, value=value)
        if t % 3 != 1 and value < 5.0:
            expected = inner(g)
        else:
            expected = {k: torch.zeros_like(v) for k, v in g.items()} \
                if otherwise == "zeros" else g
        _close(u, expected)
        params = fo.apply_updates(params, u)


@pytest.mark.parametrize("reset_state", [False, True])
def test_lookahead_as_optax(reset_state):
    """optax's lookahead on LookaheadParams(fast, slow): the fast parameters follow ours."""
    alpha, period = 0.3, 3
    tx = fo.lookahead(fo.sgd(lr=0.1, momentum=0.9), period, alpha, reset_state=reset_state)
    params = _tree(0)
    state = tx.init(params)
    fast, slow = dict(params), dict(params)
    inner = _momentum_sgd(0.1, 0.9)
    for t in range(STEPS):
        g = _tree(400 + t)
        u, state = tx.update(g, state, params)
        params = fo.apply_updates(params, u)
        up = inner(g)
        sync = t % period == period - 1
        diff = {k: fast[k] + up[k] - slow[k] for k in g}
        fast = {k: fast[k] + up[k] - sync * (1 - alpha) * diff[k] for k in g}
        slow = {k: slow[k] + alpha * sync * diff[k] for k in g}
        if sync and reset_state:
            inner = _momentum_sgd(0.1, 0.9)
        _close(params, fast)
        _close(state.slow, slow)


def test_snapshot_monitor_and_measure_with_ema():
    decay = 0.8
    tx = fo.chain(
        fo.snapshot("before", tree_math.sum),
        fo.clip_by_global_norm(1.0),
        fo.monitor({"norm": fo.tree.global_norm,
                    "norm_ema": fo.measure_with_ema(fo.tree.global_norm, decay),
                    "raw_ema": fo.measure_with_ema(fo.tree.global_norm, decay, debias=False)}))
    params = _tree(0)
    state = tx.init(params)
    assert float(tree_math.get(state, "before")) == pytest.approx(float(tree_math.sum(params)))
    ema = 0.0
    for t in range(STEPS):
        g = _tree(500 + t)
        u, state = tx.update(g, state, params)
        norm = math.sqrt(sum(float(x.pow(2).sum()) for x in g.values()))
        clipped = {k: v * min(1.0, 1.0 / (norm + 1e-6)) for k, v in g.items()}
        _close(u, clipped)  # monitor passes the updates through
        ema = decay * ema + (1 - decay) * min(norm, norm / (norm + 1e-6))
        measured = state[2].measurements
        assert float(tree_math.get(state, "before")) == pytest.approx(
            float(sum(v.sum() for v in g.values())), rel=1e-12)
        assert float(measured["norm"]) == pytest.approx(float(fo.tree.global_norm(clipped)))
        assert float(measured["raw_ema"]) == pytest.approx(ema, rel=1e-12)
        assert float(measured["norm_ema"]) == pytest.approx(ema / (1 - decay ** (t + 1)),
                                                            rel=1e-12)


def test_inject_hparams_stateful_schedule_and_values_in_the_state():
    class PlateauLr:  # a stateful schedule reading the loss (optax's StatefulSchedule)
        def init(self):
            return {"best": torch.tensor(math.inf, dtype=F64), "lr": torch.tensor(0.1, dtype=F64)}

        def update(self, state, value, **extra):
            worse = value >= state["best"]
            return {"best": torch.minimum(state["best"], torch.as_tensor(value, dtype=F64)),
                    "lr": torch.where(worse, state["lr"] * 0.5, state["lr"])}

        def __call__(self, state, **extra):
            return state["lr"]

    tx = fo.inject_hparams(fo.sgd(lr=0.1, momentum=0.9), {"lr": PlateauLr()},
                           in_state=("momentum",))
    assert tx.hparams["lr"] is None and tx.hparams["momentum"] is None
    params = _tree(0)
    state = tx.init(params)
    lr, best, buf = 0.1, math.inf, None
    losses = [3.0, 2.0, 2.5, 1.0, 1.5, 1.8, 0.5] * 3
    for t, loss in enumerate(losses):
        mu = 0.9 if t < 10 else 0.5
        if t == 10:  # change a value held in the state between steps
            is_value = lambda path, v: isinstance(v, torch.Tensor)  # noqa: E731 (not sgd's
            state = tree_math.set(state, is_value, momentum=torch.tensor(0.5, dtype=F64))
            # momentum block, a state of that name)
        g = _tree(600 + t)
        u, state = tx.update(g, state, params, value=loss)
        buf = g if buf is None else {k: mu * buf[k] + g[k] for k in g}
        _close(u, {k: -lr * v for k, v in buf.items()})
        assert float(fo.get_hparam(state, "lr")) == lr
        if loss >= best:
            lr *= 0.5
        best = min(best, loss)
        params = fo.apply_updates(params, u)


def test_masked_and_partition_mask_compatible_extra_args():
    seen = []

    def record(updates, state, params=None, hparams=None, grad=None, **extra):
        seen.append(grad)
        return updates, state

    inner = fo.Transform(lambda p: fo.EmptyState(), record, {})
    mask = {"w": True, "b": False, "s": True}
    params, grad = _tree(0), _tree(1)
    for tx in (fo.masked(inner, mask, mask_compatible_extra_args=True),
               fo.partition({"a": inner, "b": fo.identity()},
                            {"w": "a", "b": "b", "s": "a"}, mask_compatible_extra_args=True)):
        tx.update(grad, tx.init(params), params, grad=grad, other=1.0)
        assert isinstance(seen[-1]["b"], fo.combinators.MaskedNode)
        assert seen[-1]["w"] is grad["w"]
    tx = fo.masked(inner, mask)
    tx.update(grad, tx.init(params), params, grad=grad)
    assert seen[-1] is grad


def test_stateless_updates_and_scale_gradient():
    params, g = _tree(0), _tree(1)
    tx = fo.stateless(lambda u, p: tree_math.mul(u, p))
    _close(tx.update(g, tx.init(params), params)[0], {k: g[k] * params[k] for k in g})
    tx = fo.stateless_with_tree_map(lambda u, p: u if p is None else u - 0.1 * p)
    _close(tx.update(g, tx.init(params), params)[0], {k: g[k] - 0.1 * params[k] for k in g})
    _close(tx.update(g, tx.init(params))[0], g)
    _close(fo.incremental_update(g, params, 0.25),
           {k: 0.25 * g[k] + 0.75 * params[k] for k in g})
    for steps in (6, torch.tensor(6), torch.tensor(7)):
        out = fo.periodic_update(g, params, steps, 3)
        _close(out, g if int(steps) % 3 == 0 else params)
    x = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    y = fo.scale_gradient({"x": x}, 0.3)["x"]
    assert torch.equal(y, x.detach())
    (grad,) = torch.autograd.grad((y * y).sum(), x)
    torch.testing.assert_close(grad, 0.3 * 2 * x.detach())
    assert fo.scale_gradient({"x": x}, 0)["x"].requires_grad is False
    grad_fn = torch.func.grad(lambda v: (fo.scale_gradient(v, torch.tensor(2.0)) ** 3).sum())
    torch.testing.assert_close(grad_fn(x.detach()), 2 * 3 * x.detach() ** 2)


def test_inject_hparams_value_held_in_state_set_to_a_number():
    """A value held in the state replaced by a Python number (optax's
    ``state.hyperparams["learning_rate"] = 0.1``) is used, and stored back as a tensor (it
    raised AttributeError: a float has no dtype)."""
    tx = fo.inject_hparams(fo.sgd(lr=0.1), in_state=("lr",))
    params = _tree(0)
    state = tx.init(params)
    state.hparams["lr"] = 0.5
    g = _tree(1)
    u, state = tx.update(g, state, params)
    _close(u, {k: -0.5 * v for k, v in g.items()})
    assert isinstance(state.hparams["lr"], torch.Tensor) and float(state.hparams["lr"]) == 0.5
