"""Convergence of the preconditioners against AdamW, Muon and schedule-free AdamW on a tiny
character language model trained on generated text (a seeded second-order Markov source: no
download), through the drop-in classes. Each optimizer runs with the best learning rate of a
small sweep (by final training loss); the chart draws the training loss against the step and
against the wall time (one CPU thread; the machine's load shows in the latter).

    OMP_NUM_THREADS=1 python benchmarks/convergence_precond.py \\
        benchmarks/results/convergence_precond.json benchmarks/results/convergence_precond.png
"""

from __future__ import annotations

import json
import sys
import time

import matplotlib
import torch

from functional_optim import optim as fo_optim

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

VOCAB, CONTEXT, WIDTH, HIDDEN = 16, 8, 16, 64
STEPS, BATCH, SEED = 300, 128, 0
LRS = (1e-3, 3e-3, 1e-2, 3e-2)


def corpus(n: int = 50_000) -> torch.Tensor:
    """Text of a random second-order Markov source: each pair of characters picks the next
    from a peaked distribution (a few likely successors)."""
    gen = torch.Generator().manual_seed(SEED)
    logits = 3.0 * torch.randn(VOCAB, VOCAB, VOCAB, generator=gen)
    probs = torch.softmax(logits, -1)
    text = torch.zeros(n, dtype=torch.long)
    for i in range(2, n):
        text[i] = torch.multinomial(probs[text[i - 2], text[i - 1]], 1, generator=gen)
    return text


def batches(text: torch.Tensor):
    gen = torch.Generator().manual_seed(SEED + 1)
    while True:
        start = torch.randint(0, len(text) - CONTEXT - 1, (BATCH,), generator=gen)
        idx = start[:, None] + torch.arange(CONTEXT + 1)
        window = text[idx]
        yield window[:, :-1], window[:, -1]


def model() -> torch.nn.Module:
    torch.manual_seed(SEED)
    return torch.nn.Sequential(torch.nn.Embedding(VOCAB, WIDTH), torch.nn.Flatten(),
                               torch.nn.Linear(CONTEXT * WIDTH, HIDDEN), torch.nn.Tanh(),
                               torch.nn.Linear(HIDDEN, VOCAB))


def optimizers(net: torch.nn.Module, name: str, lr: float) -> list:
    params = list(net.parameters())
    if name == "AdamW":
        return [fo_optim.AdamW(params, lr=lr, weight_decay=0.01)]
    if name == "Muon":  # matrices by Muon, the rest by AdamW (torch's Muon is 2-D only)
        mats = [p for p in params if p.ndim == 2]
        rest = [p for p in params if p.ndim != 2]
        return [fo_optim.Muon(mats, lr=10 * lr, weight_decay=0.01),
                fo_optim.AdamW(rest, lr=lr, weight_decay=0.01)]
    if name == "ScheduleFreeAdamW":
        return [fo_optim.ScheduleFreeAdamW(params, lr=lr)]
    if name == "SOAP":
        return [fo_optim.SOAP(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.01,
                              precondition_frequency=10)]
    if name == "Shampoo":
        return [fo_optim.Shampoo(params, lr=lr, weight_decay=0.01, precondition_frequency=10)]
    if name == "PSGDKron":
        return [fo_optim.PSGDKron(params, lr=lr, weight_decay=0.01)]
    raise ValueError(name)


def describe(name: str, lr: float) -> str:
    if name == "Muon":
        return f"lr {10 * lr:g}, AdamW {lr:g} on the rest"
    return f"lr {lr:g}"


def run(name: str, lr: float, text: torch.Tensor) -> dict:
    net = model()
    opts = optimizers(net, name, lr)
    data = batches(text)
    losses, times = [], []
    start = time.perf_counter()
    for _ in range(STEPS):
        x, y = next(data)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        for opt in opts:
            opt.zero_grad()
        loss.backward()
        for opt in opts:
            opt.step()
        losses.append(float(loss.detach()))
        times.append(time.perf_counter() - start)
    return {"lr": lr, "label": describe(name, lr), "loss": losses, "seconds": times}


def smooth(xs: list, k: int = 10) -> list:
    return [sum(xs[max(0, i - k + 1):i + 1]) / len(xs[max(0, i - k + 1):i + 1])
            for i in range(len(xs))]


def main(dst_json: str, dst_png: str) -> None:
    torch.set_num_threads(1)
    text = corpus()
    names = ["AdamW", "Muon", "ScheduleFreeAdamW", "SOAP", "Shampoo", "PSGDKron"]
    best = {}
    for name in names:
        runs = [run(name, lr, text) for lr in LRS]
        best[name] = min(runs, key=lambda r: sum(r["loss"][-20:]))
        print(f"{name}: {best[name]['label']}, final loss "
              f"{sum(best[name]['loss'][-20:]) / 20:.4f}, {best[name]['seconds'][-1]:.2f} s",
              flush=True)
    with open(dst_json, "w") as f:
        json.dump({"steps": STEPS, "batch": BATCH, "lrs": LRS, "runs": best}, f)
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (name, r) in enumerate(best.items()):
        label = f"{name} ({r['label']})"
        a.plot(range(1, STEPS + 1), smooth(r["loss"]), label=label, color=plt.cm.tab10(i))
        b.plot(r["seconds"], smooth(r["loss"]), label=label, color=plt.cm.tab10(i))
    a.set(xlabel="step", ylabel="training loss (mean of 10 steps)", yscale="log")
    b.set(xlabel="wall time (s, one CPU thread)", yscale="log")
    a.legend()
    fig.suptitle("Tiny character LM on a generated second-order Markov text")
    fig.tight_layout()
    fig.savefig(dst_png, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:3])
