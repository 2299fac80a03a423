"""Adagrad, Adadelta, Adamax, NAdam, RAdam, RMSprop, Rprop and ASGD against torch.optim.

The aliases (``fo.adagrad`` ...) and the drop-in classes (``fo.optim.Adagrad`` ...) follow the
trajectories of torch.optim's classes for every constructor option torch accepts, over 50 steps
with seeded random gradients, two param groups with different learning rates, real and complex
parameters. Tolerances (per tensor, ``b`` the torch value): float64/complex128
``max|a-b| <= 1e-10 max|b|``; float32/complex64 ``ulp_budget(steps, UPDATE_OPS[name])`` ulps of
the tensor's peak magnitude along torch's trajectory (``tests/tolerance.py``: 2 ulps per op of the
update rule per step, e.g. RMSprop's 24 ops over 50 steps: 2400 ulps). That still catches one
step too many and a decay rate (beta, alpha, rho, lr_decay, etas) other than the one given
(torch's default): each is at least 3 times the budget off.

State dicts interoperate both ways: a torch.optim checkpoint loads into ours and continues on
torch's trajectory, and ours loads into torch.
"""

from __future__ import annotations

import copy
import inspect
import itertools

import pytest
import torch
from tolerance import UPDATE_OPS, assert_close_ulps, ulp_budget

import functional_optim as fo
from functional_optim import optim as fo_optim

STEPS = 50
SHAPES = {"weight": (4, 3), "bias": (3,), "scale": ()}
GROUPS = (("weight", "bias"), ("scale",))  # the second group runs at LR2_FACTOR * lr
LR2_FACTOR = 0.5
DTYPES = [torch.float32, torch.float64, torch.complex64, torch.complex128]
DTYPE_IDS = ["f32", "f64", "c64", "c128"]


def _params(dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in SHAPES.items():
        x = torch.randn(s, generator=gen, dtype=torch.float64)
        if dtype.is_complex:
            x = torch.complex(x, torch.randn(s, generator=gen, dtype=torch.float64))
        out[k] = x.to(dtype)
    return out


def _grads(dtype: torch.dtype, steps: int = STEPS, seed: int = 1) -> list[dict]:
    return [_params(dtype, seed=seed * 1000 + i) for i in range(steps)]


def _assert_close(actual: dict, expected: dict, dtype: torch.dtype, where: str = "", *,
                  peak: dict | None = None, ulps: int | None = None) -> None:
    """float64/complex128: ``max|a-b| <= 1e-10 max|b|`` per leaf; float32/complex64: within
    ``ulps`` ulps of the leaf's ``peak`` magnitude (see tests/tolerance.py)."""
    for k in expected:
        a, b = actual[k], expected[k]
        assert a.dtype == b.dtype, (k, a.dtype, b.dtype)
        if dtype in (torch.float32, torch.complex64):
            assert_close_ulps(a, b, ulps=ulps, scale=peak[k], where=f"{where} leaf {k!r}")
            continue
        err = (a - b).abs().max().item()
        bound = 1e-10 * b.abs().max().item()
        assert err <= bound, f"{where} leaf {k!r}: max|a-b| = {err:.3e} > {bound:.3e}"


# --------------------------------------------------------------------------------------------
# The algorithms and every option combination torch accepts


def _grid(**axes):
    keys = list(axes)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*axes.values())]


WD = (0.0, 0.1)
MAX = (False, True)

# name: (alias, torch class, base kwargs (non-default values), option grid)
ALGOS = {
    "adagrad": (fo.adagrad, torch.optim.Adagrad, dict(lr=0.1, eps=1e-8),
                _grid(lr_decay=(0.0, 0.01), weight_decay=WD,
                      initial_accumulator_value=(0.0, 0.1), maximize=MAX)),
    "adadelta": (fo.adadelta, torch.optim.Adadelta, dict(lr=0.5, rho=0.8, eps=1e-5),
                 _grid(weight_decay=WD, maximize=MAX)),
    "adamax": (fo.adamax, torch.optim.Adamax, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
               _grid(weight_decay=WD, maximize=MAX)),
    "nadam": (fo.nadam, torch.optim.NAdam,
              dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, momentum_decay=0.01),
              _grid(weight_decay=WD, decoupled_weight_decay=(False, True), maximize=MAX)),
    "radam": (fo.radam, torch.optim.RAdam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
              _grid(weight_decay=WD, decoupled_weight_decay=(False, True), maximize=MAX)),
    "rmsprop": (fo.rmsprop, torch.optim.RMSprop, dict(lr=0.01, alpha=0.9, eps=1e-6),
                _grid(momentum=(0.0, 0.9), centered=(False, True), weight_decay=WD,
                      maximize=MAX)),
    # step sizes that both clamps reach within 50 steps
    "rprop": (fo.rprop, torch.optim.Rprop,
              dict(lr=0.01, etas=(0.4, 1.3), step_sizes=(1e-3, 0.05)), _grid(maximize=MAX)),
    # t0=10: the average starts moving within 50 steps
    "asgd": (fo.asgd, torch.optim.ASGD, dict(lr=0.05, lambd=0.01, alpha=0.6),
             _grid(t0=(1e6, 10.0), weight_decay=WD, maximize=MAX)),
}

