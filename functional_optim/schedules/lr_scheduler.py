"""``torch.optim.lr_scheduler``'s formulas, in closed form.

``lr`` is the optimizer's initial learning rate (the scheduler's ``base_lr``); the value at step
``t`` is the learning rate after ``t`` calls of ``scheduler.step()``, i.e. the one the ``t``-th
optimizer step uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..base import HParamError, check_hparam
from .base import Schedule, _positive_steps, as_schedule
from .optax import join


def step_lr(lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    r"""``torch.optim.lr_scheduler.StepLR``: :math:`\eta_t = \eta\,\gamma^{\lfloor t/s \rfloor}`."""
    _positive_steps("step_lr", step_size=step_size)

    def fn(step, lr, step_size, gamma):
        return lr * gamma ** torch.floor(step / step_size)

    return Schedule(fn, dict(lr=lr, step_size=step_size, gamma=gamma), "step_lr")


def multistep_lr(lr: float, milestones: list[int], gamma: float = 0.1) -> Schedule:
    r"""``MultiStepLR``: :math:`\eta_t = \eta\,\gamma^{|\{m \in M : m \le t\}|}`.

    A milestone given twice counts twice (as torch's ``Counter`` of milestones does).
    """
    for i, m in enumerate(milestones):
        check_hparam("multistep_lr", f"milestones[{i}]", m, ge=0)

    def fn(step, lr, milestones, gamma):
        passed = torch.zeros_like(step)
        for m in milestones:
            passed = passed + (step >= m).to(step.dtype)
        return lr * gamma**passed

    return Schedule(fn, dict(lr=lr, milestones=tuple(sorted(milestones)), gamma=gamma),
                    "multistep_lr")


def constant_lr(lr: float, factor: float = 1.0 / 3, total_iters: int = 5) -> Schedule:
    r"""``ConstantLR``: :math:`\eta\,f` for :math:`t < T`, then :math:`\eta`."""
    check_hparam("constant_lr", "factor", factor, ge=0, le=1)
    check_hparam("constant_lr", "total_iters", total_iters, ge=0)

    def fn(step, lr, factor, total_iters):
        return lr * torch.where(step < total_iters, factor + 0.0 * step, 1.0 + 0.0 * step)

    return Schedule(fn, dict(lr=lr, factor=factor, total_iters=total_iters), "constant_lr")


def linear_lr(lr: float, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
              total_iters: int = 5) -> Schedule:
    r"""``LinearLR``: :math:`\eta\,(f_0 + (f_1 - f_0)\min(t, T)/T)`."""
    check_hparam("linear_lr", "start_factor", start_factor, gt=0, le=1)
    check_hparam("linear_lr", "end_factor", end_factor, ge=0, le=1)
    _positive_steps("linear_lr", total_iters=total_iters)

    def fn(step, lr, start_factor, end_factor, total_iters):
        t = torch.minimum(step, torch.zeros_like(step) + total_iters)
        return lr * (start_factor + (end_factor - start_factor) * t / total_iters)

    return Schedule(fn, dict(lr=lr, start_factor=start_factor, end_factor=end_factor,
                             total_iters=total_iters), "linear_lr")


def exponential_lr(lr: float, gamma: float) -> Schedule:
    r"""``ExponentialLR``: :math:`\eta\,\gamma^t`."""
    check_hparam("exponential_lr", "gamma", gamma, ge=0)
    return Schedule(lambda step, lr, gamma: lr * gamma**step, dict(lr=lr, gamma=gamma),
                    "exponential_lr")


def polynomial_lr(lr: float, total_iters: int = 5, power: float = 1.0) -> Schedule:
    r"""``PolynomialLR``: :math:`\eta\,(1 - \min(t, T)/T)^p`."""
    _positive_steps("polynomial_lr", total_iters=total_iters)

    def fn(step, lr, total_iters, power):
        t = torch.minimum(step, torch.zeros_like(step) + total_iters)
        return lr * (1.0 - t / total_iters) ** power

    return Schedule(fn, dict(lr=lr, total_iters=total_iters, power=power), "polynomial_lr")


def cosine_annealing_lr(lr: float, T_max: int, eta_min: float = 0.0) -> Schedule:  # noqa: N803
    r"""``CosineAnnealingLR`` in closed form (SGDR without restarts; Loshchilov & Hutter, 2017).

    .. math:: \eta_t = \eta_{min} + \tfrac12(\eta - \eta_{min})\big(1 + \cos(\pi t / T_{max})\big)

    Past ``T_max`` the cosine goes on (up again), as torch's does.
    """
    _positive_steps("cosine_annealing_lr", T_max=T_max)

    def fn(step, lr, T_max, eta_min):  # noqa: N803
        return eta_min + (lr - eta_min) * (1.0 + torch.cos(math.pi * step / T_max)) / 2.0

    return Schedule(fn, dict(lr=lr, T_max=T_max, eta_min=eta_min), "cosine_annealing_lr")


def cosine_annealing_warm_restarts(lr: float, T_0: int, T_mult: int = 1,  # noqa: N803
                                   eta_min: float = 0.0) -> Schedule:
    r"""``CosineAnnealingWarmRestarts`` (SGDR; Loshchilov & Hutter, 2017).

    Cycle :math:`i` lasts :math:`T_i = T_0 T_{mult}^i` steps; with :math:`T_{cur}` the steps
    into the current cycle,
    :math:`\eta_t = \eta_{min} + \tfrac12(\eta - \eta_{min})(1 + \cos(\pi T_{cur}/T_i))`.

    Args:
        T_0: first cycle length (hparam).
        T_mult: cycle growth factor, an int >= 1 (static, as torch requires an int).
    """
    _positive_steps("cosine_annealing_warm_restarts", T_0=T_0)
    if not isinstance(T_mult, int) or isinstance(T_mult, bool) or T_mult < 1:
        raise HParamError(f"cosine_annealing_warm_restarts: T_mult must be an int >= 1, "
                          f"got {T_mult!r}")

    def fn(step, lr, T_0, eta_min):  # noqa: N803
        if T_mult == 1:
            t_cur = torch.remainder(step, T_0)
            t_i = torch.zeros_like(step) + T_0
        else:
            n = torch.floor(torch.log(step / T_0 * (T_mult - 1) + 1.0) / math.log(T_mult))
            start = lambda k: T_0 * (T_mult**k - 1.0) / (T_mult - 1)  # noqa: E731
            n = torch.where(step < start(n), n - 1, n)  # correct a log rounded across a restart
            n = torch.where(step >= start(n + 1), n + 1, n)
            t_cur = step - start(n)
            t_i = T_0 * T_mult**n
        return eta_min + (lr - eta_min) * (1.0 + torch.cos(math.pi * t_cur / t_i)) / 2.0

    return Schedule(fn, dict(lr=lr, T_0=T_0, eta_min=eta_min), "cosine_annealing_warm_restarts")


_CYCLIC_MODES = {"triangular": "cycle", "triangular2": "cycle", "exp_range": "iterations"}


def _cyclic(owner: str, names: tuple[str, str], start: float, end: float, step_size_up: int,
            step_size_down: int | None, mode: str, gamma: float,
            scale_fn: Callable[[torch.Tensor], torch.Tensor] | None,
            scale_mode: str) -> Schedule:
    """CyclicLR's cycle from ``start`` (hparam ``names[0]``) towards ``end`` (``names[1]``)."""
    if scale_fn is None:
        if mode not in _CYCLIC_MODES:
            raise ValueError(f"{owner}: mode must be one of {sorted(_CYCLIC_MODES)}, "
                             f"got {mode!r}")
        scale_mode = _CYCLIC_MODES[mode]
    elif scale_mode not in ("cycle", "iterations"):
        raise ValueError(f"{owner}: scale_mode must be 'cycle' or 'iterations', "
                         f"got {scale_mode!r}")
    _positive_steps(owner, step_size_up=step_size_up)
    if step_size_down is None:
        step_size_down = step_size_up
    _positive_steps(owner, step_size_down=step_size_down)

    def fn(step, step_size_up, step_size_down, gamma, **ends):
        start, end = ends[names[0]], ends[names[1]]
        total = step_size_up + step_size_down
        ratio = step_size_up / total
        cycle = torch.floor(1.0 + step / total)
        x = 1.0 + step / total - cycle
        factor = torch.where(x <= ratio, x / ratio, (x - 1.0) / (ratio - 1.0))
        arg = cycle if scale_mode == "cycle" else step
        if scale_fn is not None:
            scale_ = scale_fn(arg)
        elif mode == "triangular":
            scale_ = 1.0
        elif mode == "triangular2":
            scale_ = 1.0 / 2.0 ** (arg - 1.0)
        else:
            scale_ = gamma**arg
        return start + (end - start) * factor * scale_

    return Schedule(fn, {names[0]: start, names[1]: end, "step_size_up": step_size_up,
                         "step_size_down": step_size_down, "gamma": gamma},
                    f"{owner}[{mode}]")


def cyclic_lr(base_lr: float, max_lr: float, step_size_up: int = 2000,
              step_size_down: int | None = None, mode: str = "triangular", gamma: float = 1.0,
              scale_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
              scale_mode: str = "cycle") -> Schedule:
    r"""``CyclicLR`` (Smith, 2017): triangular cycles between ``base_lr`` and ``max_lr``.

    With cycle length :math:`C = s_{up} + s_{down}`, :math:`c = \lfloor 1 + t/C \rfloor`,
    :math:`x = 1 + t/C - c` and :math:`r = s_{up}/C`:

    .. math:: \eta_t = \eta_b + (\eta_m - \eta_b)\,\mathrm{tri}(x)\,\sigma(\cdot),\quad
              \mathrm{tri}(x) = x/r \text{ if } x \le r \text{ else } (x-1)/(r-1)

    :math:`\sigma` is 1 (``"triangular"``), :math:`2^{1-c}` (``"triangular2"``),
    :math:`\gamma^t` (``"exp_range"``), or ``scale_fn`` of :math:`c` or :math:`t`
    (``scale_mode``). The momentum that CyclicLR cycles with it: :func:`cyclic_momentum`.
    """
    return _cyclic("cyclic_lr", ("base_lr", "max_lr"), base_lr, max_lr, step_size_up,
                   step_size_down, mode, gamma, scale_fn, scale_mode)


def cyclic_momentum(base_momentum: float = 0.8, max_momentum: float = 0.9,
                    step_size_up: int = 2000, step_size_down: int | None = None,
                    mode: str = "triangular", gamma: float = 1.0,
                    scale_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    scale_mode: str = "cycle") -> Schedule:
    r"""``CyclicLR(cycle_momentum=True)``'s momentum: the cycle of :func:`cyclic_lr` (same
    arguments) from ``max_momentum`` down to ``base_momentum`` while the learning rate rises,
    and back: :math:`\mu_t = \mu_{max} + (\mu_{base} - \mu_{max})\,\mathrm{tri}(x)\,
    \sigma(\cdot)`. A schedule for SGD's ``momentum`` or Adam's ``betas[0]`` (torch cycles
    ``betas[0]`` for Adam), e.g. ``inject_hparams(tx, {"betas.0": cyclic_momentum(...)})``.
    """
    return _cyclic("cyclic_momentum", ("max_momentum", "base_momentum"), max_momentum,
                   base_momentum, step_size_up, step_size_down, mode, gamma, scale_fn,
                   scale_mode)


def _phases(step, anneal, ends, values):
    """torch's OneCycleLR phase walk: phase ``i`` runs from ``ends[i-1]`` (0) to ``ends[i]``."""
    out = None
    for i in reversed(range(len(ends))):
        start = 0.0 if i == 0 else ends[i - 1]
        pct = (step - start) / (ends[i] - start)
        if anneal == "cos":
            v = values[i + 1] + (values[i] - values[i + 1]) / 2.0 * (torch.cos(math.pi * pct) + 1)
        else:
            v = (values[i + 1] - values[i]) * pct + values[i]
        out = v if out is None else torch.where(step <= ends[i], v, out)
    return out


def _one_cycle_ends(total_steps, pct_start, three_phase):
    if three_phase:
        return (pct_start * total_steps - 1.0, 2.0 * pct_start * total_steps - 2.0,
                total_steps - 1.0)
    return (pct_start * total_steps - 1.0, total_steps - 1.0)


def _check_one_cycle(owner, total_steps, pct_start, anneal_strategy):
    _positive_steps(owner, total_steps=total_steps)
    check_hparam(owner, "pct_start", pct_start, ge=0, le=1)
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(f"{owner}: anneal_strategy must be 'cos' or 'linear', "
                         f"got {anneal_strategy!r}")


def one_cycle_lr(max_lr: float, total_steps: int, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False) -> Schedule:
    r"""``OneCycleLR``'s learning rate (Smith & Topin, 2017, super-convergence).

    From :math:`\eta_0 = \eta_{max}/d` up to :math:`\eta_{max}` at step
    ``pct_start * total_steps - 1``, then (``three_phase``: back to :math:`\eta_0` at
    ``2 * pct_start * total_steps - 2``, then) down to :math:`\eta_0/d_f` at ``total_steps - 1``,
    annealing by ``"cos"`` or ``"linear"``. Beyond ``total_steps`` (where torch raises) the last
    phase's formula continues.
    """
    _check_one_cycle("one_cycle_lr", total_steps, pct_start, anneal_strategy)

    def fn(step, max_lr, total_steps, pct_start, div_factor, final_div_factor):
        initial = max_lr / div_factor
        low = initial / final_div_factor
        values = (initial, max_lr, initial, low) if three_phase else (initial, max_lr, low)
        return _phases(step, anneal_strategy, _one_cycle_ends(total_steps, pct_start,
                                                              three_phase), values)

    return Schedule(fn, dict(max_lr=max_lr, total_steps=total_steps, pct_start=pct_start,
                             div_factor=div_factor, final_div_factor=final_div_factor),
                    "one_cycle_lr")


def one_cycle_momentum(total_steps: int, base_momentum: float = 0.85,
                       max_momentum: float = 0.95, pct_start: float = 0.3,
                       anneal_strategy: str = "cos", three_phase: bool = False) -> Schedule:
    r"""``OneCycleLR``'s momentum cycle (or Adam's ``beta1``): ``max_momentum`` down to
    ``base_momentum`` while the learning rate rises, and back up, in the same phases as
    :func:`one_cycle_lr`."""
    _check_one_cycle("one_cycle_momentum", total_steps, pct_start, anneal_strategy)

    def fn(step, total_steps, base_momentum, max_momentum, pct_start):
        values = ((max_momentum, base_momentum, max_momentum, max_momentum) if three_phase
                  else (max_momentum, base_momentum, max_momentum))
        return _phases(step, anneal_strategy, _one_cycle_ends(total_steps, pct_start,
                                                              three_phase), values)

    return Schedule(fn, dict(total_steps=total_steps, base_momentum=base_momentum,
                             max_momentum=max_momentum, pct_start=pct_start),
                    "one_cycle_momentum")


def sequential_lr(schedules: list, milestones: list[int]) -> Schedule:
    """``SequentialLR``: ``schedules[i]`` from ``milestones[i-1]`` on, restarted from its step 0.

    The same as :func:`join` (each piece of a torch ``SequentialLR`` is built from the same
    initial ``lr``).
    """
    return join(schedules, milestones)


def multiplicative_lr(lr: float, lr_lambda: Callable[[int], float],
                      total_steps: int) -> Schedule:
    r"""``MultiplicativeLR``: :math:`\eta_t = \eta \prod_{i=1}^{t} f(i)`.

    ``lr_lambda`` is torch's: called with each epoch ``i = 1 .. total_steps`` (Python ints) once,
    here. Its values are the hparam ``"factors"`` (a tuple: each a live value) and ``lr`` is
    ``η``; the product runs left to right from ``lr``, as torch multiplies the learning rate
    step by step. From ``total_steps`` (static) on, the value stays.
    """
    if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 0:
        raise HParamError(f"multiplicative_lr: total_steps must be an int >= 0, "
                          f"got {total_steps!r}")
    factors = tuple(float(lr_lambda(i)) for i in range(1, total_steps + 1))

    def fn(step, lr, factors):
        value = torch.zeros_like(step) + lr
        for i, factor in enumerate(factors, start=1):
            value = torch.where(step >= i, value * factor, value)
        return value

    return Schedule(fn, dict(lr=lr, factors=factors), "multiplicative_lr")


def chained_scheduler(schedules: list, lr: float = 1.0) -> Schedule:
    r"""``ChainedScheduler``: every scheduler steps each time, each multiplying the learning
    rate by its own ratio, so :math:`\eta_t = \eta \prod_k s_k(t)` with each :math:`s_k` the
    factor of one scheduler (its schedule built with ``lr=1.0``, e.g.
    ``chained_scheduler([constant_lr(1.0, 0.5, 3), exponential_lr(1.0, 0.9)], lr=0.1)``).

    That is torch's chain of the schedulers whose steps multiply the learning rate (``StepLR``,
    ``MultiStepLR``, ``ConstantLR``, ``LinearLR``, ``ExponentialLR``, ``PolynomialLR``,
    ``MultiplicativeLR``). Hparams: ``{"lr": lr, "schedules": (h_0, h_1, ...)}``.
    """
    pieces = [as_schedule(s, f"chained_scheduler: schedule {i}")
              for i, s in enumerate(schedules)]
    if not pieces:
        raise ValueError("chained_scheduler: needs at least one schedule")

    def fn(step, lr, schedules):
        value = torch.zeros_like(step) + lr
        for piece, h in zip(pieces, schedules):
            value = value * piece(step, h)
        return value

    return Schedule(fn, dict(lr=lr, schedules=tuple(p.hparams for p in pieces)),
                    "chained_scheduler")


def swalr(lr: float, swa_lr: float, anneal_epochs: int = 10,
          anneal_strategy: str = "cos") -> Schedule:
    r"""``torch.optim.swa_utils.SWALR`` (Izmailov et al., 2018) from an initial ``lr``:
    :math:`\eta_t = \eta_{swa}\,\alpha + \eta\,(1 - \alpha)`, with
    :math:`\alpha = a(\min(1, t / \max(1, A)))` (:math:`\alpha = 1` from the start when
    :math:`A = 0`) and :math:`a(x) = (1 - \cos(\pi x))/2` (``"cos"``) or :math:`x`
    (``"linear"``, structural).
    """
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError("anneal_strategy must be one of 'cos' or 'linear', instead got "
                         f"{anneal_strategy}")
    check_hparam("swalr", "anneal_epochs", anneal_epochs, ge=0)

    def fn(step, lr, swa_lr, anneal_epochs):
        span = torch.zeros_like(step) + anneal_epochs
        t = torch.where(span == 0, torch.ones_like(step),
                        torch.clamp(step / torch.clamp(span, min=1.0), 0, 1))
        alpha = (1 - torch.cos(math.pi * t)) / 2 if anneal_strategy == "cos" else t
        return swa_lr * alpha + lr * (1 - alpha)

    return Schedule(fn, dict(lr=lr, swa_lr=swa_lr, anneal_epochs=anneal_epochs),
                    f"swalr[{anneal_strategy}]")
