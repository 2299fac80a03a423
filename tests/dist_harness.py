"""The harness of the distributed tests: launching ranks, and comparing their results.

A test launches fresh worker processes of its own file (``python tests/test_x.py SCENARIO
OUTDIR``, whose ``__main__`` calls :func:`worker_main`) on CPU with the gloo backend on 127.0.0.1
and a free port picked at run time. Every launch is bounded: a rank that fails makes the others
be killed at once, and the whole launch is killed after ``timeout_s`` seconds (the process
group's own timeout is shorter still), so a broken collective can never hang CI. The workers
write their results with ``torch.save``; the assertions run in the test process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from torch import nn

TIMEOUT_S = 120  # one launch (all its ranks), start to finish, unless a test says otherwise
PG_TIMEOUT_S = 60  # a collective waiting longer than this raises in the worker
RTOL = 1e-10


# -- in the workers --------------------------------------------------------------------------


def init(world: int) -> int:
    """Join the launch's gloo process group (of ``world`` ranks); return this rank."""
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=timedelta(seconds=PG_TIMEOUT_S))
    assert dist.get_world_size() == world
    return dist.get_rank()


def worker_main(workers: dict[str, Callable[[Path], dict]], argv: list[str]) -> None:
    """Run the scenario ``argv[1]`` (one of ``workers``) and save this rank's results under
    ``argv[2]``."""
    import torch.distributed as dist

    scenario, outdir = argv[1], Path(argv[2])
    torch.set_num_threads(1)
    out = workers[scenario](outdir)
    rank = dist.get_rank()
    torch.save(out, outdir / f"{scenario}.rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def full_value(x: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (a plain tensor unchanged)."""
    return x.full_tensor() if hasattr(x, "full_tensor") else x


def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: full_value(v.detach()).clone() for k, v in model.state_dict().items()}


def comm_counts(comm) -> dict[str, int]:
    """A ``CommDebugMode``'s collectives by name."""
    return {str(k): v for k, v in comm.get_comm_counts().items()}


def tensor_leaves(tree):
    """The tensors of nested dicts."""
    if isinstance(tree, dict):
        for v in tree.values():
            yield from tensor_leaves(v)
    elif isinstance(tree, torch.Tensor):
        yield tree


# -- the launcher ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: str, scenario: str, outdir: Path, world: int,
           timeout_s: float = TIMEOUT_S) -> list[dict]:
    """Run ``scenario`` of the test file ``script`` on ``world`` fresh processes
    (``python SCRIPT SCENARIO OUTDIR``, which calls :func:`worker_main`); return each rank's
    results.

    Fails (never hangs) when a rank fails, with every rank's output in the message. A launch
    whose free port was taken in the meantime is retried once on another port.
    """
    for _attempt in (1, 2):
        codes, logs, timed_out = _run_ranks(script, scenario, outdir, world, timeout_s)
        texts = [log.read_text() for log in logs]
        port_taken = any("address already in use" in t.lower() or "EADDRINUSE" in t
                         for t in texts)
        if codes == [0] * world or not port_taken:
            break
    if codes != [0] * world:
        tails = "\n".join(f"--- rank {r} (exit {c}) ---\n{texts[r][-4000:]}"
                          for r, c in enumerate(codes))
        pytest.fail(f"distributed scenario {scenario!r} failed"
                    f"{f' (killed after {timeout_s} s)' if timed_out else ''}:\n{tails}",
                    pytrace=False)
    return [torch.load(outdir / f"{scenario}.rank{r}.pt", weights_only=False)
            for r in range(world)]


def _run_ranks(script: str, scenario: str, outdir: Path, world: int,
               timeout_s: float) -> tuple[list, list[Path], bool]:
    """Start the ranks; stop them all at the first failure or at the deadline."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               WORLD_SIZE=str(world), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(root),
                                                        os.environ.get("PYTHONPATH")])))
    if sys.platform.startswith("linux") and Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    logs = [outdir / f"{scenario}.rank{r}.log" for r in range(world)]
    procs: list[subprocess.Popen] = []
    deadline = time.monotonic() + timeout_s
    timed_out = False
    try:
        for r in range(world):
            with open(logs[r], "w") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, script, scenario, str(outdir)],
                    env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                    stdout=log, stderr=subprocess.STDOUT, cwd=root))
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return [p.returncode for p in procs], logs, timed_out


# -- checks ---------------------------------------------------------------------------------


def max_rel(a: dict, b: dict) -> float:
    """``max over leaves of max|a-b| / max|b|`` (``max|a-b|`` where ``b`` is zero; empty
    leaves count as equal when both are empty)."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    errors = [0.0]
    for k in b:
        assert a[k].shape == b[k].shape, (k, a[k].shape, b[k].shape)
        if b[k].numel():
            scale = b[k].abs().max().clamp(min=torch.finfo(torch.float64).tiny)
            errors.append(((a[k] - b[k]).abs().max() / scale).item())
    return max(errors)


class Checks:
    """Collects comparisons, reports every failure at once and the worst error of each kind."""

    def __init__(self):
        self.failures: list[str] = []
        self.worst: dict[str, float] = {}

    def close(self, what: str, kind: str, a: dict, b: dict, rtol: float = RTOL) -> None:
        err = max_rel(a, b)
        self.worst[kind] = max(self.worst.get(kind, 0.0), err)
        if not err <= rtol:
            self.failures.append(f"{what}: max rel diff {err:.3e} > {rtol:.0e}")

    def true(self, ok: bool, message: str) -> None:
        if not ok:
            self.failures.append(message)

    def ran(self, what: str, *results: dict) -> bool:
        """Whether every one of ``results`` ran (a worker records ``{"error": message}`` for a
        case that raised); records the failures."""
        errors = [r["error"] for r in results if "error" in r]
        for error in errors:
            self.failures.append(f"{what}: {error}")
        return not errors

    def done(self) -> None:
        print("max relative differences: " + ", ".join(
            f"{k}: {v:.2e}" for k, v in self.worst.items()))
        assert not self.failures, "\n".join(self.failures)


def check_same_on_ranks(checks: Checks, results: list[dict]) -> None:
    """Every rank ends with rank 0's parameters, bit for bit."""
    for key, value in results[0].items():
        if isinstance(value, dict) and "final" in value:
            for rank in range(1, len(results)):
                checks.close(f"{key}: rank {rank} vs rank 0", "ranks agree",
                             results[rank][key]["final"], value["final"], rtol=0.0)