CASES = [(name, opts) for name, (_, _, _, grid) in ALGOS.items() for opts in grid]


def _case_id(case) -> str:
    name, opts = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in opts.items())


def _torch_foreach_values(name: str) -> tuple:
    # torch.optim.ASGD's foreach path computes eta = lr / (1 + lambd lr step)^alpha with ``step``
    # a float32 tensor (its single-tensor path, the CPU default, in Python floats): the two torch
    # paths disagree by ~1e-8 in float64. We follow the single-tensor path.
    return (False,) if name == "asgd" else (False, True)


def _torch_group_list(params: dict, lr) -> list[dict]:
    return [{"params": [params[k] for k in GROUPS[0]]},
            {"params": [params[k] for k in GROUPS[1]], "lr": lr * LR2_FACTOR}]


def _run_class(cls, kwargs: dict, dtype, grads, hook=None, params=None, opt=None,
               start: int = 0) -> tuple[dict, torch.optim.Optimizer, dict]:
    """Steps ``start, ...`` of a ``torch.optim.Optimizer`` class (torch's or ours) over the two
    param groups; returns the params, the optimizer and each param's peak ``max|p|`` along the
    way (the scale of the float32 tolerance)."""
    params = params if params is not None else _params(dtype)
    opt = opt if opt is not None else cls(_torch_group_list(params, kwargs["lr"]), **kwargs)
    peak = {k: p.abs().max().item() for k, p in params.items()}
    for i, g in enumerate(grads[start:], start):
        if hook is not None:
            hook(i, opt)
        for k, p in params.items():
            p.grad = g[k].clone()
        opt.step()
        peak = {k: max(peak[k], p.abs().max().item()) for k, p in params.items()}
    return params, opt, peak


def _run_fo(make, kwargs: dict, dtype, grads, hparams_at=None) -> dict:
    """One alias per param group (the second at LR2_FACTOR * lr), stepped functionally."""
    params = _params(dtype)
    lr = kwargs["lr"]
    txs = [make(**kwargs), make(**dict(kwargs, lr=lr * LR2_FACTOR))]
    subsets = [{k: params[k] for k in keys} for keys in GROUPS]
    states = [tx.init(sub) for tx, sub in zip(txs, subsets, strict=True)]
    for i, g in enumerate(grads):
        for j, (tx, keys) in enumerate(zip(txs, GROUPS, strict=True)):
            hp = hparams_at(i, j) if hparams_at is not None else None
            sub = {k: params[k] for k in keys}
            updates, states[j] = tx.update({k: g[k] for k in keys}, states[j], sub, hp)
            params.update(fo.apply_updates(sub, updates))
    return params


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_alias_matches_torch(case, dtype):
    name, opts = case
    make, cls, base, _ = ALGOS[name]
    kwargs = dict(base, **opts)
    grads = _grads(dtype)
    actual = _run_fo(make, kwargs, dtype, grads)
    for foreach in _torch_foreach_values(name):
        expected, _, peak = _run_class(cls, dict(kwargs, foreach=foreach), dtype, grads)
        # float32: each op of the update rule may round 2 ulps apart, every step (torch's
        # float32 decay factor ``1 - lr wd`` is one of those ops)
        _assert_close(actual, expected, dtype, f"{name} foreach={foreach} {opts}", peak=peak,
                      ulps=ulp_budget(STEPS, UPDATE_OPS[name]))


