"""DESIGN.md §2 for every registered transform (see ``conformance.py``)."""

from __future__ import annotations

import contextlib
import warnings

import optree
import pytest
import torch
import torch._dynamo.testing
from conformance import (
    CASES,
    SUMS_IN_BLOCKS,
    float_hparams,
    float_state,
    tensor_hparams,
    with_hparam,
)
from test_hparams_live import assert_close, live_value
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import ShapeEnv

import functional_optim as fo

pytestmark = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


@pytest.fixture(autouse=True)
def _documented_exclusions(request):
    """A check a case registers in ``Case.excluded`` is reported skipped, with its reason."""
    case = request.node.callspec.params.get("case")
    reason = case.exclusion(request.node.originalname) if case is not None else None
    if reason:
        pytest.skip(f"excluded for {case.name} (Case.excluded): {reason}")

SYNC_OPS = {
    "aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.is_nonzero", "aten.equal",
    "aten.masked_select", "aten._assert_async", "aten.repeat_interleave", "aten.unique",
    "aten._unique2", "aten.allclose",
}


def tensors(tree):
    return [x for x in optree.tree_leaves(tree, none_is_leaf=True) if isinstance(x, torch.Tensor)]


def assert_trees_close(a, b, rtol=1e-12, atol=1e-12):
    la, sa = optree.tree_flatten(a, none_is_leaf=True)
    lb, sb = optree.tree_flatten(b, none_is_leaf=True)
    assert sa == sb, f"{sa} != {sb}"
    for x, y in zip(la, lb):
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape, (x, y)
            torch.testing.assert_close(x, y, rtol=rtol, atol=atol)
        else:
            assert x == y


def setup(case, seed=0, dtype=torch.float64, device="cpu", steps=1):
    """Transform, params, grads and a state after ``steps`` updates."""
    tx = case.make()
    params = case.params_tree(seed, dtype, device)
    grads = case.grads_tree(seed + 1, dtype, device)
    state = tx.init(params)
    for i in range(steps):
        _, state = tx.update(case.grads_tree(seed + 10 + i, dtype, device), state, params)
    return tx, params, grads, state


@pytest.mark.parametrize("multi", [True, False], ids=["automatic", "per_leaf"])
def test_pure(case, multi):
    """Nothing is mutated, on the path a plain eager call takes (multi-tensor: nothing requires
    grad) and leaf by leaf."""
    tx, params, grads, state = setup(case)
    hp, rebuild = tensor_hparams(tx.hparams)
    everything = (grads, state, params, hp)
    versions = [t._version for t in tensors(everything)]
    values = [t.clone() for t in tensors(everything)]
    for _ in range(2):
        with fo._execute.multi_tensor(multi):
            out, new_state = tx.update(grads, state, params, rebuild(hp))
    assert [t._version for t in tensors(everything)] == versions
    for before, now in zip(values, tensors(everything)):
        assert _equal(before, now)
    assert optree.tree_structure(new_state, none_is_leaf=True) == optree.tree_structure(
        state, none_is_leaf=True)
    assert optree.tree_structure(out, none_is_leaf=True) == optree.tree_structure(
        grads, none_is_leaf=True)


def _objective(tx, state_rebuild, hp_rebuild, weights):
    """A scalar function of everything ``update`` reads, mixing every output."""

    def f(params, grads, state_floats, hp):
        out, new_state = tx.update(grads, state_rebuild(state_floats), params, hp_rebuild(hp))
        outputs = tensors(out) + float_state(new_state)[0]
        return sum(((o * w).sum().real for o, w in zip(outputs, weights)),
                   torch.zeros((), dtype=torch.float64))

    return f


def _weights(tx, params, grads, state, hp_rebuild, hp):
    out, new_state = tx.update(grads, state, params, hp_rebuild(hp))
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(o.shape, generator=gen, dtype=torch.float64)
            for o in tensors(out) + float_state(new_state)[0]]


def _perturb(tree, direction, eps):
    return optree.tree_map(lambda x, d: x + eps * d, tree, direction)


