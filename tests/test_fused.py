"""The adapter's fused fast path (torch's ``_fused_*`` kernels, ``functional_optim._fused``).

By default the drop-in ``SGD``/``Adam``/``AdamW``/``Adagrad`` and ``FunctionalOptimizer`` over
the matching aliases run one of torch's fused kernels instead of the chain. These tests check
that the kernel really runs, that it gives the chain's numbers (the per-leaf path,
``foreach=False``) up to rounding order, and that everything the kernel cannot do falls back to
the chain: tensor betas, schedules, nonzero dampening, half precision, complex leaves,
``foreach=True``.
"""

from __future__ import annotations

import functools

import pytest
import torch
from adapter_checks import assert_same_state
from tolerance import (
    UPDATE_OPS,
    assert_close_ulps,
    assert_low_precision_trajectory,
    sum_ops,
    ulp_budget,
)

import functional_optim as fo
import functional_optim.optim as foo

KERNELS = {"SGD": "_fused_sgd_", "Adam": "_fused_adam_", "AdamW": "_fused_adamw_",
           "Adagrad": "_fused_adagrad_"}
CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=torch.tensor(0.01, dtype=torch.float64), betas=(0.8, 0.9), amsgrad=True)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.2,
                     maximize=True)),
]


class _Spy:
    """Counts the calls of ``torch.<name>`` (patched before the optimizer is built)."""

    def __init__(self, monkeypatch, name):
        self.calls = 0
        kernel = getattr(torch, name)

        def spy(*args, **kwargs):
            self.calls += 1
            return kernel(*args, **kwargs)

        monkeypatch.setattr(torch, name, spy)


