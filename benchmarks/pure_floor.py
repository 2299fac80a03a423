"""How close the functional API's pure eager AdamW step is to the fastest any pure eager step
can be: against a hand-written sequence of out-of-place foreach ops (the *floor*: new moments,
a new update, new parameters, one foreach call per op and no Python around them), torch
foreach (in place) and torch fused, in interleaved rounds (``bench_speed.measure_row``).

    python benchmarks/pure_floor.py [--repeats 7] [--out results/pure_floor_cpu_1thread.md]

The floor makes the passes over memory that "nothing mutated" implies, so the gap between it
and torch foreach is the price of purity in eager mode; the gap between ours and the floor is
the library's own Python (checks, grouping, the rules' dispatch).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_functional import ALGOS, LR, WD, _pure, _torch, layouts  # noqa: E402
from bench_speed import measure_row  # noqa: E402
from bench_step import machine, numel  # noqa: E402


def floor(params: list) -> Callable:
    """AdamW (torch's defaults, ``lr`` and ``weight_decay`` as the suite's) as out-of-place
    foreach ops: the state and the parameters are replaced every step, never written."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    box = {"p": [p.detach() for p in params], "g": [p.grad for p in params], "t": 0,
           "m": [torch.zeros_like(p) for p in params], "v": [torch.zeros_like(p) for p in params]}

    def step():
        box["t"] += 1
        t, p, g = box["t"], box["p"], box["g"]
        m = torch._foreach_lerp(box["m"], g, 1 - b1)
        v = torch._foreach_mul(box["v"], b2)
        torch._foreach_addcmul_(v, g, g, value=1 - b2)
        d = torch._foreach_sqrt(v)
        torch._foreach_div_(d, math.sqrt(1 - b2 ** t))
        torch._foreach_add_(d, eps)
        u = torch._foreach_div(m, d)
        torch._foreach_mul_(u, -LR / (1 - b1 ** t))
        torch._foreach_add_(u, p, alpha=-LR * WD)
        box.update(p=torch._foreach_add(p, u), m=m, v=v)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    assert ALGOS["adamw"][1] == dict(lr=LR, weight_decay=WD)
    makes = {"ours pure (eager)": _pure("adamw"), "floor: pure foreach, hand-written": floor,
             "torch foreach": _torch("adamw", foreach=True),
             "torch fused": _torch("adamw", fused=True)}
    lines = ["# The pure eager AdamW step against its floor, CPU, 1 thread", "",
             f"Machine: {machine()}.", "",
             "Median step time (ms) over interleaved rounds; ratios to torch foreach. The "
             "floor is AdamW written as out-of-place foreach ops with nothing around them "
             "(benchmarks/pure_floor.py).", "",
             "| layout | " + " | ".join(makes) + " | ours / floor |",
             "|---" * (len(makes) + 2) + "|"]
    for layout, shapes in layouts().items():
        row = measure_row(makes, shapes, args.repeats)
        foreach = row["torch foreach"]["ms"]
        cells = [f"{r['ms']:.3f} ({r['ms'] / foreach:.2f}x)" for r in row.values()]
        ours, low = row["ours pure (eager)"]["ms"], row["floor: pure foreach, hand-written"]["ms"]
        lines.append(f"| {layout} ({len(shapes)} tensors, {numel(shapes) / 1e6:.2f}M) | "
                     + " | ".join(cells) + f" | {ours / low:.2f}x |")
        print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
