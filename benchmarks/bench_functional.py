"""The functional API's step time (issue 18 §4): ``tx.update`` in research code, against torch.

Every alias that torch.optim has, plus a user chain (``clip_by_global_norm(1.0) -> scale_by_adam
-> add_decayed_weights(1e-2) -> scale_by_learning_rate(1e-3)``, against torch's
``clip_grad_norm_`` + AdamW), on three layouts (a small MLP: 4 tensors, 83K parameters; 300 x
4096; 4 x 4M). Three ways to run a functional step (docs/performance.md):

- ``ours pure (eager)``: ``updates, state = tx.update(grads, state, params)`` and
  ``params = fo.apply_updates(params, updates)``: nothing mutated;
- ``ours pure step (eager)``: ``params, state = fo.step(tx, grads, state, params)``: nothing
  mutated either (the fused or blocked step on copies where the alias or chain has one);
- ``ours pure, host counts`` and ``ours pure step, host counts`` (on a GPU): the same with a
  state made within ``fo.host_counts()`` (per-leaf step counts on the CPU);
- ``ours donated (eager)``: ``params, state = fo.step(tx, grads, state, params, donate=True)``;
- ``ours compiled (donated)``: the same call in ``torch.compile(fullgraph=True)``;

and, for reference, the stateful adapter (``fo.optim.<Name>``). Against torch.optim's
for-loop, foreach, fused (where it has one) and ``torch.compile(opt.step)``, and the peers when
they import (torchopt, pure and in place; optax on JAX, jitted with donated buffers, in a
subprocess: ``bench_speed_optax.py --suite functional``).

Each figure is the median step over rounds in which the implementations step in turn, in a new
random order every round (``bench_speed.measure_row``), with ratios to torch foreach and fused
and to the bandwidth bound (the bytes a step must move, ``(3 + 2 k) * 4`` B per float32
parameter for ``k`` state arrays, at the best streaming bandwidth measured in the same run).

    python benchmarks/bench_functional.py --threads 1 \
        --out benchmarks/results/functional_cpu_1thread

``--device cuda`` runs the same rows on a GPU (optax stays on the CPU: left out there).

``--train-step`` measures instead what a compiled functional train step (``torch.func.grad``
+ update + apply, fullgraph, donated) allocates per step in steady state, against the same
step without the optimizer (profiler allocation events, CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable

import torch

import functional_optim as fo
import functional_optim.optim as foo

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_speed import bandwidth_gbs, measure_row, optax_results  # noqa: E402
from bench_step import machine, numel  # noqa: E402

LR, WD, MAX_NORM = 1e-3, 1e-2, 1.0

# name: (torch.optim class, its keywords (also the alias's), state arrays per parameter)
ALGOS = {
    "adamw": ("AdamW", dict(lr=LR, weight_decay=WD), 2),
    "adam": ("Adam", dict(lr=LR), 2),
    "sgd": ("SGD", dict(lr=LR, momentum=0.9), 1),
    "adagrad": ("Adagrad", dict(lr=1e-2), 1),
    "rmsprop": ("RMSprop", dict(lr=LR), 1),
    "adadelta": ("Adadelta", dict(), 2),
    "adamax": ("Adamax", dict(), 2),
    "nadam": ("NAdam", dict(), 2),
    "radam": ("RAdam", dict(), 2),
    "asgd": ("ASGD", dict(), 1),
    "rprop": ("Rprop", dict(), 2),
    "adafactor": ("Adafactor", dict(), 1),  # (a vector's second moment; a matrix's factored)
    "chain": ("AdamW", dict(lr=LR, weight_decay=WD), 2),
}
FUSED = ("adamw", "adam", "sgd", "adagrad", "chain")  # torch has a fused CPU kernel


def layouts() -> dict[str, list[tuple[int, ...]]]:
    return {"small MLP": [(100, 784), (100,), (48, 100), (48,)],
            "300 x 4096": [(4096,)] * 300, "4 x 4M": [(4 * 1024 * 1024,)] * 4}


def transform(algo: str) -> fo.Transform:
    if algo == "chain":
        return fo.chain(fo.clip_by_global_norm(MAX_NORM), fo.scale_by_adam(),
                        fo.add_decayed_weights(WD), fo.scale_by_learning_rate(LR))
    return getattr(fo, algo)(**ALGOS[algo][1])


def bytes_per_param(algo: str) -> int:
    """Read parameter, gradient and state, write parameter and state (float32); the chain's
    norm reads the gradient once more."""
    return (3 + 2 * ALGOS[algo][2]) * 4 + (4 if algo == "chain" else 0)


# -- implementations: make(params) -> step() ------------------------------------------------

def _torch(algo: str, compiled: bool = False, **kw) -> Callable:
    name, hparams, _ = ALGOS[algo]

    def make(params):
        opt = getattr(torch.optim, name)(params, **hparams, **kw)
        step = torch.compile(opt.step) if compiled else opt.step
        if algo != "chain":
            return step
        clip = (torch.compile(lambda: torch.nn.utils.clip_grad_norm_(params, MAX_NORM))
                if compiled else lambda: torch.nn.utils.clip_grad_norm_(
                    params, MAX_NORM, foreach=bool(kw.get("foreach") or kw.get("fused"))))

        def clipped():
            clip()
            step()
        return clipped
    return make


def _trees(params) -> tuple[dict, dict]:
    return ({str(i): p.detach() for i, p in enumerate(params)},
            {str(i): p.grad for i, p in enumerate(params)})


def _pure(algo: str, one_call: bool = False, host_counts: bool = False) -> Callable:
    """``tx.update`` then ``fo.apply_updates``, or (``one_call``) ``fo.step``: both pure;
    ``host_counts``: the state made within ``fo.host_counts()`` (per-leaf counts on the CPU)."""
    def make(params):
        tx = transform(algo)
        data, grads = _trees(params)
        with fo.host_counts() if host_counts else contextlib.nullcontext():
            box = [data, tx.init(data)]

        def step():
            if one_call:
                box[0], box[1] = fo.step(tx, grads, box[1], box[0])
                return
            updates, box[1] = tx.update(grads, box[1], box[0])
            box[0] = fo.apply_updates(box[0], updates)
        return step
    return make


def _donated(algo: str, compiled: bool = False, grads_too: bool = False) -> Callable:
    def make(params):
        tx = transform(algo)
        data, grads = _trees(params)
        box = [data, tx.init(data)]

        def run(p, state, g):
            return fo.step(tx, g, state, p, donate=True, donate_grads=grads_too)

        run = torch.compile(run, fullgraph=True) if compiled else run

        def step():
            box[0], box[1] = run(box[0], box[1], grads)
        return step
    return make


def _adapter(algo: str) -> Callable:
    def make(params):
        if algo == "chain":
            return foo.FunctionalOptimizer(params, transform(algo)).step
        name, hparams, _ = ALGOS[algo]
        return getattr(foo, name)(params, **hparams).step
    return make


TORCHOPT = {"adamw": dict(lr=LR, weight_decay=WD), "adam": dict(lr=LR),
            "sgd": dict(lr=LR, momentum=0.9), "adagrad": dict(lr=1e-2, eps=1e-10),
            "rmsprop": dict(lr=LR, alpha=0.99, eps=1e-8), "adamax": dict()}


def _torchopt(algo: str, inplace: bool) -> Callable:
    import torchopt

    def make(params):
        if algo == "chain":
            tx = torchopt.chain(torchopt.clip_grad_norm(MAX_NORM),
                                torchopt.adamw(lr=LR, weight_decay=WD))
        else:
            tx = getattr(torchopt, algo)(**TORCHOPT[algo])
        data = tuple(p.detach() for p in params)
        grads = tuple(p.grad for p in params)
        box = [data, tx.init(data)]

        def step():
            updates, box[1] = tx.update(grads, box[1], params=box[0], inplace=inplace)
            box[0] = torchopt.apply_updates(box[0], updates, inplace=inplace)
        return step
    return make


def implementations(algo: str, peers: set, compiled: bool, gpu: bool = False) -> dict:
    out = {"torch for-loop": _torch(algo, foreach=False),
           "torch foreach": _torch(algo, foreach=True)}
    if algo in FUSED:
        out["torch fused"] = _torch(algo, fused=True)
    if compiled:
        out["torch compiled"] = _torch(algo, compiled=True, foreach=True)
    out.update({"ours pure (eager)": _pure(algo),
                "ours pure step (eager)": _pure(algo, one_call=True),
                "ours donated (eager)": _donated(algo),
                "ours adapter (fo.optim)": _adapter(algo)})
    if gpu:  # (on the CPU the counts are there already)
        out["ours pure, host counts (eager)"] = _pure(algo, host_counts=True)
        out["ours pure step, host counts (eager)"] = _pure(algo, one_call=True, host_counts=True)
    if algo == "chain":  # (clipped in place, as torch's clip_grad_norm_)
        out["ours donated, grads too (eager)"] = _donated(algo, grads_too=True)
    if compiled:
        out["ours compiled (donated)"] = _donated(algo, compiled=True)
    if "torchopt" in peers and (algo in TORCHOPT or algo == "chain"):
        out["torchopt pure"] = _torchopt(algo, inplace=False)
        out["torchopt in place"] = _torchopt(algo, inplace=True)
    return out


# -- the compiled train step's allocations ---------------------------------------------------

def allocated_bytes(step: Callable) -> tuple[int, int]:
    """(allocation events, bytes allocated) in one call of ``step`` (profiler, CPU)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    sizes = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
    return len(sizes), sum(sizes)


