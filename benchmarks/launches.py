"""What one optimizer step launches: the functional API's rows of ``bench_functional.py``
against torch's, counted in one profiled step after two warm ones.

On a GPU a step over hundreds of small tensors is bound by the host launching kernels (the
H200 run: every implementation 35x-1300x the bandwidth bound on 300 x 4096), so the number of
kernels a step launches explains its time there: ``--device cuda`` counts the CUDA kernels
(profiler device events). On the CPU it counts the top-level aten operations (each a dispatch,
and on a GPU at least one launch), which is what can be checked on a machine without one.

    python benchmarks/launches.py [--device cuda] [--algos adamw,rmsprop]
        [--layout "300 x 4096"] [--out results/launches_cuda.md]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_functional import implementations, layouts  # noqa: E402
from bench_speed import _params, _sync  # noqa: E402
from bench_step import machine  # noqa: E402


def counted(step, device: str) -> tuple[int, Counter]:
    """``(count, by name)`` of one step: CUDA kernels on a GPU, top-level aten ops on the CPU."""
    sync = _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    sync()
    with profile(activities=activities) as prof:
        step()
        sync()
    names: Counter = Counter()
    for e in prof.events():
        if device == "cuda":
            if e.device_type == torch.autograd.DeviceType.CUDA:
                names[e.name[:60]] += 1
        elif e.name.startswith("aten::") and (
                e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")):
            names[e.name] += 1
    return sum(names.values()), names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--algos", default="adamw,sgd,rmsprop,chain")
    parser.add_argument("--layout", default="300 x 4096")
    parser.add_argument("--out", default=None, help="a markdown file")
    args = parser.parse_args()
    shapes = layouts()[args.layout]
    what = "CUDA kernels" if args.device == "cuda" else "top-level aten ops"
    gpu = f"; {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    lines = [f"# {what} per step, {args.layout} ({len(shapes)} tensors)\n",
             f"Machine: {machine()}{gpu}.\n",
             "One profiled step after two warm ones; the three most frequent names.\n",
             "| algorithm | implementation | count | most frequent |", "|---|---|---|---|"]
    for algo in args.algos.split(","):
        for name, make in implementations(algo, set(), compiled=False).items():
            try:
                step = make(_params(shapes, args.device))
                step()
                step()
                count, names = counted(step, args.device)
            except Exception as e:  # noqa: BLE001 - a peer's failure is a result
                lines.append(f"| {algo} | {name} | failed: {type(e).__name__} | |")
                continue
            top = ", ".join(f"{n} {c}" for n, c in names.most_common(3))
            lines.append(f"| {algo} | {name} | {count} | {top} |")
            print(lines[-1], flush=True)
    if args.out:
        pathlib.Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
