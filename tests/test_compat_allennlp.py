"""``functional_optim.compat.allennlp`` against AllenNLP's ``allennlp.training.optimizers``
(read, not imported: AllenNLP is not installed): ``make_parameter_groups``'s return format,
``requires_grad`` handling, errors and log lines; the registry (names, order, defaults,
``from_params`` and its errors); the registered optimizers' trajectories against torch.optim's
classes over the same groups; ``DenseSparseAdam`` against its algorithm written out below."""

from __future__ import annotations

import inspect
import logging
import math
import re

import pytest
import torch
from torch import nn

import functional_optim as fo
import functional_optim.optim as fo_optim
from functional_optim.compat import allennlp as A

LOGGER = "functional_optim.compat.allennlp"

# AllenNLP's registered names, in its order, with each constructor's defaults and the class it
# subclasses (torch.optim's; transformers' AdamW; its own DenseSparseAdam), here the drop-in
ALLENNLP = {
    "adam": ("Adam", dict(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0,
                          amsgrad=False)),
    "sparse_adam": ("SparseAdam", dict(lr=0.001, betas=(0.9, 0.999), eps=1e-08)),
    "adamax": ("Adamax", dict(lr=0.002, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.0)),
    "adamw": ("AdamW", dict(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01,
                            amsgrad=False)),
    "huggingface_adamw": ("HuggingFaceAdamW", dict(lr=1e-05, betas=(0.9, 0.999), eps=1e-08,
                                                   weight_decay=0.0, correct_bias=True)),
    "adagrad": ("Adagrad", dict(lr=0.01, lr_decay=0.0, weight_decay=0.0,
                                initial_accumulator_value=0.0, eps=1e-10)),
    "adadelta": ("Adadelta", dict(lr=1.0, rho=0.9, eps=1e-06, weight_decay=0.0)),
    "sgd": ("SGD", dict(lr=inspect.Parameter.empty, momentum=0.0, dampening=0,
                        weight_decay=0.0, nesterov=False)),
    "rmsprop": ("RMSprop", dict(lr=0.01, alpha=0.99, eps=1e-08, weight_decay=0.0, momentum=0.0,
                                centered=False)),
    "averaged_sgd": ("ASGD", dict(lr=0.01, lambd=0.0001, alpha=0.75, t0=1000000.0,
                                  weight_decay=0.0)),
    "dense_sparse_adam": ("DenseSparseAdam", dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)),
}


def _model(dtype=torch.float64, sparse=False):
    torch.manual_seed(0)
    return nn.ModuleDict({"embed": nn.Embedding(7, 3, sparse=sparse),
                          "encoder": nn.Linear(3, 4), "head": nn.Linear(4, 2)}).to(dtype)


def _loss(model, i):
    g = torch.Generator().manual_seed(i)
    tokens = torch.randint(0, 7, (5,), generator=g)
    x = model["embed"](tokens)
    y = model["head"](torch.tanh(model["encoder"](x)))
    return (y - torch.randn(y.shape, generator=g, dtype=y.dtype)).pow(2).mean()


# --------------------------------------------------------------------------------------------
# make_parameter_groups


