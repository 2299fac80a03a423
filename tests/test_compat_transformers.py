"""``functional_optim.compat.transformers`` against HuggingFace's formulas, written out plainly
(its schedules' ``lr_lambda`` functions: ``test_schedules_zoo.py``; the Keras side of
``optimization_tf``: below), its signatures and its error messages. No test imports
transformers."""

from __future__ import annotations

import inspect
import math
import pickle
import re

import pytest
import torch
from test_schedules_zoo import (
    hf_constant_with_warmup,
    hf_cosine,
    hf_cosine_min_lr,
    hf_cosine_warmup_min_lr,
    hf_hard_restarts,
    hf_inverse_sqrt,
    hf_linear,
    hf_polynomial,
    hf_wsd,
)

import functional_optim as fo
from functional_optim import optim as fo_optim
from functional_optim import schedules as sch
from functional_optim.compat import transformers as hf

LR = 3e-4
N = 150


SCHEDULES = {  # HF's function name, its arguments, the factor written out
    "constant": ("get_constant_schedule", {}, lambda t: 1.0),
    "constant_with_warmup": ("get_constant_schedule_with_warmup", dict(num_warmup_steps=17),
                             lambda t: hf_constant_with_warmup(t, 17)),
    "linear": ("get_linear_schedule_with_warmup",
               dict(num_warmup_steps=10, num_training_steps=100), lambda t: hf_linear(t, 10, 100)),
    "cosine": ("get_cosine_schedule_with_warmup",
               dict(num_warmup_steps=10, num_training_steps=100, num_cycles=1.3),
               lambda t: hf_cosine(t, 10, 100, 1.3)),
    "hard_restarts": ("get_cosine_with_hard_restarts_schedule_with_warmup",
                      dict(num_warmup_steps=10, num_training_steps=100, num_cycles=3),
                      lambda t: hf_hard_restarts(t, 10, 100, 3)),
    "polynomial": ("get_polynomial_decay_schedule_with_warmup",
                   dict(num_warmup_steps=10, num_training_steps=100, lr_end=1e-6, power=2.0),
                   lambda t: hf_polynomial(t, 10, 100, LR, 1e-6, 2.0)),
    "inverse_sqrt": ("get_inverse_sqrt_schedule", dict(num_warmup_steps=7, timescale=30),
                     lambda t: hf_inverse_sqrt(t, 7, 30)),
    "inverse_sqrt_no_warmup": ("get_inverse_sqrt_schedule", dict(num_warmup_steps=0),
                               lambda t: hf_inverse_sqrt(t, 0)),
    "cosine_min_lr": ("get_cosine_with_min_lr_schedule_with_warmup",
                      dict(num_warmup_steps=10, num_training_steps=100, min_lr=3e-5),
                      lambda t: hf_cosine_min_lr(t, 10, 100, min_lr_rate=0.1)),
    "cosine_min_lr_rate": ("get_cosine_with_min_lr_schedule_with_warmup",
                           dict(num_warmup_steps=10, num_training_steps=100, num_cycles=0.7,
                                min_lr_rate=0.2),
                           lambda t: hf_cosine_min_lr(t, 10, 100, 0.7, 0.2)),
    "cosine_warmup_min_lr": ("get_cosine_with_min_lr_schedule_with_warmup_lr_rate",
                             dict(num_warmup_steps=10, num_training_steps=100, min_lr=3e-5),
                             lambda t: hf_cosine_warmup_min_lr(t, 10, 100, min_lr_rate=0.1)),
    "cosine_warmup_min_lr_rate": (
        "get_cosine_with_min_lr_schedule_with_warmup_lr_rate",
        dict(num_warmup_steps=10, num_training_steps=100, min_lr_rate=0.1, warmup_lr_rate=0.3),
        lambda t: hf_cosine_warmup_min_lr(t, 10, 100, min_lr_rate=0.1, warmup_lr_rate=0.3)),
    "wsd": ("get_wsd_schedule",
            dict(num_warmup_steps=10, num_decay_steps=30, num_training_steps=100),
            lambda t: hf_wsd(t, 10, 60, 30)),
    "wsd_1_sqrt": ("get_wsd_schedule",
                   dict(num_warmup_steps=10, num_decay_steps=30, num_stable_steps=40,
                        warmup_type="1-sqrt", decay_type="1-sqrt", min_lr_ratio=0.1),
                   lambda t: hf_wsd(t, 10, 40, 30, 0.1, warmup_type="1-sqrt",
                                    decay_type="1-sqrt")),
}