@pytest.mark.parametrize("zero", [False, True], ids=["random", "zero_moments"])
def test_grad_matches_finite_differences(case, zero):
    tx, params, grads, state = setup(case, steps=0 if zero else 1)
    if zero:
        params = optree.tree_map(torch.zeros_like, params)
        grads = optree.tree_map(torch.zeros_like, grads)
    hp, hp_rebuild = tensor_hparams(tx.hparams)
    floats, state_rebuild = float_state(state)
    weights = _weights(tx, params, grads, state, hp_rebuild, hp)
    f = _objective(tx, state_rebuild, hp_rebuild, weights)
    args = (params, grads, floats, hp)
    grads_of = torch.func.grad(f, argnums=(0, 1, 2, 3))(*args)
    for g in optree.tree_leaves(grads_of):
        assert torch.isfinite(g).all(), "NaN/inf meta-gradient"
    if zero:
        return  # finite differences straddle kinks at zero (|g|, sqrt); finiteness is the point
    gen = torch.Generator().manual_seed(3)
    eps = 1e-6
    for i, name in enumerate(["params", "grads", "state", "hparams"]):
        # relative perturbation: a second moment near zero must not be pushed below it
        direction = optree.tree_map(
            lambda x: torch.randn(x.shape, generator=gen, dtype=torch.float64) * x.abs(), args[i])
        plus = list(args)
        minus = list(args)
        plus[i] = _perturb(args[i], direction, eps)
        minus[i] = _perturb(args[i], direction, -eps)
        numeric = (f(*plus) - f(*minus)) / (2 * eps)
        analytic = sum(((g * d).sum() for g, d in zip(optree.tree_leaves(grads_of[i]),
                                                      optree.tree_leaves(direction))),
                       torch.zeros((), dtype=torch.float64))
        torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-7,
                                   msg=lambda m, name=name: f"d/d{name}: {m}")


