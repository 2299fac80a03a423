"""Clear errors: every misuse a user can make raises a specific exception whose message names the
parameter (or leaf, or path), what was expected and what was received.

Hyperparameter *values* are validated at construction only; inside ``update`` only the structure,
type and shape of hyperparameters are checked (a value check would be a host sync and would break
``vmap`` / CUDA graphs) -- see ``test_update_never_inspects_hparam_values``.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import pytest
import torch

import functional_optim as fo
from functional_optim import schedules
from functional_optim.base import HParamError, MissingParamsError, TreeMismatchError

NAN = float("nan")


def params_():
    return {"w": torch.ones(3), "b": torch.zeros(2)}


def grads_():
    return {"w": torch.full((3,), 0.5), "b": torch.full((2,), -0.25)}


def wrong_grads():
    """Grads whose tree differs from ``params_()``: key 'b' renamed 'bias'."""
    return {"w": torch.ones(3), "bias": torch.ones(2)}


def raises(exc, *fragments):
    """``pytest.raises(exc)`` whose message must contain every fragment (literally)."""
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments))


# ----------------------------------------------------------------------------------------------
# the transforms under test

STATEFUL = {
    "scale_by_adam": lambda: fo.scale_by_adam(),
    "scale_by_adam_amsgrad": lambda: fo.scale_by_adam(amsgrad=True),
    "scale_by_rms": lambda: fo.scale_by_rms(),
    "scale_by_rms_centered": lambda: fo.scale_by_rms(centered=True),
    "trace": lambda: fo.trace(0.9),
    "trace_nesterov": lambda: fo.trace(0.9, nesterov=True),
}

NEEDS_PARAMS = {
    "add_decayed_weights": lambda: fo.add_decayed_weights(0.1),
    "adamw": lambda: fo.adamw(),
    "adam_wd": lambda: fo.adam(weight_decay=0.1),
    "adam_decoupled": lambda: fo.adam(weight_decay=0.1, decoupled_weight_decay=True),
    "sgd_wd": lambda: fo.sgd(0.1, weight_decay=0.1),
    "chain_decay": lambda: fo.chain(fo.clip(1.0), fo.add_decayed_weights(0.1)),
    "named_chain_adamw": lambda: fo.chain(clip=fo.clip_by_global_norm(1.0), opt=fo.adamw()),
}

ELEMENTWISE = {
    "scale": lambda: fo.scale(0.5),
    "sign": lambda: fo.sign(),
    "clip": lambda: fo.clip(1.0),
    "clip_by_norm": lambda: fo.clip_by_norm(1.0),
    "scale_by_learning_rate": lambda: fo.scale_by_learning_rate(0.1),
    **STATEFUL,
}

CHAINS = {
    "chain": lambda: fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(),
                              fo.scale_by_learning_rate(0.1)),
    "named_chain": lambda: fo.chain(clip=fo.clip(1.0), mom=fo.trace(0.9),
                                    lr=fo.scale_by_learning_rate(0.1)),
    "nested_chain": lambda: fo.chain(fo.chain(fo.scale_by_rms(), fo.trace(0.5)),
                                     fo.scale_by_learning_rate(0.1)),
    "adam": lambda: fo.adam(),
    "sgd_momentum": lambda: fo.sgd(0.1, momentum=0.9),
}


# ----------------------------------------------------------------------------------------------
# tree mismatches


@pytest.mark.parametrize("make", list({**STATEFUL, **CHAINS}.values()),
                         ids=list({**STATEFUL, **CHAINS}))
def test_grads_state_tree_mismatch_names_both_structures_and_paths(make):
    tx = make()
    state = tx.init(params_())
    with raises(TreeMismatchError, "updates", "state", "PyTreeSpec({'b': *, 'w': *}",
                "PyTreeSpec({'bias': *, 'w': *}", "only in updates: ['bias']",
                "state: ['b']"):
        tx.update(wrong_grads(), state, params_())


@pytest.mark.parametrize("make", list(STATEFUL.values()), ids=list(STATEFUL))
def test_grads_of_another_container_type_than_state(make):
    tx = make()
    state = tx.init(params_())
    grads = [torch.ones(3), torch.ones(2)]
    with raises(TreeMismatchError, "updates", "state", "PyTreeSpec([*, *]", "'w'", "'b'"):
        tx.update(grads, state)


@pytest.mark.parametrize("make", list(NEEDS_PARAMS.values()), ids=list(NEEDS_PARAMS))
def test_grads_params_tree_mismatch_names_params(make):
    tx = make()
    state = tx.init(params_())
    other = {"w": torch.ones(3), "c": torch.ones(2)}  # params whose 'b' is named 'c'
    with raises(TreeMismatchError, "updates", "params", "only in updates: ['b']",
                "only in add_decayed_weights params: ['c']"):
        tx.update(grads_(), state, other)


def test_nested_tree_mismatch_shows_dotted_paths():
    tx = fo.scale_by_adam()
    params = {"enc": {"layers": [torch.ones(2), torch.ones(2)]}, "head": torch.ones(1)}
    grads = {"enc": {"layers": [torch.ones(2)]}, "head": torch.ones(1)}
    with raises(TreeMismatchError, "only in scale_by_adam state: ['enc.layers.1']"):
        tx.update(grads, tx.init(params))


@pytest.mark.parametrize("name", ["scale_by_adam", "trace", "scale_by_rms_centered"])
def test_update_shape_that_does_not_match_state(name):
    tx = STATEFUL[name]()
    state = tx.init(params_())
    grads = {"w": torch.ones(3, 1), "b": torch.ones(2)}  # would broadcast against (3,) silently
    with raises(TreeMismatchError, name.replace("_centered", ""), "'w'",
                "the update has shape (3, 1) but its state has shape (3,)"):
        tx.update(grads, state)


def test_update_shape_that_does_not_match_params():
    tx = fo.add_decayed_weights(0.1)
    grads = {"w": torch.ones(1), "b": torch.ones(2)}  # (1,) + (3,) would broadcast silently
    with raises(TreeMismatchError, "add_decayed_weights", "'w'", "(1,)", "params", "(3,)"):
        tx.update(grads, tx.init(params_()), params_())


@pytest.mark.parametrize("make", list(STATEFUL.values()), ids=list(STATEFUL))
def test_state_of_another_transform(make):
    tx = make()
    with raises(TreeMismatchError, "expected its state", "got EmptyState"):
        tx.update(grads_(), fo.EmptyState())
    with raises(TreeMismatchError, "expected its state", "got tuple"):
        tx.update(grads_(), (tx.init(params_()),))


def test_chain_state_of_another_chain():
    positional = fo.chain(fo.clip(1.0), fo.scale_by_adam())
    named = fo.chain(clip=fo.clip(1.0), adam=fo.scale_by_adam())
    with raises(TreeMismatchError, "chain", "state tuple of 2 entries", "got dict"):
        positional.update(grads_(), named.init(params_()))
    with raises(TreeMismatchError, "chain", "state dict with keys ['clip', 'adam']", "got tuple"):
        named.update(grads_(), positional.init(params_()))
    with raises(TreeMismatchError, "state tuple of 2 entries", "got ScaleByAdamState"):
        positional.update(grads_(), fo.scale_by_adam().init(params_()))
    three = fo.chain(fo.clip(1.0), fo.sign(), fo.scale_by_adam())
    with raises(TreeMismatchError, "state tuple of 2 entries", "got tuple of 3 entries"):
        positional.update(grads_(), three.init(params_()))


def test_update_for_a_parameter_that_was_none_at_init():
    tx = fo.scale_by_adam()
    state = tx.init({"w": torch.ones(3), "b": None})
    with raises(TreeMismatchError, "scale_by_adam", "'b'", "no state", "None at init"):
        tx.update({"w": torch.ones(3), "b": torch.ones(2)}, state)


def test_apply_updates_mismatches():
    with raises(TreeMismatchError, "params", "updates", "only in params: ['b']",
                "only in updates: ['bias']"):
        fo.apply_updates(params_(), wrong_grads())
    with raises(TreeMismatchError, "apply_updates", "(2, 3)", "(3,)"):
        fo.apply_updates(params_(), {"w": torch.ones(2, 3), "b": torch.ones(2)})
    params = params_()
    before = {k: v.clone() for k, v in params.items()}
    with raises(TreeMismatchError, "apply_updates_", "(2, 3)", "(3,)"):
        fo.apply_updates_(params, {"b": torch.ones(2), "w": torch.ones(2, 3)})
    for k in params:  # nothing was applied before the error
        assert torch.equal(params[k], before[k])
    with raises(TreeMismatchError, "params", "updates", "only in updates: ['bias']"):
        fo.apply_updates_(params_(), wrong_grads())


# ----------------------------------------------------------------------------------------------
# missing params


@pytest.mark.parametrize("make", list(NEEDS_PARAMS.values()), ids=list(NEEDS_PARAMS))
def test_missing_params(make):
    tx = make()
    state = tx.init(params_())
    with raises(MissingParamsError, "add_decayed_weights needs the parameters",
                "update(updates, state, params)"):
        tx.update(grads_(), state)
    assert issubclass(MissingParamsError, ValueError)


def test_missing_params_is_fine_without_weight_decay():
    for tx in (fo.adam(), fo.sgd(0.1, momentum=0.9), fo.adamw(weight_decay=0.0)):
        tx.update(grads_(), tx.init(params_()))  # no decay block: params not needed


def test_missing_params_is_fine_when_every_update_is_none():
    tx = fo.adamw()
    updates, _ = tx.update({"w": None, "b": None}, tx.init(params_()))
    assert updates == {"w": None, "b": None}


def test_param_none_where_update_is_not():
    tx = fo.add_decayed_weights(0.1)
    with raises(MissingParamsError, "add_decayed_weights", "leaf 'b'", "has an update",
                "params is None"):
        tx.update(grads_(), fo.EmptyState(), {"w": torch.ones(3), "b": None})


# ----------------------------------------------------------------------------------------------
# hyperparameters at update time: structure, type, shape (never value)


def test_unknown_hparam_key_for_a_block():
    tx = fo.scale_by_adam()
    with raises(HParamError, "scale_by_adam hparams", "unknown hyperparameter(s) ['lr']",
                "known: ['betas', 'eps', 'eps_root']"):
        tx.update(grads_(), tx.init(params_()), None, {"lr": 1e-3})
    tx = fo.trace(0.9)
    with raises(HParamError, "trace hparams", "['mom']", "known: ['dampening', 'momentum']"):
        tx.update(grads_(), tx.init(params_()), None, {"mom": 0.5})


@pytest.mark.parametrize("alias", ["adam", "adamw", "sgd"])
def test_unknown_hparam_key_for_an_alias(alias):
    tx = getattr(fo, alias)(0.1) if alias == "sgd" else getattr(fo, alias)()
    known = sorted(tx.hparams)
    with raises(HParamError, f"{alias} hparams", "unknown hyperparameter(s) ['learning_rate']",
                f"known: {known}"):
        tx.update(grads_(), tx.init(params_()), params_(), {"learning_rate": 0.1})


def test_chain_hparams_of_the_wrong_shape():
    tx = fo.chain(fo.scale_by_adam(), fo.chain(fo.trace(0.9), fo.scale_by_learning_rate(0.1)))
    state = tx.init(params_())
    with raises(HParamError, "chain hparams", "expected a tuple of 2 entries", "got tuple (None,)"):
        tx.update(grads_(), state, None, (None,))
    with raises(HParamError, "chain hparams[1]", "expected a tuple of 2 entries",
                "got tuple (None, None, None)"):
        tx.update(grads_(), state, None, (None, (None, None, None)))
    with raises(HParamError, "chain hparams[1][1]", "unknown hyperparameter(s) ['learning_rate']",
                "known: ['lr']"):
        tx.update(grads_(), state, None, (None, (None, {"learning_rate": 0.1})))
    with raises(HParamError, "chain hparams", "expected a tuple of 2 entries", "got dict"):
        tx.update(grads_(), state, None, {"0": None, "1": None})
    with raises(HParamError, "chain hparams[0]", "expected a dict with keys",
                "['betas', 'eps', 'eps_root']", "got float 0.1"):
        tx.update(grads_(), state, None, (0.1, None))


def test_named_chain_with_an_unknown_name():
    tx = fo.chain(clip=fo.clip(1.0), adam=fo.adam())
    state = tx.init(params_())
    with raises(HParamError, "chain hparams", "unknown hyperparameter(s) ['adm']",
                "known: ['adam', 'clip']"):
        tx.update(grads_(), state, None, {"adm": {"lr": 0.1}})
    with raises(HParamError, "chain hparams['adam']", "unknown hyperparameter(s) ['momentum']",
                "known: ['betas', 'eps', 'lr', 'weight_decay']"):
        tx.update(grads_(), state, None, {"adam": {"momentum": 0.1}})


def test_betas_of_the_wrong_length_at_update_time():
    tx = fo.adam()
    with raises(HParamError, "adam hparams['betas']", "expected a tuple of 2 entries",
                "got tuple (0.9,)"):
        tx.update(grads_(), tx.init(params_()), None, {"betas": (0.9,)})
    with raises(HParamError, "adam hparams['betas']", "expected a tuple of 2 entries",
                "a tensor of shape (2,)"):
        tx.update(grads_(), tx.init(params_()), None, {"betas": torch.tensor([0.9, 0.99])})


@pytest.mark.parametrize("bad, received", [
    (torch.tensor([0.1]), "a tensor of shape (1,)"),
    (torch.full((2, 2), 0.1), "a tensor of shape (2, 2)"),
    ("0.1", "got str '0.1'"),
    (None.__class__, "got type"),
    ([0.1], "got list [0.1]"),
    (True, "got bool True"),
    (0.1 + 1j, "got complex"),
])
def test_hparam_of_the_wrong_type_or_shape(bad, received):
    tx = fo.adamw()
    with raises(HParamError, "adamw hparams['lr']", "expected a Python number or a 0-d tensor",
                received):
        tx.update(grads_(), tx.init(params_()), params_(), {"lr": bad})
    tx = fo.scale_by_learning_rate(0.1)
    with raises(HParamError, "scale_by_learning_rate hparams['lr']", received):
        tx.update(grads_(), tx.init(params_()), None, {"lr": bad})


@pytest.mark.parametrize("dtype", [torch.complex64, torch.bool])
def test_hparam_tensor_that_is_not_real(dtype):
    tx = fo.scale_by_adam()
    with raises(HParamError, "scale_by_adam hparams['eps']", "expected a real number",
                str(dtype)):
        tx.update(grads_(), tx.init(params_()), None, {"eps": torch.zeros((), dtype=dtype)})


def test_schedule_lr_alias_expects_the_schedule_hparams():
    tx = fo.sgd(schedules.linear(0.1, 0.0, 10))
    state = tx.init(params_())
    tx.update(grads_(), state, None, {"lr": {"init_value": 0.2}})  # a schedule's hparams: fine
    with raises(HParamError, "sgd hparams['lr']", "expected a dict with keys",
                "'end_value'", "got float 0.1"):
        tx.update(grads_(), state, None, {"lr": 0.1})


@pytest.mark.parametrize("alias, key", [("sgd", "weight_decay"), ("sgd", "momentum"),
                                        ("adam", "weight_decay"), ("rmsprop", "momentum")])
@pytest.mark.parametrize("value", [0.1, torch.tensor(0.1), torch.tensor(0.0)])
def test_zero_at_construction_stays_live(alias, key, value):
    """A hyperparameter built as 0 keeps its block: any value at update time is honoured, equal
    to building with that value."""
    tx = getattr(fo, alias)(0.1)
    out, _ = tx.update(grads_(), tx.init(params_()), params_(), {key: value})
    built = getattr(fo, alias)(0.1, **{key: float(value)})
    expected, _ = built.update(grads_(), built.init(params_()), params_())
    for k in expected:
        torch.testing.assert_close(out[k], expected[k], rtol=0, atol=0)


@pytest.mark.parametrize("alias", ["sgd", "rmsprop"])
@pytest.mark.parametrize("value", [0.1, torch.tensor(0.1), torch.tensor(0.0)])
def test_momentum_none_is_structural(alias, value):
    tx = getattr(fo, alias)(0.1, momentum=None)
    state = tx.init(params_())
    assert "momentum" not in state  # no block, no buffer
    with raises(HParamError, f"{alias}: momentum is None (structural: no momentum block",
                "at update time", "Construct with a number or tensor momentum"):
        tx.update(grads_(), state, params_(), {"momentum": value})
    tx.update(grads_(), state, params_(), {"momentum": 0})  # no momentum: what it is built for
    tx.update(grads_(), state, params_(), {"momentum": None})


@pytest.mark.parametrize("alias, option", [("adam", "amsgrad"), ("sgd", "nesterov"),
                                           ("rmsprop", "centered"), ("adamw", "maximize"),
                                           ("nadam", "decoupled_weight_decay"),
                                           ("muon", "ns_steps")])
def test_structural_option_given_as_hparam(alias, option):
    tx = getattr(fo, alias)()
    with raises(HParamError, f"{alias} hparams: {option} is structural, fixed at construction",
                f"{option}=", "construct a new transform to change it"):
        tx.update(grads_(), tx.init(params_()), params_(), {option: True})


@pytest.mark.parametrize("hparams, fragment", [
    ({"momentum": torch.tensor(0.5)}, "momentum is None (structural"),
    ({"nesterov": True}, "nesterov is structural, fixed at construction")])
def test_update_time_errors_under_compile_name_the_problem(hparams, fragment):
    """An error raised inside a ``fullgraph`` compile formats no tensor (which dynamo cannot
    trace): the compile error carries the library's message."""
    tx = fo.sgd(0.1, momentum=None)
    step = torch.compile(lambda g, s, p, h: tx.update(g, s, p, h), fullgraph=True,
                         backend="aot_eager")
    try:
        with pytest.raises(Exception) as caught:
            step(grads_(), tx.init(params_()), params_(), hparams)
    finally:
        torch._dynamo.reset()
    assert fragment in str(caught.value) and "repr()" not in str(caught.value)


