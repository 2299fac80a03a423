"""Quantized optimizer state (issue 21 §2): the maps, the quantization error bound, trajectories
against plain formulas with the quantization simulated plainly here, the multi-tensor path,
the drop-in classes' state_dict round trip, and the errors."""

from __future__ import annotations

import io
import math

import pytest
import torch

import functional_optim as fo
import functional_optim.optim as foo
from functional_optim import tree as fo_tree
from functional_optim._execute import multi_tensor
from functional_optim.transforms import _stored
from functional_optim.transforms import quantized as q

# -- the maps, written out plainly -----------------------------------------------------------

def plain_dynamic_map(signed: bool, exponent_bits: int, total_bits: int) -> list[float]:
    """Dettmers' dynamic map as bitsandbytes' create_dynamic_map describes it: for each decimal
    exponent 10**(i + 1 - E), the midpoints of 2**(i + F - E) (signed; one more bit unsigned)
    equal steps over [0.1, 1], with their negatives when signed; then 0 and 1."""
    f = total_bits - 1
    values = [0.0, 1.0]
    for i in range(exponent_bits):
        count = 2 ** (i + f - exponent_bits + (0 if signed else 1))
        edges = [0.1 + 0.9 * k / count for k in range(count + 1)]
        for lo, hi in zip(edges, edges[1:]):
            m = 10.0 ** (i + 1 - exponent_bits) * (lo + hi) / 2
            values += [m, -m] if signed else [m]
    return sorted(values)


PLAIN_MAPS = {(8, True): plain_dynamic_map(True, 7, 8), (8, False): plain_dynamic_map(False, 7, 8),
              (4, True): plain_dynamic_map(True, 3, 4),
              (4, False): [k / 16 for k in range(1, 17)]}


@pytest.mark.parametrize("bits,signed", list(PLAIN_MAPS))
def test_maps(bits, signed):
    got = q.quantization_map(bits, signed)
    expected = torch.tensor(PLAIN_MAPS[bits, signed], dtype=torch.float32)
    assert got.dtype == torch.float32 and got.numel() == 2 ** bits
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=0)
    assert bool((got[1:] > got[:-1]).all()) and float(got[-1]) == 1.0
    assert (0.0 in got.tolist()) == (bits == 8 or signed)  # 4-bit unsigned: no zero
    assert (float(got[0]) < 0) == signed


@pytest.mark.parametrize("bits,signed", list(PLAIN_MAPS))
def test_each_float_bucket_holds_at_most_one_midpoint(bits, signed):
    """What the quantization's table lookup rests on (``_tables``): the floats that share their
    top 16 bits lie on one side of every midpoint between map values but at most one."""
    values = q.quantization_map(bits, signed)
    middles = (values[1:] + values[:-1]) / 2
    floors = q._bucket_floors("cpu")
    k = torch.arange(1 << 16, dtype=torch.int64)
    last = torch.where(k >= 1 << 15, k << 16, (k << 16) | 0xFFFF)
    ceilings = (last - (last >= 1 << 31).long() * (1 << 32)).int().view(torch.float32)
    real = ~torch.isnan(floors) & ~torch.isnan(ceilings)
    inside = torch.searchsorted(middles, ceilings, right=True) - torch.searchsorted(middles,
                                                                                   floors)
    assert int(inside[real].max()) == 1 and bool((floors[real] <= ceilings[real]).all())


def test_quantize_all_equals_one_by_one():
    xs = [torch.randn(5, 7), torch.randn(64), torch.randn(3, dtype=torch.float64)]
    together = q.quantize_all(xs, 8, 16, True)
    for x, t in zip(xs, together):
        alone = q.quantize(x, 8, 16, True)
        assert torch.equal(t.codes, alone.codes) and torch.equal(t.absmax, alone.absmax)
    for x, back in zip(xs, q.dequantize_all(together, xs, 8)):
        assert torch.equal(back, q.dequantize(q.quantize(x, 8, 16, True), x, 8))