def test_vmap_equals_loop(case):
    members = 3
    tx = case.make()
    params = case.params_tree(0, batch=(members,))
    hp, rebuild = tensor_hparams(tx.hparams)
    factors = torch.tensor([1.0, 0.9, 0.95], dtype=torch.float64)
    hp_b = [h * factors for h in hp]

    def update(g, s, p, h):
        return tx.update(g, s, p, rebuild(h))

    torch._C._functorch._set_vmap_fallback_warning_enabled(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state_b = torch.func.vmap(tx.init)(params)
            outs_b = []
            for step in range(2):
                grads = case.grads_tree(10 + step, batch=(members,))
                out, state_b = torch.func.vmap(update)(grads, state_b, params, hp_b)
                outs_b.append((out, state_b))
    finally:
        torch._C._functorch._set_vmap_fallback_warning_enabled(False)
    fallbacks = [str(w.message) for w in caught if "fallback" in str(w.message).lower()
                 or "performance drop" in str(w.message).lower()]
    assert not fallbacks, fallbacks

    for m in range(members):
        pick = lambda tree, m=m: optree.tree_map(lambda x: x[m], tree)  # noqa: E731
        p = pick(params)
        state = tx.init(p)
        for step in range(2):
            grads = pick(case.grads_tree(10 + step, batch=(members,)))
            out, state = update(grads, state, p, [h[m] for h in hp_b])
            assert_trees_close(out, pick(outs_b[step][0]))
            assert_trees_close(state, pick(outs_b[step][1]))


def _mixed_tree(case, seed: int) -> dict:
    """The sample tree with float32 and float64 leaves (one compile covers both), without its
    ``pair`` (five leaves, every kind still there: a matrix, a vector and a 0-d leaf in each
    nesting; a trace's cost grows with its leaves, and this check runs for every case)."""
    tree = case.params_tree(seed)
    return {"linear": {k: v.float() for k, v in tree["linear"].items()}, "blocks": tree["blocks"]}


def test_compile_fullgraph_no_recompile(case):
    """``torch.compile(update, fullgraph=True)`` compiles once, on a tree mixing float32 and
    float64 leaves, with every float hyperparameter a 0-d tensor; a new value of each in turn
    (check (e) of ``test_hparams_live.py``) runs without recompiling and gives eager's
    numbers.

    The backend is dynamo's ``"eager"``: what this checks is dynamo's capture (one graph, its
    guards, no recompile), and that is the cost that grows with every registered case. The
    trace below dynamo is checked per case by :func:`test_capturable_fake_cuda_trace` and
    :func:`test_trace_once_replay_with_new_hparams` (``make_fx``: dispatch, fake tensors, no
    host sync), and ``aot_eager`` end to end by the dedicated compile tests
    (``test_compile_step.py``, ``test_adapter_compile.py``, ``test_adapter.py``)."""
    cells = float_hparams(case.make().hparams)
    tx = case.make()
    params = _mixed_tree(case, 0)
    grads = case.adapt_grads(_mixed_tree(case, 1))
    _, state = tx.update(case.adapt_grads(_mixed_tree(case, 2)), tx.init(params), params)
    paths = [path for path, _ in cells]
    base = [torch.tensor(value, dtype=torch.float64) for _, value in cells]

    def update(g, s, p, values):
        h = tx.hparams
        for path, v in zip(paths, values):
            h = with_hparam(h, path, v)
        return tx.update(g, s, p, h)

    counter = torch._dynamo.testing.CompileCounterWithBackend("eager")
    compiled = torch.compile(update, backend=counter, fullgraph=True, dynamic=False)
    torch._dynamo.reset()
    try:
        assert_close(tensors(compiled(grads, state, params, base)),
                     tensors(update(grads, state, params, base)), f"{case.name} compiled",
                     case.precision, case.ulps)
        first = counter.frame_count  # (a restarted analysis may count twice)
        for i, (path, value) in enumerate(cells):
            values = list(base)
            values[i] = torch.tensor(live_value(case, path, value), dtype=torch.float64)
            assert_close(tensors(compiled(grads, state, params, values)),
                         tensors(update(grads, state, params, values)),
                         f"{case.name} compiled, {path} changed", case.precision,
                         case.ulps)
            assert counter.frame_count == first, f"{case.name}: a new {path} recompiled"
    finally:
        torch._dynamo.reset()


def _dense(x):
    return x.to_dense() if x.is_sparse else x


def _equal(a, b):
    """``torch.equal`` for sparse COO tensors too (compared densely); NaN equals NaN (a "none
    yet" marker in a state)."""
    if a.is_sparse != b.is_sparse:
        return False
    a, b = _dense(a), _dense(b)
    if torch.equal(a, b):
        return True
    return (a.dtype == b.dtype and a.shape == b.shape and (a.is_floating_point() or a.is_complex())
            and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))


def _sync_ops(graph):
    return sorted({str(n.target).rsplit(".", 1)[0] for n in graph.nodes
                   if n.op == "call_function"} & SYNC_OPS)


def test_capturable_fake_cuda_trace(case):
    """No host sync and no CPU tensor in a symbolic trace on fake CUDA tensors."""
    tx = case.make()
    with FakeTensorMode(shape_env=ShapeEnv()):
        params = case.params_tree(0, device="cuda")
        grads = case.grads_tree(1, device="cuda")
        hp, rebuild = tensor_hparams(tx.hparams, device="cuda")
        state = tx.init(params)

    def update(g, s, p, h):
        return tx.update(g, s, p, rebuild(h))

    graph = make_fx(update, tracing_mode="symbolic")(grads, state, params, hp).graph
    assert not _sync_ops(graph), f"host-syncing ops: {_sync_ops(graph)}"
    devices = set()
    for node in graph.nodes:
        for value in optree.tree_leaves(node.meta.get("val"), none_is_leaf=True):
            if isinstance(value, torch.Tensor):
                devices.add(value.device.type)
    assert devices <= {"cuda"}, f"tensors on {devices} in the captured graph"
    for leaf in tensors(state):
        assert leaf.device.type == "cuda"