def test_option_grid_sizes():
    sizes = {name: len(grid) for name, (_, _, _, grid) in ALGOS.items()}
    assert sizes == {"adagrad": 16, "adadelta": 4, "adamax": 4, "nadam": 8, "radam": 8,
                     "rmsprop": 16, "rprop": 2, "asgd": 8}


@pytest.mark.parametrize("name", list(ALGOS))
def test_torch_defaults(name):
    # the alias with no arguments against torch's class with none
    make, cls, _, _ = ALGOS[name]
    dtype = torch.float64
    grads = _grads(dtype)
    params = _params(dtype)
    tx = make()
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = fo.apply_updates(params, updates)
    expected = _params(dtype)
    opt = cls(list(expected.values()))
    for g in grads:
        for k, p in expected.items():
            p.grad = g[k].clone()
        opt.step()
    _assert_close(params, expected, dtype, f"{name} defaults")
    # the flat hparams dict has torch's keys and default values
    torch_defaults = opt.defaults
    for key, value in tx.hparams.items():
        assert key in torch_defaults, key
        assert tuple(value) == tuple(torch_defaults[key]) if isinstance(value, tuple) \
            else value == torch_defaults[key], (key, value, torch_defaults[key])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128],
                         ids=["f32", "f64", "c128"])
@pytest.mark.parametrize("name", list(ALGOS))
def test_tensor_lr(name, dtype):
    # the same 0-d float64 lr tensor on both sides (torch: single-tensor path)
    make, cls, base, grid = ALGOS[name]
    opts = grid[-1]  # every option on
    grads = _grads(dtype)
    lr = torch.tensor(base["lr"], dtype=torch.float64)
    kwargs = dict(base, **opts, lr=lr)
    actual = _run_fo(make, kwargs, dtype, grads)
    expected, _, peak = _run_class(cls, dict(kwargs, foreach=False), dtype, grads)
    # float32: the update rule's ops, 2 ulps each, every step
    _assert_close(actual, expected, dtype, f"{name} tensor lr", peak=peak,
                  ulps=ulp_budget(STEPS, UPDATE_OPS[name]))
    assert lr.item() == base["lr"] and lr._version == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(ALGOS))
def test_lr_changed_mid_run_matches_param_group(name, dtype):
    make, cls, base, grid = ALGOS[name]
    kwargs = dict(base, **grid[-1])
    grads = _grads(dtype)
    changes = {20: 0.3, 35: 2.0}  # factors of the base lr

    def hook(i, opt):
        if i in changes:
            for j, group in enumerate(opt.param_groups):
                group["lr"] = base["lr"] * changes[i] * (LR2_FACTOR if j else 1.0)

    current = {"f": 1.0}

    def hparams_at(i, j):
        if i in changes:
            current["f"] = changes[i]
        return {"lr": base["lr"] * current["f"] * (LR2_FACTOR if j else 1.0)}

    expected, _, peak = _run_class(cls, dict(kwargs, foreach=False), dtype, grads, hook)
    actual = _run_fo(make, kwargs, dtype, grads, hparams_at)
    # float32: the update rule's ops, 2 ulps each, every step (the lr changes add no op); an lr
    # change applied one step late is at least 13 times that off (Rprop aside: its lr is only
    # the initial step size)
    _assert_close(actual, expected, dtype, f"{name} lr changes", peak=peak,
                  ulps=ulp_budget(STEPS, UPDATE_OPS[name]))


# every hyperparameter of the flat dict, given at update time, equals torch with that group
UPDATE_TIME = {
    "adagrad": dict(lr=0.05, lr_decay=0.02, weight_decay=0.05, eps=1e-6),
    "adadelta": dict(lr=0.8, rho=0.7, eps=1e-4, weight_decay=0.05),
    "adamax": dict(lr=0.02, betas=(0.7, 0.95), eps=1e-4, weight_decay=0.05),
    "nadam": dict(lr=0.02, betas=(0.7, 0.95), eps=1e-4, weight_decay=0.05, momentum_decay=0.02),
    "radam": dict(lr=0.02, betas=(0.7, 0.95), eps=1e-4, weight_decay=0.05),
    "rmsprop": dict(lr=0.02, alpha=0.8, eps=1e-4, weight_decay=0.05, momentum=0.5),
    "rprop": dict(lr=0.02, etas=(0.3, 1.5), step_sizes=(1e-4, 0.1)),
    "asgd": dict(lr=0.02, lambd=0.02, alpha=0.5, t0=5.0, weight_decay=0.05),
}


