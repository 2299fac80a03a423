"""``fo.parameter_groups`` with AllenNLP's ``make_parameter_groups`` semantics (the rule, the
errors, the warnings and the log of who went where), and a ``FunctionalOptimizer`` built on it:
one torch param group per group, with torch's keys, so that every torch lr scheduler drives it
as it drives ``torch.optim.AdamW``/``SGD`` over the same groups."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from test_adapter_schedulers import METRIC, SCHEDULERS, STEPS, _loss, _model
from torch.optim import lr_scheduler as S

import functional_optim as fo
from functional_optim.groups import groups_of
from functional_optim.optim import FunctionalOptimizer

D = torch.float64
LOGGER = "functional_optim.groups"


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def params_tree():
    return {"embed": {"weight": rand(5, 3, seed=1)}, "layer": {"weight": rand(3, 3, seed=2),
                                                               "bias": rand(3, seed=3)},
            "norm": {"weight": rand(3, seed=4)}}


def grads_tree(step):
    return fo.tree.map(lambda p: rand(*p.shape, seed=100 + step + p.numel()), params_tree())


@pytest.mark.parametrize("groups", [None, []])
def test_no_groups_is_the_constructor_itself(groups):
    tx = fo.parameter_groups(fo.adamw, groups, lr=0.1, weight_decay=0.2)
    assert tx.hparams == fo.adamw(lr=0.1, weight_decay=0.2).hparams
    assert groups_of(tx) is None


def test_each_group_runs_its_options_and_the_rest_the_defaults():
    """Numbers: each parameter follows ``make(**{**defaults, **its group's})``, written out."""
    groups = [([r"bias$", r"^norm\."], {"weight_decay": 0.0, "lr": 0.05}),
              ([r"^embed\."], {"requires_grad": False, "lr": 1.0})]
    tx = fo.parameter_groups(fo.adamw, groups, lr=0.1, weight_decay=0.2)
    params = params_tree()
    state = tx.init(params)
    for t in range(4):
        u, state = tx.update(grads_tree(t), state, params)
        params = fo.apply_updates(params, u)
    ref = {"layer.bias": fo.adamw(lr=0.05, weight_decay=0.0),
           "norm.weight": fo.adamw(lr=0.05, weight_decay=0.0),
           "layer.weight": fo.adamw(lr=0.1, weight_decay=0.2)}
    for name, ref_tx in ref.items():
        a, b = name.split(".")
        p = {name: params_tree()[a][b]}
        s = ref_tx.init(p)
        for t in range(4):
            u, s = ref_tx.update({name: grads_tree(t)[a][b]}, s, p)
            p = fo.apply_updates(p, u)
        torch.testing.assert_close(params[a][b], p[name], rtol=1e-14, atol=0)
    assert torch.equal(params["embed"]["weight"], params_tree()["embed"]["weight"])  # frozen
    assert state["group_1"] == fo.EmptyState()
    assert set(tx.hparams) == {"group_0", "group_1", "default"}


def test_a_parameter_in_two_groups_is_an_error_naming_it_and_both_groups():
    """AllenNLP raises ``ValueError("<name> was specified in two separate parameter groups")``
    (the first name met, in the parameters' order); the groups and regexes follow here. Two
    regexes of one group matching the same name are fine."""
    groups = [([r"weight", r"^layer\.weight$"], {"lr": 0.01}), ([r"^norm"], {}),
              ([r"^layer\."], {"lr": 1.0})]
    message = (r"^layer\.weight was specified in two separate parameter groups \(group 0 by "
               r"regex 'weight' and group 2 by regex '\^layer\\\.'\)$")
    with pytest.raises(ValueError, match=message):
        fo.parameter_groups(fo.sgd, groups, params_tree(), lr=0.1)
    tx = fo.parameter_groups(fo.sgd, groups, lr=0.1)  # no params: checked at init
    with pytest.raises(ValueError, match=message):
        tx.init(params_tree())


def test_an_unused_regex_is_a_warning_and_who_went_where_is_logged(caplog):
    groups = [([r"^layer\.", r"^decoder\."], {"lr": 0.01}),
              ([r"^embed"], {"requires_grad": False, "lr": 3.0}), ([r"nothing"], {})]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        tx = fo.parameter_groups(fo.sgd, groups, params_tree(), lr=0.1)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "Freezing (zero updates, no state) the following parameters: "
                 "{'embed.weight'}"),
        ("WARNING", "Ignoring unused options {'lr': 3.0} for {'embed.weight'}"),
        ("INFO", "Done constructing parameter groups."),
        ("INFO", "Group group_0: ['layer.bias', 'layer.weight'], {'lr': 0.01}"),
        ("INFO", "Group group_2: [], {}"),
        ("INFO", "Group default: ['norm.weight'], {}"),
        ("WARNING", r"When constructing parameter groups, ^decoder\. does not match any "
                    "parameter name"),
        ("WARNING", "When constructing parameter groups, nothing does not match any parameter "
                    "name"),
        ("INFO", "Number of trainable parameters: 15"),
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        state = tx.init(params_tree())  # the parameters checked at construction: not again
        assert caplog.records == []
        tx.init({"layer": {"weight": rand(2, 2)}})  # others: checked and logged
    assert "Group group_0: ['layer.weight'], {'lr': 0.01}" in caplog.text
    u, _ = tx.update(grads_tree(0), state, params_tree())
    torch.testing.assert_close(u["layer"]["bias"], -0.01 * grads_tree(0)["layer"]["bias"])


def test_malformed_groups_and_unknown_options_are_errors_naming_the_group():
    with pytest.raises(TypeError, match=r"group 1 must be a pair \(list of regexes, dict of "
                                        r"options\), got \('x',\)"):
        fo.parameter_groups(fo.sgd, [(["a"], {}), ("x",)])
    with pytest.raises(TypeError, match=r"group 0's regexes must be strings, got \[3\]"):
        fo.parameter_groups(fo.sgd, [([3], {})])
    with pytest.raises(TypeError, match=r"group 0 has unknown option\(s\) \['betas'\] for "
                                        r"'sgd'; known: lr, momentum"):
        fo.parameter_groups(fo.sgd, [(["a"], {"betas": (0.9, 0.9)})])


# --------------------------------------------------------------------------------------------
# FunctionalOptimizer on parameter_groups: torch's param groups and keys


def _groups_tx(make, lr, **options):
    return make([([r"^0\."], {"lr": lr / 2})], lr=lr, **options)


OURS = {"AdamW": lambda lr: _groups_tx(lambda g, **kw: fo.parameter_groups(fo.adamw, g, **kw),
                                       lr),
        "SGD": lambda lr: _groups_tx(lambda g, **kw: fo.parameter_groups(fo.sgd, g, **kw), lr,
                                     momentum=0.9, weight_decay=0.01)}
TORCH = {"AdamW": lambda groups, lr: torch.optim.AdamW(groups, lr=lr),
         "SGD": lambda groups, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9,
                                                   weight_decay=0.01)}
