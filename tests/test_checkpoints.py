"""``load_state_dict`` loads exactly what is valid and refuses the rest, leaving the optimizer
unchanged (the rules: :mod:`functional_optim.optim._checkpoint`).

Valid: what torch.optim writes for every drop-in class (options included, older formats too) and
what ours write, in both directions; a resumed run continues as torch's resumed from the same
checkpoint, and a generic chain's continues bit for bit. Invalid: one test per kind of damage.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

import functional_optim as fo
import functional_optim.optim as fo_optim
from functional_optim.optim import FunctionalOptimizer

CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, amsgrad=True, maximize=True)),
    ("Adagrad", dict(lr=0.1)),
    ("Adadelta", dict()),
    ("Adamax", dict()),
    ("NAdam", dict()),
    ("NAdam", dict(weight_decay=0.1, decoupled_weight_decay=True)),
    ("RAdam", dict()),
    ("RMSprop", dict()),
    ("RMSprop", dict(momentum=0.9, centered=True)),
    ("Rprop", dict()),
    ("ASGD", dict(t0=2)),
    ("Adafactor", dict()),
    ("Muon", dict(lr=0.02)),
    ("SparseAdam", dict(lr=0.01)),
    ("LBFGS", dict(max_iter=4)),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for n, kw in CASES]
STEPS = 3


# -- runs -------------------------------------------------------------------------------------

def _model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if name == "SparseAdam":
        return torch.nn.Embedding(6, 3, sparse=True).double()
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
                               torch.nn.Linear(4, 2)).double()


def _params(name: str, model: torch.nn.Module) -> list:
    return [p for p in model.parameters() if name != "Muon" or p.ndim == 2]


def _loss(name: str, model: torch.nn.Module, i: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + i)
    if name == "SparseAdam":
        return model(torch.randint(0, 6, (4,), generator=gen)).pow(2).sum()
    return model(torch.randn(5, 3, generator=gen, dtype=torch.float64)).pow(2).sum()


def _train(name, model, opt, steps, start=0, before=None):
    for i in range(start, start + steps):
        def closure(i=i):
            opt.zero_grad()
            loss = _loss(name, model, i)
            loss.backward()
            if before is not None:
                before(model)
            return loss
        opt.step(closure)


def _make(lib, name, kwargs, model):
    return getattr(lib, name)(_params(name, model), **kwargs)


def _through_disk(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _checkpoint(lib, name, kwargs, steps=STEPS, before=None):
    """A checkpoint after ``steps`` steps of ``lib``'s class: ``(model's, optimizer's)``."""
    model = _model(name)
    opt = _make(lib, name, kwargs, model)
    _train(name, model, opt, steps, before=before)
    ckpt = _through_disk({"model": model.state_dict(), "opt": opt.state_dict()})
    return ckpt["model"], ckpt["opt"]


def _resume(lib, name, kwargs, ckpt):
    model_sd, opt_sd = ckpt
    model = _model(name, seed=1)
    model.load_state_dict(model_sd)
    opt = _make(lib, name, kwargs, model)
    opt.load_state_dict(copy.deepcopy(opt_sd))
    return model, opt


def _same(a, b, where="state"):
    """``a`` and ``b`` equal bit for bit: types, keys, tensor dtypes, devices and values."""
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), (where, a, b)
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.device) == (b.dtype, b.shape, b.device), (where, a, b)
        assert torch.equal(a, b) or (a.isnan().all() and b.isnan().all()), (where, a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b), (where, list(a), list(b))
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), (where, a, b)


# -- valid checkpoints ------------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs", CASES, ids=IDS)
@pytest.mark.parametrize("source", ["torch", "ours"])
def test_valid_checkpoint_loads_as_torch_and_continues(name, kwargs, source):
    """A checkpoint (from torch or from ours) loads into ours as into torch (the same state, bit
    for bit, in torch's dtypes: NAdam's ``mu_product`` and ASGD's ``eta``/``mu`` become float64
    as in torch), and both continue on the same trajectory, the scalar state bit for bit."""
    ckpt = _checkpoint(torch.optim if source == "torch" else fo_optim, name, kwargs)
    m_ours, ours = _resume(fo_optim, name, kwargs, ckpt)
    m_torch, theirs = _resume(torch.optim, name, kwargs, ckpt)
    _same(ours.state_dict()["state"], theirs.state_dict()["state"])
    _train(name, m_ours, ours, 4, start=STEPS)
    _train(name, m_torch, theirs, 4, start=STEPS)
    for p, q in zip(m_ours.parameters(), m_torch.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    a, b = ours.state_dict()["state"], theirs.state_dict()["state"]
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].keys() == b[k].keys()
        for key, value in a[k].items():
            if isinstance(value, torch.Tensor) and value.ndim == 0 and name != "LBFGS":
                _same(value, b[k][key], f"{name} state[{k}][{key!r}]")  # step, mu_product, ...
            elif isinstance(value, torch.Tensor):
                assert (value.dtype, value.device) == (b[k][key].dtype, b[k][key].device)


