"""optax's bounds on updates (``transforms.bounding``) and numerics (``functional_optim.numerics``)
against their formulas written out plainly, following optax's definitions: float64 trajectories
of 20 steps on a few parameter shapes, non-default arguments too."""

from __future__ import annotations

import math

import pytest
import torch

import functional_optim as fo
from functional_optim import numerics

F64 = torch.float64
STEPS = 20
SHAPES = {"w": (4, 3), "conv": (2, 3, 2, 2), "b": (5,), "s": ()}


def _params(seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen, dtype=F64) * scale for k, s in SHAPES.items()}


def _grads(step):
    return _params(100 + step, scale=0.5 + 0.1 * step)


def _run(tx, params, steps=STEPS, **extra):
    """The updates of ``steps`` steps (each applied to the parameters)."""
    state, outs = tx.init(params), []
    for t in range(steps):
        u, state = tx.update(_grads(t), state, params, **extra)
        params = fo.apply_updates(params, u)
        outs.append(u)
    return outs


def _reference(rule, params, steps=STEPS):
    outs = []
    for t in range(steps):
        u = {k: rule(g, params[k]) for k, g in _grads(t).items()}
        params = {k: params[k] + u[k] for k in params}
        outs.append(u)
    return outs


def _assert_trajectories(ours, reference):
    for a, b in zip(ours, reference):
        for k in b:
            torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("threshold", [0.5, 2.0])
def test_clip_by_block_rms(threshold):
    def rule(g, p):
        return g / max(1.0, float(g.pow(2).mean().sqrt()) / threshold)

    _assert_trajectories(_run(fo.clip_by_block_rms(threshold), _params()),
                         _reference(rule, _params()))


def _optax_unit_dims(shape):
    """optax's unitwise_norm for JAX layouts."""
    if sum(s != 1 for s in shape) <= 1:
        return None
    return {2: (0,), 3: (0,), 4: (0, 1, 2), 5: (0, 1, 2, 3)}[len(shape)]


def _torch_unit_dims(shape):
    return None if len(shape) <= 1 else tuple(range(1, len(shape)))


def _unit_norm(x, dims):
    return x.pow(2).sum().sqrt() if dims is None else x.pow(2).sum(dims, keepdim=True).sqrt()


@pytest.mark.parametrize("layout, dims_of", [("torch", _torch_unit_dims),
                                             ("jax", _optax_unit_dims)])
@pytest.mark.parametrize("clipping, eps, params_scale", [(0.3, 1e-3, 1.0), (0.05, 0.5, 0.01)])
def test_adaptive_grad_clip(layout, dims_of, clipping, eps, params_scale):
    def rule(g, p):
        dims = dims_of(tuple(g.shape))
        g_norm, p_norm = _unit_norm(g, dims), _unit_norm(p, dims)
        max_norm = clipping * torch.clamp(p_norm, min=eps)
        return torch.where(g_norm < max_norm, g, g * (max_norm / torch.clamp(g_norm, min=1e-6)))

    params = _params(scale=params_scale)
    _assert_trajectories(_run(fo.adaptive_grad_clip(clipping, eps, layout=layout), params),
                         _reference(rule, params))


def test_adaptive_grad_clip_axis_and_unitwise_norm():
    x = torch.randn(2, 1, 3, 2, 2, 4, dtype=F64)
    with pytest.raises(ValueError, match="ranks 1 to 5: pass axis="):
        fo.transforms.unitwise_norm(x, layout="jax")
    torch.testing.assert_close(fo.transforms.unitwise_norm(x, axis=(0, 5)),
                               _unit_norm(x, (0, 5)).expand(x.shape))
    v = torch.randn(1, 5, 1, dtype=F64)  # one dimension above 1: one unit, as optax squeezes
    torch.testing.assert_close(fo.transforms.unitwise_norm(v, layout="jax"),
                               v.norm().expand(v.shape))
    g = {"w": torch.randn(4, 3, dtype=F64)}
    tx = fo.adaptive_grad_clip(0.1, axis=0)
    out, _ = tx.update(g, tx.init(g), {"w": torch.ones(4, 3, dtype=F64)})
    limit = 0.1 * 2.0  # every column of ones has norm 2
    norms = g["w"].norm(dim=0)
    expected = torch.where(norms < limit, g["w"], g["w"] * limit / norms)
    torch.testing.assert_close(out["w"], expected)
    with pytest.raises(fo.MissingParamsError, match="adaptive_grad_clip needs the parameters"):
        tx.update(g, tx.init(g))
    with pytest.raises(fo.HParamError, match="layout"):
        fo.adaptive_grad_clip(0.1, layout="tf")


