"""A learning-rate sweep in one vmapped call: N copies of a small MLP, N learning rates.

``fo.meta.train_many`` runs ``N`` independent trainings (same initial weights, same batches,
one learning rate each) as a single ``torch.func.vmap`` over ``fo.meta.unroll``. The script
checks a few members against separate runs, times the sweep against a Python loop of separate
runs, and saves a plot of the final loss against the learning rate.

    python examples/hyperparameter_sweep.py [--n-lrs 32] [--steps 200] [--out examples/out]
"""

import argparse
import pathlib
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import functional_optim as fo  # noqa: E402
from functional_optim import meta  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--n-lrs", type=int, default=32, help="learning rates in the sweep")
p.add_argument("--steps", type=int, default=200, help="SGD-momentum steps per member")
p.add_argument("--batch", type=int, default=64)
p.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "out")
args = p.parse_args()

torch.set_num_threads(1)
torch.manual_seed(0)

# a nonlinear regression problem and a 2-32-32-1 MLP
X = torch.rand(1024, 2) * 4 - 2
Y = torch.sin(2 * X[:, :1]) * torch.cos(X[:, 1:]) + 0.05 * torch.randn(1024, 1)
net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32),
                          torch.nn.Tanh(), torch.nn.Linear(32, 1))
f = meta.functional(net)
params = meta.params_of(net)
idx = torch.randint(0, 1024, (args.steps, args.batch))
batches = [(X[i], Y[i]) for i in idx]


def loss_fn(p, x, y):
    return ((f(p, x) - y) ** 2).mean()


def full_loss(p):
    return loss_fn(p, X, Y)


tx = fo.sgd(lr=0.1, momentum=0.9)
lrs = torch.logspace(-3, 0, args.n_lrs)

meta.train_many(loss_fn, tx, params, {"lr": lrs}, batches=batches[:2])  # warm-up (first calls)
meta.unroll(loss_fn, tx, params, batches=batches[:2])
start = time.perf_counter()
swept = meta.train_many(loss_fn, tx, params, {"lr": lrs}, batches=batches)
t_vmap = time.perf_counter() - start
final = torch.vmap(full_loss)(swept.params)

# a few members against separate runs, and the loop's time per member
check = sorted({0, args.n_lrs // 2, args.n_lrs - 1})
start = time.perf_counter()
worst = 0.0
for i in check:
    one = meta.unroll(loss_fn, tx, params, hparams={"lr": lrs[i]}, batches=batches)
    if not bool(torch.isfinite(final[i])) or final[i] > 10:
        continue  # a diverged member: both runs blow up, their rounding differs hugely
    diff = max(float(((swept.params[k][i] - one.params[k]).abs()
                      / (1 + one.params[k].abs())).max()) for k in params)
    worst = max(worst, diff)
t_loop = (time.perf_counter() - start) / len(check) * args.n_lrs

finite = torch.isfinite(final)
best = int(torch.where(finite, final, torch.inf).argmin())
print(f"{args.n_lrs} learning rates x {args.steps} steps in one vmap: {t_vmap:.2f} s "
      f"(a loop of separate runs: ~{t_loop:.2f} s, {t_loop / t_vmap:.1f}x)")
print(f"max relative |vmapped - separate| over members {check}: {worst:.2e}")
print(f"best lr {lrs[best]:.4g}: final loss {final[best]:.4f}; "
      f"diverged: {int((~finite | (final > 10)).sum())} of {args.n_lrs}")
if worst > 1e-4:
    print("WARNING: the vmapped sweep does not match separate runs")

args.out.mkdir(parents=True, exist_ok=True)
fig, ax = plt.subplots(figsize=(5, 3.5))
shown = torch.where(finite, final, torch.nan).clamp(max=10)
ax.loglog(lrs, shown, "o-")
ax.set_xlabel("learning rate (SGD, momentum 0.9)")
ax.set_ylabel(f"loss after {args.steps} steps")
ax.set_title(f"{args.n_lrs}-point lr sweep, one vmap call")
fig.tight_layout()
fig.savefig(args.out / "hyperparameter_sweep.png", dpi=120)
print(f"wrote {args.out / 'hyperparameter_sweep.png'}")
