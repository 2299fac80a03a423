"""Optimizer-state memory and step time of AdamW's precision policies (issue 21 §4), CPU.

Memory: bytes of optimizer state per parameter, measured from the tensors (the sum of
``nbytes`` of every tensor in ``optimizer.state`` after one step, divided by the parameters'
element count) on the three layouts of ``bench_step.py``, for torch.optim.AdamW (float32),
ours in float32, with bfloat16 state, with 8-bit and 4-bit blockwise-quantized moments, and
bitsandbytes' ``AdamW8bit`` when it imports (run this script with an interpreter that has it,
e.g. a scratch venv; its CPU backend).

Step time: the median of interleaved steps (``bench_step.medians_ms``: one step of each policy
in turn, in a new random order each round) of each policy relative to ours in float32 (the
default path: torch's fused kernel), on the same layouts.

bfloat16 state is ``use_precision(state_dtype=torch.bfloat16)`` of the drop-in class where the
adapter has it (issue 21 §1, branch ``precision``); without it, the memory row measures AdamW
on bfloat16 copies of the parameters (its moments follow their dtype: the same bytes) and the
time row is left out.

    python benchmarks/precision_memory.py [--threads 1] [--repeats 5] \
        [--out benchmarks/results/precision_memory_cpu.md]
"""

from __future__ import annotations

import argparse
import gc

import torch
from bench_step import layouts, machine, medians_ms, numel

import functional_optim.optim as foo

try:
    import bitsandbytes
except ImportError:  # (the package is optional: its row is left out)
    bitsandbytes = None

LR = dict(lr=1e-3, weight_decay=1e-2)


def policies() -> dict:
    """name -> (make(params) -> optimizer, timed)."""
    out = {"torch.optim.AdamW (fp32)": (lambda p: torch.optim.AdamW(p, **LR), True),
           "ours AdamW (fp32)": (lambda p: foo.AdamW(p, **LR), True)}
    if hasattr(foo.AdamW, "use_precision"):
        out["ours AdamW, bf16 state"] = (
            lambda p: foo.AdamW(p, **LR).use_precision(state_dtype=torch.bfloat16), True)
    else:
        out["ours AdamW, bf16 parameters (bf16 moments)"] = (
            lambda p: foo.AdamW([x.detach().to(torch.bfloat16).requires_grad_() for x in p],
                                **LR), False)
    out["ours AdamW8bit"] = (lambda p: foo.AdamW8bit(p, **LR), True)
    out["ours AdamW4bit"] = (lambda p: foo.AdamW4bit(p, **LR), True)
    if bitsandbytes is not None:
        out[f"bitsandbytes {bitsandbytes.__version__} AdamW8bit"] = (
            lambda p: bitsandbytes.optim.AdamW8bit(p, **LR), False)
    return out


def tensors(node) -> list:
    if isinstance(node, torch.Tensor):
        return [node]
    if isinstance(node, dict):
        return [t for v in node.values() for t in tensors(v)]
    if isinstance(node, (list, tuple)):
        return [t for v in node for t in tensors(v)]
    return []


def state_bytes_per_param(make, shapes) -> float:
    """One step on fresh parameters; the optimizer state's bytes over the elements."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    opt = make(params)
    for group in opt.param_groups:  # (the parameters the optimizer holds: maybe copies)
        for p in group["params"]:
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
    opt.step()
    total = sum(t.nbytes for s in opt.state.values() for t in tensors(s))
    del opt, params
    gc.collect()
    return total / numel(shapes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    made = policies()
    names = list(layouts())
    lines = [f"# AdamW's optimizer state: memory and step time, CPU\n\nMachine: {machine()}. "
             "The machine was shared with other jobs during the run (step times are "
             "interleaved medians, so a change in its load affects every policy alike).\n",
             "## Bytes of optimizer state per parameter (measured: sum of `nbytes` of the "
             "state's tensors after one step / parameters)\n",
             "| policy | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, (make, _) in made.items():
        row = [f"{state_bytes_per_param(make, shapes):.3f}" for shapes in layouts().values()]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
        print(lines[-1], flush=True)
    timed = {n: make for n, (make, t) in made.items() if t}
    lines += ["\n## Step time (median of interleaved steps, ms; in brackets: relative to ours "
              "AdamW fp32)\n", "| policy | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    results = {layout: medians_ms(timed, shapes, args.repeats)
               for layout, shapes in layouts().items()}
    for name in timed:
        cells = [f"{results[la][name]:.1f} "
                 f"({results[la][name] / results[la]['ours AdamW (fp32)']:.1f}x)" for la in names]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
