"""The drop-in step of aliases that torch.optim does not have (LAMB, ...), CPU: the adapter's
default (its blocked step) against the chain it runs otherwise, multi-tensor and per leaf, and
optionally another checkout's default, on bench_step.py's layouts, interleaved.

``--algos chain``: the user chain of ``bench_speed.py`` (clip, Adam, decay, warmup-cosine lr)
in :class:`~functional_optim.optim.FunctionalOptimizer`, whose default step is torch's Adam
kernel after the clip (:func:`functional_optim._fused.chain_step`), with torch's fused AdamW
after ``clip_grad_norm_`` and its ``LambdaLR`` in the same rounds.

    python benchmarks/bench_alias_step.py --algos LAMB --baseline ../other-checkout \
        --out benchmarks/results/step_aliases_cpu_1thread.md
"""

from __future__ import annotations

import argparse
import sys

import torch
from bench_speed import _ours_tx
from bench_speed import _torch as _torch_speed
from bench_step import (
    EXTRA_LAYOUTS,
    commit,
    layouts,
    load_baseline,
    machine,
    medians_ms,
    numel,
    written,
)

import functional_optim.optim as foo

HPARAMS = {"LAMB": dict(lr=1e-3, weight_decay=1e-2)}
"""The hyperparameters of an algorithm (its defaults where absent)."""
ALGOS = "LAMB,CautiousAdamW,MARSAdamW,OrthoAdamW"
"""The drop-ins whose rules reduce over each tensor (their blocked step is the passes')."""


class _Stepper:
    """``step()`` of bench_speed's implementations as an optimizer object (``medians_ms``)."""

    def __init__(self, step) -> None:
        self.step = step


def candidates(algo: str, baseline=None) -> dict:
    if algo == "chain":
        return _chain_candidates(baseline)
    cls, kw = getattr(foo, algo), HPARAMS.get(algo, {})
    out = {"ours per-leaf (foreach=False)": lambda p: cls(p, foreach=False, **kw),
           "ours multi-tensor (foreach=True)": lambda p: cls(p, foreach=True, **kw),
           "ours default": lambda p: cls(p, **kw)}
    if baseline is not None:
        out["baseline default"] = lambda p: getattr(baseline, algo)(p, **kw)
    return out


def _chain_candidates(baseline=None) -> dict:
    cls = foo.FunctionalOptimizer
    out = {"torch fused (+ clip_grad_norm_)": lambda p: _Stepper(_torch_speed("chain",
                                                                              fused=True)(p)),
           "ours multi-tensor (foreach=True)": lambda p: cls(p, _ours_tx("chain"), foreach=True),
           "ours default": lambda p: cls(p, _ours_tx("chain"))}
    if baseline is not None:
        theirs = sys.modules[baseline.__name__.rsplit(".", 1)[0]]  # (its package)
        out["baseline default"] = lambda p: baseline.FunctionalOptimizer(p, _ours_tx(
            "chain", theirs))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--algos", default=ALGOS, help="comma-separated drop-in class names")
    parser.add_argument("--baseline", default=None, help="another checkout to compare with")
    parser.add_argument("--layouts", default="default")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    known = {**layouts(), **EXTRA_LAYOUTS}
    names = list(layouts()) + list(EXTRA_LAYOUTS) if args.layouts == "default" else \
        args.layouts.split(",")
    torch.set_num_threads(args.threads)
    baseline = load_baseline(args.baseline) if args.baseline else None
    lines = [f"# Drop-in step time of aliases torch.optim lacks, CPU\n\nMachine: {machine()}\n",
             (args.note + "\n") if args.note else "",
             f"Median of {args.repeats} steps (ms), interleaved; ratios to the chain's "
             "multi-tensor step (`foreach=True`; the user chain: to torch fused) in the same "
             "run" +
             (f"; the baseline is {args.baseline}{commit(args.baseline)}" if baseline else "")
             + ".\n"]
    for algo in args.algos.split(","):
        for name in names:
            shapes = known[name]
            ms = medians_ms(candidates(algo, baseline), shapes, args.repeats)
            against = next(iter(ms)) if algo == "chain" else "ours multi-tensor (foreach=True)"
            lines += [f"\n## {algo}, {name} ({len(shapes)} tensors, {numel(shapes) / 1e6:.1f}M "
                      f"params)\n", f"| implementation | ms | vs {against} |", "|---|---|---|"]
            ref = ms[against]
            lines += [f"| {impl} | {t:.2f} | {t / ref:.2f}x |" for impl, t in ms.items()]
            print(f"{algo:6s} {name:14s} " + "  ".join(f"{k}: {v:.2f}" for k, v in ms.items()),
                  flush=True)
    written("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
