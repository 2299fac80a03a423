"""Every benchmark, with its results written under ``benchmarks/results/`` (``make bench``).

- ``bench_step.py``: the adapter vs torch.optim for every algorithm with a foreach
  implementation (1 thread); ``bench_alias_step.py``: the drop-in step of aliases torch.optim
  lacks (LAMB) vs the chain it runs otherwise, and a user chain's (clip, Adam) vs torch fused;
  ``step_work.py``: the work of each of those
  steps, counted (Python calls, aten ops: deterministic, for before/after comparisons on a
  loaded machine);
- ``bench_speed.py``: AdamW, SGD-momentum and a chain on every path, ours and the peers', with the
  bandwidth bound, first-step time, peak memory and identity-transform cost (1 and 2 threads),
  and its chart; on a machine with a CUDA GPU, the same suite on the GPU
  (``results/speed_cuda``);
- ``bench_functional.py``: the functional API (pure, donated and compiled steps of every alias
  torch has and a user chain) against torch and the peers (1 thread), and what a compiled
  functional train step allocates (``results/functional_*``); ``pure_floor.py``: the pure
  eager AdamW step against a hand-written out-of-place foreach AdamW
  (``results/pure_floor_cpu_1thread.md``); ``launches.py``: what one step of each of those
  rows launches (top-level aten ops; CUDA kernels on a GPU: ``results/launches_*.md``);
  ``compiled_overhead.py``: where a compiled functional step's time goes besides its kernel
  (``results/compiled_overhead_cpu_1thread.md``).

The peers (torchopt, heavyball, optax on JAX) are measured when ``benchmarks/.venv-peers`` exists
(``bash benchmarks/setup_peers.sh``); otherwise the tables leave them out. ``--speed-only`` skips
``bench_step.py``; ``--two-threads-only`` runs bench_speed with two threads only.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def run(python: str, script: str, *args: str) -> None:
    cmd = [python, os.path.join(HERE, script), *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    peers = os.path.join(HERE, ".venv-peers", "bin", "python")
    python = peers if os.path.exists(peers) else sys.executable
    if "--speed-only" not in sys.argv:
        run(sys.executable, "bench_step.py", "--threads", "1",
            "--out", os.path.join(RESULTS, "step_cpu_1thread.md"))
        run(sys.executable, "bench_alias_step.py",
            "--out", os.path.join(RESULTS, "step_aliases_cpu_1thread.md"))
        run(sys.executable, "bench_alias_step.py", "--algos", "chain",
            "--out", os.path.join(RESULTS, "step_user_chain_cpu_1thread.md"))
        run(sys.executable, "step_work.py", "--out", os.path.join(RESULTS, "step_work.md"))
    threads_list = (2,) if "--two-threads-only" in sys.argv else (1, 2)
    for threads in threads_list:  # cold compiles measured once, with one thread
        os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1" if threads == 1 else "0"
        out = os.path.join(RESULTS, f"speed_cpu_{threads}thread")
        run(python, "bench_speed.py", "--threads", str(threads), "--out", out)
        run(sys.executable, "plot_speed.py", out + ".json", out + ".png")
    if "--two-threads-only" not in sys.argv:
        out = os.path.join(RESULTS, "functional_cpu_1thread")
        run(python, "bench_functional.py", "--threads", "1", "--out", out)
        run(sys.executable, "bench_functional.py", "--train-step",
            "--out", os.path.join(RESULTS, "functional_train_step_cpu"))
        run(sys.executable, "pure_floor.py",
            "--out", os.path.join(RESULTS, "pure_floor_cpu_1thread.md"))
        run(sys.executable, "launches.py", "--out", os.path.join(RESULTS, "launches_cpu.md"))
        run(sys.executable, "compiled_overhead.py",
            "--out", os.path.join(RESULTS, "compiled_overhead_cpu_1thread.md"))
    if torch.cuda.is_available():
        out = os.path.join(RESULTS, "speed_cuda")
        run(python, "bench_speed.py", "--device", "cuda", "--out", out)
        run(sys.executable, "plot_speed.py", out + ".json", out + ".png")
        run(python, "bench_functional.py", "--device", "cuda", "--compiled", "",
            "--out", os.path.join(RESULTS, "functional_cuda"))
        run(sys.executable, "launches.py", "--device", "cuda",
            "--out", os.path.join(RESULTS, "launches_cuda.md"))


if __name__ == "__main__":
    main()