def plain_quantize(x: torch.Tensor, qmap: list, block: int):
    """Codes (nearest map index, by brute force) and block maxima of ``x``, in float32."""
    flat = x.reshape(-1).float()
    n = flat.numel()
    blocks = math.ceil(n / block)
    flat = torch.cat([flat, flat.new_zeros(blocks * block - n)]).view(blocks, block)
    absmax = flat.abs().amax(1)
    table = torch.tensor(qmap, dtype=torch.float32)
    normalized = flat / torch.where(absmax > 0, absmax, 1.0)[:, None]
    index = (normalized[..., None] - table).abs().argmin(-1)
    return index, absmax


def plain_dequantize(index, absmax, qmap: list, like: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(qmap, dtype=torch.float32)
    return (table[index] * absmax[:, None]).reshape(-1)[:like.numel()].view(like.shape).to(
        like.dtype)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("signed", [True, False])
def test_error_within_the_maps_bound(bits, signed):
    """Each element comes back as the map value nearest to it in its block's scale: the error
    is at most half the gap between the two map values around it (times the block maximum),
    and equals the brute-force nearest code's."""
    g = torch.Generator().manual_seed(bits + signed)
    x = torch.randn(1000, generator=g, dtype=torch.float64) * torch.logspace(-6, 0, 1000,
                                                                              dtype=torch.float64)
    x = x if signed else x.abs()
    x[:64] = 0.0  # a block of zeros (block 64) comes back as zeros
    block = 64
    stored = q.quantize(x, bits, block, signed)
    assert stored.codes.dtype == (torch.int8 if signed else torch.uint8)
    assert stored.codes.numel() == 1024 * bits // 8 and stored.absmax.shape == (16,)
    back = q.dequantize(stored, x, bits)
    assert back.dtype == x.dtype and back.shape == x.shape
    qmap = PLAIN_MAPS[bits, signed]
    index, absmax = plain_quantize(x, qmap, block)
    torch.testing.assert_close(back, plain_dequantize(index, absmax, qmap, x), rtol=0, atol=0)
    assert bool((back[:64] == 0).all())
    table = torch.tensor(qmap, dtype=torch.float64)
    a = absmax.double().repeat_interleave(block)[:1000]
    v = x / torch.where(a > 0, a, 1.0)
    above = torch.searchsorted(table, v).clamp(max=len(qmap) - 1)
    below = (above - 1).clamp(min=0)
    half_gap = torch.where(v < table[0], table[0] - v,  # (below the map: its first value)
                           (table[above] - table[below]) / 2)
    # (+ float32 rounding of the normalized value and of the product)
    assert bool(((back - x).abs() <= (half_gap + 1e-6) * a).all())


# -- trajectories against plain formulas ----------------------------------------------------

def plain_quantized_adamw(params, grads, lr, betas, eps, wd, bits, block, min_size,
                          coupled=False):
    """AdamW (or Adam with coupled L2) written out, each moment stored as codes and block
    maxima (plain_quantize) after every step and read back (plain_dequantize)."""
    b1, b2 = betas
    out = {}
    for k, p in params.items():
        p = p.clone()
        quantized = p.ndim > 0 and p.numel() >= min_size
        m, v = torch.zeros_like(p), torch.zeros_like(p)
        for t, g in enumerate((gs[k] for gs in grads), start=1):
            if coupled:
                g = g + wd * p
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            step = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
            if not coupled:
                step = step + wd * p
            p = p - lr * step
            if quantized:
                m = plain_dequantize(*plain_quantize(m, PLAIN_MAPS[bits, True], block),
                                     PLAIN_MAPS[bits, True], m)
                v = plain_dequantize(*plain_quantize(v, PLAIN_MAPS[bits, False], block),
                                     PLAIN_MAPS[bits, False], v)
        out[k] = p
    return out


def _problem(steps=20):
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(12, 25, generator=g, dtype=torch.float64),
              "b": torch.randn(7, generator=g, dtype=torch.float64),
              "s": torch.randn((), generator=g, dtype=torch.float64)}
    grads = [{k: torch.randn(p.shape, generator=g, dtype=torch.float64) for k, p in
              params.items()} for _ in range(steps)]
    return params, grads


def _run(tx, params, grads):
    state = tx.init(params)
    for g in grads:
        u, state = tx.update(g, state, params)
        params = fo.apply_updates(params, u)
    return params, state