def test_block_kept_when_constructed_with_a_tensor_zero():
    tx = fo.sgd(0.1, momentum=torch.tensor(0.0), weight_decay=torch.tensor(0.0))
    state = tx.init(params_())
    tx.update(grads_(), state, params_(), {"momentum": 0.9, "weight_decay": 0.1})


def test_update_never_inspects_hparam_values():
    """Values are never validated in update (that would be a host sync): invalid values pass,
    batched values under vmap (which cannot be read on the host) work."""
    tx = fo.adam(0.1, weight_decay=0.1)
    state = tx.init(params_())
    tx.update(grads_(), state, params_(), {"lr": -1.0, "eps": -1.0, "betas": (2.0, NAN)})
    tx.update(grads_(), state, params_(), {"lr": torch.tensor(NAN), "weight_decay": -3.0})

    def step(lr):
        updates, _ = tx.update(grads_(), state, params_(), {"lr": lr})
        return updates["w"]

    out = torch.func.vmap(step)(torch.tensor([-1.0, 0.0, 0.1]))
    assert out.shape == (3, 3)
    assert torch.equal(out[1], torch.zeros(3))


# ----------------------------------------------------------------------------------------------
# invalid hyperparameter values at construction, for every block and alias

INVALID = [
    # (constructor, argument name in the message, received value in the message)
    ("scale", lambda: fo.scale(NAN), "step_size", "nan"),
    ("scale", lambda: fo.scale("2"), "step_size", "str '2'"),
    ("scale", lambda: fo.scale(torch.ones(2)), "step_size", "shape (2,)"),
    ("clip", lambda: fo.clip(-1.0), "max_delta", "-1.0"),
    ("clip", lambda: fo.clip(NAN), "max_delta", "nan"),
    ("clip_by_norm", lambda: fo.clip_by_norm(-0.5), "max_norm", "-0.5"),
    ("clip_by_norm", lambda: fo.clip_by_norm(NAN), "max_norm", "nan"),
    ("clip_by_global_norm", lambda: fo.clip_by_global_norm(-1.0), "max_norm", "-1.0"),
    ("clip_by_global_norm", lambda: fo.clip_by_global_norm(NAN), "max_norm", "nan"),
    ("add_decayed_weights", lambda: fo.add_decayed_weights(-1e-2), "weight_decay", "-0.01"),
    ("add_decayed_weights", lambda: fo.add_decayed_weights(NAN), "weight_decay", "nan"),
    ("scale_by_adam", lambda: fo.scale_by_adam(betas=(1.0, 0.999)), "betas[0]", "1.0"),
    ("scale_by_adam", lambda: fo.scale_by_adam(betas=(-0.1, 0.999)), "betas[0]", "-0.1"),
    ("scale_by_adam", lambda: fo.scale_by_adam(betas=(0.9, 1.5)), "betas[1]", "1.5"),
    ("scale_by_adam", lambda: fo.scale_by_adam(betas=(0.9, NAN)), "betas[1]", "nan"),
    ("scale_by_adam", lambda: fo.scale_by_adam(betas=0.9), "betas", "got 0.9"),
    ("scale_by_adam", lambda: fo.scale_by_adam(betas=(0.9, 0.99, 0.999)), "betas",
     "(0.9, 0.99, 0.999)"),
    ("scale_by_adam", lambda: fo.scale_by_adam(eps=-1e-8), "eps", "-1e-08"),
    ("scale_by_adam", lambda: fo.scale_by_adam(eps=torch.tensor(-1.0)), "eps", "tensor(-1.)"),
    ("scale_by_adam", lambda: fo.scale_by_adam(eps_root=-1.0), "eps_root", "-1.0"),
    ("scale_by_rms", lambda: fo.scale_by_rms(alpha=-0.1), "alpha", "-0.1"),
    ("scale_by_rms", lambda: fo.scale_by_rms(alpha=1.5), "alpha", "1.5"),
    ("scale_by_rms", lambda: fo.scale_by_rms(alpha=NAN), "alpha", "nan"),
    ("scale_by_rms", lambda: fo.scale_by_rms(eps=-1.0), "eps", "-1.0"),
    ("trace", lambda: fo.trace(momentum=-0.9), "momentum", "-0.9"),
    ("trace", lambda: fo.trace(momentum=NAN), "momentum", "nan"),
    ("trace", lambda: fo.trace(momentum=0.9, dampening=NAN), "dampening", "nan"),
    ("trace", lambda: fo.trace(0.9, dampening=0.1, nesterov=True), "nesterov", "dampening"),
    ("scale_by_learning_rate", lambda: fo.scale_by_learning_rate(-1e-3), "lr", "-0.001"),
    ("scale_by_learning_rate", lambda: fo.scale_by_learning_rate(NAN), "lr", "nan"),
    ("scale_by_learning_rate", lambda: fo.scale_by_learning_rate(torch.tensor(-1.0)), "lr",
     "tensor(-1.)"),
    ("scale_by_learning_rate", lambda: fo.scale_by_learning_rate(torch.ones(3)), "lr",
     "shape (3,)"),
    ("scale_by_learning_rate", lambda: fo.scale_by_learning_rate("1e-3"), "lr", "str '1e-3'"),
    ("scale_by_learning_rate", lambda: fo.scale_by_learning_rate(None), "lr", "None"),
    ("sgd", lambda: fo.sgd(-0.1), "lr", "-0.1"),
    ("sgd", lambda: fo.sgd(NAN), "lr", "nan"),
    ("sgd", lambda: fo.sgd("0.1"), "lr", "str '0.1'"),
    ("sgd", lambda: fo.sgd(0.1, momentum=-0.5), "momentum", "-0.5"),
    ("sgd", lambda: fo.sgd(0.1, momentum=NAN), "momentum", "nan"),
    ("sgd", lambda: fo.sgd(0.1, momentum=0.9, dampening=NAN), "dampening", "nan"),
    ("sgd", lambda: fo.sgd(0.1, dampening=NAN), "dampening", "nan"),  # even with no momentum
    ("sgd", lambda: fo.sgd(0.1, weight_decay=-1e-4), "weight_decay", "-0.0001"),
    ("sgd", lambda: fo.sgd(0.1, weight_decay=NAN), "weight_decay", "nan"),
    ("sgd", lambda: fo.sgd(0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov",
     "zero dampening"),
    ("sgd", lambda: fo.sgd(0.1, nesterov=True), "nesterov", "momentum > 0"),
]
for _alias in ("adam", "adamw"):
    _f = getattr(fo, _alias)
    INVALID += [
        (_alias, lambda f=_f: f(-1e-3), "lr", "-0.001"),
        (_alias, lambda f=_f: f(NAN), "lr", "nan"),
        (_alias, lambda f=_f: f(torch.tensor(-1.0)), "lr", "tensor(-1.)"),
        (_alias, lambda f=_f: f([1e-3]), "lr", "list [0.001]"),
        (_alias, lambda f=_f: f(betas=(1.0, 0.999)), "betas[0]", "1.0"),
        (_alias, lambda f=_f: f(betas=(0.9, -0.1)), "betas[1]", "-0.1"),
        (_alias, lambda f=_f: f(betas=(0.9, 1.0)), "betas[1]", "1.0"),
        (_alias, lambda f=_f: f(betas=(NAN, 0.9)), "betas[0]", "nan"),
        (_alias, lambda f=_f: f(betas=(0.9,)), "betas", "(0.9,)"),
        (_alias, lambda f=_f: f(eps=-1e-8), "eps", "-1e-08"),
        (_alias, lambda f=_f: f(eps=NAN), "eps", "nan"),
        (_alias, lambda f=_f: f(weight_decay=-1e-2), "weight_decay", "-0.01"),
        (_alias, lambda f=_f: f(weight_decay=NAN), "weight_decay", "nan"),
    ]


@pytest.mark.parametrize("owner, make, name, received", INVALID,
                         ids=[f"{o}-{n}-{i}" for i, (o, _, n, _) in enumerate(INVALID)])
def test_invalid_hparam_value_at_construction(owner, make, name, received):
    with pytest.raises(HParamError) as info:
        make()
    message = str(info.value)
    assert message.startswith(f"{owner}:"), message
    assert name in message, message
    assert received in message, message
    assert issubclass(HParamError, ValueError)


def test_bound_is_stated_in_the_message():
    with raises(HParamError, "scale_by_adam: invalid betas[0]", "expected a value >= 0 and < 1",
                "got 1.0"):
        fo.scale_by_adam(betas=(1.0, 0.9))
    with raises(HParamError, "sgd: invalid lr", "expected a value >= 0", "got -1"):
        fo.sgd(-1)
    with raises(HParamError, "trace: invalid dampening", "not NaN", "got nan"):
        fo.trace(dampening=NAN)


def test_valid_edge_values_are_accepted():
    fo.scale_by_adam(betas=(0.0, 0.0), eps=0.0)
    fo.scale_by_rms(alpha=0.0)
    fo.scale_by_rms(alpha=1.0)
    fo.clip(0.0), fo.clip_by_norm(0.0), fo.clip_by_global_norm(math.inf)
    fo.sgd(0.0, momentum=0.0, dampening=-1.0)  # torch.optim.SGD accepts any dampening
    fo.adam(torch.tensor(1e-3), betas=(torch.tensor(0.9), 0.999))
    fo.scale(-1.0)


# ----------------------------------------------------------------------------------------------
# chain construction


@pytest.mark.parametrize("bad, received", [
    (1, "got int"),
    ("adam", "got str"),
    ((lambda p: p, lambda u, s: (u, s)), "got tuple"),
    (None, "got NoneType"),
])
def test_chain_given_a_non_transform(bad, received):
    with raises(TypeError, "chain: transform 1", "expected a functional_optim.Transform", received):
        fo.chain(fo.sign(), bad)
    with raises(TypeError, "chain: transform 'second'", "expected a functional_optim.Transform",
                received):
        fo.chain(first=fo.sign(), second=bad)


def test_chain_given_an_uncalled_constructor():
    with raises(TypeError, "chain: transform 0", "got function", "did you forget to call it",
                "scale_by_adam(...)"):
        fo.chain(fo.scale_by_adam, fo.scale_by_learning_rate(0.1))


def test_chain_positional_and_named_together():
    with raises(TypeError, "chain", "either all positionally or all by name"):
        fo.chain(fo.sign(), lr=fo.scale_by_learning_rate(0.1))


def test_reparametrize_given_a_non_transform():
    with raises(TypeError, "reparametrize", "expected a functional_optim.Transform", "got dict"):
        fo.reparametrize({}, {}, lambda h: h)


# ----------------------------------------------------------------------------------------------
# leaves of the wrong kind


def test_complex_updates_to_clip():
    z = {"real": torch.ones(2), "z": torch.ones(2, dtype=torch.complex64)}
    with raises(TypeError, "clip does not support complex updates", "leaf 'z'", "complex64"):
        fo.clip(1.0).update(z, fo.EmptyState())
    tx = fo.chain(fo.scale_by_adam(), fo.clip(1.0))
    with raises(TypeError, "clip does not support complex updates", "leaf 'z'"):
        tx.update(z, tx.init(z))


# the blocks of torch's sparse-taking algorithms (SGD, Adagrad) take sparse updates
# (tests/test_sparse.py); every other block raises
SPARSE_TAKEN = ("scale", "scale_by_learning_rate", "trace", "trace_nesterov")
SPARSE_OK_TO_REJECT = {
    **{k: v for k, v in ELEMENTWISE.items() if k not in SPARSE_TAKEN},
    "clip_by_global_norm": lambda: fo.clip_by_global_norm(1.0),
    "add_decayed_weights": lambda: fo.add_decayed_weights(0.1),
    "sgd_wd": lambda: fo.sgd(0.1, weight_decay=0.1),
    "adagrad_wd": lambda: fo.adagrad(0.1, weight_decay=0.1),
    "adam": lambda: fo.adam(),
    "adamw": lambda: fo.adamw(),
}


@pytest.mark.parametrize("name", list(SPARSE_OK_TO_REJECT))
def test_sparse_gradients(name):
    tx = SPARSE_OK_TO_REJECT[name]()
    params = {"emb": torch.ones(4, 2), "w": torch.ones(3)}
    grads = {"emb": torch.ones(4, 2).to_sparse(), "w": torch.ones(3)}
    with raises(TypeError, "does not support sparse updates", "leaf 'emb'"):
        tx.update(grads, tx.init(params), params)


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_integer_updates(name):
    tx = ELEMENTWISE[name]()
    params = {"w": torch.ones(3), "b": torch.zeros(2)}
    grads = {"w": torch.ones(3, dtype=torch.int64), "b": torch.zeros(2)}
    with raises(TypeError, "needs floating-point or complex updates", "leaf 'w'", "torch.int64"):
        tx.update(grads, tx.init(params), params)


def test_update_leaf_that_is_not_a_tensor():
    tx = fo.scale(2.0)
    with raises(TypeError, "scale", "update leaf 'w'", "must be a tensor or None", "got float"):
        tx.update({"w": 1.0, "b": torch.ones(2)}, fo.EmptyState())


class _Mask(NamedTuple):
    w: object
    b: object


@pytest.mark.parametrize("leaf, received", [
    (torch.tensor(True), "got Tensor"),
    (1, "got int"),
    (0.0, "got float"),
    ("yes", "got str"),
])
def test_mask_leaves_that_are_not_bools(leaf, received):
    tx = fo.add_decayed_weights(0.1, mask={"w": leaf, "b": False})
    with raises(TypeError, "add_decayed_weights: mask leaf 'w' must be a bool", received):
        tx.update(grads_(), fo.EmptyState(), params_())
    tx = fo.add_decayed_weights(0.1, mask=lambda p: {k: leaf for k in p})
    with raises(TypeError, "add_decayed_weights: mask leaf", "must be a bool", received):
        tx.update(grads_(), fo.EmptyState(), params_())


def test_mask_of_the_wrong_structure():
    tx = fo.add_decayed_weights(0.1, mask={"w": True})
    with raises(TreeMismatchError, "updates", "add_decayed_weights mask", "only in updates: ['b']"):
        tx.update(grads_(), fo.EmptyState(), params_())
    tx = fo.add_decayed_weights(0.1, mask=_Mask(True, False))
    with raises(TreeMismatchError, "add_decayed_weights mask", "_Mask"):
        tx.update(grads_(), fo.EmptyState(), params_())


def test_bool_mask_works():
    tx = fo.add_decayed_weights(0.5, mask={"w": True, "b": False})
    updates, _ = tx.update(grads_(), fo.EmptyState(), params_())
    assert torch.equal(updates["w"], grads_()["w"] + 0.5 * params_()["w"])
    assert torch.equal(updates["b"], grads_()["b"])


@pytest.mark.parametrize("make", [
    lambda: fo.lookahead(fo.sgd(lr=0.1)), lambda: fo.average_params(), lambda: fo.adafactor(),
    lambda: fo.lbfgs(), lambda: fo.add_decayed_weights(0.1)],
    ids=["lookahead", "average_params", "adafactor", "lbfgs", "add_decayed_weights"])
def test_transforms_reading_params_say_so(make):
    """One shared check: a clear MissingParamsError, and nothing to do for all-None updates."""
    tx = make()
    params = {"w": torch.randn(3, 2, dtype=torch.float64)}
    state = tx.init(params)
    with pytest.raises(MissingParamsError, match="needs the parameters"):
        tx.update({"w": torch.randn(3, 2, dtype=torch.float64)}, state)
    out, _ = tx.update({"w": None}, state)
    assert out == {"w": None}


# ----------------------------------------------------------------------------------------------
# init given something that is not a tree of tensors


def _model():
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))


