"""The speed benchmark's machinery on a tiny layout (its numbers are measured in ``benchmarks/``,
never asserted here): every eager implementation steps, failures are reported as results, and
the table is written. Keeps the GPU path's plumbing (``--device``) from rotting on CPU-only CI."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import bench_speed  # noqa: E402

SHAPES = [(64,)] * 3 + [(8, 16)]
EAGER = ("torch for-loop", "torch foreach", "torch fused", "ours default (eager)",
         "ours flat (eager)", "ours flat, grads replaced each step")


@pytest.mark.parametrize("algo", ["adamw", "sgd", "chain"])
def test_every_eager_implementation_steps_and_the_table_is_written(algo):
    makes = {k: v for k, v in bench_speed.implementations(algo, set()).items() if k in EAGER}
    makes["broken"] = lambda params: 1 / 0
    row = bench_speed.measure_row(makes, SHAPES, repeats=1)
    assert row["broken"] == {"error": "ZeroDivisionError: division by zero"}
    for name in EAGER:
        assert row[name]["ms"] > 0 and row[name]["first_s"] > 0 and row[name]["peak_mb"] >= 0
    results = {"machine": "m", "threads": 1, "device": "cpu", "caches": False, "peers": [],
               "runs": {f"{algo}/tiny": {"numel": 320, "bound_ms": 1e-3, "bandwidth_gbs": 1.0,
                                         "results": row}},
               "identity": [{"identities": 0, "eager_ms": 1.0, "compiled_ms": 1.0}]}
    table = bench_speed.markdown(results)
    assert f"## {algo}, tiny" in table and "| broken | failed: ZeroDivisionError" in table


def test_the_gpu_suite_adds_the_captured_update():
    assert "ours captured (CUDA graph)" in bench_speed.implementations("adamw", set(), "cuda")
    assert "ours captured (CUDA graph)" not in bench_speed.implementations("adamw", set())
    assert bench_speed.bandwidth_gbs(1 << 16, repeats=2) > 0


@pytest.mark.cuda
def test_the_gpu_suite_steps_on_the_gpu():
    makes = {k: v for k, v in bench_speed.implementations("chain", set(), "cuda").items()
             if k in EAGER or k == "ours captured (CUDA graph)"}
    row = bench_speed.measure_row(makes, SHAPES, repeats=1, device="cuda")
    assert all("ms" in r for r in row.values()), row
    assert bench_speed.bandwidth_gbs(1 << 20, repeats=2, device="cuda") > 0


def test_a_suite_run_in_parts_merges_into_one_table(tmp_path):
    row = {name: {"ms": ms, "first_s": 0.1, "peak_mb": 0.0} for name, ms in (
        ("torch fused", 2.0), ("ours flat (eager)", 1.0), ("ours default (eager)", 2.4))}
    base = {"machine": "m", "threads": 1, "device": "cuda", "caches": False, "peers": []}
    parts = []
    for algo, identity in (("adamw", None), ("chain", [{"identities": 0, "eager_ms": 1.0,
                                                         "compiled_ms": 0.5}])):
        path = tmp_path / f"{algo}.json"
        path.write_text(json.dumps({**base, "identity": identity, "bandwidth_gbs": {"L": 9.0},
                                    "runs": {f"{algo}/L": {"numel": 8, "bound_ms": 0.5,
                                                           "bandwidth_gbs": 9.0,
                                                           "results": row}}}))
        parts.append(str(path))
    merged = bench_speed.merge(parts)
    assert list(merged["runs"]) == ["adamw/L", "chain/L"]
    assert merged["identity"][0]["compiled_ms"] == 0.5
    table = bench_speed.markdown(merged)
    assert table.startswith("# Speed at the limit, CUDA")
    assert "| ours flat (eager) | 1.00 | 0.50x" in table
    assert "device-to-device copy bandwidth" in table
    # every target the figures bear on, with its verdict
    assert "| default / torch fused | adamw, L | 1.200 | 1.1 | missed by 9% |" in table
    assert "| best / torch fused | chain, L | 0.500 | 1 | met |" in table
    assert "| best / bound | chain, L | 2.000 | 1.05 | missed by 90% |" in table
    assert "default / torch fused | chain" not in table  # a chain is not a fused alias



@pytest.mark.parametrize("algo", ["SGD", "Rprop"])  # a fused step and a blocked one
def test_step_work_counts_are_deterministic(algo):
    """The same counts every time once the process has made the cached constants of the
    counted step's numbers (``_foreach.constant``: the first count in a process, as in a
    before/after comparison's subprocess per checkout, makes them)."""
    import step_work

    step_work.count(algo)
    first = step_work.count(algo)
    assert first["aten ops"] > 0 and first["python calls"] > 0
    assert step_work.count(algo) == first
