"""MAML sinusoid (Finn et al. 2017 §5.1): time of one meta-iteration, ours against the peers.

Variants, all on the same 1-40-40-1 ReLU net, K=10 support + 10 query points, one inner SGD step
(α = 0.01), second-order meta-gradient, meta-Adam(1e-3):

* ``fo vmap``       -- functional_optim: ``fo.meta.unroll`` inside one ``torch.func.vmap`` over
                       tasks, ``torch.func.grad`` for the meta-gradient, ``fo.adam`` outside;
* ``fo loop``       -- the same pure functions, a Python loop over tasks;
* ``torchopt``      -- torchopt's idiomatic MAML (``MetaSGD`` + ``extract/recover_state_dict``,
                       ``torch.optim.Adam`` outside), a loop over tasks;
* ``higher``        -- higher's idiomatic MAML (``innerloop_ctx``), a loop over tasks.

Then ``fo vmap`` against ``fo loop`` for 8/32/128 tasks. Every number is the median over
``--repeats`` blocks of ``--iters`` meta-iterations after a warm-up, all measured in this one run.
torchopt and higher are not dependencies of functional_optim: install them in a separate
environment (``benchmarks/setup_peers.sh``); when they cannot be imported the script says so and
runs the other variants.

    python benchmarks/maml_sinusoid.py [--iters 20] [--repeats 5] [--threads 1] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.func import grad_and_value, vmap  # noqa: E402

import functional_optim as fo  # noqa: E402
from functional_optim import meta  # noqa: E402

ALPHA, META_LR, K = 0.01, 1e-3, 10


def make_net():
    return torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 40),
                               torch.nn.ReLU(), torch.nn.Linear(40, 1))


def sample(n, gen):
    amp = torch.rand(n, 1, 1, generator=gen) * 4.9 + 0.1
    phase = torch.rand(n, 1, 1, generator=gen) * math.pi
    x = torch.rand(n, 2 * K, 1, generator=gen) * 10 - 5
    y = amp * torch.sin(x - phase)
    return x[:, :K], y[:, :K], x[:, K:], y[:, K:]


# ------------------------------------------------------------------ variants
# Each builder returns ``step(batch)`` doing one full meta-iteration (meta-gradient + update).


def fo_variant(use_vmap):
    net = make_net()
    f = meta.functional(net)
    state = {"params": meta.params_of(net)}
    inner = fo.sgd(lr=ALPHA)
    outer = fo.adam(lr=META_LR)
    state["opt"] = outer.init(state["params"])

    def mse(p, x, y):
        return ((f(p, x) - y) ** 2).mean()

    def task_loss(p, xs, ys, xq, yq):
        return mse(meta.unroll(mse, inner, p, batches=[(xs, ys)]).params, xq, yq)

    if use_vmap:
        def meta_loss(p, *b):
            return vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(p, *b).mean()
    else:
        def meta_loss(p, *b):
            n = b[0].shape[0]
            return sum(task_loss(p, *(t[i] for t in b)) for i in range(n)) / n

    g_and_v = grad_and_value(meta_loss)

    def step(batch):
        g, loss = g_and_v(state["params"], *batch)
        u, state["opt"] = outer.update(g, state["opt"], state["params"])
        state["params"] = fo.apply_updates(state["params"], u)
        return loss

    return step


def torchopt_variant():
    import torchopt

    net = make_net()
    inner_opt = torchopt.MetaSGD(net, lr=ALPHA)
    outer_opt = torch.optim.Adam(net.parameters(), lr=META_LR)

    def step(batch):
        xs, ys, xq, yq = batch
        outer_opt.zero_grad()
        snapshot = torchopt.extract_state_dict(net)
        total = 0.0
        for i in range(xs.shape[0]):
            inner_opt.step(((net(xs[i]) - ys[i]) ** 2).mean())
            loss = ((net(xq[i]) - yq[i]) ** 2).mean() / xs.shape[0]
            loss.backward()
            total += float(loss.detach())
            torchopt.recover_state_dict(net, snapshot)
        outer_opt.step()
        return total

    return step


def higher_variant():
    import higher

    net = make_net()
    inner_opt = torch.optim.SGD(net.parameters(), lr=ALPHA)
    outer_opt = torch.optim.Adam(net.parameters(), lr=META_LR)

    def step(batch):
        xs, ys, xq, yq = batch
        outer_opt.zero_grad()
        total = 0.0
        for i in range(xs.shape[0]):
            with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fnet, dopt):
                dopt.step(((fnet(xs[i]) - ys[i]) ** 2).mean())
                loss = ((fnet(xq[i]) - yq[i]) ** 2).mean() / xs.shape[0]
                loss.backward()
                total += float(loss.detach())
        outer_opt.step()
        return total

    return step


# ------------------------------------------------------------------ timing


def time_variant(step, tasks, iters, repeats, seed=0):
    gen = torch.Generator().manual_seed(seed)
    batches = [sample(tasks, gen) for _ in range(iters)]
    for b in batches[:3]:  # warm-up
        step(b)
    per_iter = []
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            step(b)
        per_iter.append((time.perf_counter() - start) / iters)
    return statistics.median(per_iter)


def machine_info():
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        lscpu = "\n".join(lscpu.splitlines()[:10])
    except OSError:
        lscpu = platform.processor()
    return lscpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=20, help="meta-iterations per timed block")
    ap.add_argument("--repeats", type=int, default=5, help="timed blocks (median reported)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tasks", type=int, default=25, help="tasks per meta-batch (paper: 25)")
    ap.add_argument("--sweep", type=int, nargs="*", default=[8, 32, 128],
                    help="task counts for vmap vs loop")
    ap.add_argument("--out", type=pathlib.Path, default=None, help="also write markdown here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    lines = ["# MAML sinusoid: time per meta-iteration", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
             f"python {platform.python_version()}; median of {args.repeats} blocks of "
             f"{args.iters} meta-iterations after a warm-up; all measured in one run "
             f"(load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs).", "",
             "```text", machine_info(), "```", ""]

    def say(line=""):
        print(line, flush=True)
        lines.append(line)

    variants = {"fo vmap": lambda: fo_variant(True), "fo loop": lambda: fo_variant(False)}
    notes = []
    for name, builder in (("torchopt", torchopt_variant), ("higher", higher_variant)):
        try:
            mod = __import__(name)
            notes.append(f"{name} {getattr(mod, '__version__', '(version unknown)')}")
            variants[name] = builder
        except Exception as e:  # noqa: BLE001 - report and carry on
            notes.append(f"{name}: NOT RUN ({type(e).__name__}: {e})")
    say(f"Peers: {'; '.join(notes)}")
    say()
    say(f"## {args.tasks} tasks per meta-batch (the paper's protocol), K={K}")
    say()
    say("| variant | ms / meta-iteration | vs fo vmap |")
    say("|---|---|---|")
    times = {}
    for name, builder in variants.items():
        try:
            times[name] = time_variant(builder(), args.tasks, args.iters, args.repeats)
        except Exception as e:  # noqa: BLE001
            say(f"| {name} | failed: {type(e).__name__}: {e} | |")
    for name, t in times.items():
        say(f"| {name} | {1e3 * t:.2f} | {t / times['fo vmap']:.2f}x |")
    say()
    say("## vmap over tasks vs a loop over tasks (functional_optim, same functions)")
    say()
    say("| tasks | fo vmap ms | fo loop ms | loop / vmap |")
    say("|---|---|---|---|")
    for n in args.sweep:
        iters = max(3, args.iters * 25 // max(n, 25))
        tv = time_variant(fo_variant(True), n, iters, args.repeats)
        tl = time_variant(fo_variant(False), n, iters, args.repeats)
        say(f"| {n} | {1e3 * tv:.2f} | {1e3 * tl:.2f} | {tl / tv:.1f}x |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
