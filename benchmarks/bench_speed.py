"""Speed at the limit: every way to run AdamW, SGD-momentum and a chain, same run, same machine.

Workloads: ``adamw`` (lr 1e-3, weight decay 1e-2), ``sgd`` (momentum 0.9) and ``chain``
(clip_by_global_norm(1.0) -> Adam -> weight decay 1e-2 -> warmup-cosine lr), each on three
layouts (300 x 4096; a GPT-like model in ~150 tensors; 4 x 4M). Implementations:

- ours: the adapter's default eager path, the flat layout (eager; gradients accumulated into the
  flat buffer, and with gradients replaced every step), the compiled flat layout;
- torch.optim: for-loop, foreach, fused, and ``torch.compile(opt.step)``;
- torchopt (functional, in place), heavyball (compiled by default), and optax on JAX CPU (jitted,
  donated buffers; a subprocess, ``bench_speed_optax.py``) when installed
  (``benchmarks/setup_peers.sh``; run with ``benchmarks/.venv-peers/bin/python``).

Each figure is the median step time over rounds in which the implementations step in turn
(:func:`measure_row`), with ratios to torch fused and to the bandwidth
bound: the bytes a step must move (AdamW and the chain: read param, grad, two moments, write
param and two moments, 28 B per float32 parameter, plus 4 B for the chain's norm; SGD-momentum
20 B) at the best streaming bandwidth measured in the same run over as many bytes as the step
touches (:func:`bandwidth_gbs`). Also: time to first step (construction and compilation; cold
with TORCHINDUCTOR_FORCE_DISABLE_CACHES=1), peak extra memory of a step (allocations seen by the
profiler on the CPU, the allocator's peak on a GPU; not available for JAX), and the cost of
identity transforms added to a chain (eager and compiled).

With ``--device cuda`` the same suite runs on a GPU (no optax: JAX runs on the CPU here), with
one more implementation, ours captured: the pure update in a CUDA graph
(:mod:`functional_optim.capture`), replayed each step; the bound is then the device-to-device
copy bandwidth.

    python benchmarks/bench_speed.py --threads 1 --out benchmarks/results/speed_cpu_1thread
    python benchmarks/bench_speed.py --device cuda --out benchmarks/results/speed_cuda
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch  # noqa: E402

import functional_optim as fo  # noqa: E402
import functional_optim.optim as foo  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_step import layouts, machine, numel  # noqa: E402

LR, WD, MOMENTUM, MAX_NORM = 1e-3, 1e-2, 0.9, 1.0
BYTES_PER_PARAM = {"adamw": 28, "sgd": 20, "chain": 32}
ARRAYS = {"adamw": 4, "sgd": 3, "chain": 4}  # float32 arrays a step touches: param, grad, state


def torch_lambda(step: int) -> float:
    """The same warmup-cosine as a LambdaLR factor (for torch and the peers)."""
    import math
    if step < 100:
        return step / 100
    t = min(step - 100, 9_900) / 9_900
    return 0.5 * (1 + math.cos(math.pi * t))


# -- implementations: make(params) -> step() ------------------------------------------------

def _torch(algo: str, **kw) -> Callable:
    def make(params):
        if algo == "sgd":
            opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, **kw)
            return opt.step
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD, **kw)
        if algo == "adamw":
            return opt.step
        sched = torch.optim.lr_scheduler.LambdaLR(opt, torch_lambda)
        foreach = kw.get("foreach") or kw.get("fused")

        def step():
            torch.nn.utils.clip_grad_norm_(params, MAX_NORM, foreach=bool(foreach))
            opt.step()
            sched.step()
        return step
    return make


def _torch_compiled(algo: str) -> Callable:
    def make(params):
        if algo == "sgd":
            opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, foreach=True)
        else:  # a tensor lr (changing it does not recompile) needs capturable with foreach
            lr = torch.tensor(LR, device=params[0].device)
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=WD, foreach=True,
                                    capturable=True)
        compiled_step = torch.compile(opt.step)
        if algo != "chain":
            return compiled_step
        clip = torch.compile(lambda: torch.nn.utils.clip_grad_norm_(params, MAX_NORM,
                                                                    foreach=True))
        counter = [0]

        def step():
            opt.param_groups[0]["lr"].fill_(LR * torch_lambda(counter[0]))
            counter[0] += 1
            clip()
            compiled_step()
        return step
    return make


def _ours_tx(algo: str, package=fo):
    """The workload as a transform of ``package`` (this checkout's, or a baseline's)."""
    if algo == "adamw":
        return package.adamw(lr=LR, weight_decay=WD)
    if algo == "sgd":
        return package.sgd(lr=LR, momentum=MOMENTUM)
    return package.chain(package.clip_by_global_norm(MAX_NORM), package.scale_by_adam(),
                         package.add_decayed_weights(WD), package.scale_by_learning_rate(
                             package.schedules.warmup_cosine_decay(0.0, LR, 100, 10_000)))


def _ours(algo: str, flat: bool = False, compile: bool = False,
          replace_grads: bool = False) -> Callable:
    def make(params):
        if algo == "adamw":
            opt = foo.AdamW(params, lr=LR, weight_decay=WD)
        elif algo == "sgd":
            opt = foo.SGD(params, lr=LR, momentum=MOMENTUM)
        else:
            opt = foo.FunctionalOptimizer(params, _ours_tx(algo))
        if flat:
            opt.use_flat(compile=compile)
        if not replace_grads:
            return opt.step
        fresh = [p.grad.clone() for p in params]

        def step():  # as after zero_grad(set_to_none=True) and a backward: new grad tensors
            for p, g in zip(params, fresh):
                p.grad = g
            opt.step()
        return step
    return make


def _ours_captured(algo: str) -> Callable:
    """The pure update of ``_ours_tx(algo)`` on the parameters' tensors and gradients, captured
    in a CUDA graph (``fo.capture``) and replayed each step."""
    def make(params):
        tx = _ours_tx(algo)
        data, grads = [p.detach() for p in params], [p.grad for p in params]
        state = tx.init(data)
        return fo.capture.capture(fo.capture.inplace_step(tx), grads, state, data).replay
    return make


def _torchopt(algo: str) -> Callable:
    import torchopt

    def make(params):
        if algo == "adamw":
            tx = torchopt.adamw(lr=LR, weight_decay=WD)
        elif algo == "sgd":
            tx = torchopt.sgd(lr=LR, momentum=MOMENTUM)
        else:
            tx = torchopt.chain(torchopt.clip_grad_norm(MAX_NORM), torchopt.adamw(
                lr=lambda count: LR * torch_lambda(int(count)), weight_decay=WD))
        data = tuple(p.detach() for p in params)
        state = [tx.init(data)]

        def step():
            grads = tuple(p.grad for p in params)
            updates, state[0] = tx.update(grads, state[0], params=data, inplace=True)
            torchopt.apply_updates(data, updates, inplace=True)
        return step
    return make


def _heavyball(algo: str) -> Callable:
    import heavyball

    def make(params):
        if algo == "adamw":
            opt = heavyball.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=WD)
        else:
            opt = heavyball.SGD(params, lr=LR, beta=MOMENTUM)
        grads = [p.grad for p in params]

        def step():  # heavyball frees .grad after its step: hand them back (pointers only)
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
        return step
    return make


def implementations(algo: str, peers: set, device: str = "cpu") -> dict:
    out = {
        "torch for-loop": _torch(algo, foreach=False),
        "torch foreach": _torch(algo, foreach=True),
        "torch fused": _torch(algo, fused=True),
        "torch compiled": _torch_compiled(algo),
        "ours default (eager)": _ours(algo),
        "ours flat (eager)": _ours(algo, flat=True),
        "ours flat, grads replaced each step": _ours(algo, flat=True, replace_grads=True),
        "ours flat compiled": _ours(algo, flat=True, compile=True),
    }
    if device == "cuda":
        out["ours captured (CUDA graph)"] = _ours_captured(algo)
    if "torchopt" in peers:
        out["torchopt"] = _torchopt(algo)
    if "heavyball" in peers and algo != "chain":
        out["heavyball"] = _heavyball(algo)
    return out


# -- measurement ----------------------------------------------------------------------------

def _params(shapes, device: str = "cpu"):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).to(device).requires_grad_() for s in shapes]
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen) * 1e-2).to(device)
    return params


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else lambda: None


def peak_extra_bytes(step: Callable, device: str = "cpu") -> int:
    """The peak of the running sum of CPU allocations and frees during one step (the
    profiler's memory records, in time order: each op's own summary counted a foreach op's
    allocations twice, its own and its per-tensor ops', and placed frees at the start of the
    op they happened in); on a GPU, the caching allocator's peak above what was allocated
    before the step."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]")
    running = peak = 0
    for _, nbytes in records:
        running += nbytes
        peak = max(peak, running)
    return peak