LR = 0.05


def _run(make_opt, make_sched, metric: bool):
    model = _model()
    opt = make_opt(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sched = make_sched(opt)
        trace = []
        for i in range(STEPS):
            opt.zero_grad()
            _loss(model, i).backward()
            opt.step()
            sched.step(METRIC[i]) if metric else sched.step()
            trace.append([(g["lr"], g.get("momentum"), g.get("betas")) for g in opt.param_groups])
    return model, trace, sorted({str(w.message) for w in caught})


SCHEDULES = {**SCHEDULERS, "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(
    o, factor=0.5, patience=1, threshold=1e-3, cooldown=1, min_lr=1e-4)}


@pytest.mark.parametrize("name", list(OURS))
@pytest.mark.parametrize("scheduler", list(SCHEDULES))
def test_every_lr_scheduler_drives_it_as_torchs(name, scheduler):
    """``FunctionalOptimizer(named, parameter_groups(...))`` against torch's optimizer over the
    groups AllenNLP makes (``[{"params": layer 0, "lr": lr/2}, {"params": the rest}]``): the
    same hyperparameter sequence, warnings and float64 trajectory (1e-10 relative)."""
    def ours(model):
        return FunctionalOptimizer(model.named_parameters(), OURS[name](LR))

    def theirs(model):
        return TORCH[name]([{"params": model[0].parameters(), "lr": LR / 2},
                            {"params": model[2].parameters()}], LR)

    metric = scheduler == "ReduceLROnPlateau"
    m1, t1, w1 = _run(ours, SCHEDULES[scheduler], metric)
    m2, t2, w2 = _run(theirs, SCHEDULES[scheduler], metric)
    assert t1 == t2 and w1 == w2
    for (n, a), b in zip(m1.named_parameters(), m2.parameters(), strict=True):
        assert (a - b).abs().max() <= 1e-10 * b.abs().max(), n


