"""The adapter's flat layout (``opt.use_flat()``, ``functional_optim.optim._flat``).

Each group keeps parameters, gradients and state in one buffer per (device, dtype); the
transform runs once per buffer. Checked: the same numbers as the usual layout (exactly for the
chain, to rounding order for a fused kernel, to float32 rounding compiled), ``state_dict`` in the
usual per-parameter format and loading both ways (torch → flat → torch), the fallback for a step
where some parameters have no gradient, replaced ``p.data``, and the clear errors for transforms
whose state is not elementwise.
"""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
from tolerance import UPDATE_OPS, assert_close_ulps, ulp_budget

import functional_optim as fo
import functional_optim.optim as foo

SHAPES = [(6, 3), (5,), (2, 2, 2), (1,)]
ALGOS = [("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)), ("Adam", dict(lr=0.01)),
         ("AdamW", dict(lr=0.01, amsgrad=True)), ("Adagrad", dict(lr=0.1)),
         ("RMSprop", dict(lr=0.01, centered=True, momentum=0.5)), ("Adadelta", dict()),
         ("Adamax", dict(lr=0.01)), ("NAdam", dict(lr=0.01)), ("RAdam", dict(lr=0.01)),
         ("ASGD", dict(lr=0.01)), ("Rprop", dict(lr=0.01))]


def _params(dtype=torch.float64, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def _grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]


def _train(opt, params, steps, start=0, set_to_none=True, skip=()):
    for i in range(start, start + steps):
        opt.zero_grad(set_to_none=set_to_none)
        for k, (p, g) in enumerate(zip(params, _grads(params, i))):
            if (i, k) in skip:
                p.grad = None
            elif p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)
        opt.step()


def _close(a, b, exact, tol=1e-12):
    if exact:
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("name,kwargs", ALGOS)
def test_flat_gives_the_usual_numbers_and_state_dict(name, kwargs, set_to_none):
    cls = getattr(foo, name)
    usual, flat = _params(), _params()
    opt_u = cls(usual, foreach=None, **kwargs)
    opt_f = cls(flat, **kwargs).use_flat()
    _train(opt_u, usual, 7)
    _train(opt_f, flat, 7, set_to_none=set_to_none)
    exact = cls.__name__ not in ("SGD", "Adam", "AdamW", "Adagrad")  # else both fused kernels
    for a, b in zip(flat, usual):
        _close(a, b, exact)
    sd_f, sd_u = opt_f.state_dict(), opt_u.state_dict()
    assert sd_f["param_groups"] == sd_u["param_groups"]
    for k in sd_u["state"]:
        assert sd_f["state"][k].keys() == sd_u["state"][k].keys()
        for key, value in sd_u["state"][k].items():
            got = sd_f["state"][k][key]
            assert got.shape == value.shape and got.dtype == value.dtype
            _close(got, value, exact)


@pytest.mark.parametrize("name,kwargs", ALGOS[:3] + ALGOS[4:5] + ALGOS[9:10])
def test_torch_checkpoint_into_flat_and_back(name, kwargs):
    """Both ways, and torch continues on its trajectory from the flat layout's checkpoint
    (whose 0-d state is one tensor per parameter: torch updates each in place)."""
    torch_params, ours_params = _params(), _params()
    ref = getattr(torch.optim, name)(torch_params, **kwargs)
    _train(ref, torch_params, 4)
    with torch.no_grad():
        for p, q in zip(ours_params, torch_params):
            p.copy_(q)
    opt = getattr(foo, name)(ours_params, **kwargs).use_flat()
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    _train(opt, ours_params, 4, start=4)
    _train(ref, torch_params, 4, start=4)
    for a, b in zip(ours_params, torch_params):
        _close(a, b, False, 1e-10)
    back_params = [p.detach().clone().requires_grad_() for p in ours_params]
    back = getattr(torch.optim, name)(back_params, **kwargs)
    back.load_state_dict(opt.state_dict())
    for k, state in ref.state_dict()["state"].items():
        for key, value in state.items():
            _close(back.state_dict()["state"][k][key].to(value.dtype), value, False, 1e-10)
    _train(back, back_params, 3, start=8)
    _train(ref, torch_params, 3, start=8)
    for a, b in zip(back_params, torch_params):
        _close(a, b, False, 1e-10)


def test_state_tensors_are_views_of_one_buffer_and_params_live_in_it():
    params = _params()
    opt = foo.Adam(params, lr=0.01, foreach=True).use_flat()
    _train(opt, params, 2)
    exp_avgs = [opt.state[p]["exp_avg"] for p in params]
    storage = exp_avgs[0].untyped_storage().data_ptr()
    assert all(x.untyped_storage().data_ptr() == storage for x in exp_avgs)
    assert len({p.untyped_storage().data_ptr() for p in params}) == 1
    assert len({p.grad.untyped_storage().data_ptr() for p in params}) == 1


