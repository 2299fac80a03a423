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
