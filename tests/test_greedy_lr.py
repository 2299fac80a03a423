"""GreedyLR (HuggingFace transformers 5's metric-driven scheduler): ``compat.transformers.GreedyLR``
and the functional ``scale_by_greedy_lr`` against HF's algorithm, written out plainly below
(``transformers.optimization.GreedyLR.step``). No test imports transformers."""

from __future__ import annotations

import math
import re

import pytest
import torch

import functional_optim as fo
from functional_optim.compat import transformers as hf


class RefGreedyLR:
    """HF's GreedyLR on a list of group learning rates (Python floats)."""

    def __init__(self, lrs, mode="min", factor=0.95, patience=10, threshold=1e-6,
                 threshold_mode="abs", cooldown=0, warmup=0, min_lr=1e-3, max_lr=1.0, eps=1e-8,
                 smooth=False, window_size=50, reset_start=500):
        self.lrs, self.init_lrs = list(lrs), list(lrs)
        n = len(lrs)
        self.min_lrs = list(min_lr) if isinstance(min_lr, list) else [min_lr] * n
        self.max_lrs = list(max_lr) if isinstance(max_lr, list) else [max_lr] * n
        self.mode, self.factor, self.patience = mode, factor, patience
        self.threshold, self.threshold_mode = threshold, threshold_mode
        self.cooldown, self.warmup, self.eps = cooldown, warmup, eps
        self.smooth, self.window_size = smooth, window_size
        self.reset_start = self.reset_start_original = reset_start
        self.cooldown_counter = self.warmup_counter = 0
        self.num_bad_epochs = self.num_good_epochs = 0
        self.best = math.inf if mode == "min" else -math.inf
        self.values, self.sum = [], 0.0

    def is_better(self, current, best):
        if self.mode == "min":
            if self.threshold_mode == "rel":
                return current < best * (1.0 - self.threshold)
            return current < best - self.threshold
        if self.threshold_mode == "rel":
            return current > best * (1.0 + self.threshold)
        return current > best + self.threshold

    def step(self, metrics):
        current = float(metrics)
        if self.smooth:
            self.values.append(current)
            self.sum += current
            if len(self.values) > self.window_size:
                self.sum -= self.values.pop(0)
            current = self.sum / len(self.values)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = self.num_good_epochs = 0
        elif self.warmup_counter > 0:
            self.warmup_counter -= 1
            self.num_bad_epochs = self.num_good_epochs = 0
        else:
            if self.is_better(current, self.best):
                self.best, self.num_bad_epochs = current, 0
                self.num_good_epochs += 1
            else:
                self.num_bad_epochs += 1
                self.num_good_epochs = 0
            if self.num_good_epochs > self.patience:
                for i, old in enumerate(self.lrs):
                    new = min(old / self.factor, self.max_lrs[i])
                    if new - old > self.eps:
                        self.lrs[i] = new
                self.reset_start = self.reset_start_original
                self.warmup_counter, self.num_good_epochs = self.warmup, 0
            elif self.num_bad_epochs > self.patience:
                all_at_min = True
                for i, old in enumerate(self.lrs):
                    new = max(old * self.factor, self.min_lrs[i])
                    if old - new > self.eps:
                        self.lrs[i] = new
                    if self.lrs[i] > self.min_lrs[i]:
                        all_at_min = False
                if all_at_min:
                    self.reset_start -= 1
                    if self.reset_start <= 0:
                        self.lrs = list(self.init_lrs)
                        self.best = math.inf if self.mode == "min" else -math.inf
                        self.num_bad_epochs = self.num_good_epochs = 0
                        self.cooldown_counter = self.warmup_counter = 0
                        self.reset_start = self.reset_start_original
                        self.values, self.sum = [], 0.0
                self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0


