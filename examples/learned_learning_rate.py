"""Online meta-learning of the learning rate: hypergradient descent (Baydin et al., ICLR 2018).

At every step the learning rate ``α`` takes a gradient step of its own on the loss of the current
minibatch, seen as a function of ``α`` through the previous optimizer update:

    α_t = α_{t-1} - β · ∂ L(θ_t(α), batch_t) / ∂α,     θ_t(α) = step(θ_{t-1}, α)

For plain SGD that derivative is ``-∇L(θ_t) · ∇L(θ_{t-1})`` (the paper's SGD-HD); here it comes
from ``torch.func.grad`` through ``fo.meta.make_step``, so the same few lines learn the learning
rate of any transform (Adam-HD by default, ``--opt sgd`` for SGD-HD). The script compares
against the fixed initial learning rate and saves a plot of the learning rate and the loss
over time.

    python examples/learned_learning_rate.py [--steps 1500] [--opt adam|sgd] [--out examples/out]
"""

import argparse
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.func import grad_and_value  # noqa: E402

import functional_optim as fo  # noqa: E402
from functional_optim import meta  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--steps", type=int, default=1500)
p.add_argument("--opt", choices=["sgd", "adam"], default="adam")
p.add_argument("--lr0", type=float, default=None, help="initial lr (sgd 1e-3, adam 1e-4)")
p.add_argument("--beta", type=float, default=None, help="hyper-lr β (sgd 0.1, adam 1e-4)")
p.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "out")
args = p.parse_args()
lr0 = args.lr0 if args.lr0 is not None else (1e-3 if args.opt == "sgd" else 1e-4)
beta = args.beta if args.beta is not None else (0.1 if args.opt == "sgd" else 1e-4)

torch.set_num_threads(1)
torch.manual_seed(0)

# a small classification problem: two interleaved spirals, a 2-64-64-2 MLP
n = 2048
t = torch.rand(n) * 3 * torch.pi
label = torch.randint(0, 2, (n,))
r = t / (3 * torch.pi) + 0.05 * torch.randn(n)
X = torch.stack([r * torch.cos(t + torch.pi * label), r * torch.sin(t + torch.pi * label)], 1)
net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                          torch.nn.Tanh(), torch.nn.Linear(64, 2))
f = meta.functional(net)
params0 = meta.params_of(net)
batches = [torch.randint(0, n, (128,)) for _ in range(args.steps)]


def loss_fn(p, i):
    return torch.nn.functional.cross_entropy(f(p, X[i]), label[i])


tx = fo.sgd(lr=lr0) if args.opt == "sgd" else fo.adam(lr=lr0)
step = meta.make_step(loss_fn, tx)


def train(learn_lr):
    params, state = params0, tx.init(params0)
    lr = torch.tensor(lr0)
    prev = None  # (params, state, batch) before the previous step
    lrs, losses = [], []
    for i in batches:
        if learn_lr and prev is not None:
            def loss_after(lr, prev=prev, i=i):
                p_new, _, _ = step(*prev, hparams={"lr": lr})
                return loss_fn(p_new, i)

            hyper, _ = grad_and_value(loss_after)(lr)
            lr = torch.clamp(lr - beta * hyper, min=0.0)
        prev = (params, state, i)
        params, state, loss = step(params, state, i, hparams={"lr": lr})
        lrs.append(float(lr))
        losses.append(float(loss))
    return lrs, losses


fixed_lrs, fixed_losses = train(learn_lr=False)
hd_lrs, hd_losses = train(learn_lr=True)


def tail(xs):
    k = max(1, len(xs) // 10)
    return sum(xs[-k:]) / k


print(f"{args.opt} with fixed lr {lr0:g}: final loss {tail(fixed_losses):.4f}")
print(f"{args.opt}-HD (β={beta:g}): lr {lr0:g} -> {hd_lrs[-1]:.4g}, final loss "
      f"{tail(hd_losses):.4f}")

args.out.mkdir(parents=True, exist_ok=True)
fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
a1.plot(hd_lrs, label=f"{args.opt}-HD")
a1.axhline(lr0, color="gray", ls="--", label="fixed")
a1.set_xlabel("step")
a1.set_ylabel("learning rate")
a1.legend()
smooth = lambda xs: [sum(xs[max(0, j - 49):j + 1]) / len(xs[max(0, j - 49):j + 1])  # noqa: E731
                     for j in range(len(xs))]
a2.semilogy(smooth(fixed_losses), label=f"fixed lr {lr0:g}")
a2.semilogy(smooth(hd_losses), label=f"{args.opt}-HD")
a2.set_xlabel("step")
a2.set_ylabel("training loss (50-step mean)")
a2.legend()
fig.tight_layout()
fig.savefig(args.out / "learned_learning_rate.png", dpi=120)
print(f"wrote {args.out / 'learned_learning_rate.png'}")