INITS = {
    "adamw": lambda: fo.adamw(),
    "sgd": lambda: fo.sgd(0.1),
    "scale_by_adam": lambda: fo.scale_by_adam(),
    "chain": lambda: fo.chain(fo.clip_by_global_norm(1.0), fo.trace(0.9)),
    "clip (stateless)": lambda: fo.clip(1.0),
    "adafactor": lambda: fo.adafactor(),
    "muon": lambda: fo.muon(),
    "lbfgs": lambda: fo.lbfgs(),
    "multi_steps": lambda: fo.multi_steps(fo.adam(), 2),
    "user Transform": lambda: fo.Transform(lambda p: fo.tree.zeros_like(p), lambda u, s, p=None,
                                           h=None: (u, s)),
}


@pytest.mark.parametrize("make", list(INITS.values()), ids=list(INITS))
def test_init_given_model_parameters_module_or_param_groups(make):
    tx, model = make(), _model()
    with raises(TypeError, "init(params): expected a pytree of tensors", "generator",
                "model.parameters()", "pass dict(model.named_parameters())"):
        tx.init(model.parameters())
    with raises(TypeError, "init(params)", "a torch.nn.Module (Sequential)",
                "pass dict(model.named_parameters())"):
        tx.init(model)
    with raises(TypeError, "init(params)", "torch.optim param groups",
                "dict(model.named_parameters())", "partition", "FunctionalOptimizer"):
        tx.init([{"params": list(model.parameters()), "lr": 0.1}])


