"""Convergence of a bfloat16 model under each precision policy, against float32.

A 64-128-10 MLP learns scikit-learn's digits with AdamW (the drop-in class, minibatches of 64,
the same batches for every run) in float32, and in bfloat16 (weights, activations, gradients;
the optimizer state in bfloat16 unless said) with each way of writing the parameters and the
state:

- ``bf16 naive``: no policy: AdamW's math in bfloat16, as a bf16 model gets by default;
- ``bf16 round``: ``use_precision()``: the math in float32, parameters and state rounded to
  nearest;
- ``bf16 stochastic``: ``use_precision(stochastic_rounding=True)``: parameters and state
  rounded stochastically;
- ``bf16 kahan``: ``use_precision(params="kahan")`` (a bf16 compensation per parameter; state
  to nearest), and ``bf16 kahan, SR state`` with ``stochastic_rounding=True`` (the state
  stochastically);
- ``bf16 master, fp32 state``: ``use_precision("fp32", params="master")`` (a float32 copy of
  the parameters, float32 moments: classic mixed precision);

and a control, ``float32, bf16 compute``: float32 parameters and optimizer, the forward and
backward passes under ``torch.autocast`` to bfloat16: what computing the model in bfloat16 costs
with an exact optimizer (the floor that no optimizer policy of a bfloat16 model goes below).

The training loss (cross-entropy on the whole training split, evaluated in float32 from the
parameters as they are) is recorded every ``--every`` steps; the final losses (mean and spread
over ``--seeds`` seeds) and test accuracies go to a Markdown table, the curves to a plot.

    PYTHONPATH=. python benchmarks/precision_convergence.py [--steps 3000] [--lr 3e-4]
        [--seeds 3] [--out benchmarks/results]

scikit-learn provides the data (``pip install scikit-learn``; the results here were made with
it installed outside the repository's environment, on ``PYTHONPATH``).
"""

import argparse
import json
import pathlib
import platform
import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from functional_optim.optim import AdamW  # noqa: E402

POLICIES = {  # name: (parameter dtype, use_precision's arguments or None)
    "float32": (torch.float32, None),
    "float32, bf16 compute": (torch.float32, None),  # (the control: autocast, below)
    "bf16 naive": (torch.bfloat16, None),
    "bf16 round": (torch.bfloat16, {}),
    "bf16 stochastic": (torch.bfloat16, {"stochastic_rounding": True}),
    "bf16 kahan": (torch.bfloat16, {"params": "kahan"}),
    "bf16 kahan, SR state": (torch.bfloat16, {"params": "kahan", "stochastic_rounding": True}),
    "bf16 master, fp32 state": (torch.bfloat16, {"params": "master", "state_dtype": "fp32"}),
}

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--steps", type=int, default=3000)
p.add_argument("--lr", type=float, default=3e-4)
p.add_argument("--weight-decay", type=float, default=0.01)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--every", type=int, default=50, help="steps between loss evaluations")
p.add_argument("--seeds", type=int, default=3)
p.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results")
args = p.parse_args()
torch.set_num_threads(1)

digits = load_digits()
X = torch.tensor(digits.data, dtype=torch.float32)
X = (X - X.mean(0)) / (X.std(0) + 1e-6)
Y = torch.tensor(digits.target)
order = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
train, test = order[: int(0.8 * len(X))], order[int(0.8 * len(X)):]


def make_model(seed: int, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(),
                                torch.nn.Linear(128, 10))
    return model.to(dtype)


@torch.no_grad()
def evaluate(model: torch.nn.Module) -> tuple[float, float]:
    """Training loss and test accuracy in float32, from the parameters as they are."""
    w1, b1, w2, b2 = (q.float() for q in model.parameters())

    def logits(x):
        return torch.tanh(x @ w1.T + b1) @ w2.T + b2

    loss = torch.nn.functional.cross_entropy(logits(X[train]), Y[train]).item()
    accuracy = (logits(X[test]).argmax(1) == Y[test]).float().mean().item()
    return loss, accuracy


def run(name: str, seed: int) -> dict:
    dtype, policy = POLICIES[name]
    model = make_model(seed, dtype)
    opt = AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    if policy is not None:
        opt.use_precision(seed=seed, **policy)
    batches = torch.Generator().manual_seed(1000 + seed)
    curve = [evaluate(model)[0]]
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = train[torch.randint(len(train), (args.batch,), generator=batches)]
        with torch.autocast("cpu", torch.bfloat16, enabled=name == "float32, bf16 compute"):
            logits = model(X[idx].to(dtype)).float()
        loss = torch.nn.functional.cross_entropy(logits, Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0:
            curve.append(evaluate(model)[0])
    seconds = time.perf_counter() - start
    final, accuracy = evaluate(model)
    return {"curve": curve, "final_loss": final, "test_accuracy": accuracy, "seconds": seconds}


results = {name: [run(name, seed) for seed in range(args.seeds)] for name in POLICIES}

args.out.mkdir(parents=True, exist_ok=True)
reference = statistics.mean(r["final_loss"] for r in results["float32"])
rows = []
for name, runs in results.items():
    finals = [r["final_loss"] for r in runs]
    mean = statistics.mean(finals)
    spread = statistics.stdev(finals) if len(finals) > 1 else 0.0
    accuracy = statistics.mean(r["test_accuracy"] for r in runs)
    rows.append(f"| {name} | {mean:.4f} ± {spread:.4f} | {100 * (mean / reference - 1):+.1f}% | "
                f"{100 * accuracy:.1f}% |")

setup = (f"AdamW(lr={args.lr}, weight_decay={args.weight_decay}), {args.steps} steps of "
         f"minibatches of {args.batch}, MLP 64-128-10 (tanh) on scikit-learn's digits (80/20 "
         f"split), {args.seeds} seeds")
table = "\n".join([
    "# Precision policies: convergence (bfloat16 vs float32)",
    "",
    f"{setup}; torch {torch.__version__}, {platform.processor() or platform.machine()}, one "
    "thread. Final training loss (cross-entropy on the training split, evaluated in float32 "
    "from the parameters as stored): mean ± standard deviation over the seeds, and relative to "
    "float32's mean; test accuracy (mean). Produced by `benchmarks/precision_convergence.py`.",
    "",
    "| policy | final training loss | vs float32 | test accuracy |",
    "|---|---|---|---|",
    *rows,
    "",
])
(args.out / "precision_convergence.md").write_text(table)
(args.out / "precision_convergence.json").write_text(json.dumps(
    {"setup": setup, "args": {k: str(v) for k, v in vars(args).items()},
     "results": results}, indent=1))

fig, ax = plt.subplots(figsize=(7, 4.5))
for name, runs in results.items():
    steps = [args.every * i for i in range(len(runs[0]["curve"]))]
    mean_curve = [statistics.mean(c) for c in zip(*(r["curve"] for r in runs))]
    ax.plot(steps, mean_curve, label=name, linestyle="--" if name == "float32" else "-")
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_ylabel("training loss (mean over seeds)")
ax.set_title("digits MLP, AdamW: bfloat16 policies vs float32")
ax.legend()
fig.tight_layout()
fig.savefig(args.out / "precision_convergence.png", dpi=110)
print(table)
