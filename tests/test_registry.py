"""The one registry of optimizers (DESIGN.md §7): lookup by name and by config, structural
options derived from each alias, and everything registered is under test."""

from __future__ import annotations

import inspect
import logging

import pytest
import torch
from conformance import CASES

import functional_optim as fo
from functional_optim import optim as fo_optim
from functional_optim import registry

TORCH_NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "adagrad": "Adagrad",
               "adadelta": "Adadelta", "adamax": "Adamax", "nadam": "NAdam", "radam": "RAdam",
               "rmsprop": "RMSprop", "rprop": "Rprop", "asgd": "ASGD", "adafactor": "Adafactor",
               "muon": "Muon", "lbfgs": "LBFGS", "sparse_adam": "SparseAdam"}


def test_torch_algorithms_are_registered_with_their_drop_in():
    assert set(TORCH_NAMES) <= set(registry.names())
    for name, cls in TORCH_NAMES.items():
        e = registry.entry(name)
        assert e.make is getattr(fo, name) and e.drop_in == cls
        assert issubclass(getattr(fo_optim, cls), torch.optim.Optimizer)
        assert getattr(torch.optim, cls)  # torch's class of that name


@pytest.mark.parametrize("name", registry.names())
def test_entry_is_documented(name):
    e = registry.entry(name)
    assert len(e.paper) > 15 and any(c.isdigit() for c in e.paper), e.paper
    cls = getattr(fo_optim, e.drop_in)  # every registered alias has its drop-in class
    assert issubclass(cls, torch.optim.Optimizer) and e.drop_in in fo_optim.__all__


@pytest.mark.parametrize("name", registry.names())
def test_structural_options_are_the_arguments_that_are_no_hparams(name):
    """Derived: each structural option, given as a hyperparameter, raises the error that says
    it is fixed at construction; each hyperparameter is an argument of the constructor."""
    e = registry.entry(name)
    signature = inspect.signature(e.make).parameters
    assert set(e.hyperparameters) <= set(signature)
    assert set(e.structural) == set(signature) - set(e.hyperparameters)
    tx = e.make()
    for option in e.structural:
        with pytest.raises(fo.HParamError, match=f"{option} is structural, fixed at "
                                                 "construction"):
            tx.update({}, tx.init({}), {}, {option: signature[option].default})


@pytest.mark.parametrize("name", registry.names())
def test_every_registered_optimizer_is_a_conformance_case(name):
    """Registering an alias puts it under the conformance suite (and so under the live
    hyperparameter checks): a case of its name builds it."""
    cases = {c.name: c for c in CASES}
    assert name in cases, f"no conformance case for registered {name!r}"
    assert set(cases[name].make().hparams) == set(registry.entry(name).hyperparameters)


def test_get_optimizer():
    tx = fo.get_optimizer("adamw", lr=3e-4, weight_decay=0.1)
    assert tx.hparams["lr"] == 3e-4 and tx.hparams["weight_decay"] == 0.1
    with pytest.raises(KeyError, match="no optimizer named 'adamx'; known: .*adamw"):
        fo.get_optimizer("adamx")
    with pytest.raises(TypeError, match=r"get_optimizer\('adamw'\): unknown option\(s\) "
                                        r"\['momentum'\]; known: lr, betas"):
        fo.get_optimizer("adamw", momentum=0.9)


def test_optimizer_from_config_equals_the_alias():
    params = {"w": torch.randn(3, 2, dtype=torch.float64), "b": torch.randn(2, dtype=torch.float64)}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    tx = fo.optimizer_from_config({"type": "adamw", "lr": 0.1, "betas": (0.8, 0.9)})
    ref = fo.adamw(lr=0.1, betas=(0.8, 0.9))
    out, _ = tx.update(grads, tx.init(params), params)
    expected, _ = ref.update(grads, ref.init(params), params)
    for k in params:
        torch.testing.assert_close(out[k], expected[k], rtol=0, atol=0)


