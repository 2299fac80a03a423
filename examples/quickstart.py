"""Quickstart: train a small MLP with functional_optim, side by side with torch.optim.AdamW.

Five runs from the same initial weights on the same data, a step of each in turn (so that
their step times are measured under the same conditions):

  * ``fo chain``   -- fo.chain(clip, adam, decoupled weight decay, warmup-cosine learning rate)
  * ``fo.adamw``   -- the functional AdamW alias, constant learning rate, pure (new trees):
    ``tx.update`` then ``fo.apply_updates``
  * ``fo.adamw step`` -- the same step in one pure call, ``fo.step(...)``: torch's fused
    kernel on copies of the parameters and state (the inputs untouched)
  * ``fo.adamw donated`` -- the same step with ``fo.step(..., donate=True)``: the old
    parameters and state are given up, so the step updates them in place
  * ``torch AdamW`` -- torch.optim.AdamW with the same hyperparameters as ``fo.adamw``

``fo.adamw`` and ``torch.optim.AdamW`` run the same algorithm, so their curves overlap. The
script prints final losses, the median time of one optimizer step and its ratio to
torch.optim.AdamW's, and how far apart the fo.adamw and torch.optim.AdamW parameters ended up;
it saves the loss curves to a PNG. (docs/performance.md: the three ways to run a functional
step, and when to use which.)

    python examples/quickstart.py [--steps 500] [--out examples/out]
"""

import argparse
import copy
import pathlib
import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.func import functional_call, grad_and_value  # noqa: E402
from tqdm import tqdm  # noqa: E402

import functional_optim as fo  # noqa: E402

LR, BETAS, EPS, WD = 3e-3, (0.9, 0.999), 1e-8, 1e-2

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--steps", type=int, default=500, help="optimizer steps per run")
p.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "out")
args = p.parse_args()

# float64 so that fo.adamw and torch.optim.AdamW agree to ~1e-10 for the whole run. (In float32
# they differ only by rounding, but constant-lr Adam amplifies that over hundreds of steps.)
torch.set_default_dtype(torch.float64)
# A model this small runs fastest on one thread: more threads only add synchronisation (and,
# on a busy 2-core machine, can make the run many times slower).
torch.set_num_threads(1)
torch.manual_seed(0)

# --- data: a nonlinear function of two variables, plus a little noise ----------------------
X = torch.rand(2048, 2) * 4 - 2
Y = (torch.sin(2 * X[:, :1]) * torch.cos(3 * X[:, 1:]) + 0.1 * X[:, :1] ** 2
     + 0.05 * torch.randn(2048, 1))

model = torch.nn.Sequential(
    torch.nn.Linear(2, 64), torch.nn.Tanh(),
    torch.nn.Linear(64, 64), torch.nn.Tanh(),
    torch.nn.Linear(64, 1),
)
params0 = {k: v.detach().clone() for k, v in model.named_parameters()}


def loss_fn(params, x, y):
    return torch.nn.functional.mse_loss(functional_call(model, params, (x,)), y)


loss_and_grad = grad_and_value(loss_fn)  # returns (grads, loss); grads is a dict like params


def functional_run(tx, how="update"):
    """Full-batch training with a transform: no optimizer object, just trees. Pure (new trees
    every step: ``how="update"``, update then apply; ``"step"``, one call) or donated
    (``"donated"``: the old trees given up, updated in place; the same numbers). Returns the
    run's state and its ``step()``, which trains one step and records its loss and the time of
    the optimizer step alone."""
    run = {"params": {k: v.clone() for k, v in params0.items()}, "losses": [], "times": []}
    run["state"] = tx.init(run["params"])

    def step():
        params, state = run["params"], run["state"]
        grads, loss = loss_and_grad(params, X, Y)
        t0 = time.perf_counter()
        if how == "donated":
            params, state = fo.step(tx, grads, state, params, donate=True)
        elif how == "step":
            params, state = fo.step(tx, grads, state, params)  # pure: new trees
        else:
            updates, state = tx.update(grads, state, params)  # pure: returns new trees
            params = fo.apply_updates(params, updates)
        run["times"].append(time.perf_counter() - t0)
        run["losses"].append(loss.item())
        run["params"], run["state"] = params, state

    return run, step


def torch_adamw_run():
    """The same training loop with the stateful torch.optim.AdamW."""
    net = copy.deepcopy(model)
    net.load_state_dict(params0)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
    run = {"params": dict(net.named_parameters()), "losses": [], "times": []}

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(X), Y)
        loss.backward()
        t0 = time.perf_counter()
        opt.step()
        run["times"].append(time.perf_counter() - t0)
        run["losses"].append(loss.item())

    return run, step