@pytest.mark.parametrize("make", list(INITS.values()), ids=list(INITS))
def test_init_leaf_that_is_not_a_tensor(make):
    tx = make()
    with raises(TypeError, "init(params)", "leaf 'enc' is a generator",
                "dict(model.named_parameters())"):
        tx.init({"enc": _model().parameters(), "w": torch.ones(2, 2)})
    with raises(TypeError, "init(params)", "leaf 'w' is a float"):
        tx.init({"w": 1.0, "b": torch.ones(2)})
    with raises(TypeError, "init(params): expected a pytree of tensors", "got a dict_items"):
        tx.init({"w": torch.ones(2)}.items())


def test_init_accepts_every_tree_of_tensors():
    """A bare tensor (one leaf), lists, None leaves and mixed dtypes stay valid."""
    tx = fo.adamw()
    w = torch.ones(3)
    updates, _ = tx.update(torch.ones(3), tx.init(w), w)
    assert updates.shape == (3,)
    params = {"a": [torch.ones(2), None], "b": torch.ones(2, dtype=torch.float64)}
    grads = {"a": [torch.ones(2), None], "b": torch.ones(2, dtype=torch.float64)}
    updates, _ = tx.update(grads, tx.init(params), params)
    assert updates["b"].dtype == torch.float64 and updates["a"][1] is None


