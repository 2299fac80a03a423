"""The functional API benchmark's machinery on a tiny layout (its numbers are measured in
``benchmarks/``, never asserted here): every eager implementation of every algorithm steps, the
pure and donated steps move the parameters as torch does, and the tables are written."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import bench_functional  # noqa: E402
import bench_speed  # noqa: E402

SHAPES = [(64,)] * 3 + [(8, 16)]


@pytest.mark.parametrize("algo", list(bench_functional.ALGOS))
def test_every_eager_implementation_steps_and_the_table_is_written(algo, tmp_path):
    makes = bench_functional.implementations(algo, set(), compiled=False)
    row = bench_speed.measure_row(makes, SHAPES, repeats=1)
    for name in makes:
        assert row[name]["ms"] > 0, (name, row[name])
    results = {"machine": "m", "threads": 1, "note": "loaded", "peers": [],
               "runs": {f"{algo}/tiny": {"numel": 320, "bound_ms": 1e-3, "bandwidth_gbs": 1.0,
                                         "results": row}}}
    table = bench_functional.markdown(results)
    assert f"## {algo}, tiny" in table and "ours donated (eager) / torch fused" in table
    assert "loaded" in table


@pytest.mark.parametrize("algo", ["adamw", "rprop", "chain"])
def test_the_donated_step_follows_torch(algo):
    """The donated step of the benchmark moves the parameters (in place) as torch foreach
    does: the benchmark compares like with like."""
    out = []
    for make in (bench_functional._torch(algo, foreach=True), bench_functional._donated(algo)):
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_()
                  for s in SHAPES]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        step = make(params)
        for _ in range(3):
            step()
        out.append(params)
    rtol = 1e-6 if algo == "chain" else 1e-10  # (torch's clip divides by norm + 1e-6)
    for a, b in zip(*out):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=rtol, atol=1e-12)