def test_a_step_with_missing_grads_skips_them_like_torch():
    """That step takes the usual layout; the counts then differ, so the group stays there (with
    a warning) and keeps torch's numbers."""
    skip = {(2, 1), (3, 1), (3, 3), (5, 0)}
    ours, theirs = _params(), _params()
    opt = foo.RMSprop(ours, lr=0.01).use_flat()
    ref = torch.optim.RMSprop(theirs, lr=0.01)
    with pytest.warns(RuntimeWarning, match="param group 0 keeps the usual layout"):
        _train(opt, ours, 8, skip=skip)
    _train(ref, theirs, 8, skip=skip)
    for a, b in zip(ours, theirs):
        _close(a, b, False, 1e-12)


def test_a_pause_for_every_parameter_keeps_the_flat_layout():
    skip = {(2, k) for k in range(len(SHAPES))}  # nobody has a gradient: the step does nothing
    ours, theirs = _params(), _params()
    opt = foo.NAdam(ours, lr=0.01).use_flat()
    _train(opt, ours, 5, skip=skip)
    _train(torch.optim.NAdam(theirs, lr=0.01), theirs, 5, skip=skip)
    assert opt._cache[("flat", id(opt.param_groups[0]))]
    for a, b in zip(ours, theirs):
        _close(a, b, False, 1e-12)


def test_replaced_param_data_is_regathered():
    params = _params()
    opt = foo.SGD(params, lr=0.1).use_flat()
    _train(opt, params, 1)
    params[0].data = torch.zeros_like(params[0])
    _train(opt, params, 1, start=1)
    expected = -0.1 * _grads(params, 1)[0]
    torch.testing.assert_close(params[0].detach(), expected)


def test_params_option_keeps_the_parameters_in_place():
    params = _params()
    ptrs = [p.data_ptr() for p in params]
    usual = _params()
    opt = foo.NAdam(params, lr=0.01).use_flat(params=False)
    _train(opt, params, 3)
    _train(foo.NAdam(usual, lr=0.01), usual, 3)
    assert [p.data_ptr() for p in params] == ptrs
    for a, b in zip(params, usual):  # the usual step folds lr into the update: rounding order
        _close(a, b, False, 1e-14)


def test_mixed_dtypes_make_one_buffer_each():
    params = _params(torch.float32)[:2] + _params(torch.float64)[2:]
    usual = _params(torch.float32)[:2] + _params(torch.float64)[2:]
    opt = foo.RAdam(params, lr=0.01).use_flat()
    _train(opt, params, 3)
    _train(foo.RAdam(usual, lr=0.01), usual, 3)
    for a, b in zip(params, usual):
        _close(a, b, True)
    assert len(opt._cache[("flat", id(opt.param_groups[0]))].segments) == 2


def test_generic_chain_with_global_clipping():
    tx = functools.partial(fo.chain, fo.clip_by_global_norm(0.5), fo.scale_by_adam(),
                           fo.scale_by_learning_rate(0.01))
    flat, usual = _params(), _params()
    opt = foo.FunctionalOptimizer(flat, tx).use_flat()
    _train(opt, flat, 4)
    _train(foo.FunctionalOptimizer(usual, tx), usual, 4)
    for a, b in zip(flat, usual):  # the global norm sums in another order
        _close(a, b, False, 1e-13)


@pytest.mark.parametrize("tx,match", [
    (functools.partial(fo.adafactor, lr=0.01), "elementwise"),
])
def test_non_elementwise_state_is_a_clear_error(tx, match):
    params = _params(shapes=[(4, 3), (3, 5)])
    opt = foo.FunctionalOptimizer(params, tx).use_flat()
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=match):
        opt.step()


def test_loaded_steps_that_differ_keep_the_usual_layout():
    params, theirs = _params(), _params()
    ref = torch.optim.Adam(theirs, lr=0.01)
    _train(ref, theirs, 3, skip={(0, 1)})
    with torch.no_grad():
        for p, q in zip(params, theirs):
            p.copy_(q)
    opt = foo.Adam(params, lr=0.01).use_flat()
    opt.load_state_dict(ref.state_dict())
    with pytest.warns(RuntimeWarning, match="'adam.step' differs"):
        _train(opt, params, 2, start=3)
    _train(ref, theirs, 2, start=3)
    for a, b in zip(params, theirs):
        _close(a, b, False, 1e-12)


