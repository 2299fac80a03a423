"""functional_optim.meta: module helpers, differentiable unrolls, meta-gradients, vmap sweeps."""

from __future__ import annotations

import optree
import pytest
import torch
from torch.func import grad, vmap

import functional_optim as fo
from functional_optim import meta, schedules

DT = torch.float64
STEPS = 20


def make_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=DT)  # noqa: E731
    params = {"w1": r(3, 8) * 0.5, "b1": r(8) * 0.1, "w2": r(8, 1) * 0.5, "b2": r(1) * 0.1,
              # never used by the loss: its gradient and second moment stay exactly zero
              "unused": r(2)}
    data = (r(16, 3), r(16, 1))
    val = (r(16, 3), r(16, 1))
    return params, data, val


def mse(p, x, y):
    h = torch.tanh(x @ p["w1"] + p["b1"])
    return ((h @ p["w2"] + p["b2"] - y) ** 2).mean()


OPTIMIZERS = {
    "adam": (lambda: fo.adam(lr=0.05, betas=(0.9, 0.99), eps=1e-3, weight_decay=0.01),
             ["lr", "betas.0", "betas.1", "eps", "weight_decay"]),
    "adamw": (lambda: fo.adamw(lr=0.05, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.1),
              ["lr", "betas.0", "betas.1", "eps", "weight_decay"]),
    "sgd_momentum": (lambda: fo.sgd(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
                     ["lr", "momentum", "dampening", "weight_decay"]),
    "sgd_momentum_schedule": (
        lambda: fo.sgd(lr=schedules.exponential_decay(0.1, 5, 0.7), momentum=0.8),
        ["lr.init_value", "lr.decay_rate", "momentum"]),
}


def tensor_hparams(hparams, names):
    """``hparams`` with the entries at the dotted ``names`` turned into float64 0-d tensors."""
    def get(tree, path):
        for k in path:
            tree = tree[int(k) if isinstance(tree, tuple) else k]
        return tree

    def put(tree, path, value):
        if not path:
            return value
        k = path[0]
        if isinstance(tree, tuple):
            i = int(k)
            return tree[:i] + (put(tree[i], path[1:], value),) + tree[i + 1:]
        return {**tree, k: put(tree[k], path[1:], value)}

    values = [torch.tensor(float(get(hparams, n.split("."))), dtype=DT) for n in names]

    def rebuild(vals):
        out = hparams
        for n, v in zip(names, vals, strict=False):
            out = put(out, n.split("."), v)
        return out

    return values, rebuild


def central_difference(f, x, direction, rel=1e-6):
    h = rel
    return (f(x + h * direction) - f(x - h * direction)) / (2 * h)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_meta_gradients_match_finite_differences(name):
    make, names = OPTIMIZERS[name]
    tx = make()
    params, data, val = make_problem()
    # a state with nonzero moments for the "unused" leaf too? no: its second moment stays 0
    warm = meta.unroll(lambda p: mse(p, *data), tx, params, steps=3)
    state0 = warm.state
    floats, state_spec = optree.tree_flatten(state0, none_is_leaf=True)
    where = [i for i, x in enumerate(floats) if x.is_floating_point()]
    hp, rebuild = tensor_hparams(tx.hparams, names)

    def objective(p0, state_floats, hp_values):
        leaves = list(floats)
        for i, v in zip(where, state_floats, strict=False):
            leaves[i] = v
        state = optree.tree_unflatten(state_spec, leaves)
        out = meta.unroll(lambda p: mse(p, *data), tx, p0, state, rebuild(hp_values),
                          steps=STEPS)
        return mse(out.params, *val) + 0.1 * out.losses.sum()

    s_floats = [floats[i] for i in where]
    g_p, g_s, g_h = grad(objective, argnums=(0, 1, 2))(params, s_floats, hp)
    for g in optree.tree_leaves((g_p, g_s, g_h)):
        assert torch.isfinite(g).all(), "NaN/inf meta-gradient (sqrt of a zero second moment?)"

    # every hyperparameter, one at a time (relative step: eps and betas stay in range)
    for k, n in enumerate(names):
        def f_k(v, k=k):
            vals = list(hp)
            vals[k] = v
            return objective(params, s_floats, vals)
        fd = central_difference(f_k, hp[k], hp[k].abs())
        torch.testing.assert_close(g_h[k] * hp[k].abs(), fd, rtol=1e-6, atol=1e-10,
                                   msg=f"{name}: d/d{n}")

    # initial parameters and the state, along random directions scaled by each leaf
    gen = torch.Generator().manual_seed(5)
    d_p = optree.tree_map(lambda x: torch.randn(x.shape, generator=gen, dtype=DT), params)
    d_s = [torch.randn(x.shape, generator=gen, dtype=DT) * x.abs() for x in s_floats]
    fd_p = central_difference(
        lambda t: objective(optree.tree_map(lambda x, d: x + t * d, params, d_p), s_floats, hp),
        torch.zeros((), dtype=DT), torch.ones((), dtype=DT))
    pairs = zip(optree.tree_leaves(g_p), optree.tree_leaves(d_p), strict=True)
    ad_p = sum((g * d).sum() for g, d in pairs)
    torch.testing.assert_close(ad_p, fd_p, rtol=1e-6, atol=1e-10)
    fd_s = central_difference(
        lambda t: objective(params, [x + t * d for x, d in zip(s_floats, d_s, strict=False)], hp),
        torch.zeros((), dtype=DT), torch.ones((), dtype=DT))
    ad_s = sum((g * d).sum() for g, d in zip(g_s, d_s, strict=False))
    torch.testing.assert_close(ad_s, fd_s, rtol=1e-6, atol=1e-10)


def test_meta_gradient_with_torch_autograd_matches_torch_func():
    params, data, val = make_problem()
    tx = fo.adam(lr=0.05)
    lr = torch.tensor(0.05, dtype=DT)

    def objective(p0, lr):
        return mse(meta.unroll(lambda p: mse(p, *data), tx, p0, hparams={"lr": lr},
                               steps=STEPS).params, *val)

    g_lr = grad(objective, argnums=1)(params, lr)
    p_ag = {k: v.clone().requires_grad_() for k, v in params.items()}
    lr_ag = lr.clone().requires_grad_()
    objective(p_ag, lr_ag).backward()
    torch.testing.assert_close(lr_ag.grad, g_lr, rtol=1e-12, atol=0)
    assert torch.isfinite(p_ag["w1"].grad).all()


def test_no_nan_when_every_gradient_is_zero():
    params, data, _ = make_problem()
    params = optree.tree_map(torch.zeros_like, params)
    hp, rebuild = tensor_hparams(fo.adam(lr=0.1).hparams, ["lr", "betas.1", "eps"])

    def objective(p0, hp):
        out = meta.unroll(lambda p: (p["w1"] ** 2).sum() * 0.0 + mse(p, *data) * 0.0,
                          fo.adam(lr=0.1), p0, hparams=rebuild(hp), steps=5)
        return sum(x.sum() for x in out.params.values())

    g_p, g_h = grad(objective, argnums=(0, 1))(params, hp)
    for g in optree.tree_leaves((g_p, g_h)):
        assert torch.isfinite(g).all()


def test_first_order_drops_the_hessian_term():
    params, data, val = make_problem()
    alpha = 0.1

    def objective(p0, first_order):
        out = meta.unroll(lambda p: mse(p, *data), fo.sgd(lr=alpha), p0, steps=1,
                          first_order=first_order)
        return mse(out.params, *val)

    g_first = grad(objective)(params, True)
    adapted = {k: v - alpha * g for (k, v), g in
               zip(params.items(), grad(mse)(params, *data).values(), strict=False)}
    expected = grad(mse)(adapted, *val)  # FOMAML: the gradient at the adapted parameters
    for k in params:
        torch.testing.assert_close(g_first[k], expected[k], rtol=1e-12, atol=1e-14)
    g_second = grad(objective)(params, False)
    assert not torch.allclose(g_second["w1"], g_first["w1"])


def test_truncation_keeps_only_the_last_window():
    params, data, val = make_problem()
    tx = fo.sgd(lr=0.05, momentum=0.9)
    lr = torch.tensor(0.05, dtype=DT)
    loss = lambda p: mse(p, *data)  # noqa: E731

    def truncated(lr):
        out = meta.unroll(loss, tx, params, hparams={"lr": lr}, steps=20, truncate=5)
        return mse(out.params, *val)

    def last_window(lr):
        head = meta.unroll(loss, tx, params, hparams={"lr": lr}, steps=15)
        out = meta.unroll(loss, tx, meta.detach(head.params), meta.detach(head.state),
                          hparams={"lr": lr}, steps=5)
        return mse(out.params, *val)

    torch.testing.assert_close(grad(truncated)(lr), grad(last_window)(lr), rtol=1e-12, atol=0)
    assert not torch.allclose(grad(truncated)(lr), grad(lambda lr: mse(meta.unroll(
        loss, tx, params, hparams={"lr": lr}, steps=20).params, *val))(lr))


def graph_bytes(output):
    """Bytes of the tensors the autograd graph of ``output`` keeps alive (saved for backward).

    A CPU stand-in for allocated-memory growth: walks ``grad_fn`` and sums the distinct storages
    of every ``_saved_*`` tensor reachable from it.
    """
    seen, storages, stack = set(), {}, [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attr in dir(node):
            if attr.startswith("_saved_"):
                try:
                    value = getattr(node, attr)
                except RuntimeError:  # freed already
                    continue
                for t in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                        st = t.untyped_storage()
                        storages[st.data_ptr()] = st.nbytes()
        stack.extend(fn for fn, _ in node.next_functions)
    return sum(storages.values()), len(seen)


def _held(steps, truncate):
    params, data, val = make_problem()
    params = {k: v.clone().requires_grad_() for k, v in params.items()}
    lr = torch.tensor(0.05, dtype=DT, requires_grad=True)
    out = meta.unroll(lambda p: mse(p, *data), fo.adam(lr=0.05), params,
                      hparams={"lr": lr}, steps=steps, truncate=truncate)
    objective = mse(out.params, *val) + out.losses.sum()
    held, nodes = graph_bytes(objective)
    objective.backward()
    assert lr.grad is not None and torch.isfinite(lr.grad)
    return held, nodes


def test_truncation_keeps_memory_flat():
    held_20, nodes_20 = _held(20, truncate=5)
    held_80, nodes_80 = _held(80, truncate=5)
    # the graph spans one window however long the unroll: the same size, not 4x
    assert held_80 <= 1.05 * held_20 + 1024, (held_20, held_80)
    assert nodes_80 <= 1.05 * nodes_20 + 16, (nodes_20, nodes_80)
    full_20, _ = _held(20, truncate=None)
    full_80, _ = _held(80, truncate=None)
    assert full_80 > 3 * full_20  # without truncation it grows with the number of steps
    assert held_80 < full_80 / 3


def test_unroll_batches_forms_agree():
    params, data, _ = make_problem()
    tx = fo.sgd(lr=0.1)
    a = meta.unroll(mse, tx, params, batches=[data] * 4)
    b = meta.unroll(mse, tx, params, batches=lambda i: data, steps=4)
    c = meta.unroll(lambda p: mse(p, *data), tx, params, steps=4)
    for r in (b, c):
        torch.testing.assert_close(r.losses, a.losses, rtol=0, atol=0)
    assert a.losses.shape == (4,)
    with pytest.raises(ValueError, match="truncate"):
        meta.unroll(mse, tx, params, batches=[data], truncate=0)
    with pytest.raises(TypeError, match="steps"):
        meta.unroll(mse, tx, params)


# ---------------------------------------------------------------- vmap


def test_train_many_equals_separate_runs_sgd_lr_sweep():
    params, data, _ = make_problem()
    lrs = torch.tensor([0.01, 0.05, 0.1, 0.3], dtype=DT)
    tx = fo.sgd(lr=0.1, momentum=0.9)
    swept = meta.train_many(mse, tx, params, {"lr": lrs}, batches=[data] * 10)
    assert swept.losses.shape == (4, 10)
    for i, lr in enumerate(lrs):
        one = meta.unroll(mse, tx, params, hparams={"lr": lr}, batches=[data] * 10)
        torch.testing.assert_close(swept.losses[i], one.losses, rtol=1e-12, atol=0)
        for k in params:
            torch.testing.assert_close(swept.params[k][i], one.params[k], rtol=1e-12, atol=0)


def test_train_many_several_hparams_and_batched_params():
    params, data, _ = make_problem()
    tx = fo.adamw(lr=0.01)
    hp = {"lr": torch.tensor([0.01, 0.03, 0.1], dtype=DT),
          "betas": (torch.tensor([0.8, 0.9, 0.95], dtype=DT), 0.999), "weight_decay": 0.05}
    inits = meta.stack([make_problem(seed)[0] for seed in range(3)])
    swept = meta.train_many(mse, tx, inits, hp, batches=[data] * 8, params_batched=True)
    for i, p0 in enumerate(meta.unstack(inits)):
        h = {"lr": hp["lr"][i], "betas": (hp["betas"][0][i], 0.999), "weight_decay": 0.05}
        one = meta.unroll(mse, tx, p0, hparams=h, batches=[data] * 8)
        torch.testing.assert_close(swept.losses[i], one.losses, rtol=1e-12, atol=0)
        torch.testing.assert_close(swept.state["adam"].nu["w1"][i], one.state["adam"].nu["w1"],
                                   rtol=1e-12, atol=0)


def test_vmapped_maml_inner_loop_equals_a_loop_over_tasks():
    params, _, _ = make_problem()
    gen = torch.Generator().manual_seed(1)
    tasks = [torch.randn(6, 16, *s, generator=gen, dtype=DT) for s in ((3,), (1,), (3,), (1,))]
    inner = fo.sgd(lr=0.1)

    def task_loss(p, xs, ys, xq, yq):
        return mse(meta.unroll(mse, inner, p, batches=[(xs, ys)] * 3).params, xq, yq)

    def meta_loss(p, *batch):
        return vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(p, *batch).mean()

    g_vmap = grad(meta_loss)(params, *tasks)
    per_task = [grad(task_loss)(params, *(t[i] for t in tasks)) for i in range(6)]
    for k in params:
        torch.testing.assert_close(g_vmap[k], sum(g[k] for g in per_task) / 6,
                                   rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- modules


def test_module_round_trip_with_buffers():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5),
                              torch.nn.Linear(5, 2)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3)
    p = meta.params_of(net, buffers=True)
    assert {"1.running_mean", "1.running_var", "0.weight"} <= set(p)
    assert set(meta.params_of(net)) == {n for n, _ in net.named_parameters()}
    f = meta.functional(net)
    torch.testing.assert_close(f(p, x), net(x))
    # a pure copy: changing the dict never touches the module, until load_into_
    p2 = dict(p, **{"0.bias": p["0.bias"] + 1.0, "1.running_mean": p["1.running_mean"] * 0})
    before = net(x)
    torch.testing.assert_close(net(x), before)
    out = f(p2, x)
    meta.load_into_(net, p2)
    torch.testing.assert_close(net(x), out)
    with pytest.raises(KeyError, match="nope"):
        meta.load_into_(net, {"nope": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        meta.load_into_(net, {"0.bias": torch.zeros(7)})


def test_module_training_with_unroll_and_autograd_params():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    f = meta.functional(net)
    p = meta.params_of(net, requires_grad=True)
    assert all(v.requires_grad for v in p.values())
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    out = meta.unroll(lambda q: ((f(q, x) - y) ** 2).mean(), fo.adam(lr=0.1), p, steps=5)
    assert out.losses[-1] < out.losses[0]
    out.losses[-1].backward()
    assert p["weight"].grad is not None
    assert net.weight.grad is None  # the module itself is untouched


def test_stack_unstack_broadcast():
    trees = [{"a": torch.full((2,), float(i)), "b": None} for i in range(3)]
    s = meta.stack(trees)
    assert s["a"].shape == (3, 2) and s["b"] is None
    back = meta.unstack(s)
    assert len(back) == 3 and torch.equal(back[2]["a"], trees[2]["a"])
    b = meta.broadcast({"a": torch.ones(2)}, 4)
    assert b["a"].shape == (4, 2)
    with pytest.raises(ValueError):
        meta.stack([])