warmup = max(1, args.steps // 10)
schedule = fo.schedules.warmup_cosine_decay(0.0, LR, warmup, args.steps)
chain = fo.chain(
    fo.clip_by_global_norm(1.0),
    fo.scale_by_adam(betas=BETAS, eps=EPS),
    fo.add_decayed_weights(WD),
    fo.scale_by_learning_rate(schedule),
)
adamw = fo.adamw(lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)
made = {
    "fo chain": functional_run(chain),
    "fo.adamw": functional_run(adamw),
    "fo.adamw step": functional_run(adamw, how="step"),
    "fo.adamw donated": functional_run(adamw, how="donated"),
    "torch AdamW": torch_adamw_run(),
}
# The five runs step in turn, a step of each per round, in a rotating order: each step's time
# is measured under the same conditions as the others' (the machine's speed drifts over a run).
steppers = list(made.values())
for i in tqdm(range(args.steps), desc="training the five runs"):
    for _, step in steppers[i % len(steppers):] + steppers[:i % len(steppers)]:
        step()
runs = {name: (run["losses"], run["times"], {k: v.detach() for k, v in run["params"].items()})
        for name, (run, _) in made.items()}

# --- report -------------------------------------------------------------------------------
print(f"\n{'optimizer':<46} {'final loss':>12} {'median step':>14} {'vs torch':>9}")
labels = {
    "fo chain": "fo.chain(clip, adam, wd, warmup-cosine), pure",
    "fo.adamw": "fo.adamw, pure (update + apply_updates)",
    "fo.adamw step": "fo.adamw, pure (fo.step)",
    "fo.adamw donated": "fo.adamw, donated (fo.step(donate=True))",
    "torch AdamW": "torch.optim.AdamW",
}
torch_step = statistics.median(runs["torch AdamW"][1])
for name, (losses, times, _) in runs.items():
    step = statistics.median(times)
    print(f"{labels[name]:<46} {losses[-1]:>12.5f} {step * 1e6:>11.1f} us "
          f"{step / torch_step:>8.2f}x")
fo_p, th_p = runs["fo.adamw"][2], runs["torch AdamW"][2]
diff = max((fo_p[k] - th_p[k]).abs().max().item() for k in fo_p)
scale = max(th_p[k].abs().max().item() for k in th_p)
print(f"\nfo.adamw vs torch.optim.AdamW after {args.steps} steps: max |param difference| = "
      f"{diff:.2e} (parameters up to {scale:.2f}).")
print("Same algorithm, same hyperparameters: the two curves overlap; "
      "the difference is float64 rounding." if diff <= 1e-6 * max(scale, 1.0) else
      "WARNING: fo.adamw and torch.optim.AdamW diverged more than rounding explains.")
for other in ("fo.adamw step", "fo.adamw donated"):
    gap = max((runs[other][2][k] - fo_p[k]).abs().max().item() for k in fo_p)
    print(f"{other} vs fo.adamw: max |param difference| = {gap:.2e}" + (
        "" if gap <= 1e-6 * max(scale, 1.0) else " WARNING: more than rounding explains"))

# --- plot ---------------------------------------------------------------------------------
args.out.mkdir(parents=True, exist_ok=True)
fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
styles = {"fo chain": ("C0", "-", 2), "fo.adamw": ("C1", "-", 3),
          "fo.adamw step": ("C3", "-.", 2), "fo.adamw donated": ("C2", ":", 2),
          "torch AdamW": ("k", "--", 1.2)}
for name, (losses, _, _) in runs.items():
    color, ls, lw = styles[name]
    ax_loss.plot(losses, color=color, ls=ls, lw=lw, label=labels[name])
ax_loss.set(yscale="log", xlabel="step", ylabel="training MSE", title="Loss")
ax_loss.legend()
steps = torch.arange(args.steps)
ax_lr.plot(steps, [schedule(s).item() for s in steps], color="C0", lw=2, label="fo chain")
ax_lr.plot(steps, [LR] * args.steps, color="C1", lw=2, label="AdamW (both)")
ax_lr.set(xlabel="step", ylabel="learning rate", title="Learning rate")
ax_lr.legend()
fig.tight_layout()
png = args.out / "quickstart.png"
fig.savefig(png, dpi=120)
print(f"saved {png}")