def test_make_parameter_groups_format_and_requires_grad(caplog):
    model = _model()
    groups = [(["^embed"], {"requires_grad": False, "lr": 3.0}),
              (["bias$", "^nowhere"], {"weight_decay": 0.0}),
              (["^head\\.weight$"], {"lr": 1e-4, "requires_grad": True})]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        out = A.make_parameter_groups(list(model.named_parameters()), groups)
    # the frozen group is dropped and its parameters no longer require grad
    assert not model["embed"].weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("embed"))
    assert [set(g) for g in out] == [{"params", "weight_decay"},
                                     {"params", "lr", "requires_grad"}, {"params"}]
    assert out[0]["weight_decay"] == 0.0 and out[1]["lr"] == 1e-4
    assert out[0]["params"] == [model["encoder"].bias, model["head"].bias]
    assert out[1]["params"] == [model["head"].weight]
    assert out[2]["params"] == [model["encoder"].weight]  # the default group, last
    # AllenNLP's lines, in its order (sets of names print as sets)
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        (LOGGER, "INFO", "Disabling gradient for the following parameters: {'embed.weight'}"),
        (LOGGER, "WARNING", "Ignoring unused options {'lr': 3.0} for {'embed.weight'}"),
        (LOGGER, "INFO", "Done constructing parameter groups."),
        (LOGGER, "INFO", "Group 0: ['encoder.bias', 'head.bias'], {'weight_decay': 0.0}"),
        (LOGGER, "INFO", "Group 1: ['head.weight'], {'lr': 0.0001, 'requires_grad': True}"),
        (LOGGER, "INFO", "Group 2: ['encoder.weight'], {}"),
        (LOGGER, "WARNING", "When constructing parameter groups, ^nowhere does not match any "
                            "parameter name"),
        (LOGGER, "INFO", "Number of trainable parameters: 26"),
    ]


@pytest.mark.parametrize("groups", [None, []])
def test_make_parameter_groups_without_groups_is_the_parameter_list(groups, caplog):
    model = _model()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        out = A.make_parameter_groups(model.named_parameters(), groups)  # a generator works
    assert out == list(model.parameters())
    assert caplog.messages == ["Number of trainable parameters: 47"]


def test_make_parameter_groups_two_groups_is_an_error():
    model = _model()
    with pytest.raises(ValueError, match=r"^encoder\.bias was specified in two separate parameter "
                                         r"groups \(group 0 by regex 'bias' and group 1 by regex "
                                         r"'\^encoder'\)$"):
        A.make_parameter_groups(list(model.named_parameters()),
                                [(["bias"], {}), (["^encoder"], {"lr": 1.0}),
                                 (["^embed"], {"requires_grad": False})])
    assert model["embed"].weight.requires_grad  # raised before anything changed


# --------------------------------------------------------------------------------------------
# The registry


def test_registry_names_order_classes_and_defaults():
    assert A.Optimizer.default_implementation == "adam"
    assert A.Optimizer.list_available() == list(ALLENNLP)
    for name in list(ALLENNLP):
        cls = A.Optimizer.by_name(name)
        torch_name, defaults = ALLENNLP[name]
        assert issubclass(cls, A.Optimizer)
        assert issubclass(cls, getattr(fo_optim, torch_name))
        signature = inspect.signature(cls).parameters
        assert list(signature)[0] == "model_parameters"
        assert "parameter_groups" in list(signature)[:3]
        assert {k: p.default for k, p in signature.items()
                if k not in ("model_parameters", "parameter_groups")} == defaults, name
    assert isinstance(A.Optimizer.default(list(_model().named_parameters())), A.AdamOptimizer)


def test_register_by_name_and_errors():
    with pytest.raises(A.ConfigurationError, match="^Cannot register adam as Optimizer; name "
                                                   "already in use for AdamOptimizer$"):
        A.Optimizer.register("adam")(A.AdamWOptimizer)
    with pytest.raises(A.ConfigurationError, match="^nadam is not a registered name for "
                                                   "Optimizer. You probably need to use the "
                                                   "--include-package flag"):
        A.Optimizer.by_name("nadam")

    @A.Optimizer.register("test_nadam", constructor="build")
    class NAdamOptimizer(A.Optimizer, fo_optim.NAdam):
        @classmethod
        def build(cls, model_parameters, parameter_groups=None, lr: float = 0.5):
            return cls(A.make_parameter_groups(model_parameters, parameter_groups), lr=lr)

    try:
        assert A.Optimizer.by_name("test_nadam") == NAdamOptimizer.build
        opt = A.Optimizer.from_params(model_parameters=list(_model().named_parameters()),
                                      params={"type": "test_nadam"})
        assert isinstance(opt, fo_optim.NAdam) and opt.param_groups[0]["lr"] == 0.5
        assert A.Optimizer.list_available()[-1] == "test_nadam"
    finally:
        del A.Optimizer._registry["test_nadam"]