def _zeros_init(params):
    return fo.tree.zeros_like(params)


def _passthrough(updates, state, params=None, hparams=None):
    return updates, state


def test_checked_init_keeps_a_transform_picklable():
    import pickle

    tx = pickle.loads(pickle.dumps(fo.Transform(_zeros_init, _passthrough)))
    assert torch.equal(tx.init({"w": torch.ones(2)})["w"], torch.zeros(2))
    with raises(TypeError, "init(params)", "generator"):
        tx.init(_model().parameters())


def test_train_step_given_model_parameters():
    from functional_optim.capture import train_step

    model = _model()
    with raises(TypeError, "train_step: params", "generator",
                "dict(model.named_parameters())"):
        train_step(lambda p, x: x.sum(), fo.sgd(0.1), model.parameters(), fo.EmptyState(),
                   torch.ones(2), graph=False)


# ----------------------------------------------------------------------------------------------
# an update leaf whose shape, dtype or device differs from its parameter's or its state's


def _mat_params():
    return {"w": torch.ones(3, 4), "b": torch.zeros(4, 2)}


FAMILIES = {
    **{name: getattr(fo, name) for name in (
        "adam", "adamw", "adagrad", "adadelta", "adamax", "nadam", "radam", "rmsprop",
        "rprop", "asgd", "adafactor", "muon")},
    "sgd": lambda: fo.sgd(0.1),
    "sgd_momentum": lambda: fo.sgd(0.1, momentum=0.9),
    "rmsprop_centered": lambda: fo.rmsprop(centered=True, momentum=0.5),
    "adam_amsgrad": lambda: fo.adam(amsgrad=True),
    "trace": lambda: fo.trace(0.9),
    "scale_by_adam": lambda: fo.scale_by_adam(),
    "lookahead": lambda: fo.lookahead(fo.sgd(0.1)),
    "ema": lambda: fo.chain(fo.ema(0.9), fo.scale(-0.1)),
    "average_params": lambda: fo.chain(fo.sgd(0.1), fo.average_params()),
    "multi_steps": lambda: fo.multi_steps(fo.sgd(0.1), 2),
    "lbfgs": lambda: fo.lbfgs(max_iter=1),
    "flatten": lambda: fo.flatten(fo.adamw()),
    "masked": lambda: fo.masked(fo.adam(), {"w": True, "b": True}),
    "partition": lambda: fo.partition({"a": fo.adam(), "s": fo.sgd(0.1, momentum=0.9)},
                                      {"w": "a", "b": "s"}),
    "apply_if_finite": lambda: fo.apply_if_finite(fo.adam(), 3),
    "inject_hparams": lambda: fo.inject_hparams(fo.adam(), {"lr": schedules.linear(0.1, 0, 9)}),
    "conditionally": lambda: fo.conditionally(fo.adam(), every_k=2),
    "zero_nans": lambda: fo.chain(fo.zero_nans(), fo.adam()),
}