def inductor_buffers(step: Callable) -> int:
    """The buffers inductor's compiled code allocates in one call of ``step``: calls of its
    allocation helpers (``empty_strided_cpu``...), which the profiler's memory events do not
    show (counted with ``cProfile``)."""
    import cProfile
    import pstats
    profiler = cProfile.Profile()
    profiler.enable()
    step()
    profiler.disable()
    return sum(calls for (_, _, name), (calls, *_) in pstats.Stats(profiler).stats.items()
               if "empty_strided" in name)


def train_step_allocations(shapes, algo: str = "adamw", steps: int = 5) -> dict:
    """A compiled functional train step (a least-squares loss's ``torch.func.grad`` on the
    layout, then ``fo.step(donate=True)``), fullgraph, and the compiled gradient alone: what
    each allocates in one step once warm. The gradient alone must return new tensors; in the
    train step they need not exist at all (inductor computes them inside the update)."""
    gen = torch.Generator().manual_seed(0)
    params = {str(i): torch.randn(s, generator=gen) for i, s in enumerate(shapes)}
    targets = {k: torch.randn(p.shape, generator=gen) for k, p in params.items()}
    tx = transform(algo)

    def loss(p):
        return sum(((p[k] - targets[k]) ** 2).sum() for k in p) / 2

    @torch.compile(fullgraph=True)
    def grad_only(p):
        return torch.func.grad(loss)(p)

    @torch.compile(fullgraph=True)
    def train(p, state):
        return fo.step(tx, torch.func.grad(loss)(p), state, p, donate=True)

    box = [params, tx.init(params)]

    def step():
        box[0], box[1] = train(*box)

    for _ in range(steps):
        step()
        grad_only(box[0])
    grads_n, grads_b = allocated_bytes(lambda: grad_only(box[0]))
    n, b = allocated_bytes(step)
    return {"numel": numel(shapes), "train_events": n, "train_bytes": b,
            "train_buffers": inductor_buffers(step), "grad_events": grads_n,
            "grad_bytes": grads_b, "grad_buffers": inductor_buffers(lambda: grad_only(box[0]))}


