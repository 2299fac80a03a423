"""What a compiled functional step pays per call besides its kernel, CPU (issue 18 §2).

``torch.compile(fullgraph=True)`` of ``fo.step(tx, grads, state, params, donate=True)`` (the
benchmark's "ours compiled (donated)" row) on many leaves, against torch.optim's fused and
foreach steps, in interleaved rounds: as it compiles by default, and with inductor's size and
stride asserts off (``options={"size_asserts": False}``, a per-call check of every input).
Then one compiled call profiled (``cProfile``): the kernel, the asserts, the wrapper's 0-d
buffers, dynamo's entry.

    python benchmarks/compiled_overhead.py --leaves 300 --out \
        benchmarks/results/compiled_overhead_cpu_1thread.md
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import statistics
import sys
import time

import torch

import functional_optim as fo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_step import machine  # noqa: E402

ALGOS = {"sgd": (lambda: fo.sgd(lr=1e-3, momentum=0.9), "SGD", dict(lr=1e-3, momentum=0.9)),
         "adamw": (lambda: fo.adamw(lr=1e-3, weight_decay=1e-2), "AdamW",
                   dict(lr=1e-3, weight_decay=1e-2))}
OPTIONS = {"ours compiled (donated)": None,
           "ours compiled (donated), size asserts off": {"size_asserts": False}}


def _ours(make, tensors, options) -> tuple:
    tx = make()
    params = {str(i): p.detach().clone() for i, p in enumerate(tensors)}
    grads = {str(i): p.grad for i, p in enumerate(tensors)}
    box = [params, tx.init(params)]
    run = torch.compile(lambda p, s, g: fo.step(tx, g, s, p, donate=True), fullgraph=True,
                        options=options)
    start = time.perf_counter()
    box[0], box[1] = run(box[0], box[1], grads)
    compiled = time.perf_counter() - start

    def step():
        box[0], box[1] = run(box[0], box[1], grads)
    return step, compiled


def _torch(name, kw, tensors, **flags):
    copies = [p.detach().clone() for p in tensors]
    for c, p in zip(copies, tensors):
        c.grad = p.grad
    return getattr(torch.optim, name)(copies, **kw, **flags).step


def _profile(step) -> list[str]:
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(100):
        step()
    profile.disable()
    stats = pstats.Stats(profile).stats
    rows = sorted(((tt / 100 * 1e6, calls / 100, f"{func[2]} ({os.path.basename(func[0])})")
                   for func, (calls, _, tt, _, _) in stats.items()), reverse=True)[:6]
    return [f"| {where} | {calls:.0f} | {us:.1f} |" for us, calls, where in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leaves", type=int, default=300)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--algos", default="sgd,adamw")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = ["# The compiled functional step's cost per call, CPU\n",
             f"Machine: {machine()}.  ",
             f"{args.leaves} leaves of {args.size} float32 each; median of {args.rounds} "
             "interleaved rounds (`benchmarks/compiled_overhead.py`).\n"]
    for algo in args.algos.split(","):
        make, name, kw = ALGOS[algo]
        torch.manual_seed(0)
        tensors = [torch.randn(args.size) for _ in range(args.leaves)]
        for t in tensors:
            t.grad = torch.randn_like(t)
        steps, first = {}, {}
        for label, options in OPTIONS.items():
            steps[label], first[label] = _ours(make, tensors, options)
        steps["torch fused"] = _torch(name, kw, tensors, fused=True)
        steps["torch foreach"] = _torch(name, kw, tensors, foreach=True)
        for step in steps.values():
            for _ in range(3):
                step()
        times: dict = {k: [] for k in steps}
        for _ in range(args.rounds):
            order = list(steps)
            random.shuffle(order)
            for k in order:
                start = time.perf_counter()
                steps[k]()
                times[k].append(time.perf_counter() - start)
        fused = statistics.median(times["torch fused"])
        lines += [f"\n## {name}\n", "| implementation | ms | / torch fused | first call (s) |",
                  "|---|---|---|---|"]
        for k, ts in times.items():
            m = statistics.median(ts)
            lines.append(f"| {k} | {m * 1e3:.3f} | {m / fused:.2f}x | "
                         + (f"{first[k]:.0f} |" if k in first else "- |"))
        lines += ["", "One compiled call (default options), profiled: where its time goes "
                  "(µs per call, under cProfile, which inflates Python calls):\n",
                  "| function | calls per call | µs |", "|---|---|---|",
                  *_profile(steps["ours compiled (donated)"])]
        print("\n".join(lines[-12:]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
