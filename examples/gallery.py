"""The optimizer gallery: every registered alias trains the same small MLP on scikit-learn's
digits, with a fixed budget of full-batch steps; the loss curves go to one plot, the results
to a Markdown table.

Each alias runs with its own default learning rate times 0.1, 0.3, 1, 3 and 10 (``--grid 3``:
0.3, 1, 3; ``--grid 1``: the default only); the best final training loss is shown. Every
alias gets the same keyword arguments at ``update`` (the loss ``value=`` and its ``grad=``,
``value_fn=``/``value_and_grad_fn=`` returning both, and the objective ``obj_fn=``, for the
algorithms that read them; the others ignore them), and per-example
gradients where its drop-in class reads them (``registry.DropInProtocol(gradient=
"grad_sample")``: DP-SGD). An alias that cannot run on this problem (sparse gradients only,
say) is listed with its error instead of a curve.

    python examples/gallery.py [--steps 200] [--grid 5] [--out examples/out] [--quick]

``--quick`` (the test) runs 3 steps per alias at its default rate.
"""

import argparse
import inspect
import math
import pathlib
from numbers import Number

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch.func import functional_call, grad_and_value  # noqa: E402
from tqdm import tqdm  # noqa: E402

import functional_optim as fo  # noqa: E402
from functional_optim import registry  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--steps", type=int, default=200, help="full-batch steps per run")
p.add_argument("--grid", type=int, choices=(1, 3, 5), default=5,
               help="learning rates per alias: the default times 1; 0.3, 1, 3; or 0.1 ... 10")
p.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "out")
p.add_argument("--quick", action="store_true", help="3 steps, the default rate (for tests)")
args = p.parse_args()
if args.quick:
    args.steps, args.grid = 3, 1

torch.set_num_threads(1)
torch.manual_seed(0)

# --- data: 8x8 digits, standardized, a fixed 80/20 split -------------------------------------
digits = load_digits()
X = torch.tensor(digits.data, dtype=torch.float32)
X = (X - X.mean(0)) / (X.std(0) + 1e-6)
Y = torch.tensor(digits.target)
order = torch.randperm(len(X))
train, test = order[: int(0.8 * len(X))], order[int(0.8 * len(X)):]

model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))
INIT = {k: v.detach().clone() for k, v in model.named_parameters()}


def loss_fn(params, idx=train):
    return torch.nn.functional.cross_entropy(functional_call(model, params, (X[idx],)), Y[idx])


def value_fn(params):
    """The loss and its gradient at ``params`` (torch's L-BFGS's ``value_fn=``, the line
    searches' ``value_and_grad_fn=``)."""
    grads, value = grad_and_value(loss_fn)(params)
    return value, grads


def per_example_grads(params):
    """One gradient per training example (the leading axis), for the aliases whose drop-in
    class reads ``p.grad_sample`` (DP-SGD)."""
    def one(x, y):
        return torch.func.grad(lambda p: torch.nn.functional.cross_entropy(
            functional_call(model, p, (x[None],)), y[None]))(params)

    return torch.func.vmap(one)(X[train], Y[train])


def accuracy(params):
    logits = functional_call(model, params, (X[test],))
    return (logits.argmax(1) == Y[test]).float().mean().item()


def default_lr(name):
    lr = inspect.signature(registry.entry(name).make).parameters.get("lr")
    value = None if lr is None else lr.default
    return value if isinstance(value, Number) and not isinstance(value, bool) else None


def run(name, lr):
    """Losses over the steps (NaN once diverged) and the final parameters."""
    tx = registry.get_optimizer(name) if lr is None else registry.get_optimizer(name, lr=lr)
    protocol = registry.entry(name).protocol
    per_example = protocol is not None and protocol.gradient == "grad_sample"
    params = dict(INIT)
    state = tx.init(params)
    losses = []
    for _ in range(args.steps):
        grads, value = grad_and_value(loss_fn)(params)
        losses.append(value.item())
        if not math.isfinite(losses[-1]):
            break
        if per_example:
            grads = per_example_grads(params)
        updates, state = tx.update(grads, state, params, value=value, grad=grads,
                                   value_fn=value_fn, value_and_grad_fn=value_fn,
                                   obj_fn=loss_fn)
        params = fo.apply_updates(params, updates)
    return losses, params


GRIDS = {1: (1.0,), 3: (0.3, 1.0, 3.0), 5: (0.1, 0.3, 1.0, 3.0, 10.0)}
results = {}
names = registry.names()
for name in tqdm(names, desc="gallery", unit="alias"):
    base = default_lr(name)
    lrs = [base] if base is None else [base * f for f in GRIDS[args.grid]]
    best = None
    for lr in lrs:
        try:
            losses, params = run(name, lr)
        except Exception as err:  # noqa: BLE001 - an alias this problem does not suit
            best = best or (None, None, None, f"{type(err).__name__}: {str(err)[:90]}")
            continue
        final = losses[-1] if losses else math.inf
        if best is None or best[0] is None or (math.isfinite(final) and final < best[2]):
            best = (losses, lr, final if math.isfinite(final) else math.inf, params)
    results[name] = best

# --- the plot: one small panel per alias, Adam's curve in grey in each -------------------------
ran = [n for n in names if results[n][0] is not None]
cols = 6
rows = max(1, math.ceil(len(ran) / cols))
fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.0 * rows), sharex=True, sharey=True,
                         squeeze=False)
reference = results.get("adam", (None,))[0]
for ax, name in zip(axes.flat, ran):
    losses, lr, _, _ = results[name]
    if reference:
        ax.plot(reference, color="0.75", lw=1)
    ax.plot(losses, color="C0", lw=1.2)
    ax.set_title(f"{name}" + (f" (lr {lr:.2g})" if lr is not None else ""), fontsize=8)
    ax.set_yscale("log")
    ax.tick_params(labelsize=6)
for ax in list(axes.flat)[len(ran):]:
    ax.axis("off")
fig.suptitle(f"digits, MLP 64-64-10, {args.steps} full-batch steps: training loss "
             "(grey: adam)", fontsize=10)
fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
args.out.mkdir(parents=True, exist_ok=True)
fig.savefig(args.out / "gallery.png", dpi=90)

# --- the table --------------------------------------------------------------------------------
lines = ["| alias | lr | final training loss | test accuracy |", "|---|---|---|---|"]
for name in names:
    losses, lr, final, last = results[name]
    if losses is None:
        lines.append(f"| `{name}` | | not run: {last} | |")
        continue
    rate = "default" if lr is None else f"{lr:.3g}"
    acc = f"{accuracy(last):.3f}" if math.isfinite(final) else "diverged"
    lines.append(f"| `{name}` | {rate} | {final:.4f} | {acc} |")
(args.out / "gallery.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"wrote {args.out / 'gallery.png'} and {args.out / 'gallery.md'}")