# -- the suite -------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--algos", default=",".join(ALGOS))
    parser.add_argument("--layouts", default=",".join(layouts()))
    parser.add_argument("--compiled", default=",".join(ALGOS),
                        help="the algorithms whose compiled steps (ours and torch's) are measured")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cuda: on a GPU (bound: its device-to-device copy bandwidth)")
    parser.add_argument("--train-step", action="store_true")
    parser.add_argument("--note", default="", help="a line for the results (machine load...)")
    parser.add_argument("--out", default=None, help="path without extension (.md and .json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = {k: v for k, v in layouts().items() if k in args.layouts.split(",")}
    gpu = f"; {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    results: dict = {"machine": machine() + gpu, "threads": args.threads, "note": args.note,
                     "device": args.device,
                     "runs": {}, "train_step": {}}
    if args.train_step:
        for layout, shapes in chosen.items():
            results["train_step"][layout] = r = train_step_allocations(shapes)
            print(layout, r, flush=True)
        if args.out:
            write_train_step(results, args.out)
        return
    peers = set()
    for name in ("torchopt",) + (("jax",) if args.device == "cpu" else ()):
        try:
            __import__(name)
            peers.add(name)
        except ImportError:
            pass
    results["peers"] = sorted(peers)
    algos = args.algos.split(",")
    optax = (optax_results(args.threads, args.repeats, sys.executable, "functional")
             if "jax" in peers else {})
    for algo in algos:
        for layout, shapes in chosen.items():
            n = numel(shapes)
            k = ALGOS[algo][2]
            bw = bandwidth_gbs((2 + k) * n, device=args.device)
            bound_ms = bytes_per_param(algo) * n / (bw * 1e9) * 1e3
            compiled = algo in args.compiled.split(",")
            if compiled:  # (each row compiles its own steps: dynamo recompiles the one run()
                torch._dynamo.reset()  # closure for each (algo, layout), at most 8 times)
            row = measure_row(implementations(algo, peers, compiled, args.device == "cuda"),
                              shapes, args.repeats, args.device)
            if f"{algo}/{layout}" in optax:
                row["optax (JAX, jit, donated)"] = optax[f"{algo}/{layout}"]
            results["runs"][f"{algo}/{layout}"] = {"numel": n, "bound_ms": bound_ms,
                                                   "bandwidth_gbs": bw, "results": row}
            print(f"\n{algo}, {layout}: bound {bound_ms:.3f} ms", flush=True)
            foreach = row["torch foreach"].get("ms")
            for name, r in row.items():
                if "error" in r:
                    print(f"  {name:30s} failed: {r['error']}", flush=True)
                    continue
                print(f"  {name:30s} {r['ms']:9.3f} ms  {r['ms'] / foreach:5.2f}x foreach  "
                      f"first {r['first_s']:6.2f} s", flush=True)
            if args.out:  # (written as it goes: a long run stopped keeps what it measured)
                write(results, args.out)