def test_keep_params_nonnegative():
    params = fo.tree.map(torch.abs, _params())

    def rule(g, p):
        return torch.where(p + g < 0, -p, g)

    ours = _run(fo.keep_params_nonnegative(), params)
    _assert_trajectories(ours, _reference(rule, params))
    final = params
    for u in ours:
        final = fo.apply_updates(final, u)
    assert all((x >= 0).all() for x in final.values())


@pytest.mark.parametrize("clip_value", [0.0, 0.7, math.inf])
def test_per_example_clipping(clip_value):
    gen = torch.Generator().manual_seed(3)
    grads = {"w": torch.randn(6, 3, 2, generator=gen, dtype=F64),
             "b": [torch.randn(6, 4, generator=gen, dtype=F64), None]}
    grads["w"][2] = 0
    grads["b"][0][2] = 0  # a zero example: not scaled, not counted
    leaves = [grads["w"], grads["b"][0]]

    def clipped(xs, c):
        total = [torch.zeros_like(x[0]) for x in xs]
        count = 0
        for b in range(6):
            norm = math.sqrt(sum(float(x[b].pow(2).sum()) for x in xs))
            m = 1.0 if norm == 0 else min(1.0, c / norm)
            count += m < 1
            total = [t + m * x[b] for t, x in zip(total, xs)]
        return total, count

    total, count = fo.per_example_global_norm_clip(grads, clip_value)
    ref, ref_count = clipped(leaves, clip_value)
    torch.testing.assert_close(total["w"], ref[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(total["b"][0], ref[1], rtol=1e-12, atol=1e-14)
    assert total["b"][1] is None and int(count) == ref_count
    for uniform in (True, False):
        sums, counts = fo.per_example_layer_norm_clip(grads, clip_value, uniform=uniform)
        sizes = [6, 4]
        for i, x in enumerate(leaves):
            c = clip_value * (math.sqrt(1 / 2) if uniform else math.sqrt(sizes[i] / 10))
            (ref,), ref_count = clipped([x], c)
            got = sums["w"] if i == 0 else sums["b"][0]
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
            assert int(counts["w"] if i == 0 else counts["b"][0]) == ref_count
    with pytest.raises(ValueError, match="batch dimension first"):
        fo.per_example_global_norm_clip({"a": torch.ones(3), "b": torch.ones(4)}, 1.0)


def test_numerics():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=F64, requires_grad=True)
    norms = numerics.safe_norm(x, 1e-3, dim=1)
    torch.testing.assert_close(norms, torch.tensor([5.0, 1e-3], dtype=F64))
    (g,) = torch.autograd.grad(norms.sum(), x)
    torch.testing.assert_close(g, torch.tensor([[0.6, 0.8], [0.0, 0.0]], dtype=F64))
    assert numerics.safe_norm(x, 1e-3, dim=1, keepdim=True).shape == (2, 1)
    x = x.detach()
    assert float(numerics.safe_norm(x, 10.0)) == 10.0
    assert float(numerics.safe_norm(x, 1.0, ord=1)) == 4.0  # (2-D: the max column sum, as numpy)
    zero = torch.zeros(4, dtype=F64, requires_grad=True)
    rms = numerics.safe_root_mean_squares(zero, 0.1)
    (g,) = torch.autograd.grad(rms, zero)
    assert float(rms.detach()) == 0.1 and torch.equal(g, torch.zeros(4, dtype=F64))
    torch.testing.assert_close(numerics.safe_root_mean_squares(x, 0.1),
                               torch.tensor(2.5, dtype=F64))
    top = torch.tensor(torch.iinfo(torch.int32).max, dtype=torch.int32)
    assert numerics.safe_increment(top) == top and numerics.safe_increment(top - 1) == top
    assert numerics.safe_increment(torch.tensor(2.0)) == 3.0
    z = torch.tensor([1 + 2j, 3j], dtype=torch.complex128)
    torch.testing.assert_close(numerics.abs_sq(z), torch.tensor([5.0, 9.0], dtype=F64))