@pytest.mark.parametrize("name, kwargs", [c for c in CASES if c[0] in (
    "Adam", "NAdam", "ASGD", "RMSprop", "Adafactor", "SGD", "Rprop")], ids=lambda x: str(x))
def test_partial_checkpoint_loads(name, kwargs):
    """Parameters that never had a gradient have no entry (or an empty one, or SGD's
    ``momentum_buffer: None``): they start fresh, in ours as in torch."""
    def drop(model):
        model[0].bias.grad = None

    m_sd, o_sd = _checkpoint(torch.optim, name, kwargs, before=drop)
    index = 1  # model[0].bias
    assert index not in o_sd["state"]
    variants = [o_sd, {**o_sd, "state": {**o_sd["state"], index: {}}}]
    if name == "SGD":
        variants.append({**o_sd, "state": {**o_sd["state"], index: {"momentum_buffer": None}}})
    for sd in variants:
        m_ours, ours = _resume(fo_optim, name, kwargs, (m_sd, sd))
        m_torch, theirs = _resume(torch.optim, name, kwargs, (m_sd, sd))
        _train(name, m_ours, ours, 3, start=STEPS)
        _train(name, m_torch, theirs, 3, start=STEPS)
        for p, q in zip(m_ours.parameters(), m_torch.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


_SCALAR_CASES = [c for c in CASES if c[0] not in ("SGD", "Muon", "LBFGS")]


@pytest.mark.parametrize("name, kwargs", _SCALAR_CASES, ids=lambda x: str(x))
def test_old_format_python_numbers_load_as_torch(name, kwargs):
    """Older torch versions saved ``step`` (and NAdam's ``mu_product``, ASGD's ``eta``/``mu``)
    as Python numbers: they become tensors exactly as torch's ``__setstate__`` makes them
    (SparseAdam keeps its int)."""
    m_sd, o_sd = _checkpoint(torch.optim, name, kwargs)
    old = copy.deepcopy(o_sd)
    for entry in old["state"].values():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim == 0:
                entry[key] = value.item()
    m_ours, ours = _resume(fo_optim, name, kwargs, (m_sd, old))
    m_torch, theirs = _resume(torch.optim, name, kwargs, (m_sd, old))
    _same(ours.state_dict()["state"], theirs.state_dict()["state"])
    _train(name, m_ours, ours, 3, start=STEPS)
    _train(name, m_torch, theirs, 3, start=STEPS)
    for p, q in zip(m_ours.parameters(), m_torch.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


# group keys torch's __setstate__ fills in when an older checkpoint lacks them
_NEWER_KEYS = {"amsgrad", "nesterov", "centered", "decoupled_weight_decay", "maximize",
               "foreach", "capturable", "differentiable", "fused"}


@pytest.mark.parametrize("name, kwargs", [c for c in CASES if c[0] not in ("Muon", "LBFGS")],
                         ids=lambda x: str(x))
def test_old_format_group_keys_filled_as_torch(name, kwargs):
    """An older checkpoint lacks newer options (and RMSprop's ``momentum``): each takes the
    class's default, as in torch; extra keys (a scheduler's ``initial_lr``) are kept."""
    m_sd, o_sd = _checkpoint(torch.optim, name, kwargs)
    old = copy.deepcopy(o_sd)
    dropped = _NEWER_KEYS | ({"momentum"} if name == "RMSprop" else set())
    old["param_groups"] = [{k: v for k, v in g.items() if k not in dropped} | {"initial_lr": 0.5}
                           for g in old["param_groups"]]
    m_ours, ours = _resume(fo_optim, name, kwargs, (m_sd, old))
    m_torch, theirs = _resume(torch.optim, name, kwargs, (m_sd, old))
    for g, h in zip(ours.param_groups, theirs.param_groups):
        assert g["initial_lr"] == 0.5
        for k in dropped & set(h):
            assert bool(g[k]) == bool(h[k]), k  # (torch's SGD fills fused=False, not None)


@pytest.mark.parametrize("name", ["Adam", "RMSprop"])
def test_state_of_another_option_is_kept(name):
    """A key of one of the class's other options (Adam's ``max_exp_avg_sq`` without amsgrad,
    RMSprop's ``grad_avg`` when not centered) is kept, unused, as torch keeps it."""
    on = dict(amsgrad=True) if name == "Adam" else dict(centered=True)
    off = {k: False for k in on}
    m_sd, o_sd = _checkpoint(torch.optim, name, on)
    for g in o_sd["param_groups"]:
        g.update(off)
    m_ours, ours = _resume(fo_optim, name, off, (m_sd, o_sd))
    m_torch, theirs = _resume(torch.optim, name, off, (m_sd, o_sd))
    _train(name, m_ours, ours, 3, start=STEPS)
    _train(name, m_torch, theirs, 3, start=STEPS)
    _same(ours.state_dict()["state"], theirs.state_dict()["state"])


# -- the generic adapter: bit for bit ---------------------------------------------------------

GENERIC = {
    "nadam-f64": (lambda: fo.nadam(0.01), torch.float64),
    "asgd-f64": (lambda: fo.asgd(0.01, t0=2), torch.float64),
    "nadam-f64-state-f32-params": (lambda: fo.nadam(0.01, scalar_state_dtype=torch.float64),
                                   torch.float32),
    "multi_steps": (lambda: fo.multi_steps(fo.adam(0.01), 2), torch.float32),
    "apply_if_finite": (lambda: fo.apply_if_finite(fo.adam(0.01), 3), torch.float32),
    "schedule": (lambda: fo.chain(adam=fo.scale_by_adam(), lr=fo.scale_by_learning_rate(
        fo.schedules.warmup_cosine_decay(0.0, 0.05, 2, 9))), torch.float64),
}


def _generic(make, dtype, seed=0):
    model = _model("generic", seed).to(dtype)
    return model, FunctionalOptimizer(model.named_parameters(), make)


def _generic_train(model, opt, steps, start=0):
    dtype = next(model.parameters()).dtype
    for i in range(start, start + steps):
        opt.zero_grad()
        x = torch.randn(5, 3, generator=torch.Generator().manual_seed(100 + i), dtype=dtype)
        model(x).pow(2).sum().backward()
        opt.step()


@pytest.mark.parametrize("case, flat", [(c, False) for c in GENERIC] + [
    (c, True) for c in ("nadam-f64", "asgd-f64", "nadam-f64-state-f32-params")])
def test_generic_checkpoint_continues_bit_for_bit(case, flat):
    """Each state leaf is loaded in the dtype ``init`` gives it (counts stay integers,
    ``mu_product`` keeps its dtype), so a resumed run is the uninterrupted one, bit for bit."""
    make, dtype = GENERIC[case]
    (m_ref, ref), (m_src, src), (m_new, new) = (_generic(make, dtype, s) for s in (0, 0, 1))
    if flat:
        ref.use_flat(), src.use_flat(), new.use_flat()
    _generic_train(m_ref, ref, STEPS + 4)
    _generic_train(m_src, src, STEPS)
    ckpt = _through_disk({"model": m_src.state_dict(), "opt": src.state_dict()})
    m_new.load_state_dict(ckpt["model"])
    new.load_state_dict(ckpt["opt"])
    _same(new.state_dict()["state"], src.state_dict()["state"])
    _generic_train(m_new, new, 4, start=STEPS)
    for p, q in zip(m_new.parameters(), m_ref.parameters()):
        _same(p.detach(), q.detach(), "parameter")
    _same(new.state_dict()["state"], ref.state_dict()["state"])


def test_generic_entry_with_only_group_state_loads():
    """A parameter that never had a gradient holds only the group's shared state (a schedule's
    count): that entry is valid."""
    make, dtype = GENERIC["schedule"]
    model, opt = _generic(make, dtype)
    first = model[0].weight
    for _ in range(STEPS):
        opt.zero_grad()
        model(torch.randn(5, 3, dtype=dtype)).pow(2).sum().backward()
        first.grad = None
        opt.step()
    sd = _through_disk(opt.state_dict())
    assert set(sd["state"][0]) == {"lr"}
    m_new, new = _generic(make, dtype, seed=1)
    new.load_state_dict(sd)
    _same(new.state_dict()["state"], sd["state"])


# -- invalid checkpoints: refused, the optimizer unchanged ------------------------------------

def _snapshot(opt):
    return copy.deepcopy((opt.state_dict(), [{k: v for k, v in g.items() if k != "params"}
                                             for g in opt.param_groups]))


def _refused(opt, state_dict, *patterns):
    """``load_state_dict`` raises a ValueError whose message holds every pattern, and leaves
    the optimizer as it was."""
    before = _snapshot(opt)
    with pytest.raises(ValueError) as info:
        opt.load_state_dict(state_dict)
    message = str(info.value)
    assert message.endswith("nothing was loaded"), message
    for pattern in patterns:
        assert pattern in message, (pattern, message)
    _same(_snapshot(opt), before, "optimizer after a refused load")
    return message


def _trained(name, kwargs, steps=2):
    """Ours after ``steps`` steps (a state to keep) and torch's checkpoint after more."""
    model = _model(name)
    ours = _make(fo_optim, name, kwargs, model)
    _train(name, model, ours, steps)
    return ours, _checkpoint(torch.optim, name, kwargs, steps=steps + 1)[1]


_STATEFUL = [c for c in CASES if c[0] != "LBFGS" and c[1] != dict(lr=0.1)]  # SGD(momentum=0)
_STATEFUL_IDS = [i for c, i in zip(CASES, IDS) if c in _STATEFUL]
_COUNTED = [c for c in _STATEFUL if c[0] not in ("SGD", "Muon")]  # (one key: a buffer)
_COUNTED_IDS = [i for c, i in zip(CASES, IDS) if c in _COUNTED]


@pytest.mark.parametrize("name, kwargs", _COUNTED, ids=_COUNTED_IDS)
def test_missing_state_key_is_refused(name, kwargs):
    """An entry missing a key the algorithm needs (a moment, ``step``) would restart it from
    zero: refused, naming the parameter, the key and what the entry has."""
    ours, sd = _trained(name, kwargs)
    for key in sd["state"][0]:
        bad = copy.deepcopy(sd)
        del bad["state"][0][key]
        _refused(ours, bad, f"state {key!r} of parameter (group 0, index 0)", "without")


@pytest.mark.parametrize("name, kwargs", _STATEFUL, ids=_STATEFUL_IDS)
@pytest.mark.parametrize("value, got", [("hello", "str 'hello'"), (None, None),
                                        ([1.0, 2.0], "a list of 2 items"), (0.5, "float 0.5"),
                                        ({"x": 1}, "a dict")])
def test_wrong_type_is_refused(name, kwargs, value, got):
    """A string, a list, a number or a dict where a tensor is needed."""
    ours, sd = _trained(name, kwargs)
    last = max(sd["state"])  # only the last entry is damaged: nothing may be loaded
    key = next(k for k, v in sd["state"][last].items() if isinstance(v, torch.Tensor) and v.ndim)
    bad = copy.deepcopy(sd)
    bad["state"][last][key] = value
    if value is None:  # None counts as absent: an entry of one key is then empty, hence fresh
        if len(sd["state"][last]) > 1:
            _refused(ours, bad, f"state {key!r}", "without")
        else:
            ours.load_state_dict(bad)
        return
    shape = tuple(sd["state"][last][key].shape)
    _refused(ours, bad, f"state {key!r} of parameter (group 0, index {last})",
             f"tensor of shape {shape}", got)


@pytest.mark.parametrize("name, kwargs", _STATEFUL, ids=_STATEFUL_IDS)
def test_wrong_shape_is_refused(name, kwargs):
    ours, sd = _trained(name, kwargs)
    key = next(k for k, v in sd["state"][0].items() if isinstance(v, torch.Tensor) and v.ndim)
    bad = copy.deepcopy(sd)
    bad["state"][0][key] = torch.cat([bad["state"][0][key]] * 2)
    _refused(ours, bad, f"state {key!r}", f"shape {tuple(sd['state'][0][key].shape)}",
             f"shape {tuple(bad['state'][0][key].shape)}")


@pytest.mark.parametrize("name, kwargs", _STATEFUL, ids=_STATEFUL_IDS)
@pytest.mark.parametrize("dtype", [torch.complex128, torch.int64, torch.bool])
def test_wrong_kind_is_refused(name, kwargs, dtype):
    """Complex state for a real parameter (torch would drop the imaginary part), integer or
    boolean moments."""
    ours, sd = _trained(name, kwargs)
    key = next(k for k, v in sd["state"][0].items() if isinstance(v, torch.Tensor) and v.ndim)
    bad = copy.deepcopy(sd)
    bad["state"][0][key] = bad["state"][0][key].to(dtype)
    _refused(ours, bad, f"state {key!r}", "real floating-point tensor",
             str(dtype).removeprefix("torch."))


def test_sparse_state_is_refused():
    ours, sd = _trained("Adam", {})
    sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"].to_sparse()
    _refused(ours, sd, "state 'exp_avg'", "sparse_coo")


def test_real_state_for_a_complex_parameter_is_refused():
    w = torch.randn(3, dtype=torch.complex128, requires_grad=True)
    ours, theirs = fo_optim.Adam([w.detach().clone().requires_grad_()]), torch.optim.Adam([w])
    w.grad = torch.ones_like(w)
    theirs.step()
    sd = theirs.state_dict()
    sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"].real.clone()
    _refused(ours, sd, "state 'exp_avg'", "expected a complex tensor of shape (3,)", "float64")


@pytest.mark.parametrize("name, kwargs", _COUNTED, ids=_COUNTED_IDS)
@pytest.mark.parametrize("step", [math.nan, math.inf, -1.0, 2.5, True])
@pytest.mark.parametrize("as_number", [False, True], ids=["tensor", "number"])
def test_step_that_is_not_a_count_is_refused(name, kwargs, step, as_number):
    """torch loads a NaN, infinite or negative step and then writes NaN into the parameters
    (a fractional one changes the bias correction; ours counts in integers): refused."""
    ours, sd = _trained(name, kwargs)
    value = step if as_number else torch.tensor(step, dtype=torch.float32)
    if not as_number and isinstance(step, bool):
        value = torch.tensor(step)
    sd["state"][0]["step"] = value
    _refused(ours, sd, "state 'step' of parameter (group 0, index 0)", "whole number >= 0")


@pytest.mark.parametrize("src, dst", [
    (("Adam", {}), ("SGD", dict(lr=0.1, momentum=0.9))),
    (("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", {})),
    (("Adagrad", {}), ("Adam", {})),
    (("NAdam", {}), ("RAdam", {})),
    (("RMSprop", dict(momentum=0.9)), ("Adadelta", {})),
    (("Adam", {}), ("Adafactor", {})),
], ids=lambda c: c[0])
def test_another_algorithms_state_is_refused(src, dst):
    """Another class's state (an Adam checkpoint would run ``SGD(momentum=0.9)`` with no
    momentum): refused, naming the key it never keeps, even with the groups made to fit."""
    (src_name, src_kwargs), (dst_name, dst_kwargs) = src, dst
    ours, own = _trained(dst_name, dst_kwargs)
    _, sd = _checkpoint(torch.optim, src_name, src_kwargs)
    _refused(ours, copy.deepcopy(sd))  # (its groups lack a hyperparameter, or a key is foreign)
    sd["param_groups"] = own["param_groups"]
    foreign = next(k for k in sd["state"][0] if k not in own["state"][0])
    _refused(ours, sd, f"state {foreign!r}", "a state it never keeps")


def test_entry_that_is_not_a_dict_is_refused():
    ours, sd = _trained("Adam", {})
    sd["state"][1] = torch.zeros(3)
    _refused(ours, sd, "parameter (group 0, index 1): expected a dict of its state")


def test_state_for_an_unlisted_index_is_refused():
    """torch keeps such an entry, attached to no parameter."""
    ours, sd = _trained("Adam", {})
    sd["state"][9] = copy.deepcopy(sd["state"][0])
    _refused(ours, sd, "parameter indices [9]", "no param group lists")


def test_index_listed_twice_is_refused():
    ours, sd = _trained("Adam", {})
    sd["param_groups"][0]["params"][1] = sd["param_groups"][0]["params"][0]
    _refused(ours, sd, "lists parameter index 0 a second time")


def test_missing_hyperparameter_is_refused():
    """torch loads it and fails at the step with a KeyError."""
    ours, sd = _trained("Adam", {})
    del sd["param_groups"][0]["lr"]
    _refused(ours, sd, "param group 0", "['lr']")


@pytest.mark.parametrize("names", [["a", "b"], ["a", "a", "b", "c"], [1, 2, 3, 4], "abcd"])
def test_bad_param_names_are_refused(names):
    model, opt = _generic(lambda: fo.adam(0.01), torch.float64)
    _generic_train(model, opt, 2)
    sd = opt.state_dict()
    sd["param_groups"][0]["param_names"] = names
    _refused(opt, sd, "param group 0: expected param_names to be 4 distinct strings")


def test_renamed_parameters_load_as_in_torch():
    """torch: the checkpoint's ``param_names`` replace the current ones (loading is by
    position)."""
    model, opt = _generic(lambda: fo.adam(0.01), torch.float64)
    _generic_train(model, opt, 2)
    sd = opt.state_dict()
    sd["param_groups"][0]["param_names"] = ["w0", "b0", "w1", "b1"]
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["param_names"] == ["w0", "b0", "w1", "b1"]
    _generic_train(model, opt, 1, start=2)


@pytest.mark.parametrize("damage, pattern", [
    (lambda s: s["state"][0]["adam"].pop("mu"), "without 'adam.mu'"),
    (lambda s: s["state"][0].update(other={"x": torch.zeros(1)}), "state 'other'"),
    (lambda s: s["state"][0]["lr"].update(step=torch.tensor(-3)), "whole number >= 0"),
    (lambda s: s["state"][2].pop("lr"), "without 'lr.step'"),
    (lambda s: s["state"][0]["adam"].update(mu=torch.zeros(7, dtype=torch.float64)),
     "shape (4, 3)"),
    (lambda s: s["param_groups"][0].pop("adam.eps"), "without ['adam.eps']"),
])
def test_bad_generic_checkpoint_is_refused(damage, pattern):
    make, dtype = GENERIC["schedule"]
    model, opt = _generic(make, dtype)
    _generic_train(model, opt, 2)
    other, src = _generic(make, dtype, seed=3)
    _generic_train(other, src, 3)
    sd = src.state_dict()
    damage(sd)
    _refused(opt, sd, pattern)


# -- LBFGS ------------------------------------------------------------------------------------

def _lbfgs_damages():
    vector = torch.zeros(26, dtype=torch.float64)
    return [
        (lambda s: s.update(func_evals=-1), "'func_evals'", "whole number"),
        (lambda s: s.update(n_iter="3"), "'n_iter'", "str '3'"),
        (lambda s: s.pop("d"), "'d'", "got nothing"),
        (lambda s: s.update(d=torch.zeros(25, dtype=torch.float64)), "'d'", "26 elements"),
        (lambda s: s.update(prev_flat_grad=[vector]), "'prev_flat_grad'", "a list"),
        (lambda s: s.update(t="1"), "'t'", "a real number"),
        (lambda s: s.update(H_diag=torch.ones(2)), "'H_diag'", "shape (2,)"),
        (lambda s: s.update(ro=s["ro"][:-1]), "'ro'", "as many as old_dirs"),
        (lambda s: s.update(old_stps=s["old_stps"][:-1] + [vector[:3]]), "'old_stps'",
         "one of them a float64 tensor of shape (3,)"),
        (lambda s: s.update(old_dirs=s["old_dirs"] * 4, old_stps=s["old_stps"] * 4,
                            ro=s["ro"] * 4), "'old_dirs'", "at most 5 (history_size)"),
        (lambda s: s.update(al=[None]), "'al'", "a list of 5"),
        (lambda s: s.update(exp_avg=vector), "'exp_avg'", "never keeps"),
    ]


@pytest.mark.parametrize("index", range(len(_lbfgs_damages())))
def test_bad_lbfgs_state_is_refused_at_load(index):
    """LBFGS's state is checked at load (before: the next step failed deep inside)."""
    damage, key, got = _lbfgs_damages()[index]
    kwargs = dict(max_iter=4, history_size=5)
    ours, sd = _trained("LBFGS", kwargs, steps=1)
    assert sd["state"][0]["n_iter"] > 0 and len(sd["state"][0]["old_dirs"]) >= 2
    damage(sd["state"][0])
    _refused(ours, sd, f"state {key} of parameter (group 0, index 0)", got)


def test_lbfgs_state_on_another_parameter_is_refused():
    ours, sd = _trained("LBFGS", dict(max_iter=4), steps=1)
    sd["state"][1] = {"func_evals": 3}
    _refused(ours, sd, "index 1", "LBFGS keeps its state on the first parameter")