def test_optimizer_from_config_parameter_groups(caplog):
    params = {"w": torch.randn(3, 2, dtype=torch.float64), "b": torch.randn(2, dtype=torch.float64)}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    config = {"type": "sgd", "lr": 0.1,
              "parameter_groups": [[["^b$"], {"lr": 0.01}], [["^nothing$"], {"lr": 1.0}]]}
    with caplog.at_level(logging.WARNING, logger="functional_optim.groups"):
        tx = fo.optimizer_from_config(config, params)  # an unused regex: a warning naming it
    assert "^nothing$ does not match any parameter name" in caplog.text
    out, _ = tx.update(grads, tx.init(params), params)
    torch.testing.assert_close(out["b"], -0.01 * grads["b"])
    torch.testing.assert_close(out["w"], -0.1 * grads["w"])
    config["parameter_groups"] = [[["^b$"], {"lr": 0.01}], [["b|w"], {"lr": 1.0}]]
    with pytest.raises(ValueError, match=r"^b was specified in two separate parameter groups "
                                         r"\(group 0 by regex '\^b\$' and group 1 by regex "
                                         r"'b\|w'\)"):
        fo.optimizer_from_config(config, params)


@pytest.mark.parametrize("groups", [None, []])
def test_optimizer_from_config_without_groups_is_the_alias(groups):
    tx = fo.optimizer_from_config({"type": "adamw", "lr": 0.1, "parameter_groups": groups})
    assert tx.hparams == fo.adamw(lr=0.1).hparams


def test_optimizer_from_config_reads_allennlp_configs():
    """AllenNLP's config dicts: no ``type`` is ``adam`` (its default implementation),
    ``averaged_sgd`` is ``asgd``, ``betas`` a JSON list, a frozen group."""
    params = {"emb": torch.randn(4, 2, dtype=torch.float64),
              "w": torch.randn(2, 2, dtype=torch.float64)}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    assert fo.optimizer_from_config({"lr": 0.1}).hparams == fo.adam(lr=0.1).hparams
    asgd = fo.optimizer_from_config({"type": "averaged_sgd", "lr": 0.05, "t0": 3.0})
    assert asgd.hparams == fo.asgd(lr=0.05, t0=3.0).hparams
    tx = fo.optimizer_from_config(
        {"type": "adamw", "lr": 0.1, "betas": [0.8, 0.9],
         "parameter_groups": [[["^emb$"], {"requires_grad": False}]]}, params)
    out, state = tx.update(grads, tx.init(params), params)
    assert torch.equal(out["emb"], torch.zeros_like(params["emb"]))
    ref = fo.adamw(lr=0.1, betas=(0.8, 0.9))
    expected, _ = ref.update({"w": grads["w"]}, ref.init({"w": params["w"]}), {"w": params["w"]})
    torch.testing.assert_close(out["w"], expected["w"], rtol=0, atol=0)


@pytest.mark.parametrize("config, error, fragment", [
    ([("type", "sgd")], TypeError, "expected a dict {'type': name, **options}"),
    ({"type": "nope"}, KeyError, "no optimizer named 'nope'"),
    ({"type": "sgd", "betas": (0.9, 0.99)}, TypeError, "unknown option(s) ['betas']"),
    ({"type": "sgd", "betas": (0.9, 0.99), "parameter_groups": [[["w"], {}]]}, TypeError,
     "unknown option(s) ['betas']"),
    ({"type": "sgd", "parameter_groups": [[["w"], {"betas": (0.9, 0.99)}]]}, TypeError,
     "parameter_groups: group 0 has unknown option(s) ['betas'] for 'sgd'"),
    ({"type": "sgd", "parameter_groups": [["w", "x", {}]]}, TypeError,
     "parameter_groups: group 0 must be a pair (list of regexes, dict of options)"),
])
def test_optimizer_from_config_errors(config, error, fragment):
    with pytest.raises(error) as caught:
        fo.optimizer_from_config(config)
    assert fragment in str(caught.value)


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="'adam' is registered twice"):
        registry.register(paper="x 2024", drop_in="Adam")(fo.adam)