def test_torch_param_groups_keys_and_frozen_parameters_left_out():
    model = _model()
    tx = fo.parameter_groups(fo.adamw, [([r"^0\.bias$"], {"requires_grad": False}),
                                        ([r"^0\.weight$"], {"lr": 0.01, "amsgrad": True})],
                             lr=0.1, weight_decay=0.05)
    opt = FunctionalOptimizer(model.named_parameters(), tx)
    assert [g["param_names"] for g in opt.param_groups] == [["0.weight"], ["2.weight", "2.bias"]]
    assert [(g["lr"], g["betas"], g["eps"], g["weight_decay"]) for g in opt.param_groups] == [
        (0.01, (0.9, 0.999), 1e-8, 0.05), (0.1, (0.9, 0.999), 1e-8, 0.05)]
    _loss(model, 0).backward()
    bias = model[0].bias.detach().clone()
    opt.step()
    assert torch.equal(model[0].bias, bias)
    # each group runs its own transform: the amsgrad group keeps the running maximum
    assert set(opt.state[model[0].weight]["adam"]) == {"step", "mu", "nu", "nu_max"}
    assert set(opt.state[model[2].weight]["adam"]) == {"step", "mu", "nu"}
    with pytest.raises(TypeError, match="pass model.named_parameters()"):
        FunctionalOptimizer(model.parameters(), tx)
    with pytest.raises(fo.HParamError, match=r"give \['lr'\] to parameter_groups"):
        FunctionalOptimizer(model.named_parameters(), tx, lr=0.5)


def test_state_dict_round_trip_and_add_param_group():
    """The groups survive ``state_dict``/``load_state_dict`` (into a fresh optimizer, the same
    trajectory after) and deepcopy; a param group added by name runs its group's transform."""
    tx = fo.parameter_groups(fo.adamw, [([r"^0\."], {"lr": 0.01, "amsgrad": True})], lr=0.1)

    def steps(model, opt, start, n):
        for i in range(start, start + n):
            opt.zero_grad()
            _loss(model, i).backward()
            opt.step()

    m1, m2 = _model(), _model()
    o1 = FunctionalOptimizer(m1.named_parameters(), tx)
    o2 = FunctionalOptimizer(m2.named_parameters(), tx)
    steps(m1, o1, 0, 3)
    steps(m2, o2, 0, 3)
    m3 = _model()
    m3.load_state_dict(m2.state_dict())
    o3 = FunctionalOptimizer(m3.named_parameters(), tx)
    o3.load_state_dict(o2.state_dict())
    steps(m1, o1, 3, 3)
    steps(m3, o3, 3, 3)
    for a, b in zip(m1.parameters(), m3.parameters(), strict=True):
        assert torch.equal(a, b)
    # an added group runs the transform of the group its names belong to (amsgrad here)
    extra = torch.nn.Parameter(rand(2))
    o1.add_param_group({"params": [("0.extra", extra)]})
    extra.grad = torch.ones(2, dtype=D)
    o1.step()
    assert set(o1.state[extra]["adam"]) == {"step", "mu", "nu", "nu_max"}
    mixed = [torch.nn.Parameter(rand(1)), torch.nn.Parameter(rand(1))]
    o1.add_param_group({"params": [("0.x", mixed[0]), ("y", mixed[1])]})
    for p in mixed:
        p.grad = torch.ones(1, dtype=D)
    with pytest.raises(ValueError, match=r"a param group holds parameters of different "
                                         r"parameter_groups groups \(\[0, 1\]; 1 is the "
                                         r"default group\): \['0.x', 'y'\]"):
        o1.step()