def _metrics(n=120, seed=0):
    """Improving stretches, plateaus and noise: every branch (increase, reduce, floor, reset)."""
    gen = torch.Generator().manual_seed(seed)
    out, level = [], 10.0
    for t in range(n):
        phase = (t // 20) % 3
        level += {0: -0.5, 1: 0.0, 2: 0.3}[phase]
        out.append(level + 0.05 * float(torch.randn((), generator=gen)))
    return out


OPTIONS = [
    dict(factor=0.5, patience=2, cooldown=1, warmup=1, min_lr=1e-3, max_lr=0.5,
         reset_start=2),
    dict(factor=0.7, patience=1, threshold=0.01, threshold_mode="rel", smooth=True,
         window_size=4, reset_start=3, min_lr=[1e-3, 5e-3]),
    dict(mode="max", factor=0.8, patience=3, warmup=2, max_lr=[0.2, 0.05], eps=1e-4),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=["cooldown_warmup_reset", "smooth_rel_min_lrs",
                                               "max_mode"])
def test_greedy_lr_matches_hf(opts):
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1},
                           {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.02}])
    ours = hf.GreedyLR(opt, **opts)
    ref = RefGreedyLR([0.1, 0.02], **opts)
    changes = 0
    for m in _metrics():
        before = [g["lr"] for g in opt.param_groups]
        ours.step(m)
        ref.step(m)
        assert [g["lr"] for g in opt.param_groups] == ref.lrs == ours.get_last_lr()
        changes += before != ref.lrs
        for k in ("best", "num_bad_epochs", "num_good_epochs", "cooldown_counter",
                  "warmup_counter", "reset_start"):
            assert getattr(ours, k) == getattr(ref, k), k
    assert changes > 5


def test_greedy_lr_state_dict_round_trip():
    opts = OPTIONS[1]
    metrics = _metrics()
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1},
                           {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.02}])
    first = hf.GreedyLR(opt, **opts)
    for m in metrics[:37]:
        first.step(m)
    saved = first.state_dict()
    assert set(saved) == {
        "factor", "min_lrs", "max_lrs", "patience", "verbose", "cooldown", "warmup",
        "cooldown_counter", "warmup_counter", "mode", "threshold", "threshold_mode", "best",
        "num_bad_epochs", "num_good_epochs", "eps", "last_epoch", "smooth", "window_size",
        "reset_start", "reset_start_original", "_last_lr", "_init_lrs", "_streaming_avg"}
    assert saved["last_epoch"] == 37 and len(saved["_streaming_avg"]["values"]) == 4
    ref = RefGreedyLR([0.1, 0.02], **opts)
    for m in metrics[:37]:
        ref.step(m)
    assert saved["_streaming_avg"]["values"] == ref.values
    assert saved["_streaming_avg"]["sum"] == ref.sum
    other = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.3},
                             {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.3}])
    second = hf.GreedyLR(other, **opts)
    second.load_state_dict(saved)
    for m in metrics[37:]:
        first.step(m)
        second.step(m)
        assert first.get_last_lr() == second.get_last_lr()
        assert first.state_dict() == second.state_dict()


def test_greedy_lr_errors_and_names():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for kwargs, error, message in [
            (dict(factor=1.0), ValueError, "Factor should be < 1.0."),
            (dict(min_lr=[1e-3, 1e-3]), ValueError, "expected 1 min_lrs, got 2"),
            (dict(max_lr=[]), ValueError, "expected 1 max_lrs, got 0"),
            (dict(mode="up"), ValueError, "mode up is unknown!"),
            (dict(threshold_mode="pct"), ValueError, "threshold mode pct is unknown!")]:
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            hf.GreedyLR(opt, **kwargs)
    with pytest.raises(TypeError, match="^list is not an Optimizer$"):
        hf.GreedyLR([])
    scheduler = hf.get_scheduler("greedy", opt, scheduler_specific_kwargs=dict(patience=3))
    assert isinstance(scheduler, hf.GreedyLR) and scheduler.patience == 3
    assert isinstance(hf.get_greedy_schedule(opt), hf.GreedyLR)


def test_greedy_lr_verbose(capsys):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = hf.GreedyLR(opt, factor=0.5, patience=0, verbose=True)
    scheduler.step(1.0)
    scheduler.step(2.0)
    assert capsys.readouterr().out == (
        "Epoch 1: increasing learning rate of group 0 to 2.0000e-01.\n"
        "Epoch 2: reducing learning rate of group 0 to 1.0000e-01.\n")


def test_scale_by_greedy_lr_follows_hf():
    """The functional transform: updates scaled by HF's learning rate, measured per call."""
    opts = dict(factor=0.5, patience=2, cooldown=1, warmup=1, min_lr=1e-3, max_lr=0.5,
                reset_start=2)
    tx = fo.transforms.scale_by_greedy_lr(lr=0.1, **opts)
    ref = RefGreedyLR([0.1], **opts)
    params = {"w": torch.ones(2, dtype=torch.float64)}
    state = tx.init(params)
    for m in _metrics():
        u, state = tx.update(params, state, params, value=m)
        ref.step(m)
        assert u["w"][0].item() == pytest.approx(ref.lrs[0], rel=1e-15)
    u, _ = tx.update(params, state, params)  # no value: no measurement
    assert u["w"][0].item() == pytest.approx(ref.lrs[0], rel=1e-15)