def test_trace_once_replay_with_new_hparams(case):
    """A graph traced once honours changed hyperparameter values (nothing baked in)."""
    tx, params, grads, state = setup(case)
    hp, rebuild = tensor_hparams(tx.hparams)

    def update(g, s, p, h):
        return tx.update(g, s, p, rebuild(h))

    graph = make_fx(update)(grads, state, params, hp)
    for factor in (0.9, 0.7):
        h = [x * factor for x in hp]
        expected = update(grads, state, params, h)
        got = optree.tree_unflatten(optree.tree_structure(expected, none_is_leaf=True),
                                    optree.tree_leaves(graph(grads, state, params, h),
                                                       none_is_leaf=True))
        assert_trees_close(got, expected)


def test_state_buffers_are_distinct(case):
    """No two tensors of a fresh state share memory, so the state can live in static buffers
    (``capture.inplace_step`` copies each new leaf into its own buffer)."""
    leaves = [x for x in tensors(case.make().init(case.params_tree(0))) if x.numel()]
    storages = [x.untyped_storage().data_ptr() for x in leaves]
    assert len(set(storages)) == len(storages), f"{case.name}: state tensors share memory"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtype_kept(case, dtype):
    tx, params, grads, state = setup(case, dtype=dtype, steps=2)
    out, new_state = tx.update(grads, state, params)
    computed = torch.float32 if case.half_in_float32 and dtype == torch.bfloat16 else dtype
    for p, u in zip(tensors(params), tensors(out)):  # (DP-SGD's grads are per-example)
        assert u.dtype == computed and u.shape == p.shape
        assert torch.isfinite(_dense(u).float()).all()
    for leaf in float_state(new_state)[0]:
        if case.float64_scalars and leaf.ndim == 0 and leaf.dtype == torch.float64:
            continue  # bookkeeping scalars (a best loss, an injected hparam)
        assert leaf.dtype == computed
    for p, new in zip(tensors(params), tensors(fo.apply_updates(params, out))):
        assert new.dtype == p.dtype


def test_complex(case):
    if not case.complex:
        tx, params, grads, state = setup(case, dtype=torch.complex128, steps=0)
        with pytest.raises(TypeError, match="complex"):
            tx.update(grads, state, params)
        return
    tx, params, grads, state = setup(case, dtype=torch.complex128, steps=2)
    out, new_state = tx.update(grads, state, params)
    for u in tensors(out):
        assert u.dtype == torch.complex128 and torch.isfinite(u).all()
    for leaf in float_state(new_state)[0]:
        if case.float64_scalars and leaf.ndim == 0 and leaf.dtype == torch.float64:
            continue
        assert leaf.dtype == torch.complex128


def test_none_leaves(case):
    """A None parameter and a missing gradient pass through as None, keeping their state."""
    tx = case.make()
    shape = case.shape or (lambda s: s)
    params = {"a": torch.randn(shape((3,)), dtype=torch.float64), "frozen": None,
              "b": torch.randn(shape((2, 2)), dtype=torch.float64)}
    state = tx.init(params)
    grads = case.adapt_grads({"a": torch.randn(shape((3,)), dtype=torch.float64),
                              "frozen": None, "b": None})
    out, new_state = tx.update(grads, state, params)
    assert out["frozen"] is None and out["b"] is None and out["a"].shape == params["a"].shape
    # b's state is untouched: same tensors as before the update
    old, new = optree.tree_leaves(state, none_is_leaf=True), optree.tree_leaves(
        new_state, none_is_leaf=True)
    names = [n for n, _ in fo.tree.named_leaves(state)]
    for name, x, y in zip(names, old, new):
        if ".b" in f".{name}" and isinstance(x, torch.Tensor):
            assert torch.equal(x, y)
    assert fo.apply_updates(params, out)["b"] is params["b"]


def test_empty_tree(case):
    tx = case.make()
    state = tx.init({})
    out, _ = tx.update({}, state, {})
    assert out == {}