def _run(cls, kwargs, dtype, steps=15, seed=0, skip=()):
    """``steps`` steps on a few tensors (parameter ``k`` has no grad on the steps in ``skip``).

    Returns the params, the optimizer and the magnitudes the run reached: each param's
    element-wise peak ``|p|`` and largest step ``max|p_t+1 - p_t|``."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(7, 3), (5,), (4, 2, 2)]
    params = [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]
    opt = cls(params, **kwargs)
    peak = [p.detach().abs() for p in params]
    largest_step = [0.0 for _ in params]
    for i in range(steps):
        before = [p.detach().clone() for p in params]
        for k, p in enumerate(params):
            p.grad = None if (i, k) in skip else torch.randn(p.shape, generator=gen, dtype=dtype)
        opt.step()
        for k, (p, b) in enumerate(zip(params, before)):
            peak[k] = torch.maximum(peak[k], p.detach().abs())
            largest_step[k] = max(largest_step[k], (p.detach() - b).abs().max().item())
    return params, opt, (peak, largest_step)


def _close(a, b, dtype, peak=None, ulps=None):
    """float64: 1e-13 relative and absolute; float32: within ``ulps`` ulps of ``peak``, the
    magnitude the reference reached (see tests/tolerance.py)."""
    if dtype == torch.float64:
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    else:
        assert_close_ulps(a, b, ulps=ulps, scale=peak)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,kwargs", CASES)
def test_fused_kernel_runs_and_matches_the_chain(monkeypatch, name, kwargs, dtype):
    spy = _Spy(monkeypatch, KERNELS[name])
    cls = getattr(foo, name)
    fused, opt, _ = _run(cls, kwargs, dtype)
    assert spy.calls == 15
    chain, ref, (peak, _) = _run(cls, {**kwargs, "foreach": False}, dtype)
    assert spy.calls == 15
    # float32: the kernel orders the update rule's ops its own way: 2 ulps per op, every step,
    # of the parameter's peak; of a state's max-abs for the state (an average or a count)
    ulps = ulp_budget(15, UPDATE_OPS[name.lower()])
    for a, b, top in zip(fused, chain, peak):
        _close(a, b, dtype, top.max(), ulps)
    for p, q in zip(fused, chain):
        for key, value in ref.state[q].items():
            _close(opt.state[p][key].to(value.dtype), value, dtype, value.abs().max(), ulps)


@pytest.mark.parametrize("name,kwargs", CASES)
def test_fused_default_matches_torch_with_params_that_miss_steps(name, kwargs):
    skip = {(0, 1), (1, 1), (4, 0), (7, 2)}  # parameter 1 starts late; others pause
    ours, *_ = _run(getattr(foo, name), kwargs, torch.float64, skip=skip)
    theirs, *_ = _run(getattr(torch.optim, name), kwargs, torch.float64, skip=skip)
    for a, b in zip(ours, theirs):
        _close(a, b, torch.float64)


@pytest.mark.parametrize("tx,kernel", [
    (functools.partial(fo.adamw, lr=0.01), "_fused_adamw_"),
    (functools.partial(fo.sgd, lr=0.1, momentum=0.9), "_fused_sgd_"),
    (functools.partial(fo.adagrad, lr=0.1), "_fused_adagrad_"),
])
def test_generic_adapter_uses_the_alias_kernel_and_keeps_its_counts(monkeypatch, tx, kernel):
    spy = _Spy(monkeypatch, kernel)
    make = functools.partial(foo.FunctionalOptimizer, transform=tx)
    fused, opt, _ = _run(make, {}, torch.float64, steps=6)
    chain, ref, _ = _run(make, {"foreach": False}, torch.float64, steps=6)
    assert spy.calls == 6
    for a, b in zip(fused, chain):
        _close(a, b, torch.float64)
    assert_same_state(opt, fused, ref, chain, 1e-13)


FALLBACKS = [
    ("AdamW", dict(foreach=True), torch.float64),
    ("AdamW", dict(betas=(torch.tensor(0.9), torch.tensor(0.99))), torch.float64),
    ("AdamW", dict(), torch.bfloat16),
    ("AdamW", dict(), torch.complex128),
    ("SGD", dict(momentum=0.9, dampening=0.5), torch.float64),
    ("Adagrad", dict(foreach=False), torch.float64),
]


@pytest.mark.parametrize("name,kwargs,dtype", FALLBACKS)
def test_what_the_kernel_cannot_do_runs_the_chain_with_torchs_numbers(monkeypatch, name, kwargs,
                                                                       dtype):
    spy = _Spy(monkeypatch, KERNELS[name])
    ours, *_ = _run(getattr(foo, name), {"lr": 0.01, **kwargs}, dtype, steps=5)
    assert spy.calls == 0
    theirs, _, (peak, largest_step) = _run(getattr(torch.optim, name), {"lr": 0.01, **kwargs},
                                           dtype, steps=5)
    if dtype == torch.bfloat16:  # the chain and torch round differently: see the helper
        assert_low_precision_trajectory(ours, theirs, peak, largest_step, 5,
                                        UPDATE_OPS[name.lower()])
        return
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_schedule_lr_runs_the_chain(monkeypatch):
    spy = _Spy(monkeypatch, "_fused_adamw_")
    tx = functools.partial(fo.adamw, lr=fo.schedules.linear(0.01, 0.0, 10))
    fused, *_ = _run(functools.partial(foo.FunctionalOptimizer, transform=tx), {},
                     torch.float64, steps=4)
    assert spy.calls == 0
    chain, *_ = _run(functools.partial(foo.FunctionalOptimizer, transform=tx),
                     {"foreach": False}, torch.float64, steps=4)
    for a, b in zip(fused, chain):
        _close(a, b, torch.float64)


def test_decay_set_on_a_group_built_without_it():
    """A weight_decay set on the group of an alias built with 0 is live: the kernel applies it,
    as torch.optim.Adam with that weight_decay (its block is always in the chain)."""
    p = torch.linspace(-1, 1, 3, dtype=torch.float64, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    opt = foo.FunctionalOptimizer([p], fo.adam(lr=0.1))
    ref = torch.optim.Adam([q], lr=0.1, weight_decay=0.1, foreach=False)
    opt.param_groups[0]["weight_decay"] = 0.1
    for _ in range(3):
        p.grad = torch.ones(3, dtype=torch.float64)
        q.grad = torch.ones(3, dtype=torch.float64)
        opt.step()
        ref.step()
    _close(p.detach(), q.detach(), torch.float64)


def _eps(value):  # a tensor hparam: the blocked step (functional_optim._blocked) declines
    return torch.tensor(value, dtype=torch.float64)


FOLDED = [("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1,
                           eps=_eps(1e-8))),
          ("Adadelta", dict(weight_decay=0.1, maximize=True, eps=_eps(1e-6))),
          ("Adamax", dict(lr=0.01, eps=_eps(1e-8))),
          ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True,
                         eps=_eps(1e-8))),
          ("RAdam", dict(lr=0.01, eps=_eps(1e-8)))]


@pytest.mark.parametrize("name,kwargs", FOLDED)
def test_lr_folded_into_the_parameter_update(monkeypatch, name, kwargs):
    """Where the blocked step declines (a tensor hparam), aliases without a torch kernel run
    their chain without the lr block, then one ``_foreach_add_(params, u, alpha=-lr)``: the
    chain's numbers, torch's trajectory."""
    alphas = []
    kernel = torch._foreach_add_

    def spy(*args, **kw):
        alphas.append(kw.get("alpha"))
        return kernel(*args, **kw)

    monkeypatch.setattr(torch, "_foreach_add_", spy)
    folded, *_ = _run(getattr(foo, name), kwargs, torch.float64, steps=10)
    assert alphas.count(-kwargs.get("lr", 1.0 if name == "Adadelta" else 0.002)) == 10
    monkeypatch.setattr(torch, "_foreach_add_", kernel)
    chain, *_ = _run(getattr(foo, name), {**kwargs, "foreach": False}, torch.float64, steps=10)
    theirs, *_ = _run(getattr(torch.optim, name), kwargs, torch.float64, steps=10)
    for a, b, c in zip(folded, chain, theirs):
        _close(a, b, torch.float64)
        _close(a, c, torch.float64)


# -- user chains that are Adam(W) in blocks run torch's kernel (functional_optim._fused.chain_step)

def _warmup_cosine():
    return fo.schedules.warmup_cosine_decay(0.0, 0.05, 3, 20)


CHAINS = [
    (lambda: fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(),
                      fo.add_decayed_weights(0.1), fo.scale_by_learning_rate(_warmup_cosine())),
     "_fused_adamw_"),
    (lambda: fo.chain(fo.add_decayed_weights(0.1), fo.scale_by_adam((0.8, 0.9), amsgrad=True),
                      fo.scale_by_learning_rate(0.01)), "_fused_adam_"),
    (lambda: fo.chain(adam=fo.scale_by_adam(eps=1e-6), noop=fo.identity(),
                      lr=fo.scale_by_learning_rate(torch.tensor(0.01, dtype=torch.float64))),
     "_fused_adam_"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("make,kernel", CHAINS)
def test_user_chain_runs_torchs_kernel_with_the_chains_numbers(monkeypatch, make, kernel, dtype):
    spy = _Spy(monkeypatch, kernel)
    opt_cls = functools.partial(foo.FunctionalOptimizer, transform=make)
    fused, opt, _ = _run(opt_cls, {}, dtype, steps=8)
    assert spy.calls == 8
    chain, ref, (peak, _) = _run(opt_cls, {"foreach": False}, dtype, steps=8)
    # float32: AdamW's ops and a global-norm clip's (the squares, their sum over the 42
    # elements, the root, max_norm/norm (2), the product), 2 ulps each, every step
    ulps = ulp_budget(8, UPDATE_OPS["adamw"] + 5 + sum_ops(42))
    for a, b, top in zip(fused, chain, peak):
        _close(a, b, dtype, top.max(), ulps)
    assert_same_state(opt, fused, ref, chain, 1e-13, ulps=ulps)


def test_user_chain_kernel_leaves_the_gradients_alone():
    tx = fo.chain(fo.clip_by_global_norm(0.1), fo.scale_by_adam(), fo.scale_by_learning_rate(0.1))
    p = torch.randn(50, requires_grad=True)
    p.grad = torch.randn(50)
    before = p.grad.clone()
    foo.FunctionalOptimizer([p], tx).step()
    assert torch.equal(p.grad, before)


@pytest.mark.parametrize("make", [
    lambda: fo.chain(fo.scale_by_adam(eps_root=1e-8), fo.scale_by_learning_rate(0.01)),
    lambda: fo.chain(fo.scale_by_adam(),
                     fo.add_decayed_weights(0.1, mask=lambda p: {k: True for k in p}),
                     fo.scale_by_learning_rate(0.01)),
    lambda: fo.chain(fo.scale_by_adam(), fo.scale_by_learning_rate(0.01, flip_sign=False)),
    lambda: fo.chain(fo.scale_by_adam(), fo.trace(0.9), fo.scale_by_learning_rate(0.01)),
    lambda: fo.chain(fo.scale_by_adam(), fo.scale_by_learning_rate(0.01),
                     fo.scale_by_learning_rate(0.5)),
    lambda: fo.chain(fo.scale_by_adam(betas=(torch.tensor(0.9), 0.999)),
                     fo.scale_by_learning_rate(0.01)),
])
def test_user_chain_the_kernel_cannot_run_stays_the_chain(monkeypatch, make):
    spies = [_Spy(monkeypatch, k) for k in ("_fused_adam_", "_fused_adamw_")]
    opt_cls = functools.partial(foo.FunctionalOptimizer, transform=make)
    ours, *_ = _run(opt_cls, {}, torch.float64, steps=4)
    assert sum(s.calls for s in spies) == 0
    chain, *_ = _run(opt_cls, {"foreach": False}, torch.float64, steps=4)
    for a, b in zip(ours, chain):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- memory layouts: the kernels walk each tensor's memory linearly (functional_optim._fused.linear)

LAYOUT_CASES = [CASES[1], CASES[4], CASES[6], CASES[8]]


def _strided():
    """A parameter that is every other column of a larger tensor (and that tensor)."""
    big = torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return big, big[:, ::2].requires_grad_()


def _cl(x):
    return x.contiguous(memory_format=torch.channels_last)


def _layout_steps(opt, p, steps, grad_layout, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        p.grad = grad_layout(torch.randn(p.shape, generator=gen, dtype=p.dtype))
        opt.step()


@pytest.mark.parametrize("name,kwargs", LAYOUT_CASES)
def test_kernel_never_writes_outside_a_strided_parameter(monkeypatch, name, kwargs):
    """torch's kernels update the first ``numel`` elements of a parameter's storage: on a view
    ``big[:, ::2]`` that is the wrong half of the view and memory outside it. Such a
    parameter runs the chain, with torch's numbers, and ``big`` changes only under the view."""
    spy = _Spy(monkeypatch, KERNELS[name])
    results = []
    for cls, options in ((getattr(foo, name), {}), (getattr(torch.optim, name),
                                                    {"foreach": False})):
        big, p = _strided()
        _layout_steps(cls([p], **kwargs, **options), p, 3, lambda g: g)
        results.append((big, p.detach()))
    assert spy.calls == 0
    (big, p), (ref_big, ref_p) = results
    _close(p, ref_p, torch.float64)
    _close(big, ref_big, torch.float64)
    assert torch.equal(big[:, 1::2], _strided()[0][:, 1::2])  # outside the view: untouched


