"""Clear errors for the leaves themselves: ``init`` given something that is not a tree of
tensors, and an update leaf whose shape, dtype or device differs from its parameter's or its
state's (every transform family and combinator, on the per-leaf and the multi-tensor paths,
under ``vmap`` and ``torch.compile``, and ``apply_updates``). Each error names the leaf by its
dotted path, the expected and the received. The style and helpers of ``test_errors.py``.
"""

from __future__ import annotations

import pytest
import torch
from test_errors import grads_, params_, raises

import functional_optim as fo
from functional_optim import schedules
from functional_optim.base import TreeMismatchError

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
    """One step: ``update`` and ``apply_updates`` (a block that skips its work, such as SGD's
    momentum at 0 on the multi-tensor path, reads no state: the mismatch of a gradient that
    nothing read surfaces when it is applied)."""
    params = _mat_params() if params is None else params
    state = tx.init(params) if state is None else state
    updates, _ = tx.update(grads, state, params)
    return fo.apply_updates(params, updates)


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


def test_apply_updates_keeps_the_parameters_dtype():
    """Documented: an update of another dtype is added in the wider dtype, rounded once to the
    parameter's."""
    out = fo.apply_updates(params_(), {"w": torch.ones(3, dtype=torch.float64), "b": None})
    assert out["w"].dtype == torch.float32


@pytest.mark.parametrize("tree,accepted", [
    ({"a": torch.zeros(2), "b": torch.ones(3)}, True),
    ({"b": torch.ones(3), "a": torch.zeros(2)}, True),  # (another insertion order)
    ({"a": None, "b": torch.ones(3)}, True),  # (None is a leaf)
    ({"a": 1.0, "b": torch.ones(3)}, True),  # (a number is a leaf)
    ({"a": {"c": torch.zeros(2)}, "b": torch.ones(3)}, False),  # (a subtree at a leaf)
    ({"a": (torch.zeros(2),), "b": torch.ones(3)}, False),
    ({"a": torch.zeros(2)}, False),
    ({"a": torch.zeros(2), "b": torch.ones(3), "c": None}, False),
    ([torch.zeros(2), torch.ones(3)], False),
])
def test_flatten_like_accepts_exactly_the_structure(tree, accepted):
    """``tree.flatten_like`` flattens along the reference structure (fast) and accepts exactly
    the trees whose own structure is that one."""
    spec = fo.tree.structure({"a": torch.zeros(2), "b": torch.ones(3)})
    if accepted:
        assert fo.tree.flatten_like(tree, spec, "t", "ref") == fo.tree.leaves(tree)
    else:
        with pytest.raises(TreeMismatchError, match="different tree structures"):
            fo.tree.flatten_like(tree, spec, "t", "ref")


def test_apply_updates_names_a_mismatched_leaf():
    params = {str(i): torch.zeros(3) for i in range(5)}
    updates = dict(params, **{"3": torch.zeros(4)})
    with pytest.raises(TreeMismatchError, match="'3'"):
        fo.apply_updates(params, updates)