def _as_tensors(value):
    """Every number of an hparam value (tuples too) as a 0-d float64 tensor."""
    if isinstance(value, tuple):
        return tuple(_as_tensors(v) for v in value)
    return torch.tensor(value, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["number", "tensor"])
@pytest.mark.parametrize("built", ["other", "defaults"])
@pytest.mark.parametrize("name", list(ALGOS))
def test_every_hparam_at_update_time(name, built, kind):
    """Every key of the flat dict given at update time, as numbers or 0-d tensors, equals torch
    built with those values, whether the alias was built with other values or with its defaults
    (a weight decay or momentum of 0 keeps its block: it is live)."""
    make, cls, base, grid = ALGOS[name]
    static = {k: v for k, v in grid[-1].items() if k not in make().hparams}  # not in the dict
    dtype = torch.float64
    grads = _grads(dtype)
    group = UPDATE_TIME[name]
    assert set(group) == set(make().hparams), "every key of the flat dict is exercised"
    expected, _, _ = _run_class(cls, dict(group, **static, foreach=False), dtype, grads)
    # constructed with other values, or with the defaults, and overridden at update time
    kwargs = dict(base, **grid[-1]) if built == "other" else dict(static, lr=base["lr"])

    def hparams_at(i, j):
        h = dict(group, lr=group["lr"] * (LR2_FACTOR if j else 1.0))
        return {k: _as_tensors(v) for k, v in h.items()} if kind == "tensor" else h

    actual = _run_fo(make, kwargs, dtype, grads, hparams_at)
    _assert_close(actual, expected, dtype, f"{name} update-time hparams ({kind}, built {built})")


def test_asgd_average_matches_torch():
    dtype = torch.float64
    grads = _grads(dtype)
    kwargs = dict(lr=0.05, lambd=0.01, alpha=0.6, t0=10.0, weight_decay=0.1)
    params = _params(dtype)
    tx = fo.asgd(**kwargs)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = fo.apply_updates(params, updates)
    expected = _params(dtype)
    opt = torch.optim.ASGD(list(expected.values()), foreach=False, **kwargs)
    for g in grads:
        for k, p in expected.items():
            p.grad = g[k].clone()
        opt.step()
    ax = state["asgd"].ax
    torch_ax = {k: opt.state[p]["ax"] for k, p in expected.items()}
    _assert_close(ax, torch_ax, dtype, "asgd ax")
    assert not torch.allclose(ax["weight"], params["weight"])  # the average is not the iterate
    for k, p in expected.items():
        assert state["asgd"].eta[k].item() == opt.state[p]["eta"].item()
        assert state["asgd"].mu[k].item() == opt.state[p]["mu"].item()
        assert state["asgd"].eta[k].dtype == opt.state[p]["eta"].dtype == torch.float32


def test_scalar_state_dtype_policy():
    params = {"w": torch.zeros(3, dtype=torch.float64)}
    assert fo.nadam().init(params)["nadam"].mu_product["w"].dtype == torch.float32
    exact = fo.nadam(scalar_state_dtype=torch.float64).init(params)
    assert exact["nadam"].mu_product["w"].dtype == torch.float64
    assert fo.asgd().init(params)["asgd"].eta["w"].dtype == torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:  # torch's choice follows the default dtype, at init (as torch.optim's lazy state)
        assert fo.nadam().init(params)["nadam"].mu_product["w"].dtype == torch.float64
    finally:
        torch.set_default_dtype(previous)
    with pytest.raises(fo.HParamError, match="scalar_state_dtype"):
        fo.scale_by_nadam(scalar_state_dtype=torch.int64)


def test_radam_rectification_switch():
    # before rho_t > 5, RAdam's step is the bias-corrected momentum alone
    g = {"w": torch.tensor([0.5, -2.0], dtype=torch.float64)}
    tx = fo.scale_by_radam(betas=(0.9, 0.999))
    state = tx.init(g)
    out, state = tx.update(g, state)
    torch.testing.assert_close(out["w"], g["w"], rtol=1e-15, atol=0)
    never = fo.scale_by_radam(betas=(0.9, 0.999), threshold=1e9)
    s2 = never.init(g)
    for _ in range(20):
        out2, s2 = never.update(g, s2)
    torch.testing.assert_close(out2["w"], g["w"], rtol=1e-12, atol=0)  # m_hat of a constant g


