"""Step time of the stateful adapter vs torch.optim, same run, same machine.

Every torch.optim algorithm that has a foreach implementation, on three layouts: 300 tensors x
4096; a GPT-like model of ~55M parameters in ~150 tensors; 4 tensors x 4M. For each:
torch.optim's for-loop (foreach=False, the CPU default), foreach and fused (where torch has one)
implementations, and functional_optim.optim's per-leaf (foreach=False), multi-tensor
(foreach=True) and default paths (torch's fused kernel where the alias has one, else
multi-tensor). Prints the median over repeats and ratios to torch's default, to torch foreach
and to torch fused.

    python benchmarks/bench_step.py [--threads 1] [--repeats 10] [--algos all] \
        [--out benchmarks/results/step_cpu_1thread.md] [--baseline CHECKOUT]

``--baseline CHECKOUT`` also steps the default path of the package in another checkout (e.g. a
``git worktree`` of the commit before a change), loaded side by side under another name, in
the same interleaved rounds: a before/after comparison that machine drift cannot bias. The
summary then gets a column "ours / baseline".
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import random
import statistics
import subprocess
import sys
import time

import torch

import functional_optim.optim as foo


def layouts() -> dict[str, list[tuple[int, ...]]]:
    d, vocab, layers, ff = 512, 32000, 12, 2048
    gpt = [(vocab, d), (1024, d)]
    for _ in range(layers):
        gpt += [(3 * d, d), (3 * d,), (d, d), (d,), (ff, d), (ff,), (d, ff), (d,),
                (d,), (d,), (d,), (d,)]
    gpt += [(d,), (d,)]
    return {"300 x 4096": [(4096,)] * 300, "GPT-like": gpt, "4 x 4M": [(4 * 1024 * 1024,)] * 4}


EXTRA_LAYOUTS = {"300 x 64 x 64": [(64, 64)] * 300}
"""Layouts that ``--layouts`` can name besides :func:`layouts` (many small matrices: Adafactor's
factored step per matrix)."""


def numel(shapes) -> int:
    """Elements in a layout."""
    return sum(torch.Size(s).numel() for s in shapes)


HPARAMS = {
    "AdamW": dict(lr=1e-3, weight_decay=1e-2), "Adam": dict(lr=1e-3),
    "SGD": dict(lr=1e-3, momentum=0.9), "Adagrad": dict(lr=1e-2), "RMSprop": dict(lr=1e-3),
    "Adadelta": dict(), "Adamax": dict(), "NAdam": dict(), "RAdam": dict(), "ASGD": dict(),
    "Rprop": dict(), "Adafactor": dict(),
}
FUSED = ("AdamW", "Adam", "SGD", "Adagrad")  # torch has a fused CPU kernel for these


def load_baseline(checkout: str):
    """``functional_optim.optim`` of another checkout, imported as ``baseline_optim`` beside
    this one (its package loaded under the name ``functional_optim_baseline``)."""
    name = "functional_optim_baseline"
    root = os.path.join(os.path.abspath(checkout), "functional_optim")
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{name}.optim")


def candidates(algo: str, baseline=None) -> dict:
    kw = HPARAMS[algo]
    torch_cls, ours_cls = getattr(torch.optim, algo), getattr(foo, algo)
    out = {
        "torch for-loop (default)": lambda p: torch_cls(p, foreach=False, **kw),
        "torch foreach": lambda p: torch_cls(p, foreach=True, **kw),
    }
    if algo in FUSED:
        out["torch fused"] = lambda p: torch_cls(p, fused=True, **kw)
    out["ours per-leaf (foreach=False)"] = lambda p: ours_cls(p, foreach=False, **kw)
    if algo in FUSED:
        out["ours multi-tensor (foreach=True)"] = lambda p: ours_cls(p, foreach=True, **kw)
    out["ours default"] = lambda p: ours_cls(p, **kw)
    if baseline is not None:
        out["baseline default"] = lambda p: getattr(baseline, algo)(p, **kw)
    return out


COPIES = 2
"""With a baseline, ``ours default`` and ``baseline default`` each step ``COPIES`` optimizers
(on their own buffers, made alternately), pooled: where a step's buffers land in memory moves
its time by a few percent, which one copy of each would read as a difference of the code."""


def medians_ms(makers: dict, shapes, repeats: int) -> dict:
    """Median step time (ms) of each optimizer; the repeats are interleaved (one step of each
    in turn, in a new random order each round), so a change in the machine's speed during the
    run (other tenants, frequency) affects every implementation alike, and none always runs
    after the same neighbour (whose freed memory or evicted caches it would inherit)."""
    pooled = ("ours default", "baseline default") if "baseline default" in makers else ()
    names = [n for n in makers if n not in pooled] + [n for _ in range(COPIES) for n in pooled]
    opts = []
    for name in names:
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt = makers[name](params)
        for _ in range(3):
            opt.step()
        opts.append((name, opt))
    times: dict = {name: [] for name in makers}
    rng = random.Random(0)
    for _ in range(repeats):
        rng.shuffle(opts)
        for name, opt in opts:
            start = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def commit(checkout: str) -> str:
    """``", commit <hash>"`` of a git checkout (``""`` where git cannot tell): which code a
    baseline was."""
    out = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    return f", commit {out.stdout.strip()}" if out.returncode == 0 else ""


def machine() -> str:
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines()
                      if line.startswith("Model name")), platform.processor())
    except OSError:
        model = platform.processor()
    return (f"{model}; {torch.get_num_threads()} thread(s); torch {torch.__version__}; "
            f"Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--algos", default="all", help="comma-separated torch.optim names")
    parser.add_argument("--out", default=None)
    parser.add_argument("--baseline", default=None, help="another checkout to compare with")
    parser.add_argument("--layouts", default="default",
                        help="comma-separated layout names (default: " + ", ".join(layouts())
                        + "; also " + ", ".join(EXTRA_LAYOUTS) + ")")
    args = parser.parse_args()
    known = {**layouts(), **EXTRA_LAYOUTS}
    names = list(layouts()) if args.layouts == "default" else args.layouts.split(",")
    unknown = [name for name in names if name not in known]
    if unknown:
        parser.error(f"--layouts: unknown {unknown}; known: {list(known)}")
    chosen = {name: known[name] for name in names}
    torch.set_num_threads(args.threads)
    baseline = load_baseline(args.baseline) if args.baseline else None
    lines = [f"# Optimizer step time, CPU\n\nMachine: {machine()}\n",
             f"Median of {args.repeats} steps (ms), the implementations' steps interleaved; ratios "
             "to torch's default (for-loop) and to torch foreach and to torch fused, measured in "
             "the same run.\n"]
    summary = ["\n## Summary: ours default / torch foreach, and / min(torch for-loop, torch "
               "foreach)\n",
               "The adapter's target is the first (<= 1.0x); the second also counts torch's "
               "for-loop, its CPU default, which is faster than its foreach on the large "
               "layouts (it keeps each tensor's intermediates in cache).\n",
               "| algorithm | " + " | ".join(chosen) + " |", "|---" * (len(chosen) + 1) + "|"]
    if baseline is not None:
        summary[-3] = summary[-3].rstrip() + " The third is ours / the baseline checkout " \
            f"({args.baseline}{commit(args.baseline)}), same rounds.\n"
        summary[0] = summary[0].rstrip() + ", and ours / baseline\n"
    algos = list(HPARAMS) if args.algos == "all" else args.algos.split(",")
    for algo in algos:
        row = []
        for layout, shapes in chosen.items():
            n = numel(shapes)
            lines.append(f"\n## {algo}, {layout} ({len(shapes)} tensors, {n / 1e6:.1f}M "
                         "params)\n\n| implementation | ms | vs torch default | vs torch foreach "
                         "| vs torch fused |\n|---|---|---|---|---|")
            results = medians_ms(candidates(algo, baseline), shapes, args.repeats)
            base, foreach = results["torch for-loop (default)"], results["torch foreach"]
            fused = results.get("torch fused")
            for name, ms in results.items():
                vs_fused = f"{ms / fused:.2f}x" if fused else "-"
                lines.append(f"| {name} | {ms:.2f} | {ms / base:.2f}x | {ms / foreach:.2f}x "
                             f"| {vs_fused} |")
            ours = results["ours default"]
            cell = f"{ours / foreach:.2f}x / {ours / min(base, foreach):.2f}x"
            if baseline is not None:
                cell += f" / {ours / results['baseline default']:.2f}x"
            row.append(cell)
            print("\n".join(lines[-len(results) - 1:]), flush=True)
        summary.append(f"| {algo} | " + " | ".join(row) + " |")
        print(summary[-1], flush=True)
    written("\n".join(lines[:2] + summary + lines[2:]) + "\n", args.out)


def written(text: str, out: str | None) -> None:
    """``text`` into the file ``out`` (nothing without one)."""
    if out:
        with open(out, "w") as f:
            f.write(text)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