@pytest.mark.parametrize("name,bits,coupled", [("adamw_8bit", 8, False), ("adam_8bit", 8, True),
                                               ("adamw_4bit", 4, False)])
def test_trajectory_matches_the_plain_formula(name, bits, coupled):
    """20 float64 steps; ``b`` (7 elements) is under min_size=8 and keeps float moments."""
    params, grads = _problem()
    kw = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    tx = getattr(fo, name)(block_size=16, min_size=8, **kw)
    got, state = _run(tx, params, grads)
    assert isinstance(state["adam"].inner.mu["w"], fo.Quantized)
    assert isinstance(state["adam"].inner.nu["b"], torch.Tensor)
    expected = plain_quantized_adamw(params, grads, kw["lr"], kw["betas"], kw["eps"],
                                     kw["weight_decay"], bits, 16, 8, coupled)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-10, atol=1e-12)
    # and the quantization acts: unquantized AdamW moves elsewhere
    plain, _ = _run(getattr(fo, name.split("_")[0])(**kw), params, grads)
    assert not torch.allclose(plain["w"], got["w"], rtol=1e-6, atol=0)


def test_multi_tensor_chunks_equal_per_leaf(monkeypatch):
    """The eager multi-tensor path, in chunks of leaves (CHUNK made small: several chunks),
    gives the per-leaf path's numbers."""
    params, grads = _problem(5)
    params = {**params, "v": torch.randn(40, dtype=torch.float64)}
    grads = [{**g, "v": torch.randn(40, dtype=torch.float64)} for g in grads]
    tx = fo.adamw_8bit(lr=0.01, block_size=16, min_size=8)
    expected, _ = _run(tx, params, grads)
    monkeypatch.setattr(_stored, "CHUNK", 20)
    assert len(_stored._chunks(list(params.values()))) == 3
    with torch.no_grad(), multi_tensor():
        got, _ = _run(tx, params, grads)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


def test_updates_keep_the_parameters_dtype():
    params = {"w": torch.randn(64, dtype=torch.bfloat16)}
    tx = fo.adamw_4bit(lr=0.1, min_size=0, block_size=32)
    state = tx.init(params)
    u, state = tx.update({"w": torch.randn(64, dtype=torch.bfloat16)}, state, params)
    assert u["w"].dtype == torch.bfloat16 and bool(torch.isfinite(u["w"]).all())
    assert state["adam"].inner.mu["w"].absmax.dtype == torch.float32


# -- the drop-in classes -----------------------------------------------------------------------