SUMMARY = (("ours pure (eager)", "torch foreach", 1.0), ("ours pure step (eager)", "torch foreach",
                                                        1.0),
           ("ours pure, host counts (eager)", "torch foreach", 1.0),
           ("ours pure step, host counts (eager)", "torch foreach", 1.0),
           ("ours donated (eager)", "torch fused", 1.1),
           ("ours donated, grads too (eager)", "torch fused", 1.1),
           ("ours compiled (donated)", "torch fused", 1.0))


def _ratio(row: dict, name: str, ref: str) -> float | None:
    a, b = row.get(name, {}).get("ms"), row.get(ref, {}).get("ms")
    return a / b if a and b else None


def markdown(results: dict) -> str:
    gpu = results.get("device") == "cuda"
    where = "CUDA" if gpu else f"CPU, {results['threads']} thread(s)"
    lines = [f"# The functional API's step time, {where}\n",
             f"Machine: {results['machine']}.  ",
             f"Peers: {', '.join(results.get('peers') or []) or 'none'}.  ",
             f"{results['note']}\n" if results.get("note") else "",
             "Median step time over rounds in which the implementations step in turn (a new "
             "random order every round); ratios to torch foreach, to torch fused (where torch "
             "has a fused kernel; the others fall back to foreach in the summary) and to the "
             "bandwidth bound; time to first step (construction, compilation); peak extra "
             f"memory of a step ({'the allocator' if gpu else 'profiler, CPU'}).\n",
             "## Summary\n",
             "Each cell: ours / torch, same rounds; where torch has no fused kernel, against "
             "its foreach (marked). '-': not measured.\n"]
    keys = list(results["runs"])
    algos = list(dict.fromkeys(k.split("/")[0] for k in keys))
    lays = list(dict.fromkeys(k.split("/")[1] for k in keys))
    for name, ref, target in SUMMARY:
        if not any(name in run["results"] for run in results["runs"].values()):
            continue  # (a row of GPU runs only)
        lines.append(f"\n**{name} / {ref}** (target <= {target})\n")
        lines.append("| algorithm | " + " | ".join(lays) + " |\n" + "|---" * (len(lays) + 1)
                     + "|")
        for algo in algos:
            cells = []
            for layout in lays:
                row = results["runs"].get(f"{algo}/{layout}", {}).get("results", {})
                r, mark = _ratio(row, name, ref), ""
                if r is None and ref != "torch foreach":
                    r, mark = _ratio(row, name, "torch foreach"), " (foreach)"
                cells.append("-" if r is None else f"{r:.2f}x{mark}")
            lines.append(f"| {algo} | " + " | ".join(cells) + " |")
    for key, run in results["runs"].items():
        algo, layout = key.split("/")
        row = run["results"]
        lines.append(f"\n## {algo}, {layout} ({run['numel'] / 1e6:.2f}M params; bound "
                     f"{run['bound_ms']:.3f} ms at {run['bandwidth_gbs']:.1f} GB/s)\n")
        lines.append("| implementation | ms | vs torch foreach | vs torch fused | vs bound | "
                     "first step (s) | peak extra MB |\n|---|---|---|---|---|---|---|")
        for name, r in sorted(row.items(), key=lambda kv: kv[1].get("ms", 1e30)):
            if "error" in r:
                lines.append(f"| {name} | failed: {r['error']} | | | | | |")
                continue
            fused = _ratio(row, name, "torch fused")
            peak = f"{r['peak_mb']:.2f}" if r.get("peak_mb") is not None else "-"
            lines.append(f"| {name} | {r['ms']:.3f} | {_ratio(row, name, 'torch foreach'):.2f}x "
                         f"| {'-' if fused is None else f'{fused:.2f}x'} | "
                         f"{r['ms'] / run['bound_ms']:.2f}x | {r['first_s']:.2f} | {peak} |")
    return "\n".join(lines) + "\n"