def _update(tx, grads, state=None, params=None):
    params = _mat_params() if params is None else params
    state = tx.init(params) if state is None else state
    return tx.update(grads, state, params)


@pytest.mark.parametrize("multi", [False, True], ids=["per-leaf", "multi-tensor"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_update_of_another_dtype(name, multi):
    """A float64 gradient for a float32 parameter: a clear error, never a silent promotion."""
    tx = FAMILIES[name]()
    grads = {"w": torch.ones(3, 4, dtype=torch.float64), "b": torch.ones(4, 2)}
    with torch.no_grad(), fo._execute.multi_tensor(multi), \
            raises(TreeMismatchError, "leaf 'w'", "the update has dtype torch.float64",
                   "torch.float32", "no implicit casts"):
        _update(tx, grads)


@pytest.mark.parametrize("multi", [False, True], ids=["per-leaf", "multi-tensor"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_update_of_another_shape(name, multi):
    tx = FAMILIES[name]()
    grads = {"w": torch.ones(3, 4), "b": torch.ones(2, 4)}  # 'b' transposed
    with torch.no_grad(), fo._execute.multi_tensor(multi), \
            raises(TreeMismatchError, "leaf 'b'", "the update has shape (2, 4)", "(4, 2)"):
        _update(tx, grads)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_update_on_another_device(name):
    tx = FAMILIES[name]()
    grads = {"w": torch.ones(3, 4), "b": torch.ones(4, 2, device="meta")}
    with raises(TreeMismatchError, "leaf 'b'", "the update is on device meta", "cpu"):
        _update(tx, grads)


STATE_DTYPE = {k: FAMILIES[k] for k in (
    "adam", "adamw", "adagrad", "adadelta", "adamax", "nadam", "radam", "rmsprop", "rprop",
    "asgd", "muon", "sgd_momentum", "rmsprop_centered", "adam_amsgrad", "lookahead", "ema",
    "lbfgs")}


@pytest.mark.parametrize("multi", [False, True], ids=["per-leaf", "multi-tensor"])
@pytest.mark.parametrize("name", list(STATE_DTYPE))
def test_state_of_another_dtype(name, multi):
    """A state made by ``init`` on float64 parameters, used with float32 ones."""
    tx = STATE_DTYPE[name]()
    state = tx.init({k: v.double() for k, v in _mat_params().items()})
    grads = {"w": torch.ones(3, 4), "b": torch.ones(4, 2)}
    with torch.no_grad(), fo._execute.multi_tensor(multi), \
            raises(TreeMismatchError, "torch.float64", "torch.float32"):
        _update(tx, grads, state)


@pytest.mark.parametrize("name", ["adam", "sgd_momentum", "rmsprop_centered", "muon", "ema"])
def test_state_on_another_device(name):
    tx = FAMILIES[name]()
    state = tx.init({"w": torch.ones(3, 4), "b": torch.zeros(4, 2, device="meta")})
    with raises(TreeMismatchError, "leaf 'b'", "device cpu", "state is on meta"):
        _update(tx, {"w": torch.ones(3, 4), "b": torch.ones(4, 2)}, state)


@pytest.mark.parametrize("name, make", [
    ("masked", lambda: fo.masked(fo.adamw(), {"w": True, "b": False})),
    ("partition", lambda: fo.partition({"a": fo.adamw(), "s": fo.sgd(0.1)}, [("w", "a"),
                                                                           (".*", "s")])),
    ("flatten", lambda: fo.flatten(fo.adamw())),
])
def test_combinator_given_params_of_another_structure(name, make):
    """Same number of leaves, another key: an error naming both trees, not optree's message
    (nor, for flatten, a silent pairing of the leaves by their sorted names)."""
    tx = make()
    with raises(TreeMismatchError, f"{name} params", "only in updates: ['b']",
                f"only in {name} params: ['c']"):
        tx.update(grads_(), tx.init(params_()), {"w": torch.ones(3), "c": torch.zeros(2)})


def test_state_of_another_shape_that_broadcasts():
    """A state whose leaf would broadcast against the update (a checkpoint of another model)."""
    tx = fo.scale_by_adam()
    state = tx.init({"w": torch.ones(1), "b": torch.zeros(2)})
    with raises(TreeMismatchError, "scale_by_adam: leaf 'w'", "the update has shape (3,)",
                "its state has shape (1,)"):
        tx.update(grads_(), state)


def test_accumulator_dtype_is_a_policy():
    """``accumulator_dtype`` keeps a state in another dtype on purpose: not an error."""
    params = {"w": torch.ones(3, dtype=torch.float16)}
    for tx in (fo.ema(0.9, accumulator_dtype=torch.float32),
               fo.multi_steps(fo.sgd(0.1), 2, accumulator_dtype=torch.float32)):
        updates, _ = tx.update({"w": torch.ones(3, dtype=torch.float16)}, tx.init(params),
                               params)
        assert updates["w"].dtype == torch.float16


def test_multi_steps_update_that_would_broadcast():
    tx = fo.multi_steps(fo.sgd(0.1), 2)
    with raises(TreeMismatchError, "accumulate: leaf 'w'", "the update has shape (1,)",
                "its sum has shape (3,)"):
        tx.update({"w": torch.ones(1), "b": torch.ones(2)}, tx.init(params_()), params_())


def test_sparse_adam_update_of_another_dtype():
    tx = fo.sparse_adam()
    params = {"emb": torch.zeros(4, 2)}
    grads = {"emb": torch.ones(4, 2, dtype=torch.float64).to_sparse()}
    with raises(TreeMismatchError, "scale_by_sparse_adam: leaf 'emb'", "torch.float64",
                "torch.float32"):
        tx.update(grads, tx.init(params), params)


def test_lbfgs_state_for_other_parameters():
    tx = fo.lbfgs(max_iter=1)
    state = tx.init({"w": torch.ones(3, dtype=torch.float64)})
    with raises(TreeMismatchError, "scale_by_lbfgs: the state holds torch.float64",
                "need torch.float32"):
        tx.update({"w": torch.ones(3)}, state, {"w": torch.ones(3)})


def test_adapter_state_of_another_dtype():
    """A state tensor replaced by hand in ``optimizer.state``: named on the multi-tensor path."""
    from functional_optim.optim import FunctionalOptimizer

    w = torch.nn.Parameter(torch.ones(3))
    opt = FunctionalOptimizer([w], fo.adamw(), foreach=True)
    w.grad = torch.ones(3)
    opt.step()
    opt.state[w]["adam"]["mu"] = opt.state[w]["adam"]["mu"].double()
    with raises(TreeMismatchError, "leaf '0'", "torch.float32", "torch.float64"):
        opt.step()


def test_update_of_another_shape_under_vmap():
    tx = fo.adam()
    state = tx.init(params_())
    grads = {"w": torch.ones(5, 4), "b": torch.ones(5, 2)}  # per member: 'w' has 4 entries
    with raises(TreeMismatchError, "leaf 'w'", "the update has shape (4,)", "(3,)"):
        torch.func.vmap(lambda g: tx.update(g, state, params_())[0])(grads)


@pytest.mark.parametrize("grads, fragments", [
    ({"w": torch.ones(3, dtype=torch.float64), "b": torch.ones(2)}, ("torch.float64",)),
    ({"w": torch.ones(4), "b": torch.ones(2)}, ("shape (4,)", "(3,)")),
])
def test_update_mismatch_under_compile(grads, fragments):
    """Checked on static metadata when tracing: the compile error is the library's."""
    tx = fo.adamw()
    step = torch.compile(lambda g, s, p: tx.update(g, s, p), fullgraph=True,
                         backend="aot_eager")
    try:
        with pytest.raises(Exception) as caught:
            step(grads, tx.init(params_()), params_())
    finally:
        torch._dynamo.reset()
    message = str(caught.value)
    assert "leaf 'w'" in message and all(f in message for f in fragments), message


def test_apply_updates_on_another_device():
    params = params_()
    before = {k: v.clone() for k, v in params.items()}
    updates = {"w": torch.ones(3), "b": torch.ones(2, device="meta")}
    with raises(TreeMismatchError, "apply_updates: leaf 'b'", "the update is on device meta",
                "parameter is on cpu"):
        fo.apply_updates(params, updates)
    with raises(TreeMismatchError, "apply_updates_: leaf 'b'", "device meta"):
        fo.apply_updates_(params, {"b": torch.ones(2, device="meta"), "w": torch.ones(3)})
    for k in params:
        assert torch.equal(params[k], before[k])


def test_apply_updates_names_the_leaf_of_another_shape():
    with raises(TreeMismatchError, "apply_updates: leaf 'w'", "the update has shape (2, 3)",
                "its parameter has shape (3,)"):
        fo.apply_updates(params_(), {"w": torch.ones(2, 3), "b": torch.ones(2)})


def test_apply_updates_casts_to_the_parameters_dtype():
    """Documented: an update of another dtype is applied in the parameter's dtype."""
    out = fo.apply_updates(params_(), {"w": torch.ones(3, dtype=torch.float64), "b": None})
    assert out["w"].dtype == torch.float32
