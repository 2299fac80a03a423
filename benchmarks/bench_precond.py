"""Step time and state memory of SOAP, Shampoo and PSGD-Kron: the drop-in classes against
heavyball's and pytorch_optimizer's implementations, same run, on a small GPT-like parameter
layout (embedding, attention and MLP matrices, norms and biases).

Peers (not dependencies of functional_optim) come from a separate environment, e.g. the one
``benchmarks/setup_peers.sh`` makes plus ``pip install --no-deps pytorch-optimizer``:

    OMP_NUM_THREADS=1 python benchmarks/bench_precond.py benchmarks/results/precond_cpu.json

Run it under a memory limit (``ulimit -v``): a peer's PSGD-Kron may try to allocate far more
than the machine has (heavyball's asked for 51 GB on this layout); its failure is recorded.

Each optimizer steps ``STEPS`` times on fixed random gradients after ``WARMUP`` steps (the first
ones build the preconditioners; heavyball compiles nothing here: its compile mode is turned
off, as a CPU run needs); the median step time is reported (ours with the default tensor-select
refresh, which decomposes at every step, and with ``host_refresh=True``, which decomposes only
when due), and the state's bytes per
parameter element (every tensor in ``optimizer.state``). Refresh periods are set alike
(``precondition_frequency=10``; PSGD-Kron fits at every step).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from functional_optim import optim as fo_optim

WIDTH, VOCAB, LAYERS = 128, 512, 2
STEPS, WARMUP = 20, 3


def layout() -> list:
    """The parameter shapes of a GPT-like model."""
    shapes = [(VOCAB, WIDTH)]
    for _ in range(LAYERS):
        shapes += [(WIDTH,), (WIDTH,), (3 * WIDTH, WIDTH), (3 * WIDTH,), (WIDTH, WIDTH),
                   (WIDTH,), (WIDTH,), (WIDTH,), (4 * WIDTH, WIDTH), (4 * WIDTH,),
                   (WIDTH, 4 * WIDTH), (WIDTH,)]
    return shapes + [(WIDTH,), (WIDTH,)]


def state_bytes(opt) -> int:
    seen, total = set(), 0

    def walk(x):
        nonlocal total
        if isinstance(x, torch.Tensor):
            if x.data_ptr() not in seen:
                seen.add(x.data_ptr())
                total += x.numel() * x.element_size()
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    for s in opt.state.values():
        walk(s)
    return total


def candidates() -> dict:
    out = {
        "SOAP": {"functional_optim": lambda ps: fo_optim.SOAP(ps, lr=1e-3,
                                                               precondition_frequency=10),
                 "functional_optim host_refresh": lambda ps: fo_optim.SOAP(
                     ps, lr=1e-3, precondition_frequency=10, host_refresh=True)},
        "Shampoo": {"functional_optim": lambda ps: fo_optim.Shampoo(
            ps, lr=1e-3, precondition_frequency=10),
                    "functional_optim host_refresh": lambda ps: fo_optim.Shampoo(
            ps, lr=1e-3, precondition_frequency=10, host_refresh=True)},
        "PSGD-Kron": {"functional_optim": lambda ps: fo_optim.PSGDKron(ps, lr=1e-3)},
    }
    try:
        import heavyball
        heavyball.utils.compile_mode = None
        out["SOAP"]["heavyball"] = lambda ps: heavyball.SOAP(ps, lr=1e-3,
                                                             precondition_frequency=10)
        out["PSGD-Kron"]["heavyball"] = lambda ps: heavyball.PSGDKron(
            ps, lr=1e-3, preconditioner_update_probability=1.0)
    except ImportError:
        pass
    try:
        import pytorch_optimizer as po
        out["SOAP"]["pytorch_optimizer"] = lambda ps: po.SOAP(ps, lr=1e-3,
                                                              precondition_frequency=10)
        out["Shampoo"]["pytorch_optimizer"] = lambda ps: po.ScalableShampoo(
            ps, lr=1e-3, preconditioning_compute_steps=10)
        out["PSGD-Kron"]["pytorch_optimizer"] = lambda ps: po.Kron(
            ps, lr=1e-3, pre_conditioner_update_probability=1.0)
    except ImportError:
        pass
    return out


def measure(make) -> dict:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02) for s in layout()]
    grads = [torch.randn(s, generator=gen) for s in layout()]
    opt = make(params)
    times = []
    for i in range(WARMUP + STEPS):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        start = time.perf_counter()
        opt.step()
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    numel = sum(p.numel() for p in params)
    return {"ms": 1e3 * statistics.median(times), "state_bytes_per_param":
            state_bytes(opt) / numel}


def main(dst: str) -> None:
    torch.set_num_threads(1)
    results = {}
    for algo, impls in candidates().items():
        for name, make in impls.items():
            try:
                results[f"{algo}/{name}"] = measure(make)
            except Exception as error:  # a peer's failure is a result, not a crash
                results[f"{algo}/{name}"] = {"error": f"{type(error).__name__}: {error}"}
            print(algo, name, results[f"{algo}/{name}"], flush=True)
    with open(dst, "w") as f:
        json.dump({"layout": layout(), "steps": STEPS, "warmup": WARMUP, "results": results},
                  f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