def _lrs(optimizer, scheduler, steps=N):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("make", [lambda p: torch.optim.SGD(p, lr=LR),
                                  lambda p: fo_optim.AdamW(p, lr=LR)], ids=["torch", "fo"])
@pytest.mark.parametrize("case", list(SCHEDULES))
def test_schedule_functions_match_hf_formulas(case, make):
    """Each function returns a ``LambdaLR`` (as HF) that drives torch's optimizers and ours,
    with HF's learning rates; its state_dict pickles (HF's lambdas are partials too)."""
    name, kwargs, factor = SCHEDULES[case]
    optimizer = make([torch.nn.Parameter(torch.zeros(2))])
    scheduler = getattr(hf, name)(optimizer, **kwargs)
    assert type(scheduler) is torch.optim.lr_scheduler.LambdaLR
    lrs = _lrs(optimizer, scheduler)
    for t, lr in enumerate(lrs):
        assert lr == pytest.approx(LR * factor(t), rel=1e-12, abs=1e-300), (case, t)
    pickle.dumps(scheduler.state_dict())


def test_last_epoch_resumes():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=LR)
    for group in optimizer.param_groups:
        group["initial_lr"] = LR
    scheduler = hf.get_linear_schedule_with_warmup(optimizer, 10, 100, last_epoch=41)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR * hf_linear(42, 10, 100))
    assert scheduler.last_epoch == 42


def test_get_scheduler_matches_the_functions():
    for name, kwargs in [("linear", dict(num_warmup_steps=5, num_training_steps=50)),
                         ("cosine_with_min_lr", dict(num_warmup_steps=5, num_training_steps=50,
                                                     scheduler_specific_kwargs={"min_lr": 1e-5})),
                         ("warmup_stable_decay", dict(
                             num_warmup_steps=5, scheduler_specific_kwargs=dict(
                                 num_decay_steps=10, num_stable_steps=20))),
                         ("constant", dict(scheduler_specific_kwargs={"ignored": 1}))]:
        a = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=LR)
        b = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=LR)
        fn = hf.TYPE_TO_SCHEDULER_FUNCTION[hf.SchedulerType(name)]
        extra = kwargs.pop("scheduler_specific_kwargs", {})
        direct = fn(b, **kwargs, **({} if name == "constant" else extra))
        by_name = hf.get_scheduler(name, a, **kwargs, scheduler_specific_kwargs=extra)
        assert _lrs(a, by_name, 60) == _lrs(b, direct, 60), name
    plateau = hf.get_scheduler("reduce_lr_on_plateau", a, scheduler_specific_kwargs=dict(
        patience=3))
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert plateau.patience == 3


