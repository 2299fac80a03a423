"""HuggingFace's optimizers against their published algorithms, written out plainly below:
``transformers.optimization.AdamW`` (4.x) and ``Adafactor``, and ``optimization_tf``'s Keras
``AdamWeightDecay``. The functional aliases, the drop-in classes and the native block options
behind them, for every option combination, 50 steps: float64 to 1e-12 of the largest value,
float32 to 16 ulps, float16/bfloat16 (Adafactor computes them in float32) to the last bit.
No test imports transformers."""

from __future__ import annotations

import itertools
import math
import re
import warnings

import pytest
import torch

import functional_optim as fo
from functional_optim.compat import transformers as hf

STEPS = 50
SHAPES = {"weight": (5, 3), "block": (2, 3, 4), "bias": (3,), "scale": ()}
HALF = (torch.float16, torch.bfloat16)


def _data(dtype, steps=STEPS, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = {k: torch.randn(s, generator=gen, dtype=torch.float64).to(dtype)
              for k, s in SHAPES.items()}
    grads = [{k: torch.randn(s, generator=gen, dtype=torch.float64).to(dtype)
              for k, s in SHAPES.items()} for _ in range(steps)]
    return params, grads


def _assert_close(actual: dict, expected: dict, dtype, where=""):
    for k, e in expected.items():
        a = actual[k]
        assert a.dtype == e.dtype, (where, k, a.dtype, e.dtype)
        if dtype in HALF:
            assert torch.equal(a, e), f"{where} {k}: {(a.float() - e.float()).abs().max()}"
            continue
        bound = (1e-12 if dtype == torch.float64 else 16 * torch.finfo(dtype).eps) * float(
            e.abs().max())
        err = float((a - e).abs().max())
        assert err <= bound, f"{where} {k}: max|a-e| = {err:.3e} > {bound:.3e}"


def _run(tx, params, grads):
    state = tx.init(params)
    for g in grads:
        u, state = tx.update(g, state, params)
        params = fo.apply_updates(params, u)
    return params


# --------------------------------------------------------------------------------------------
# transformers 4.x AdamW.step, written out


def ref_adamw(params, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
              correct_bias=True):
    params = {k: v.clone() for k, v in params.items()}
    state = {k: [0, torch.zeros_like(v), torch.zeros_like(v)] for k, v in params.items()}
    b1, b2 = betas
    for g in grads:
        for k, p in params.items():
            st = state[k]
            st[0] += 1
            st[1] = st[1].mul(b1).add(g[k], alpha=1.0 - b1)
            st[2] = st[2].mul(b2).addcmul(g[k], g[k], value=1.0 - b2)
            denom = st[2].sqrt().add(eps)
            step_size = lr
            if correct_bias:
                step_size = step_size * math.sqrt(1.0 - b2 ** st[0]) / (1.0 - b1 ** st[0])
            p = p.addcdiv(st[1], denom, value=-step_size)
            if weight_decay > 0.0:
                p = p.add(p, alpha=-lr * weight_decay)
            params[k] = p
    return params, state


ADAMW_OPTIONS = [dict(correct_bias=cb, weight_decay=wd, lr=0.01, betas=(0.8, 0.99), eps=eps)
                 for cb, wd, eps in itertools.product([True, False], [0.0, 0.1], [1e-6, 1e-3])]


def _id(opts):
    return "-".join(f"{k}={v}" for k, v in opts.items())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("opts", ADAMW_OPTIONS, ids=_id)
def test_huggingface_adamw_matches_reference(opts, dtype):
    params, grads = _data(dtype)
    expected, _ = ref_adamw(params, grads, **opts)
    _assert_close(_run(fo.huggingface_adamw(**opts), params, grads), expected, dtype)


def _groups(params, extra=None):
    names = list(params)
    return [{"params": [params[n] for n in names[:2]]},
            {"params": [params[n] for n in names[2:]], **(extra or {})}]


def _step_class(opt, params, grads):
    for g in grads:
        for k, p in params.items():
            p.grad = g[k].clone()
        opt.step()


@pytest.mark.parametrize("opts", ADAMW_OPTIONS[:4], ids=_id)
def test_adamw_drop_in_matches_reference_and_keeps_hf_state(opts):
    params, grads = _data(torch.float64)
    live = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    opt = hf.AdamW(_groups(live, {"lr": 0.003}), no_deprecation_warning=True, **opts)
    _step_class(opt, live, grads)
    first = dict(list(params.items())[:2])
    second = dict(list(params.items())[2:])
    expected = {**ref_adamw(first, [{k: g[k] for k in first} for g in grads], **opts)[0],
                **ref_adamw(second, [{k: g[k] for k in second} for g in grads],
                            **{**opts, "lr": 0.003})[0]}
    _assert_close({k: v.detach() for k, v in live.items()}, expected, torch.float64)
    saved = opt.state_dict()
    assert set(saved["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert saved["state"][0]["step"] == STEPS and isinstance(saved["state"][0]["step"], int)
    assert set(saved["param_groups"][0]) == {"lr", "betas", "eps", "weight_decay",
                                             "correct_bias", "params"}


def test_adamw_loads_hf_state_and_continues():
    """A checkpoint in HF's format (Python-int steps) continues on the reference trajectory."""
    params, grads = _data(torch.float64)
    opts = ADAMW_OPTIONS[1]
    half, state = ref_adamw(params, grads[:20], **opts)
    expected, _ = ref_adamw(params, grads, **opts)
    live = {k: torch.nn.Parameter(v.clone()) for k, v in half.items()}
    opt = hf.AdamW(list(live.values()), no_deprecation_warning=True, **opts)
    opt.load_state_dict({"state": {i: {"step": st[0], "exp_avg": st[1], "exp_avg_sq": st[2]}
                                   for i, st in enumerate(state.values())},
                         "param_groups": [{**opt.param_groups[0], "params": [0, 1, 2, 3]}]})
    _step_class(opt, live, grads[20:])
    _assert_close({k: v.detach() for k, v in live.items()}, expected, torch.float64)


def test_adamw_warning_and_errors_are_hf_s():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.warns(FutureWarning, match="^This implementation of AdamW is deprecated and will "
                                           "be removed in a future version. Use the PyTorch "
                                           "implementation torch.optim.AdamW instead, or set "
                                           "`no_deprecation_warning=True` to disable this "
                                           "warning$"):
        hf.AdamW(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hf.AdamW(p, no_deprecation_warning=True)
    for kwargs, message in [
            (dict(lr=-1.0), "Invalid learning rate: -1.0 - should be >= 0.0"),
            (dict(betas=(1.0, 0.9)), "Invalid beta parameter: 1.0 - should be in [0.0, 1.0)"),
            (dict(betas=(0.9, -0.1)), "Invalid beta parameter: -0.1 - should be in [0.0, 1.0)"),
            (dict(eps=-1e-6), "Invalid epsilon value: -1e-06 - should be >= 0.0")]:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            hf.AdamW(p, no_deprecation_warning=True, **kwargs)


# --------------------------------------------------------------------------------------------
# transformers' Adafactor.step, written out (half precision computed in float32)


def ref_adafactor_lr(group, step, rms):
    """``Adafactor._get_lr``."""
    rel_step_sz = group["lr"]
    if group["relative_step"]:
        min_step = 1e-6 * step if group["warmup_init"] else 1e-2
        rel_step_sz = min(min_step, 1.0 / math.sqrt(step))
    param_scale = 1.0
    if group["scale_parameter"]:
        param_scale = max(group["eps"][1], rms)
    return param_scale * rel_step_sz


def ref_adafactor(params, grads, lr=None, eps=(1e-30, 1e-3), clip_threshold=1.0,
                  decay_rate=-0.8, beta1=None, weight_decay=0.0, scale_parameter=True,
                  relative_step=True, warmup_init=False, states=None):
    """Returns the parameters, the states and each step's ``{name: (step, RMS)}``
    (``states``: to continue from, e.g. a reloaded checkpoint's)."""
    group = dict(lr=lr, eps=eps, relative_step=relative_step, warmup_init=warmup_init,
                 scale_parameter=scale_parameter)
    params = {k: v.clone() for k, v in params.items()}
    states = {k: dict(v) for k, v in states.items()} if states else {k: {} for k in params}
    moments = ("exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq")
    history = []
    for g in grads:
        history.append({})
        for k, p in params.items():
            grad = g[k].float() if g[k].dtype in HALF else g[k]
            state, factored = states[k], grad.ndim >= 2
            if not state:
                state["step"] = 0
                if beta1 is not None:
                    state["exp_avg"] = torch.zeros_like(grad)
                if factored:
                    state["exp_avg_sq_row"] = torch.zeros(grad.shape[:-1]).to(grad)
                    state["exp_avg_sq_col"] = torch.zeros(grad.shape[:-2]
                                                          + grad.shape[-1:]).to(grad)
                else:
                    state["exp_avg_sq"] = torch.zeros_like(grad)
            else:
                state.update({n: state[n].to(grad) for n in moments if n in state})
            p32 = p.float() if p.dtype in HALF else p
            state["step"] += 1
            state["RMS"] = p32.norm(2) / (p32.numel() ** 0.5)
            history[-1][k] = (state["step"], state["RMS"])
            step_lr = ref_adafactor_lr(group, state["step"], state["RMS"])
            beta2t = 1.0 - math.pow(state["step"], decay_rate)
            update = grad**2 + eps[0]
            if factored:
                row = state["exp_avg_sq_row"].mul(beta2t).add(update.mean(dim=-1),
                                                              alpha=1.0 - beta2t)
                col = state["exp_avg_sq_col"].mul(beta2t).add(update.mean(dim=-2),
                                                              alpha=1.0 - beta2t)
                state["exp_avg_sq_row"], state["exp_avg_sq_col"] = row, col
                r = (row / row.mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1)
                update = torch.mul(r, col.unsqueeze(-2).rsqrt()).mul(grad)
            else:
                sq = state["exp_avg_sq"].mul(beta2t).add(update, alpha=1.0 - beta2t)
                state["exp_avg_sq"] = sq
                update = sq.rsqrt().mul(grad)
            rms_u = update.norm(2) / (update.numel() ** 0.5)
            update = update.div((rms_u / clip_threshold).clamp(min=1.0)).mul(step_lr)
            if beta1 is not None:
                state["exp_avg"] = state["exp_avg"].mul(beta1).add(update, alpha=1 - beta1)
                update = state["exp_avg"]
            if weight_decay != 0:
                p32 = p32.add(p32, alpha=-weight_decay * step_lr)
            params[k] = p32.add(-update).to(p.dtype)
    return params, states, history


ADAFACTOR_OPTIONS = [
    dict(relative_step=rel, scale_parameter=scale, warmup_init=warm, beta1=beta1,
         weight_decay=wd, clip_threshold=clip, lr=None if rel else 0.01)
    for rel, scale, warm, beta1, wd, clip in itertools.product(
        [True, False], [True, False], [False, True], [None, 0.9], [0.0, 0.1], [1.0, 0.5])
    if rel or not warm]
ADAFACTOR_DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", ADAFACTOR_DTYPES, ids=["f64", "f32", "bf16", "f16"])
@pytest.mark.parametrize("opts", ADAFACTOR_OPTIONS, ids=_id)
def test_huggingface_adafactor_matches_reference(opts, dtype):
    params, grads = _data(dtype)
    expected = ref_adafactor(params, grads, **opts)[0]
    _assert_close(_run(fo.huggingface_adafactor(**opts), params, grads), expected, dtype)


def test_huggingface_adafactor_eps_and_decay_rate():
    params, grads = _data(torch.float64)
    opts = dict(eps=(1e-3, 0.5), decay_rate=-0.6)
    expected = ref_adafactor(params, grads, **opts)[0]
    _assert_close(_run(fo.huggingface_adafactor(**opts), params, grads), expected,
                  torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["f64", "bf16"])
@pytest.mark.parametrize("opts", [ADAFACTOR_OPTIONS[0], ADAFACTOR_OPTIONS[13],
                                  ADAFACTOR_OPTIONS[-1]], ids=_id)
def test_adafactor_drop_in_matches_reference(opts, dtype):
    """The class with two groups: the trajectory and HF's state names and dtypes."""
    params, grads = _data(dtype)
    live = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    opt = hf.Adafactor(_groups(live), **opts)
    _step_class(opt, live, grads)
    _assert_close({k: v.detach() for k, v in live.items()},
                  ref_adafactor(params, grads, **opts)[0], dtype)
    saved = opt.state_dict()["state"]
    kept = {"step", "RMS"} | ({"exp_avg"} if opts["beta1"] is not None else set())
    assert set(saved[0]) == kept | {"exp_avg_sq_row", "exp_avg_sq_col"}
    assert set(saved[2]) == kept | {"exp_avg_sq"}
    assert saved[0]["step"] == STEPS and isinstance(saved[0]["step"], int)
    assert saved[0]["exp_avg_sq_row"].shape == (5,) and saved[0]["exp_avg_sq_col"].shape == (3,)
    compute = torch.float32 if dtype in HALF else dtype
    assert saved[0]["exp_avg_sq_row"].dtype == compute and saved[2]["RMS"].dtype == compute


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("warmup_init", [False, True])
def test_adafactor_schedule_reports_hf_s_lr(warmup_init, dtype):
    """AdafactorSchedule: ``initial_lr`` before the first step, then HF's ``_get_lr`` of each
    group's first parameter, and the optimizer steps on as without it."""
    params, grads = _data(dtype)
    live = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    opt = hf.Adafactor(_groups(live), warmup_init=warmup_init)
    schedule = hf.AdafactorSchedule(opt, initial_lr=0.25)
    assert schedule.get_last_lr() == [0.25, 0.25]
    expected, _, history = ref_adafactor(params, grads, warmup_init=warmup_init)
    group = dict(lr=None, eps=(1e-30, 1e-3), relative_step=True, warmup_init=warmup_init,
                 scale_parameter=True)
    for g, seen in zip(grads, history):
        for k, p in live.items():
            p.grad = g[k].clone()
        opt.step()
        schedule.step()
        want = [float(ref_adafactor_lr(group, *seen[n])) for n in ("weight", "bias")]
        got = [float(x) for x in schedule.get_last_lr()]
        assert got == pytest.approx(want, rel=1e-12 if dtype == torch.float64 else 1e-6)
    _assert_close({k: v.detach() for k, v in live.items()}, expected, dtype)


def test_adafactor_loads_hf_state_and_continues():
    """HF's checkpoint (Python-int steps; torch's load casts the state to the bfloat16
    parameters' dtype, HF computes it in float32 again) continues on HF's trajectory."""
    params, grads = _data(torch.bfloat16)
    opts = dict(beta1=0.9, weight_decay=0.1)
    half, states, _ = ref_adafactor(params, grads[:20], **opts)
    reloaded = {k: {n: v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.ndim else v
                    for n, v in st.items()} for k, st in states.items()}
    expected = ref_adafactor(half, grads[20:], states=reloaded, **opts)[0]
    live = {k: torch.nn.Parameter(v.clone()) for k, v in half.items()}
    opt = hf.Adafactor(list(live.values()), **opts)
    opt.load_state_dict({"state": dict(enumerate(states.values())),
                         "param_groups": [{**opt.param_groups[0], "params": [0, 1, 2, 3]}]})
    _step_class(opt, live, grads[20:])
    _assert_close({k: v.detach() for k, v in live.items()}, expected, torch.bfloat16)


def test_adafactor_errors_are_hf_s():
    p = [torch.nn.Parameter(torch.zeros(2, 2))]
    with pytest.raises(ValueError, match="^Cannot combine manual `lr` and `relative_step=True` "
                                         "options$"):
        hf.Adafactor(p, lr=1e-3)
    with pytest.raises(ValueError, match=r"^`warmup_init=True` requires `relative_step=True`$"):
        hf.Adafactor(p, lr=1e-3, relative_step=False, warmup_init=True)
    opt = hf.Adafactor([torch.nn.Parameter(torch.zeros(3))])
    opt.param_groups[0]["params"][0].grad = torch.zeros(3).to_sparse()
    with pytest.raises(RuntimeError, match=r"^Adafactor does not support sparse gradients\.$"):
        opt.step()
    # where HF would fail at its first step (a None lr times the scale), a clear error now
    with pytest.raises(ValueError, match="relative_step=False needs an lr"):
        hf.Adafactor(p, relative_step=False)


def test_adafactor_accepts_a_clip_threshold_below_one():
    """torch's Adafactor requires d >= 1; HF's clip_threshold does not (issue 17)."""
    params, grads = _data(torch.float64, steps=5)
    expected = ref_adafactor(params, grads, clip_threshold=0.3)[0]
    _assert_close(_run(fo.huggingface_adafactor(clip_threshold=0.3), params, grads), expected,
                  torch.float64)


def test_torch_adafactor_numbers_unchanged_by_the_variants():
    """The torch variant (the default) still computes torch.optim.Adafactor's numbers."""
    params, grads = _data(torch.float64, steps=20)
    live = [p.clone().requires_grad_() for p in params.values()]
    opt = torch.optim.Adafactor(live, lr=0.02, weight_decay=0.1)
    for g in grads:
        for p, x in zip(live, g.values()):
            p.grad = x.clone()
        opt.step()
    expected = {k: p.detach() for k, p in zip(params, live)}
    _assert_close(_run(fo.scale_by_factored_rms(lr=0.02, weight_decay=0.1), params, grads),
                  expected, torch.float64)