def write(results: dict, out: str) -> None:
    with open(out + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(markdown(results))
    plot(results, out + ".png")


def write_train_step(results: dict, out: str) -> None:
    lines = ["# A compiled functional train step's allocations, CPU\n",
             f"Machine: {results['machine']}.  ",
             f"{results['note']}\n" if results.get("note") else "",
             "``torch.compile(fullgraph=True)`` of ``fo.step(tx, torch.func.grad(loss)(p), "
             "state, p, donate=True)`` (AdamW, a least-squares loss on the layout) against the "
             "compiled gradient alone, once warm: allocation events and bytes of one step "
             "(profiler, ``profile_memory=True``), and the buffers inductor's code allocates "
             "itself (calls of its ``empty_strided`` helpers, counted with ``cProfile``: the "
             "profiler's memory events do not show them). The gradient alone returns new "
             "tensors; the train step writes the new state and parameters into the donated "
             "ones, and allocates 0-d buffers for the per-leaf coefficients it computes once "
             "per step (Adam's bias corrections: two per leaf of 1024 elements or more).\n",
             "| layout | params | train step: events, bytes; inductor buffers | gradient "
             "alone: events, bytes; inductor buffers |\n|---|---|---|---|"]
    for layout, r in results["train_step"].items():
        lines.append(f"| {layout} | {r['numel']} | {r['train_events']}, {r['train_bytes']}; "
                     f"{r.get('train_buffers', '-')} | {r['grad_events']}, {r['grad_bytes']}; "
                     f"{r.get('grad_buffers', '-')} |")
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(out + ".json", "w") as f:
        json.dump(results, f, indent=1)


def plot(results: dict, dst: str) -> None:
    """Step time relative to torch foreach, one panel per layout, one group of bars per
    algorithm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    runs = results["runs"]
    algos = list(dict.fromkeys(k.split("/")[0] for k in runs))
    lays = list(dict.fromkeys(k.split("/")[1] for k in runs))
    names = list(dict.fromkeys(n for run in runs.values() for n in run["results"]))
    fig, axes = plt.subplots(len(lays), 1, figsize=(14, 3.4 * len(lays)), squeeze=False)
    width = 0.8 / len(names)
    for ax, layout in zip(axes[:, 0], lays):
        for i, name in enumerate(names):
            xs, ys = [], []
            for j, algo in enumerate(algos):
                row = runs.get(f"{algo}/{layout}", {}).get("results", {})
                r = _ratio(row, name, "torch foreach")
                if r is not None:
                    xs.append(j + (i - len(names) / 2 + 0.5) * width)
                    ys.append(r)
            ax.bar(xs, ys, width, label=name, color=plt.cm.tab20(i % 20))
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(algos)), algos)
        ax.set_ylabel("step time / torch foreach")
        where = "CUDA" if results.get("device") == "cuda" else f"{results['threads']} thread(s)"
        ax.set_title(f"{layout} ({where}; lower is faster)")
    axes[0, 0].legend(fontsize=7, ncol=5, loc="upper left")
    fig.suptitle(results["machine"], fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=100)


if __name__ == "__main__":
    main()