def test_compiled_flat_step_matches_and_does_not_recompile():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    flat, usual = _params(torch.float32), _params(torch.float32)
    opt = foo.AdamW(flat, lr=0.01, foreach=True).use_flat(compile=True)
    ref = foo.AdamW(usual, lr=0.01, foreach=False)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.9)
    sched_ref = torch.optim.lr_scheduler.ExponentialLR(ref, 0.9)
    peak = [p.abs().max().item() for p in usual]
    for i in range(5):
        _train(opt, flat, 1, start=i)
        _train(ref, usual, 1, start=i)
        sched.step()
        sched_ref.step()
        peak = [max(top, p.abs().max().item()) for top, p in zip(peak, usual)]
    # the compiled kernel orders (and fuses) AdamW's ops its own way: 2 ulps per op, every step
    for a, b, top in zip(flat, usual, peak):
        assert_close_ulps(a, b, ulps=ulp_budget(5, UPDATE_OPS["adamw"]), scale=top)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_copies_keep_the_flat_layout_and_continue_identically():
    params = _params()
    opt = foo.Adamax(params, lr=0.01).use_flat()
    _train(opt, params, 2)
    clone = copy.deepcopy(opt)
    clone_params = clone.param_groups[0]["params"]
    assert clone._flat == opt._flat
    _train(opt, params, 2, start=2)
    _train(clone, clone_params, 2, start=2)
    for a, b in zip(params, clone_params):
        _close(a, b, True)


def test_many_compiled_optimizers_do_not_share_a_recompile_budget():
    """Each flat group compiles its own graph: more optimizers than dynamo's recompile limit (8)
    in one process must all work with fullgraph=True."""
    for i in range(10):
        params = _params(torch.float32, seed=i, shapes=[(3 + i,), (2, 2)])
        opt = foo.SGD(params, lr=0.1, momentum=0.9).use_flat(compile=True)
        before = [p.detach().clone() for p in params]
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        for p, b in zip(params, before):
            # p - lr * 1: lr's rounding and the subtraction, 2 ulps each, at the larger of the
            # parameter before and after
            assert_close_ulps(p, b - 0.1, ulps=ulp_budget(1, 2),
                              scale=torch.maximum(b.abs(), (b - 0.1).abs()))


@pytest.mark.parametrize("kwargs,match", [(dict(params=1), "params must be True or False"),
                                          (dict(compile="inductor"), "compile must be")])
def test_use_flat_rejects_non_boolean_options(kwargs, match):
    with pytest.raises(TypeError, match=match):
        foo.SGD(_params(), lr=0.1).use_flat(**kwargs)


def _layouts(seed=0):
    """A channels_last weight, a transposed matrix, every other column of ``big``, a vector;
    and ``big``."""
    gen = torch.Generator().manual_seed(seed)
    conv = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    big = torch.randn(6, 8, generator=gen, dtype=torch.float64)
    params = [conv.contiguous(memory_format=torch.channels_last),
              torch.randn(3, 5, generator=gen, dtype=torch.float64).t(), big[:, ::2],
              torch.randn(5, generator=gen, dtype=torch.float64)]
    return [p.requires_grad_() for p in params], big


@pytest.mark.parametrize("rehome", [True, False])
@pytest.mark.parametrize("name,kwargs", ALGOS[:2] + ALGOS[3:5])
def test_flat_layout_keeps_each_parameters_memory_and_torchs_numbers(name, kwargs, rehome):
    """Channels_last and transposed parameters keep their strides (their gradient and state
    pieces take them too), a strided view keeps writing into the tensor it views, and the
    steps where a parameter has no gradient (the usual layout, contiguous gradients) give
    torch's numbers."""
    (ours, big), (theirs, ref_big) = _layouts(), _layouts()
    strides = [p.stride() for p in ours]
    opt = getattr(foo, name)(ours, **kwargs).use_flat(params=rehome)
    ref = getattr(torch.optim, name)(theirs, **kwargs, foreach=False)
    skip = {(2, 3), (4, 3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (counts that differ: usual layout)
        _train(opt, ours, 6, skip=skip)
    _train(ref, theirs, 6, skip=skip)
    assert [p.stride() for p in ours] == strides
    assert ours[2]._base is big
    for a, b in zip(ours + [big], theirs + [ref_big]):
        _close(a.detach(), b.detach(), False)
    for p, q in zip(ours, theirs):
        for key, value in ref.state[q].items():
            _close(opt.state[p][key].to(value.dtype), value, False)


def test_dense_parameters_move_into_the_buffer_with_their_strides():
    params, _ = _layouts()
    dense = [params[0], params[1], params[3]]
    strides = [p.stride() for p in dense]
    opt = foo.Adam(dense, lr=0.01).use_flat()
    _train(opt, dense, 2)
    assert len({p.untyped_storage().data_ptr() for p in dense}) == 1
    assert [p.stride() for p in dense] == strides
    assert [opt.state[p]["exp_avg"].stride() for p in dense] == strides
    assert [p.grad.stride() for p in dense] == strides