def test_from_params_errors_and_class_paths():
    named = list(_model().named_parameters())
    with pytest.raises(A.ConfigurationError, match='^key "lr" is required$'):
        A.Optimizer.from_params(model_parameters=named, params={"type": "sgd"})
    with pytest.raises(A.ConfigurationError, match=r"^Extra parameters passed to AdamWOptimizer: "
                                                   r"\{'momentum': 0.9\}$"):
        A.Optimizer.from_params(model_parameters=named, params={"type": "adamw",
                                                                "momentum": 0.9})
    with pytest.raises(A.ConfigurationError, match=r"^nadam not in acceptable choices for type: "
                                                   r"\['adam', 'sparse_adam'"):
        A.Optimizer.from_params(model_parameters=named, params={"type": "nadam"})
    opt = A.Optimizer.from_params(
        model_parameters=named,
        params={"type": "functional_optim.compat.allennlp.AdamaxOptimizer", "lr": 0.1})
    assert isinstance(opt, A.AdamaxOptimizer) and opt.param_groups[0]["lr"] == 0.1
    with pytest.raises(A.ConfigurationError, match="unable to find class Nope in "
                                                   "functional_optim.compat.allennlp"):
        A.Optimizer.from_params(model_parameters=named,
                                params={"type": "functional_optim.compat.allennlp.Nope"})
    # a registered subclass builds itself; JSON lists become the tuples the signature has
    opt = A.AdamWOptimizer.from_params(model_parameters=named, params={"betas": [0.8, 0.9]})
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)


# --------------------------------------------------------------------------------------------
# Numbers: the registered optimizers over AllenNLP's groups equal torch.optim's classes

# per name: options given, and torch's class with AllenNLP's defaults over the same groups
GROUPED = ["adam", "adamax", "adamw", "adagrad", "adadelta", "sgd", "rmsprop", "averaged_sgd"]
OPTIONS = {"sgd": {"lr": 0.05, "momentum": 0.9}, "rmsprop": {"momentum": 0.5, "centered": True},
           "adam": {"amsgrad": True}, "averaged_sgd": {"t0": 10.0}}


def _torch_groups(model, lr):
    named = dict(model.named_parameters())
    return [{"params": [named["encoder.bias"], named["head.bias"]], "weight_decay": 0.0,
             "lr": lr},
            {"params": [named["embed.weight"], named["encoder.weight"], named["head.weight"]]}]


@pytest.mark.parametrize("name", GROUPED)
def test_registered_optimizers_follow_torchs_over_the_groups(name):
    """50 float64 steps of ``from_params({"type": name, ..., parameter_groups})`` against
    ``torch.optim.<Class>(groups, **AllenNLP's defaults)``: 1e-12 relative."""
    torch_name, defaults = ALLENNLP[name]
    options = OPTIONS.get(name, {})
    kwargs = {k: v for k, v in {**defaults, **options}.items() if v is not inspect.Parameter.empty}
    lr = kwargs["lr"] / 2
    m1, m2 = _model(), _model()
    ours = A.Optimizer.from_params(
        model_parameters=list(m1.named_parameters()),
        params={"type": name, **options,
                "parameter_groups": [[["bias$"], {"weight_decay": 0.0, "lr": lr}]]})
    theirs = getattr(torch.optim, torch_name)(_torch_groups(m2, lr), **kwargs)
    for i in range(50):
        for model, opt in ((m1, ours), (m2, theirs)):
            opt.zero_grad()
            _loss(model, i).backward()
            opt.step()
    for (n, a), b in zip(m1.named_parameters(), m2.parameters(), strict=True):
        assert (a - b).abs().max() <= 1e-12 * b.abs().max(), n
    assert len(ours.param_groups) == 2