def _error(e: Exception) -> dict:
    return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}


def measure_row(makes: dict, shapes, repeats: int, device: str = "cpu") -> dict:
    """Every implementation on its own copy of the layout, stepping in turn.

    Each is built and takes its first step (timed: construction and compilation) and a second
    one; then ``4 * repeats`` rounds give each one step, in a new random order every round
    (each step starts after a different one, with other data in the caches), so that a drift
    of the machine's speed hits them alike (measured one after the other, a 2 ms step varied
    by 20% between runs); then each one's peak memory. A peer's failure is a result, reported
    in the table. On a GPU each step is timed from a synchronized device to its last kernel's
    end."""
    steps, out, sync = {}, {}, _sync(device)
    for name, make in makes.items():
        try:
            params = _params(shapes, device)
            sync()
            start = time.perf_counter()
            step = make(params)
            step()
            sync()
            out[name] = {"first_s": time.perf_counter() - start}
            step()
            steps[name] = step
        except Exception as e:  # noqa: BLE001 - a peer's failure is a result
            out[name] = _error(e)
    times: dict = {name: [] for name in steps}
    order = random.Random(0)
    for _ in range(4 * repeats):
        for name in order.sample(list(steps), len(steps)):
            try:
                sync()
                t = time.perf_counter()
                steps[name]()
                sync()
                times[name].append(time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001
                out[name] = _error(e)
                del steps[name]
    for name, step in steps.items():
        out[name].update(ms=statistics.median(times[name]) * 1e3,
                         peak_mb=peak_extra_bytes(step, device) / 2**20)
    return out


def bandwidth_gbs(n: int, repeats: int = 7, device: str = "cpu") -> float:
    """Best streaming bandwidth over two arrays of ``n // 2`` float32, counting the bytes read
    and written. ``n`` is the float32 elements the step touches (its working set), so a step
    that fits in the caches is held to the caches' bandwidth, and one that does not, to the
    memory's. On the CPU: the best of a copy (2 streams) and an in-place add (3: read both
    arrays, write one back, the access pattern of an in-place optimizer step, which needs no
    write-allocate reads and so moves more bytes a second here). On a GPU: a device-to-device
    copy."""
    a, b = (torch.rand(n // 2, device=device) for _ in range(2))
    kernels = [(lambda: b.copy_(a), 2)]
    if device != "cuda":
        kernels.append((lambda: a.add_(b, alpha=1e-9), 3))
    sync, best = _sync(device), 0.0
    for _ in range(repeats):
        for kernel, streams in kernels:
            sync()
            t = time.perf_counter()
            kernel()
            sync()
            best = max(best, streams * 4 * (n // 2) / (time.perf_counter() - t))
    return best / 1e9


def optax_results(threads: int, repeats: int, python: str, suite: str = "speed") -> dict:
    """optax's rows (``bench_speed_optax.py``, a subprocess) for this suite or
    ``bench_functional.py``'s (``suite="functional"``)."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    cmd = [python, os.path.join(here, "bench_speed_optax.py"), str(repeats), "--suite", suite]
    if threads == 1:  # XLA_FLAGS alone does not keep XLA's CPU runtime on one core: pin it
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3000)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


IDENTITIES = (0, 1, 4)


def identity_cost(repeats: int, copies: int = 3, device: str = "cpu") -> list[dict]:
    """Cost of k identity transforms added to a chain, eager (default path) and compiled.

    Each of the six optimizers is built ``copies`` times, on buffers of its own: two copies of
    the same optimizer differ by up to 4% (where their memory landed), as much as an identity
    would, so each figure pools the steps of all its copies. The optimizers step in turn
    (``4 * repeats`` rounds, a new random order every round), so a drift of the machine's
    speed hits them alike."""
    shapes = layouts()["300 x 4096"]
    steps = {}
    for copy in range(copies):
        for k in IDENTITIES:
            for compiled in (False, True):
                tx = fo.chain(fo.scale_by_adam(), *[fo.identity() for _ in range(k)],
                              fo.add_decayed_weights(WD), fo.scale_by_learning_rate(LR))
                opt = foo.FunctionalOptimizer(_params(shapes, device), tx)
                if compiled:
                    opt.use_flat(compile=True)
                for _ in range(2):  # compile, then warm
                    opt.step()
                steps[k, compiled, copy] = opt.step
    times: dict = {key[:2]: [] for key in steps}
    order, sync = random.Random(0), _sync(device)
    for _ in range(4 * repeats):
        for key in order.sample(list(steps), len(steps)):
            sync()
            t = time.perf_counter()
            steps[key]()
            sync()
            times[key[:2]].append(time.perf_counter() - t)
    ms = {key: statistics.median(t) * 1e3 for key, t in times.items()}
    return [{"identities": k, "eager_ms": ms[k, False], "compiled_ms": ms[k, True]}
            for k in IDENTITIES]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--algos", default="adamw,sgd,chain")
    parser.add_argument("--out", default=None, help="path without extension (.md and .json)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--identity-only", action="store_true",
                        help="measure only the identity transforms' cost, into --out's results")
    parser.add_argument("--no-identity", action="store_true",
                        help="skip the identity transforms' cost")
    parser.add_argument("--skip", default="", metavar="NAMES",
                        help="implementations left out, comma-separated (a run that must fit a "
                             "GPU lease leaves out the slow compilations)")
    parser.add_argument("--note", default="", help="a paragraph for the results (what was left "
                        "out, the commit measured...)")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="join the rows of results files (runs of a suite in parts) into --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.merge:
        write({**merge(args.merge), "note": args.note}, args.out)
        return
    if args.identity_only:
        with open(args.out + ".json") as f:
            results = json.load(f)
        results["identity"] = identity_cost(args.repeats, device=args.device)
        print("identity transforms:", results["identity"], flush=True)
        write(results, args.out)
        return
    peers = set()
    for name in ("torchopt", "heavyball") + (("jax",) if args.device == "cpu" else ()):
        try:
            __import__(name)
            peers.add(name)
        except ImportError:
            pass
    # bandwidth by working set (float32 elements a step touches), measured before and after
    sets = {ARRAYS[algo] * numel(shapes) for algo in args.algos.split(",")
            for shapes in layouts().values()}
    bandwidth = {n: bandwidth_gbs(n, device=args.device) for n in sorted(sets)}
    print(f"streaming bandwidth (GB/s) {bandwidth}; peers: {sorted(peers)}", flush=True)
    optax = optax_results(args.threads, args.repeats, sys.executable) if "jax" in peers else {}
    gpu = f"; {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    results: dict = {"machine": machine() + gpu, "threads": args.threads, "device": args.device,
                     "note": args.note,
                     "peers": sorted(peers), "caches": os.environ.get(
                         "TORCHINDUCTOR_FORCE_DISABLE_CACHES") == "1", "runs": {}}
    for algo in args.algos.split(","):
        for layout, shapes in layouts().items():
            n = numel(shapes)
            bw = bandwidth[ARRAYS[algo] * n]
            bound_ms = BYTES_PER_PARAM[algo] * n / (bw * 1e9) * 1e3
            makes = {name: make for name, make in implementations(algo, peers, args.device).items()
                     if name not in args.skip.split(",")}
            row = measure_row(makes, shapes, args.repeats, args.device)
            if f"{algo}/{layout}" in optax:
                row["optax (JAX, jit, donated)"] = optax[f"{algo}/{layout}"]
            results["runs"][f"{algo}/{layout}"] = {"numel": n, "bound_ms": bound_ms,
                                                   "working_set_mb": ARRAYS[algo] * n * 4 / 1e6,
                                                   "bandwidth_gbs": bw, "results": row}
            fused = row["torch fused"]["ms"]
            print(f"\n{algo}, {layout}: bound {bound_ms:.2f} ms", flush=True)
            for name, r in row.items():
                if "error" in r:
                    print(f"  {name:38s} failed: {r['error']}", flush=True)
                    continue
                print(f"  {name:38s} {r['ms']:9.2f} ms  {r['ms'] / fused:5.2f}x fused  "
                      f"{r['ms'] / bound_ms:5.2f}x bound  first {r['first_s']:6.2f} s", flush=True)
    # the bound uses the best bandwidth seen, measured again at the end (noise only lowers it)
    for n in bandwidth:
        again = bandwidth_gbs(n, device=args.device)
        for key, run in results["runs"].items():
            if ARRAYS[key.split("/")[0]] * run["numel"] == n and again > run["bandwidth_gbs"]:
                run["bound_ms"] *= run["bandwidth_gbs"] / again
                run["bandwidth_gbs"] = again
    if not args.no_identity:
        results["identity"] = identity_cost(args.repeats, device=args.device)
        print("identity transforms:", results["identity"], flush=True)
    if args.out:
        write(results, args.out)


def merge(paths: list[str]) -> dict:
    """One results dict from a suite run in parts (each a process of its own, within a time
    limit): the first part's machine details, every part's rows, the identity cost from the
    part that measured it."""
    parts = []
    for path in paths:
        with open(path) as f:
            parts.append(json.load(f))
    out = {**parts[0], "runs": {}, "identity": None}
    for part in parts:
        out["runs"].update(part["runs"])
        out["identity"] = part.get("identity") or out["identity"]
    return out


def write(results: dict, out: str) -> None:
    with open(out + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(markdown(results))
    print(f"wrote {out}.md and .json")


BEST = ("ours default (eager)", "ours flat (eager)", "ours flat compiled",
        "ours captured (CUDA graph)")
SMALL = "300 x 4096"


def targets(results: dict) -> list[tuple[str, str, float, float]]:
    """``(target, workload, figure, limit)`` for every target a figure of ``results`` bears on
    (issue 7): the default eager path against torch foreach (<= 1.0) and, for the aliases with
    a fused kernel, against torch fused (<= 1.1); the best of ours against torch fused (<= 1.0,
    <= 0.5 on 300 x 4096) and, on the large layouts, against the bound (<= 1.05); an identity
    transform's cost (< 2% eager, <= 0% compiled)."""
    out = []
    for key, run in results["runs"].items():
        algo, layout = key.split("/")
        ms = {name: r["ms"] for name, r in run["results"].items() if "ms" in r}
        if "torch fused" not in ms or "ours default (eager)" not in ms:
            continue
        fused, default = ms["torch fused"], ms["ours default (eager)"]
        where = f"{algo}, {layout}"
        if "torch foreach" in ms:
            out.append(("default / torch foreach", where, default / ms["torch foreach"], 1.0))
        if algo != "chain":
            out.append(("default / torch fused", where, default / fused, 1.1))
        best = min(ms[name] for name in BEST if name in ms)
        out.append(("best / torch fused", where, best / fused, 0.5 if layout == SMALL else 1.0))
        if layout != SMALL:
            out.append(("best / bound", where, best / run["bound_ms"], 1.05))
    identity = {r["identities"]: r for r in results.get("identity") or []}
    for k in sorted(identity):
        for mode, limit in (("eager", 1.02), ("compiled", 1.0)):
            if k and 0 in identity:
                out.append((f"{k} identity transform(s), {mode}", f"chain, {SMALL}",
                            identity[k][f"{mode}_ms"] / identity[0][f"{mode}_ms"], limit))
    return out


def markdown(results: dict) -> str:
    where = ("CUDA" if results.get("device") == "cuda"
             else f"CPU, {results['threads']} thread(s)")
    bound = ("the device-to-device copy bandwidth" if results.get("device") == "cuda" else
             "the streaming bandwidth (best of a copy and an in-place add)")
    lines = [f"# Speed at the limit, {where}\n",
             f"Machine: {results['machine']}.  ",
             f"Peers installed: {', '.join(results['peers']) or 'none'}.\n",
             f"{results['note']}\n" if results.get("note") else "",
             "Median step time over rounds in which the implementations step in turn (each on its "
             "own copy of the layout, in a new random order every round); ratios to torch's fused "
             f"implementation and to the bandwidth bound (the bytes a step must move at {bound} "
             "measured in the same run over as many bytes as the step touches); time to first "
             "step (construction + compilation; inductor's caches were "
             f"{'off: cold compiles' if results['caches'] else 'on: warm where compiled before'})"
             "; peak extra memory of a step ('-' where not measurable).\n"]
    for key, run in results["runs"].items():
        algo, layout = key.split("/")
        fused = run["results"]["torch fused"]["ms"]
        touched = (f" over {run['working_set_mb']:.0f} MB" if "working_set_mb" in run else "")
        lines.append(f"\n## {algo}, {layout} ({run['numel'] / 1e6:.1f}M params; bound "
                     f"{run['bound_ms']:.2f} ms at {run['bandwidth_gbs']:.1f} GB/s{touched})\n")
        lines.append("| implementation | ms | vs torch fused | vs bound | first step (s) | "
                     "peak extra MB |\n|---|---|---|---|---|---|")
        for name, r in sorted(run["results"].items(), key=lambda kv: kv[1].get("ms", 1e30)):
            if "error" in r:
                lines.append(f"| {name} | failed: {r['error']} | | | | |")
                continue
            peak = f"{r['peak_mb']:.1f}" if r.get("peak_mb") is not None else "-"
            lines.append(f"| {name} | {r['ms']:.2f} | {r['ms'] / fused:.2f}x | "
                         f"{r['ms'] / run['bound_ms']:.2f}x | {r['first_s']:.2f} | {peak} |")
    lines += ["\n## Targets\n",
              "Each figure against its target, from the tables above (ours best: the fastest of "
              "ours default, flat, flat compiled and captured).\n",
              "| target | workload, layout | figure | limit | |\n|---|---|---|---|---|"]
    for target, where, value, limit in targets(results):
        verdict = "met" if value <= limit else f"missed by {value / limit - 1:.0%}"
        lines.append(f"| {target} | {where} | {value:.3f} | {limit:g} | {verdict} |")
    if not results.get("identity"):
        return "\n".join(lines) + "\n"
    lines.append("\n## Cost of identity transforms in a chain (adam -> k x identity -> decay -> "
                 "lr; 300 x 4096; three copies of each of the six optimizers step in turn, "
                 "median)\n")
    lines.append("| identities | eager ms | compiled ms |\n|---|---|---|")
    for r in results["identity"]:
        lines.append(f"| {r['identities']} | {r['eager_ms']:.2f} | {r['compiled_ms']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