def test_rprop_lr_is_the_initial_step_size():
    g = {"w": torch.tensor([0.5, -2.0, 0.0], dtype=torch.float64)}
    tx = fo.rprop(lr=0.3)
    state = tx.init(g)
    out, state = tx.update(g, state, None, {"lr": 0.2})  # read at the first update
    torch.testing.assert_close(out["w"], torch.tensor([-0.2, 0.2, 0.0], dtype=torch.float64))
    out, state = tx.update(g, state, None, {"lr": 5.0})  # and only there
    torch.testing.assert_close(out["w"], torch.tensor([-0.24, 0.24, 0.0], dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("name", [n for n in ALGOS if n != "adagrad"])  # (tests/test_sparse.py)
def test_sparse_gradients_rejected(name):
    make = ALGOS[name][0]
    params = {"w": torch.zeros(4, 3, dtype=torch.float64)}
    tx = make()
    state = tx.init(params)
    sparse = {"w": torch.zeros(4, 3, dtype=torch.float64).to_sparse()}
    with pytest.raises(TypeError, match="sparse"):
        tx.update(sparse, state, params)


def test_invalid_hparams_rejected_at_construction():
    with pytest.raises(fo.HParamError):
        fo.rprop(etas=(1.5, 1.2))
    with pytest.raises(fo.HParamError):
        fo.adadelta(rho=1.5)
    with pytest.raises(fo.HParamError):
        fo.adagrad(lr_decay=-1.0)
    with pytest.raises(fo.HParamError):
        fo.nadam(betas=(1.0, 0.9))
    with pytest.raises(fo.HParamError):
        fo.scale_by_radam(threshold=3.0)
    with pytest.raises(fo.HParamError, match="initial_accumulator_value"):
        fo.scale_by_rss(initial_accumulator_value=torch.tensor(0.1))
    with pytest.raises(fo.HParamError, match="momentum is None"):
        tx = fo.rmsprop(momentum=None)
        tx.update({"w": torch.ones(2)}, tx.init({"w": torch.ones(2)}), {"w": torch.ones(2)},
                  {"momentum": 0.9})


def test_asgd_needs_params():
    tx = fo.scale_by_asgd()
    g = {"w": torch.ones(2)}
    with pytest.raises(fo.MissingParamsError):
        tx.update(g, tx.init(g))


# --------------------------------------------------------------------------------------------
# Drop-in classes


CLASSES = ["Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "RMSprop", "Rprop", "ASGD"]
CLASS_OF = dict(zip(CLASSES, ["adagrad", "adadelta", "adamax", "nadam", "radam", "rmsprop",
                              "rprop", "asgd"], strict=True))


@pytest.mark.parametrize("cls_name", CLASSES)
def test_class_signature_and_defaults(cls_name):
    ours, theirs = getattr(fo_optim, cls_name), getattr(torch.optim, cls_name)
    sig_o = inspect.signature(ours.__init__).parameters
    sig_t = inspect.signature(theirs.__init__).parameters
    assert [(p.name, p.kind, p.default) for p in sig_o.values()] == \
        [(p.name, p.kind, p.default) for p in sig_t.values()]
    w = torch.zeros(2)
    assert ours([w]).defaults == theirs([w]).defaults
    assert issubclass(ours, torch.optim.Optimizer)


def _class_case(cls_name):
    name = CLASS_OF[cls_name]
    _, _, base, grid = ALGOS[name]
    return dict(base, **grid[-1])


@pytest.mark.parametrize("foreach", [False, True], ids=["per_leaf", "foreach"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128],
                         ids=["f32", "f64", "c128"])
@pytest.mark.parametrize("cls_name", CLASSES)
def test_class_matches_torch(cls_name, dtype, foreach):
    kwargs = _class_case(cls_name)
    grads = _grads(dtype)
    actual, opt, _ = _run_class(getattr(fo_optim, cls_name), dict(kwargs, foreach=foreach),
                                dtype, grads)
    expected, topt, peak = _run_class(getattr(torch.optim, cls_name), dict(kwargs, foreach=False),
                                      dtype, grads)
    # float32: the update rule's ops, 2 ulps each, every step (our fast paths order them
    # differently: see test_blocked.py)
    _assert_close(actual, expected, dtype, f"{cls_name}", peak=peak,
                  ulps=ulp_budget(STEPS, UPDATE_OPS[CLASS_OF[cls_name]]))
    # the same state keys, dtypes and devices as torch's
    ours_sd, torch_sd = opt.state_dict(), topt.state_dict()
    drop = lambda groups: [{k: v for k, v in g.items() if k != "foreach"} for g in groups]  # noqa: E731
    assert drop(ours_sd["param_groups"]) == drop(torch_sd["param_groups"])
    for pid, torch_state in torch_sd["state"].items():
        assert set(ours_sd["state"][pid]) == set(torch_state)
        for key, value in torch_state.items():
            mine = ours_sd["state"][pid][key]
            assert mine.dtype == value.dtype and mine.shape == value.shape, (key, mine, value)
            assert mine.device == value.device, key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128],
                         ids=["f32", "f64", "c128"])
@pytest.mark.parametrize("cls_name", CLASSES)
def test_state_dict_torch_to_ours_and_back(cls_name, dtype):
    kwargs = dict(_class_case(cls_name), foreach=False)
    ours_cls, torch_cls = getattr(fo_optim, cls_name), getattr(torch.optim, cls_name)
    grads = _grads(dtype)
    half = 20
    # float32: both sides resume from the same state and run STEPS - half steps of the update
    # rule's ops, 2 ulps each
    ulps = ulp_budget(STEPS - half, UPDATE_OPS[CLASS_OF[cls_name]])

    # torch -> ours: torch's checkpoint continues in ours on the trajectory of torch resumed
    p_t, o_t, _ = _run_class(torch_cls, kwargs, dtype, grads[:half])
    sd = copy.deepcopy(o_t.state_dict())
    saved = {k: v.detach().clone() for k, v in p_t.items()}

    def resume(cls, state_dict):
        params = {k: v.clone() for k, v in saved.items()}
        opt = cls(_torch_group_list(params, kwargs["lr"]), **kwargs)
        opt.load_state_dict(copy.deepcopy(state_dict))
        return _run_class(cls, kwargs, dtype, grads, params=params, opt=opt, start=half)

    expected, _, peak = resume(torch_cls, sd)
    actual, _, _ = resume(ours_cls, sd)
    _assert_close(actual, expected, dtype, f"{cls_name} torch->ours", peak=peak, ulps=ulps)

    # ours -> torch: our checkpoint continues in torch on the trajectory of ours resumed
    p_o, o_o, _ = _run_class(ours_cls, kwargs, dtype, grads[:half])
    sd_ours = copy.deepcopy(o_o.state_dict())
    saved = {k: v.detach().clone() for k, v in p_o.items()}
    mine, _, _ = resume(ours_cls, sd_ours)
    theirs, _, peak = resume(torch_cls, sd_ours)
    _assert_close(mine, theirs, dtype, f"{cls_name} ours->torch", peak=peak, ulps=ulps)
    # and our state_dict has torch's keys
    assert set(sd_ours["state"][0]) == set(sd["state"][0])


def test_adagrad_state_made_at_construction():
    p_t, p_o = _params(torch.complex128), _params(torch.complex128)
    kw = dict(initial_accumulator_value=0.25)
    sd_t = torch.optim.Adagrad(list(p_t.values()), **kw).state_dict()
    sd_o = fo_optim.Adagrad(list(p_o.values()), **kw).state_dict()
    assert sd_t["state"].keys() == sd_o["state"].keys()
    for pid in sd_t["state"]:
        for key in ("step", "sum"):
            a, b = sd_o["state"][pid][key], sd_t["state"][pid][key]
            assert a.dtype == b.dtype and torch.equal(a, b), key


def test_class_sparse_gradient_error():
    """torch's error, before anything changes (Adagrad takes them: tests/test_sparse.py)."""
    w = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    opt = fo_optim.Adadelta([w])
    w.grad = torch.ones(4, 3, dtype=torch.float64).to_sparse()
    with pytest.raises(RuntimeError, match="^Adadelta does not support sparse gradients$"):
        opt.step()
    assert not w.any() and not opt.state[w]


def test_class_pickles_and_deepcopies():
    import pickle

    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    opt = fo_optim.NAdam([w], lr=0.01)
    w.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    clone = pickle.loads(pickle.dumps(opt))
    assert clone.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    copy.deepcopy(opt).step()