def test_sparse_adam_over_the_groups():
    m1, m2 = _model(sparse=True), _model(sparse=True)
    embed = [[["^embed"], {"lr": 0.01}], [["^(encoder|head)"], {"requires_grad": False}]]
    ours = A.Optimizer.from_params(model_parameters=list(m1.named_parameters()),
                                   params={"type": "sparse_adam", "parameter_groups": embed})
    for n, p in m2.named_parameters():
        p.requires_grad_(n.startswith("embed"))
    theirs = torch.optim.SparseAdam([{"params": [m2["embed"].weight], "lr": 0.01}, {"params": []}])
    for i in range(50):
        for model, opt in ((m1, ours), (m2, theirs)):
            opt.zero_grad()
            _loss(model, i).backward()
            opt.step()
    assert (m1["embed"].weight - m2["embed"].weight).abs().max() <= 1e-12
    assert ours.state_dict()["state"][0]["step"] == theirs.state_dict()["state"][0]["step"]


def test_huggingface_adamw_is_hfs_algorithm():
    """``huggingface_adamw``: transformers' AdamW (eps on the uncorrected root, the bias
    corrections in the step size, decoupled decay after the Adam step), written out."""
    model = _model()
    lr, wd, b1, b2, eps = 1e-3, 0.1, 0.9, 0.999, 1e-8
    opt = A.Optimizer.from_params(model_parameters=list(model.named_parameters()),
                                  params={"type": "huggingface_adamw", "lr": lr,
                                          "weight_decay": wd})
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = {n: torch.zeros_like(p) for n, p in ref.items()}
    v = {n: torch.zeros_like(p) for n, p in ref.items()}
    for t in range(1, 51):
        opt.zero_grad()
        _loss(model, t).backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        opt.step()
        for n, g in grads.items():
            m[n] = b1 * m[n] + (1 - b1) * g
            v[n] = b2 * v[n] + (1 - b2) * g * g
            step = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
            ref[n] = ref[n] - step * m[n] / (v[n].sqrt() + eps)
            ref[n] = ref[n] - lr * wd * ref[n]
    for n, p in model.named_parameters():
        assert (p - ref[n]).abs().max() <= 1e-12 * ref[n].abs().max(), n


# --------------------------------------------------------------------------------------------
# DenseSparseAdam


def _reference_step(p, g, m, v, t, lr, b1, b2, eps):
    """AllenNLP's DenseSparseAdam for one parameter, in place: Adam with the corrections in the
    step size and eps on the uncorrected root; a sparse gradient updates only its rows."""
    step = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
    if g.is_sparse:
        g = g.coalesce()
        rows, values = tuple(g.indices()), g.values()
        m[rows] = m[rows] + (values - m[rows]) * (1 - b1)
        v[rows] = v[rows] + (values * values - v[rows]) * (1 - b2)
        p[rows] = p[rows] - step * (m[rows] / (v[rows].sqrt() + eps))
    else:
        m.mul_(b1).add_((1 - b1) * g)
        v.mul_(b2).add_((1 - b2) * g * g)
        p.sub_(step * m / (v.sqrt() + eps))


def _run_dense_sparse(steps, lr=0.01, betas=(0.8, 0.99), eps=1e-6):
    """``steps`` float64 steps of the registered ``dense_sparse_adam`` and of the reference."""
    model = _model(torch.float64, sparse=True)
    opt = A.Optimizer.from_params(model_parameters=list(model.named_parameters()),
                                  params={"type": "dense_sparse_adam", "lr": lr, "betas": betas,
                                          "eps": eps})
    ref = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = {n: torch.zeros_like(p) for n, p in ref.items()}
    v = {n: torch.zeros_like(p) for n, p in ref.items()}
    for t in range(1, steps + 1):
        opt.zero_grad()
        _loss(model, t).backward()
        opt.step()
        for n, p in model.named_parameters():
            _reference_step(ref[n], p.grad, m[n], v[n], t, lr, *betas, eps)
    return model, opt, ref, m, v


def test_dense_sparse_adam_float64_50_steps():
    model, opt, ref, m, v = _run_dense_sparse(50)
    assert model["embed"].weight.grad.is_sparse and not model["head"].weight.grad.is_sparse
    for (n, p), key in zip(model.named_parameters(), opt.state_dict()["state"]):
        state = opt.state_dict()["state"][key]
        assert state["step"] == 50 and isinstance(state["step"], int)
        for a, b in ((p, ref[n]), (state["exp_avg"], m[n]), (state["exp_avg_sq"], v[n])):
            assert (a - b).abs().max() <= 1e-12 * b.abs().max(), n