def _load_contiguous_checkpoint(opt, name, kwargs, p):
    """Into ``opt`` (over ``p``), the state of two contiguous torch steps: a checkpoint taken
    before ``model.to(memory_format=torch.channels_last)``."""
    q = p.detach().contiguous().requires_grad_()
    ref = getattr(torch.optim, name)([q], **kwargs)  # (its for-loop on the CPU)
    _layout_steps(ref, q, 2, lambda g: g, seed=2)
    opt.load_state_dict(ref.state_dict())
    with torch.no_grad():
        p.copy_(q)


LAYOUTS = {  # parameter layout, gradient layout, whether a kernel can take them
    "channels_last, contiguous grad": (_cl, lambda g: g.contiguous(), False),
    "contiguous, channels_last grad": (lambda x: x, _cl, False),
    "transposed, contiguous grad": (lambda x: x.flatten(1).t(), lambda g: g.contiguous(), False),
    "channels_last, contiguous checkpoint": (_cl, _cl, True),  # loaded in the param's layout
    "channels_last everywhere": (_cl, _cl, True),
    "transposed everywhere": (lambda x: x.flatten(1).t(),
                              lambda g: g.t().contiguous().t(), True),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name,kwargs", LAYOUT_CASES)
def test_kernel_runs_only_where_param_grad_and_state_share_a_dense_layout(monkeypatch, name,
                                                                          kwargs, layout):
    """Strides that differ between a parameter, its gradient and its state (a channels_last
    model with contiguous gradients) run the chain; the same dense layout everywhere runs the
    kernel (a contiguous checkpoint loads in the parameter's layout). Either way torch's
    for-loop trajectory."""
    param_layout, grad_layout, kernel = LAYOUTS[layout]
    spy = _Spy(monkeypatch, KERNELS[name])
    start = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p, q = (torch.nn.Parameter(param_layout(start.clone())) for _ in range(2))
    opt = getattr(foo, name)([p], **kwargs)
    ref = getattr(torch.optim, name)([q], **kwargs, foreach=False)
    if "checkpoint" in layout:
        _load_contiguous_checkpoint(opt, name, kwargs, p)
        _load_contiguous_checkpoint(ref, name, kwargs, q)
    _layout_steps(opt, p, 3, grad_layout)
    _layout_steps(ref, q, 3, grad_layout)
    assert spy.calls == (3 if kernel else 0)
    _close(p.detach(), q.detach(), torch.float64)
    for key, value in ref.state[q].items():
        _close(opt.state[p][key].to(value.dtype), value, torch.float64)
        if kernel and value.ndim:
            assert opt.state[p][key].stride() == p.stride()


def test_user_chain_kernel_checks_layouts_too(monkeypatch):
    spy = _Spy(monkeypatch, "_fused_adam_")
    tx = fo.chain(fo.scale_by_adam(), fo.scale_by_learning_rate(0.01))
    start = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    p, q = _cl(start.clone()).requires_grad_(), _cl(start.clone()).requires_grad_()
    _layout_steps(foo.FunctionalOptimizer([p], tx), p, 3, lambda g: g.contiguous())
    _layout_steps(torch.optim.Adam([q], lr=0.01, foreach=False), q, 3, lambda g: g.contiguous())
    assert spy.calls == 0
    _close(p.detach(), q.detach(), torch.float64)


@pytest.mark.parametrize("name,kwargs", LAYOUT_CASES)
def test_overlapping_parameter_raises_as_torch_does(name, kwargs):
    for cls in (getattr(foo, name), getattr(torch.optim, name)):
        p = torch.zeros(1, 3, dtype=torch.float64).expand(4, 3).requires_grad_()
        opt = cls([p], **kwargs)
        p.grad = torch.ones(4, 3, dtype=torch.float64)
        with pytest.raises(RuntimeError, match="single memory location"):
            opt.step()
