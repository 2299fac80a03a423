"""Draw every schedule of functional_optim.schedules into docs/img/schedules.png.

Run from the repository root: ``python docs/make_schedule_gallery.py``.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from functional_optim import schedules as s  # noqa: E402

N = 300
GALLERY = {
    "constant": s.constant(1.0),
    "linear": s.linear(1.0, 0.1, 200, 50),
    "polynomial (p=2)": s.polynomial(1.0, 0.0, 2.0, 250),
    "exponential_decay (staircase)": s.exponential_decay(1.0, 40, 0.6, staircase=True),
    "cosine_decay (exponent 2)": s.cosine_decay(1.0, 250, alpha=0.1, exponent=2.0),
    "warmup_cosine_decay": s.warmup_cosine_decay(0.0, 1.0, 30, 300, 0.05),
    "warmup_constant": s.warmup_constant(0.0, 1.0, 50),
    "warmup_exponential_decay": s.warmup_exponential_decay(0.0, 1.0, 30, 40, 0.6),
    "piecewise_constant": s.piecewise_constant(1.0, {80: 0.5, 160: 0.4, 240: 0.5}),
    "piecewise_interpolate (cosine)": s.piecewise_interpolate("cosine", 0.2,
                                                              {60: 5.0, 200: 0.1, 260: 2.0}),
    "join": s.join([s.linear(0.0, 1.0, 50), s.constant(1.0), s.cosine_decay(1.0, 150)],
                   [50, 150]),
    "sgdr": s.sgdr([dict(init_value=0.0, peak_value=1.0, warmup_steps=10, decay_steps=100),
                    dict(init_value=0.0, peak_value=0.6, warmup_steps=10, decay_steps=200)]),
    "cosine_onecycle": s.cosine_onecycle(N, 1.0),
    "linear_onecycle": s.linear_onecycle(N, 1.0),
    "step_lr": s.step_lr(1.0, 60, 0.5),
    "multistep_lr": s.multistep_lr(1.0, [100, 150, 250], 0.3),
    "constant_lr": s.constant_lr(1.0, 0.25, 80),
    "linear_lr": s.linear_lr(1.0, 0.1, 1.0, 150),
    "exponential_lr": s.exponential_lr(1.0, 0.99),
    "polynomial_lr": s.polynomial_lr(1.0, 250, 2.0),
    "cosine_annealing_lr": s.cosine_annealing_lr(1.0, 200, 0.05),
    "cosine_annealing_warm_restarts": s.cosine_annealing_warm_restarts(1.0, 20, 2),
    "cyclic_lr (triangular2)": s.cyclic_lr(0.1, 1.0, 25, mode="triangular2"),
    "cyclic_lr (exp_range)": s.cyclic_lr(0.1, 1.0, 25, mode="exp_range", gamma=0.995),
    "one_cycle_lr": s.one_cycle_lr(1.0, N),
    "one_cycle_lr (three_phase, linear)": s.one_cycle_lr(1.0, N, three_phase=True,
                                                         anneal_strategy="linear"),
    "one_cycle_momentum": s.one_cycle_momentum(N),
    "sequential_lr": s.sequential_lr([s.linear_lr(1.0, 0.1, 1.0, 40),
                                      s.exponential_lr(1.0, 0.99)], [40]),
    "constant_with_warmup": s.constant_with_warmup(1.0, 40),
    "linear_with_warmup": s.linear_with_warmup(1.0, 40, N),
    "cosine_with_warmup": s.cosine_with_warmup(1.0, 40, N),
    "cosine_with_hard_restarts": s.cosine_with_hard_restarts_with_warmup(1.0, 20, N, 3),
    "polynomial_decay_with_warmup": s.polynomial_decay_with_warmup(1.0, 30, 250, 0.1, 2.0),
    "inverse_sqrt": s.inverse_sqrt(1.0, 30),
    "warmup_stable_decay": s.warmup_stable_decay(1.0, 30, 80, num_training_steps=N),
    "warmup_stable_decay (1-sqrt)": s.warmup_stable_decay(1.0, 30, 80, num_training_steps=N,
                                                          decay_type="1-sqrt"),
}


def main() -> None:
    cols = 4
    rows = -(-len(GALLERY) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 1.7), dpi=72)
    steps = torch.arange(N)
    for ax, (name, schedule) in zip(axes.flat, GALLERY.items()):
        ax.plot(steps.numpy(), schedule(steps).numpy(), lw=1.3, color="#3f51b5")
        ax.set_title(name, fontsize=7)
        ax.tick_params(labelsize=5)
    for ax in list(axes.flat)[len(GALLERY):]:
        ax.axis("off")
    fig.tight_layout()
    out = pathlib.Path(__file__).parent / "img" / "schedules.png"
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