def test_dense_sparse_adam_float32_few_ulps_per_step():
    """float32: from the same state, each step's parameters and moments within 4 ulps of the
    largest entry of each tensor (the reference computes in float32 too)."""
    eps32 = torch.finfo(torch.float32).eps
    model = _model(torch.float32, sparse=True)
    opt = fo_optim.DenseSparseAdam(model.parameters(), lr=0.01, betas=(0.8, 0.99), eps=1e-6)
    for t in range(1, 21):
        before = {n: (p.detach().clone(), {k: x.clone() for k, x in opt.state[p].items()
                                           if torch.is_tensor(x)}) for n, p in
                  model.named_parameters()}
        opt.zero_grad()
        _loss(model, t).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        for n, p in model.named_parameters():
            p0, s0 = before[n]
            ref_p = p0.clone()
            ref_m = s0.get("exp_avg", torch.zeros_like(p0)).clone()
            ref_v = s0.get("exp_avg_sq", torch.zeros_like(p0)).clone()
            _reference_step(ref_p, grads[n], ref_m, ref_v, t, 0.01, 0.8, 0.99, 1e-6)
            for a, b in ((p, ref_p), (opt.state[p]["exp_avg"], ref_m),
                         (opt.state[p]["exp_avg_sq"], ref_v)):
                assert (a - b).abs().max() <= 4 * eps32 * b.abs().max(), (t, n)


def test_dense_sparse_adam_one_parameter_dense_then_sparse():
    """The functional alias: one parameter gets dense and sparse gradients in turn and shares
    one state (step counts both kinds), as AllenNLP's."""
    p = {"w": torch.randn(6, 2, dtype=torch.float64)}
    tx = fo.dense_sparse_adam(lr=0.1, betas=(0.7, 0.9), eps=1e-3)
    state = tx.init(p)
    ref, m, v = p["w"].clone(), torch.zeros(6, 2, dtype=torch.float64), torch.zeros(
        6, 2, dtype=torch.float64)
    for t in range(1, 9):
        g = torch.randn(6, 2, dtype=torch.float64)
        if t % 2:
            g = torch.sparse_coo_tensor(torch.tensor([[t % 6, 0, t % 6]]), g[:3], (6, 2),
                                        check_invariants=True)
        u, state = tx.update({"w": g}, state, p)
        assert u["w"].is_sparse == bool(t % 2)
        p = fo.apply_updates(p, u)
        _reference_step(ref, g, m, v, t, 0.1, 0.7, 0.9, 1e-3)
    torch.testing.assert_close(p["w"], ref, rtol=1e-13, atol=0)
    torch.testing.assert_close(state.exp_avg["w"], m, rtol=1e-13, atol=0)
    assert int(state.step["w"]) == 8


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (dict(eps=-1e-8), "Invalid epsilon value: -1e-08"),
    (dict(betas=(1.0, 0.9)), "Invalid beta parameter at index 0: 1.0"),
    (dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1"),
])
def test_dense_sparse_adam_validation_is_allennlps(kwargs, message):
    named = list(_model().named_parameters())
    with pytest.raises(ValueError, match=f"^{message}$"):
        A.DenseSparseAdam(named, **kwargs)
    with pytest.raises(ValueError, match=f"^{message}$"):
        fo_optim.DenseSparseAdam([p for _, p in named], **kwargs)


def test_the_migration_pages_allennlp_examples_run():
    from test_docs import ROOT, _run_blocks

    text = (ROOT / "docs" / "migrating-hf-allennlp.md").read_text()
    section = text[text.index("## AllenNLP"):]
    blocks = re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)
    assert len(blocks) == 2
    _run_blocks("docs/migrating-hf-allennlp.md (AllenNLP)", blocks)
