"""Per-step work of the drop-in classes' default path, counted: deterministic, load-proof.

Wall time on a shared machine moves by 10-40% between runs of the same code; the work a step
does does not. For every algorithm of ``bench_step.py`` (its hyperparameters) this counts, for
one step after warm-up on 300 tensors (Adafactor: 300 matrices of 64 x 64, so that it factors):

- the Python function calls of the step (``cProfile``): the host overhead;
- the aten operators it dispatches (a ``TorchDispatchMode``): the kernels launched.

Two checkouts with equal counts run the same kernels with the same host work, so their step
times differ only by noise. ``--baseline CHECKOUT`` counts another checkout's package in a
subprocess (its ``PYTHONPATH``) and prints both side by side. ``--pure`` counts the functional
aliases' pure step instead (``tx.update`` and ``apply_updates``; its aten ops by the profiler's
top-level events, since a dispatch mode sends ``update`` leaf by leaf).

    python benchmarks/step_work.py [--pure] [--baseline CHECKOUT] [--out FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
from collections import Counter

import torch
from bench_step import HPARAMS, machine
from torch.utils._python_dispatch import TorchDispatchMode


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count(algo: str, pure: bool = False) -> dict:
    """Python calls and aten ops of one default step of ``algo`` (after three warm-up steps):
    the drop-in class's ``step``, or with ``pure`` the functional alias's
    ``updates, state = tx.update(grads, state, params)`` and ``apply_updates``. The aten ops of
    the pure step are counted by the profiler: under a dispatch mode ``update`` runs leaf by
    leaf (:func:`functional_optim._execute.multi_tensor_wanted`)."""
    import functional_optim as fo
    import functional_optim.optim as foo

    torch.manual_seed(0)
    shape = (64, 64) if algo == "Adafactor" else (4096,)
    params = [torch.randn(shape, requires_grad=True) for _ in range(300)]
    for p in params:
        p.grad = torch.randn_like(p)
    if pure:
        tx = getattr(fo, algo.lower())(**HPARAMS[algo])
        box = [{str(i): p.detach() for i, p in enumerate(params)}]
        grads = {str(i): p.grad for i, p in enumerate(params)}
        box.append(tx.init(box[0]))

        def step():
            updates, box[1] = tx.update(grads, box[1], box[0])
            box[0] = fo.apply_updates(box[0], updates)
    else:
        step = getattr(foo, algo)(params, **HPARAMS[algo]).step
    for _ in range(3):
        step()
    profile = cProfile.Profile()
    profile.enable()
    step()
    profile.disable()
    if pure:
        from torch.profiler import profile as torch_profile
        with torch_profile() as prof:
            step()
        aten = sum(e.name.startswith("aten::") and e.cpu_parent is None for e in prof.events())
    else:
        with _CountOps() as ops:
            step()
        aten = sum(ops.count.values())
    return {"python calls": pstats.Stats(profile).total_calls, "aten ops": aten}


def counts_of(checkout: str, pure: bool = False) -> dict:
    """:func:`count` of every algorithm, with ``checkout``'s package (in a subprocess)."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--json"]
                         + (["--pure"] if pure else []), env=env,
                         cwd=os.path.dirname(os.path.abspath(__file__)), check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=None, help="another checkout to compare with")
    parser.add_argument("--out", default=None)
    parser.add_argument("--pure", action="store_true",
                        help="the functional aliases' pure step (update + apply_updates)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    ours = {algo: count(algo, args.pure) for algo in HPARAMS}
    if args.json:
        print(json.dumps(ours))
        return
    base = counts_of(args.baseline, args.pure) if args.baseline else None
    head = "| algorithm | python calls | aten ops |"
    if base is not None:
        head += f" baseline ({args.baseline}) python calls | baseline aten ops |"
    what = ("the functional aliases' pure step (update + apply_updates; aten ops: top-level "
            "profiler events)" if args.pure else "the default path")
    lines = [f"# Per-step work of {what} (300 tensors)\n\nMachine: {machine()}\n",
             head, "|" + "---|" * (head.count("|") - 1)]
    for algo, c in ours.items():
        row = f"| {algo} | {c['python calls']} | {c['aten ops']} |"
        if base is not None:
            row += f" {base[algo]['python calls']} | {base[algo]['aten ops']} |"
        lines.append(row)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