def test_get_scheduler_errors_are_hf_s():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=LR)
    cases = [
        (dict(name="linear"), "SchedulerType.LINEAR requires `num_warmup_steps`, please provide "
                              "that argument."),
        (dict(name="cosine", num_warmup_steps=2), "SchedulerType.COSINE requires "
                                                  "`num_training_steps`, please provide that "
                                                  "argument."),
        (dict(name="inverse_sqrt"), "SchedulerType.INVERSE_SQRT requires `num_warmup_steps`, "
                                    "please provide that argument."),
        (dict(name="cosine_with_min_lr", num_warmup_steps=2, num_training_steps=5),
         "One of min_lr or min_lr_rate should be set through the `lr_scheduler_kwargs`"),
        (dict(name="cosine_warmup_with_min_lr", num_warmup_steps=2, num_training_steps=5,
              scheduler_specific_kwargs=dict(min_lr=1e-5, min_lr_rate=0.1)),
         "Only one of min_lr or min_lr_rate should be set"),
        (dict(name="lineer"), "lineer is not a valid SchedulerType, please select one of "
                              "['linear', 'cosine', 'cosine_with_restarts', 'polynomial', "
                              "'constant', 'constant_with_warmup', 'inverse_sqrt', "
                              "'reduce_lr_on_plateau', 'cosine_with_min_lr', "
                              "'cosine_warmup_with_min_lr', 'warmup_stable_decay', 'greedy']"),
        (dict(name="warmup_stable_decay", num_warmup_steps=2,
              scheduler_specific_kwargs=dict(num_decay_steps=3)),
         "Either num_training_steps or num_stable_steps must be specified."),
        (dict(name="warmup_stable_decay", num_warmup_steps=2, num_training_steps=9,
              scheduler_specific_kwargs=dict(num_decay_steps=3, warmup_type="square")),
         "Unknown warmup type: square, expected 'linear', 'cosine' or '1-sqrt'"),
        (dict(name="warmup_stable_decay", num_warmup_steps=2, num_training_steps=9,
              scheduler_specific_kwargs=dict(num_decay_steps=3, decay_type="exp")),
         "Unknown decay type: exp, expected 'linear', 'cosine' or '1-sqrt'"),
        (dict(name="polynomial", num_warmup_steps=2, num_training_steps=9,
              scheduler_specific_kwargs=dict(lr_end=1.0)),
         f"lr_end (1.0) must be smaller than initial lr ({LR})"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            hf.get_scheduler(optimizer=opt, **kwargs)
    with pytest.warns(UserWarning, match="^Both num_training_steps and num_stable_steps are "
                                         "specified. num_stable_steps will be used.$"):
        hf.get_wsd_schedule(opt, 2, 3, num_training_steps=10, num_stable_steps=4)


def test_scheduler_type_members_and_signatures_are_hf_s():
    assert {m.name: m.value for m in hf.SchedulerType} == {
        "LINEAR": "linear", "COSINE": "cosine", "COSINE_WITH_RESTARTS": "cosine_with_restarts",
        "POLYNOMIAL": "polynomial", "CONSTANT": "constant",
        "CONSTANT_WITH_WARMUP": "constant_with_warmup", "INVERSE_SQRT": "inverse_sqrt",
        "REDUCE_ON_PLATEAU": "reduce_lr_on_plateau", "COSINE_WITH_MIN_LR": "cosine_with_min_lr",
        "COSINE_WARMUP_WITH_MIN_LR": "cosine_warmup_with_min_lr",
        "WARMUP_STABLE_DECAY": "warmup_stable_decay", "GREEDY": "greedy"}
    assert hf.SchedulerType("linear") == "linear"
    signatures = {  # transformers' (current; AdamW 4.x), parameter names and defaults
        "AdamW": "(params, lr=0.001, betas=(0.9, 0.999), eps=1e-06, weight_decay=0.0, "
                 "correct_bias=True, no_deprecation_warning=False)",
        "Adafactor": "(params, lr=None, eps=(1e-30, 0.001), clip_threshold=1.0, "
                     "decay_rate=-0.8, beta1=None, weight_decay=0.0, scale_parameter=True, "
                     "relative_step=True, warmup_init=False)",
        "AdafactorSchedule": "(optimizer, initial_lr=0.0)",
        "get_adafactor_schedule": "(optimizer, initial_lr=0.0)",
        "get_constant_schedule": "(optimizer, last_epoch=-1)",
        "get_reduce_on_plateau_schedule": "(optimizer, **kwargs)",
        "get_constant_schedule_with_warmup": "(optimizer, num_warmup_steps, last_epoch=-1)",
        "get_linear_schedule_with_warmup": "(optimizer, num_warmup_steps, num_training_steps, "
                                           "last_epoch=-1)",
        "get_cosine_schedule_with_warmup": "(optimizer, num_warmup_steps, num_training_steps, "
                                           "num_cycles=0.5, last_epoch=-1)",
        "get_cosine_with_hard_restarts_schedule_with_warmup": (
            "(optimizer, num_warmup_steps, num_training_steps, num_cycles=1, last_epoch=-1)"),
        "get_polynomial_decay_schedule_with_warmup": (
            "(optimizer, num_warmup_steps, num_training_steps, lr_end=1e-07, power=1.0, "
            "last_epoch=-1)"),
        "get_inverse_sqrt_schedule": "(optimizer, num_warmup_steps, timescale=None, "
                                     "last_epoch=-1)",
        "get_cosine_with_min_lr_schedule_with_warmup": (
            "(optimizer, num_warmup_steps, num_training_steps, num_cycles=0.5, last_epoch=-1, "
            "min_lr=None, min_lr_rate=None)"),
        "get_cosine_with_min_lr_schedule_with_warmup_lr_rate": (
            "(optimizer, num_warmup_steps, num_training_steps, num_cycles=0.5, last_epoch=-1, "
            "min_lr=None, min_lr_rate=None, warmup_lr_rate=None)"),
        "get_wsd_schedule": (
            "(optimizer, num_warmup_steps, num_decay_steps, num_training_steps=None, "
            "num_stable_steps=None, warmup_type='linear', decay_type='cosine', "
            "min_lr_ratio=0, num_cycles=0.5, last_epoch=-1)"),
        "get_scheduler": "(name, optimizer, num_warmup_steps=None, num_training_steps=None, "
                         "scheduler_specific_kwargs=None)",
        "WarmUp": "(initial_learning_rate, decay_schedule_fn, warmup_steps, power=1.0, "
                  "name=None)",
    }
    for name, expected in signatures.items():
        params = inspect.signature(getattr(hf, name)).parameters.values()
        shown = "(" + ", ".join(p.replace(annotation=inspect.Parameter.empty).__str__()
                                for p in params) + ")"
        assert shown == expected, name
    assert set(hf.__all__) >= set(signatures)


# --------------------------------------------------------------------------------------------
# transformers.optimization_tf (Keras), written out


def keras_warmup_polynomial(t, init_lr, num_train_steps, num_warmup_steps, min_lr_ratio=0.0,
                            power=1.0):
    """``create_optimizer``'s schedule: ``WarmUp`` (linear) of a ``PolynomialDecay``."""
    if num_warmup_steps and t < num_warmup_steps:
        return init_lr * (t / num_warmup_steps) ** 1.0
    step = t - num_warmup_steps
    decay_steps = num_train_steps - num_warmup_steps
    end = init_lr * min_lr_ratio
    return (init_lr - end) * (1 - min(step, decay_steps) / decay_steps) ** power + end


def keras_adam_weight_decay(params, grads, lr, betas=(0.9, 0.999), eps=1e-7, wd=0.0,
                            decay=lambda name: True, amsgrad=False, clipvalue=None,
                            clipnorm=None, global_clipnorm=None):
    """Keras's legacy Adam (``ResourceApplyAdam``) with AdamWeightDecay's decay (before the
    Adam step, by the scheduled lr), after Keras's clipping (value, per-tensor norm, global
    norm). ``lr(t)``: the schedule at iteration ``t`` (0, 1, ...)."""
    params = {k: v.clone() for k, v in params.items()}
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v = {k: torch.zeros_like(x) for k, x in params.items()}
    vhat = {k: torch.zeros_like(x) for k, x in params.items()}
    b1, b2 = betas
    for t, g in enumerate(grads):
        g = dict(g)
        if clipvalue is not None:
            g = {k: x.clamp(-clipvalue, clipvalue) for k, x in g.items()}
        if clipnorm is not None:
            g = {k: x * clipnorm / max(float(x.norm()), clipnorm) for k, x in g.items()}
        if global_clipnorm is not None:
            norm = math.sqrt(sum(float(x.norm()) ** 2 for x in g.values()))
            g = {k: x * (global_clipnorm * min(1.0 / norm, 1.0 / global_clipnorm))
                 for k, x in g.items()}
        step = t + 1
        lr_t = lr(t) * math.sqrt(1 - b2**step) / (1 - b1**step)
        for k, p in params.items():
            if wd and decay(k):
                p = p - lr(t) * p * wd
            m[k] = m[k] + (g[k] - m[k]) * (1 - b1)
            v[k] = v[k] + (g[k] * g[k] - v[k]) * (1 - b2)
            vhat[k] = torch.maximum(vhat[k], v[k])
            params[k] = p - (m[k] * lr_t) / ((vhat[k] if amsgrad else v[k]).sqrt() + eps)
    return params


class _Tiny(torch.nn.Module):
    """BERT-like names: ``LayerNorm`` and biases are not decayed by default."""

    def __init__(self):
        super().__init__()
        self.dense = torch.nn.Linear(4, 3)
        self.LayerNorm = torch.nn.LayerNorm(3)  # noqa: N815 - BERT's attribute name
        self.out = torch.nn.Linear(3, 2, bias=False)


def _model_and_grads(steps=50):
    torch.manual_seed(0)
    model = _Tiny().double()
    gen = torch.Generator().manual_seed(1)
    grads = [{n: torch.randn(p.shape, generator=gen, dtype=torch.float64)
              for n, p in model.named_parameters()} for _ in range(steps)]
    return model, grads


def _assert_params(actual: dict, expected: dict):
    for k, e in expected.items():
        err = float((actual[k] - e).abs().max())
        assert err <= 1e-12 * float(e.abs().max()), (k, err)


_DEFAULT_EXCLUDED = ("LayerNorm", "layer_norm", "bias")


@pytest.mark.parametrize("opts", [
    dict(weight_decay_rate=0.01, adam_clipnorm=0.5, power=2.0, min_lr_ratio=0.1),
    dict(weight_decay_rate=0.01, adam_global_clipnorm=1.0, include_in_weight_decay=["Layer"]),
    dict(num_warmup_steps=0),
    dict(adam_beta1=0.8, adam_beta2=0.99, adam_epsilon=1e-3, adam_clipnorm=0.5),
], ids=["decay_clipnorm_power", "include_global_clip", "no_warmup", "adam_options"])
def test_create_optimizer_matches_keras(opts):
    model, grads = _model_and_grads()
    opts = {"num_warmup_steps": 10, **opts}
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer, scheduler = hf.create_optimizer(3e-3, 50, params=model, **opts)
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    for g in grads:
        for n, p in model.named_parameters():
            p.grad = g[n].clone()
        optimizer.step()
        scheduler.step()
    include = opts.get("include_in_weight_decay") or ()
    expected = keras_adam_weight_decay(
        init, grads, lambda t: keras_warmup_polynomial(
            t, 3e-3, 50, opts["num_warmup_steps"], opts.get("min_lr_ratio", 0.0),
            opts.get("power", 1.0)),
        (opts.get("adam_beta1", 0.9), opts.get("adam_beta2", 0.999)),
        opts.get("adam_epsilon", 1e-8), opts.get("weight_decay_rate", 0.0),
        lambda name: any(re.search(r, name) for r in include) or not any(
            re.search(r, name) for r in _DEFAULT_EXCLUDED),
        clipnorm=opts.get("adam_clipnorm"), global_clipnorm=opts.get("adam_global_clipnorm"))
    _assert_params({n: p.detach() for n, p in model.named_parameters()}, expected)


def test_create_optimizer_errors_and_inputs():
    model, _ = _model_and_grads(1)
    with pytest.raises(ValueError, match=r"^Cannot accept both `clipnorm` and `global_clipnorm`, "
                                         r"passed `clipnorm` 1.0, `global_clipnorm` 2.0$"):
        hf.create_optimizer(1e-3, 10, 2, adam_clipnorm=1.0, adam_global_clipnorm=2.0,
                            params=model)
    with pytest.raises(TypeError, match="named parameters"):
        hf.create_optimizer(1e-3, 10, 2, params=list(model.parameters()))
    for params in (dict(model.named_parameters()), list(model.named_parameters())):
        optimizer, _ = hf.create_optimizer(1e-3, 10, 2, params=params)
        assert optimizer.param_groups[0]["param_names"][0] == "dense.weight"


@pytest.mark.parametrize("opts", [
    dict(weight_decay=0.1, amsgrad=True, clipvalue=0.3, exclude_from_weight_decay=["bias"]),
    dict(weight_decay=0.1, clipnorm=0.5, include_in_weight_decay=["^dense"],
         exclude_from_weight_decay=["dense", "LayerNorm"]),
    dict(global_clipnorm=1.0, betas=(0.8, 0.9), eps=1e-4),
], ids=["amsgrad_clipvalue_exclude", "clipnorm_include_over_exclude", "global_clip"])
def test_adam_weight_decay_matches_keras(opts):
    model, grads = _model_and_grads()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    include = opts.get("include_in_weight_decay") or ()
    exclude = opts.get("exclude_from_weight_decay") or ()
    expected = keras_adam_weight_decay(
        params, grads, lambda t: 0.01, opts.get("betas", (0.9, 0.999)), opts.get("eps", 1e-7),
        opts.get("weight_decay", 0.0),
        lambda name: any(re.search(r, name) for r in include) or not any(
            re.search(r, name) for r in exclude),
        opts.get("amsgrad", False), opts.get("clipvalue"), opts.get("clipnorm"),
        opts.get("global_clipnorm"))
    tx = fo.adam_weight_decay(lr=0.01, **opts)
    state = tx.init(params)
    for g in grads:
        u, state = tx.update(g, state, params)
        params = fo.apply_updates(params, u)
    _assert_params(params, expected)


def test_adam_weight_decay_keras_arguments():
    tx = hf.AdamWeightDecay(learning_rate=0.02, beta_1=0.8, beta_2=0.9, epsilon=1e-5,
                            weight_decay_rate=0.1, clipnorm=1.0, name="ignored")
    assert tx.hparams == dict(lr=0.02, betas=(0.8, 0.9), eps=1e-5, weight_decay=0.1,
                              clipvalue=None, clipnorm=1.0, global_clipnorm=None)
    assert hf.AdamWeightDecay(lr=0.5).hparams["lr"] == 0.5  # Keras's old name
    with pytest.raises(TypeError, match="decay"):
        hf.AdamWeightDecay(decay=0.1)


def test_warmup_schedule_is_keras_warmup():
    decay = sch.polynomial(0.1, 0.01, 2.0, 30)
    for schedule in (hf.WarmUp(0.1, decay, 10, power=1.5), sch.warmup(0.1, decay, 10, 1.5)):
        for t in range(60):
            want = 0.1 * (t / 10) ** 1.5 if t < 10 else (0.1 - 0.01) * (
                1 - min(t - 10, 30) / 30) ** 2.0 + 0.01
            assert float(schedule(t)) == pytest.approx(want, rel=1e-14, abs=1e-300)
    # the decay's hparams nest: still live
    assert float(sch.warmup(0.1, decay, 10)(40, {"decay_hparams": {"end_value": 0.02}})) == \
        pytest.approx(0.02)


def test_gradient_accumulator_sums():
    acc = hf.GradientAccumulator()
    assert int(acc.step) == 0
    with pytest.raises(ValueError, match="^The accumulator should be called first to "
                                         "initialize the gradients$"):
        acc.gradients  # noqa: B018
    gen = torch.Generator().manual_seed(0)
    batches = [[torch.randn(3, generator=gen), None, torch.randn(2, 2, generator=gen)]
               for _ in range(3)]
    for b in batches:
        acc(b)
    assert int(acc.step) == 3 and acc.step.dtype == torch.int64
    got = acc.gradients
    assert got[1] is None
    assert torch.allclose(got[0], sum(b[0] for b in batches))
    assert torch.allclose(got[2], sum(b[2] for b in batches))
    with pytest.raises(ValueError, match="^Expected 3 gradients, but got 2$"):
        acc(batches[0][:2])
    acc.reset()
    assert int(acc.step) == 0 and torch.equal(acc.gradients[0], torch.zeros(3))
    hf.GradientAccumulator().reset()  # (nothing to reset)


def test_multi_steps_sum_gives_the_inner_transform_the_sum():
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(3, generator=gen, dtype=torch.float64)}
    grads = [{"w": torch.randn(3, generator=gen, dtype=torch.float64)} for _ in range(6)]
    tx = fo.multi_steps(fo.sgd(lr=0.1), 3, reduction="sum")
    state = tx.init(params)
    outs = []
    for g in grads:
        u, state = tx.update(g, state, params)
        outs.append(u["w"])
    assert torch.equal(outs[0], torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(outs[2], -0.1 * (grads[0]["w"] + grads[1]["w"] + grads[2]["w"]),
                          rtol=1e-15, atol=0)
    with pytest.raises(fo.HParamError, match="reduction must be 'mean' or 'sum'"):
        fo.multi_steps(fo.sgd(), 2, reduction="max")