def test_an_empty_leaf_changes_nothing(case):
    """A parameter with no elements (a zero-size layer; under FSDP2, the shard of a rank that
    holds no rows) steps without error, its update empty and its state finite (a mean over
    its rows or columns is no NaN), and leaves the other parameters' trajectory as it is
    without it: equal but for the rounding of sums over the leaves, which group their terms
    otherwise with one more (compared as the live-value checks do, in ulps of each tensor's
    scale)."""
    shape = case.shape or (lambda s: s)
    runs = []
    for empty in (False, True):
        tx = case.make()
        trees = [case.params_tree(seed) for seed in (0, 1)]
        if empty:
            for tree in trees:
                tree["z_empty"] = torch.zeros(shape((0, 3)), dtype=torch.float64)  # (last:
                # the others keep their positions, which the noise of a leaf is drawn by)
        params, grads = trees[0], case.adapt_grads(trees[1])
        state = tx.init(params)
        for _ in range(3):
            out, state = tx.update(grads, state, params)
            params = fo.apply_updates(params, out)
        runs.append((params, out, state))
    (params, _, _), (with_empty, out, state) = runs
    assert _dense(out["z_empty"]).shape == shape((0, 3))
    assert_close(tensors(params), tensors({k: v for k, v in with_empty.items() if k != "z_empty"}),
                 f"{case.name}: the other parameters", ulps=case.ulps)
    for path, x in zip(*optree.tree_flatten_with_path(state, none_is_leaf=True)[:2]):
        if "z_empty" in path and isinstance(x, torch.Tensor) and (x.is_floating_point()
                                                                or x.is_complex()):
            assert torch.isfinite(_dense(x)).all(), f"{case.name}: state {path} of the empty leaf"


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128, "mixed"])
def test_multi_tensor_path_matches_per_leaf(case, dtype):
    """The foreach path (eager, no autograd) gives exactly the per-leaf path's numbers, also when
    rules may update donated state in place (as inside the stateful adapter), and when a plain
    call takes it by itself (grad mode on, nothing requires grad: ``None`` below); the aliases
    whose pure update sums in blocks (``SUMS_IN_BLOCKS``) up to that order (float64)."""
    if dtype == torch.complex128 and not case.complex:
        return
    tx = case.make()
    if dtype == "mixed":  # several (dtype) groups in one tree: float32, bfloat16 (with the
        # 0-d leaf, which a float64 coefficient must not promote on either path) and float64
        params, grads = case.params_tree(0), case.params_tree(1)
        for tree in (params, grads):
            tree["linear"] = optree.tree_map(lambda v: v.float(), tree["linear"])
            tree["blocks"] = optree.tree_map(lambda v: v.bfloat16(), tree["blocks"])
    else:
        params, grads = case.params_tree(0, dtype), case.params_tree(1, dtype)
    grads = case.adapt_grads(grads)
    results = []
    for multi, donate in ((False, False), (True, False), (True, True), (None, False)):
        state = tx.init(params)
        inputs = [t.clone() for t in tensors((grads, params))]
        mode = (contextlib.nullcontext() if multi is None else
                fo._execute.multi_tensor(multi, donate=donate))
        with torch.set_grad_enabled(multi is None), mode:
            for step in range(3):
                batch = grads if step != 1 else case.adapt_grads(params_like(params))
                out, state = tx.update(batch, state, params)
                out = optree.tree_map(torch.clone, out)  # an update may alias a donated state
        results.append((out, state))
        # donation may overwrite state buffers, never grads or params
        assert all(_equal(a, b) for a, b in zip(inputs, tensors((grads, params))))
    for other in results[1:]:
        for a, b in zip(tensors(results[0]), tensors(other)):
            assert a.dtype == b.dtype and a.shape == b.shape
            if case.name in SUMS_IN_BLOCKS and a.dtype == torch.float64:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
            else:
                assert _equal(a, b), (a - b).abs().max()


_NDIM_STATE = ("its state's layout depends on the parameter's rank (per-dimension "
               "preconditioners, quantized blocks): a 0-d and a one-element parameter differ")
