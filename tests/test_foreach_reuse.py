"""Memory reuse in the multi-tensor path (``functional_optim._foreach.TensorList``).

An op runs in place on its first operand only when nothing else can see that operand: a
temporary (by its reference count, calibrated at import on this interpreter) or donated state.
A named value must never change.
"""

from __future__ import annotations

import torch
from torch.profiler import profile

from functional_optim import _foreach
from functional_optim._foreach import TensorList


def _ops(fn) -> list[str]:
    with profile() as prof:
        fn()
    return [e.name for e in prof.events()]


def _lists():
    return TensorList([torch.ones(4), torch.full((2,), 2.0)])


def test_calibration_found_a_threshold():
    assert _foreach._TEMPORARY_REFS > 0


def test_temporaries_are_reused_in_place():
    x = _lists()
    ops = _ops(lambda: torch.sqrt((x * 2) * 3 + 1))
    assert ops.count("aten::_foreach_mul") == 1  # x * 2 allocates (x is named) ...
    assert "aten::_foreach_mul_" in ops and "aten::_foreach_add_" in ops  # ... the rest reuse it
    assert "aten::_foreach_sqrt_" in ops
    assert [t.tolist() for t in x.items] == [[1.0] * 4, [2.0] * 2]


def test_named_values_are_never_overwritten():
    x = _lists()
    y = x * 2
    z = y * 3 + y  # y is named: neither op may write into it
    w = torch.addcmul(y, y, y, value=0.5)
    assert [t.tolist() for t in y.items] == [[2.0] * 4, [4.0] * 2]
    assert [t.tolist() for t in z.items] == [[8.0] * 4, [16.0] * 2]
    assert [t.tolist() for t in w.items] == [[4.0] * 4, [12.0] * 2]


def test_fused_ops_match_per_tensor_ops():
    gen = torch.Generator().manual_seed(0)
    a, b, c = ([torch.randn(5, generator=gen) for _ in range(3)] for _ in range(3))
    for fn in (torch.addcmul, torch.addcdiv):
        out = fn(TensorList(a), TensorList(b), TensorList(c), value=0.3)
        for r, x, y, z in zip(out.items, a, b, c):
            torch.testing.assert_close(r, fn(x, y, z, value=0.3), rtol=0, atol=0)
    out = torch.abs(TensorList(a))
    for r, x in zip(out.items, a):
        assert torch.equal(r, x.abs())