@pytest.mark.parametrize("cls", ["AdamW8bit", "Adam8bit", "AdamW4bit"])
def test_state_dict_round_trip(cls):
    """The state_dict holds the codes and block maxima; saved (torch.save) after 3 steps and
    loaded into a new optimizer, the run continues bit for bit."""
    cls = getattr(foo, cls)
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 16)
    x = torch.randn(8, 32)

    def steps(opt, n):
        for _ in range(n):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()

    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = cls(model.parameters(), lr=0.01, min_size=64)
    steps(opt, 6)
    whole = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(start)
    opt = cls(model.parameters(), lr=0.01, min_size=64)
    steps(opt, 3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    mu = saved["state"][0]["adam"]["mu"]  # the weight: 512 elements, quantized
    assert set(mu) == {"codes", "absmax"} and mu["codes"].dtype == torch.int8
    assert saved["state"][0]["adam"]["nu"]["codes"].dtype == torch.uint8
    assert isinstance(saved["state"][1]["adam"]["mu"], torch.Tensor)  # the bias: 16, float
    resumed = cls(model.parameters(), lr=0.01, min_size=64)
    resumed.load_state_dict(saved)
    steps(resumed, 3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, whole[k]), k


def test_state_bytes_per_parameter():
    """Measured from the tensors: about 2 bytes per parameter in 8 bits, 1 in 4 bits, 8 in
    float32 (torch.optim.AdamW)."""
    def state_bytes(opt):
        return sum(t.nbytes for s in opt.state.values() for t in fo_tree.leaves(s)
                   if isinstance(t, torch.Tensor) and t.ndim > 0)

    per_param = {}
    for name in ("AdamW8bit", "AdamW4bit"):
        w = torch.nn.Parameter(torch.zeros(64, 256))
        opt = getattr(foo, name)([w])
        w.grad = torch.ones_like(w)
        opt.step()
        per_param[name] = state_bytes(opt) / w.numel()
    assert per_param["AdamW8bit"] == pytest.approx(2 + 2 * 4 / 256)
    assert per_param["AdamW4bit"] == pytest.approx(1 + 2 * 4 / 128)


# -- errors ----------------------------------------------------------------------------------

def test_errors():
    with pytest.raises(fo.HParamError, match="bits must be 8 or 4"):
        fo.quantized_state(fo.scale_by_adam(), bits=3)
    with pytest.raises(fo.HParamError, match="block_size must be an even int"):
        fo.adamw_8bit(block_size=7)
    params = {"w": torch.zeros(300)}
    float_state = fo.with_state_dtype(fo.scale_by_adam()).init(params)  # (the policy's, float)
    tx = fo.quantized_state(fo.scale_by_adam(), min_size=256)
    with pytest.raises(fo.TreeMismatchError, match=r"leaf 'w'.*field 'mu'.*tensor of shape "
                                                   r"\(300,\).*quantize_tree"):
        tx.update({"w": torch.ones(300)}, float_state)
    # the explicit conversion
    u, _ = tx.update({"w": torch.ones(300)}, fo.quantize_tree(float_state, min_size=256))
    assert u["w"].shape == (300,)


def test_drop_in_paths_agree_with_the_functional_alias():
    """The drop-in class's multi-tensor (default) and per-leaf (foreach=False) steps give the
    functional alias's numbers exactly; the flat layout refuses the per-block state clearly."""
    params, grads = _problem(4)
    make = dict(lr=0.01, min_size=8, block_size=16)
    expected, _ = _run(fo.adamw_4bit(**make), params, grads)
    for kw in ({}, {"foreach": False}):
        ps = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
        opt = foo.AdamW4bit(list(ps.values()), **make, **kw)
        for g in grads:
            for k, p in ps.items():
                p.grad = g[k].clone()
            opt.step()
        for k in expected:
            assert torch.equal(ps[k].detach(), expected[k]), (kw, k)
    ps = [torch.nn.Parameter(v.clone()) for v in params.values()]
    opt = foo.AdamW4bit(ps, **make).use_flat()
    for p, g in zip(ps, grads[0].values()):
        p.grad = g.clone()
    with pytest.raises(ValueError, match="flat layout needs elementwise state"):
        opt.step()


def test_donation_as_the_inner_rule_declares_it():
    """A rule that reads its old state twice (no ``donate_state``) keeps its dequantized state
    intact on the donating multi-tensor path (regression: the wrapper donated every quantized
    column, and the first in-place op consumed the state the rule read again)."""
    from functional_optim._execute import Pointwise, PointwiseCall
    from functional_optim.base import pointwise_transform

    def rule(h, g, m):
        halved = m * 0.5  # (in place on a donated state)
        return g + m, halved + g

    def prepare(updates, state, params, hparams):
        return PointwiseCall(rule, {}, (state,), finish=lambda new: new[0], state_like=(None,))

    tx = fo.quantized_state(pointwise_transform(fo_tree.zeros_like, {},
                                                Pointwise(prepare, "twice")), min_size=0)
    params = {"w": torch.zeros(64), "v": torch.zeros(32)}
    grads = {"w": torch.linspace(-1, 1, 64), "v": torch.linspace(0, 1, 32)}
    expected = tx.update(grads, tx.update(grads, tx.init(params))[1])[0]
    with torch.no_grad(), multi_tensor(donate=True):
        got = tx.update(grads, tx.update(grads, tx.init(params))[1])[0]
    for k in params:
        assert torch.equal(got[k], expected[k]), k


def test_a_float_checkpoint_is_refused_not_loaded_silently():
    w = torch.nn.Parameter(torch.randn(64, 128))
    plain = torch.optim.AdamW([w])
    w.grad = torch.randn_like(w)
    plain.step()
    with pytest.raises(ValueError, match=r"AdamW8bit.load_state_dict: state 'step'.*"
                                         r"'adam\.mu\.codes'.*nothing was loaded"):
        foo.AdamW8bit([w]).load_state_dict(plain.state_dict())