_CROSS_LEAF = ("a sum over the leaves outside the per-leaf rule (MoMo's and Mechanic's inner "
               "products, HuggingFace Adafactor's unfactored second moment, whose state mark "
               "depends on the rank) computes a 0-d leaf's term with its float64 coefficients")
_NOT_AS_VECTOR = {
    **dict.fromkeys(["soap", "psgd_kron", "adamw_8bit", "adam_8bit", "adamw_4bit",
                     "quantized_state_momentum_rms_4bit", "precision_int8_master_stochastic"],
                    _NDIM_STATE),
    "with_state_dtype": "its dtype is for state of rank >= 1 (0-d state, a count, stays)",
    **dict.fromkeys(["momo_adam", "mechanic_adam", "scale_by_factored_rms_huggingface",
                     "huggingface_adafactor", "huggingface_adafactor_warmup_init_momentum",
                     "huggingface_adafactor_external_lr"], _CROSS_LEAF),
}


def test_a_0d_leaf_computes_as_a_one_element_vector(case):
    """Leaf by leaf, a float32 0-d parameter (the tree's ``blocks.1.0``) gives the numbers of
    the same value as a one-element vector: its math in float32, which a 0-d float64
    coefficient (a bias correction, a tensor hyperparameter) does not promote, as on the
    multi-tensor path (``test_multi_tensor_path_matches_per_leaf``'s mixed tree). Each state
    shaped like its parameter must be marked so (``state_like``): an unmarked one stays 0-d."""
    if case.name in _NOT_AS_VECTOR:
        pytest.skip(_NOT_AS_VECTOR[case.name])
    results = []
    for shape in ((), (1,)):
        params, grads = case.params_tree(0, torch.float32), case.params_tree(1, torch.float32)
        for tree in (params, grads):  # (a case's own shapes may have no 0-d leaf: moot)
            x, y = tree["blocks"][1]
            tree["blocks"][1] = (x.reshape(shape) if x.ndim == 0 else x, y)
        grads, tx = case.adapt_grads(grads), case.make()
        state = tx.init(params)
        with fo._execute.multi_tensor(False):
            for step in range(10):  # (a promoted op moves the last bit at some steps)
                batch = grads if step % 2 == 0 else case.adapt_grads(params_like(params))
                out, state = tx.update(batch, state, params)
        results.append(tensors((out, state)))
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results):
        assert a.dtype == b.dtype and _equal(_dense(a).reshape(-1), _dense(b).reshape(-1))


def test_states_shaped_like_their_update_are_marked(case, monkeypatch):
    """Every state that the per-leaf rule gets shaped like its update (a matrix parameter's
    moment) is marked so (``state_like``: ``LIKE`` or ``SHAPED``), which the executor needs to
    check it and to run a 0-d leaf's state as a one-element vector with it (a step count, left
    unmarked, stays 0-d). Seen on the multi-tensor path's grouping of the conformance tree."""
    unmarked = []
    plain = fo._execute._plain_groups

    def spy(flats, n_states, shares, *args):
        marked = {k for k, *_ in shares}
        for k in range(n_states):
            if k not in marked and any(
                    isinstance(x, torch.Tensor) and g is not None and g.ndim >= 2 and
                    x.shape == g.shape for g, x in zip(flats[0], flats[1 + k])):
                unmarked.append(k)
        return plain(flats, n_states, shares, *args)

    monkeypatch.setattr(fo._execute, "_plain_groups", spy)
    tx = case.make()
    params = case.params_tree(0, torch.float32)
    state = tx.init(params)
    with fo._execute.multi_tensor(True):
        tx.update(case.adapt_grads(case.params_tree(1, torch.float32)), state, params)
    assert not unmarked, f"states {unmarked} are shaped like the update but not marked"


def params_like(params):
    """Gradients shaped and typed like ``params`` (a second, different batch)."""
    gen = torch.Generator().manual_seed(5)
    return optree.tree_map(
        lambda p: torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
        if not p.is_complex() else torch.randn(p.shape, generator=gen, dtype=p.dtype), params)
