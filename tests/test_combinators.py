"""Combinators and reduce-on-plateau against references written out here, optax's documented
behaviour, torch.optim.lr_scheduler.ReduceLROnPlateau and torch.optim.swa_utils.AveragedModel."""

from __future__ import annotations

import random

import pytest
import torch

import functional_optim as fo
from functional_optim import schedules as sch

D = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def params_tree():
    return {"embed.weight": rand(5, 3, seed=1), "layer.weight": rand(3, 3, seed=2),
            "layer.bias": rand(3, seed=3), "norm.LayerNorm.weight": rand(3, seed=4)}


def grads_tree(step):
    return {k: rand(*v.shape, seed=100 + 7 * step + i)
            for i, (k, v) in enumerate(params_tree().items())}


def run(tx, steps=5, params=None, **kw):
    params = params_tree() if params is None else params
    state = tx.init(params)
    outs = []
    for t in range(steps):
        u, state = tx.update(grads_tree(t), state, params, **kw)
        outs.append(u)
        params = fo.apply_updates(params, u)
    return params, state, outs


def close(a, b, rtol=1e-12, atol=1e-14):
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------


def test_masked_applies_inner_only_where_masked_and_keeps_no_state_elsewhere():
    mask = lambda p: {k: v.ndim == 2 for k, v in p.items()}  # noqa: E731
    _, state, outs = run(fo.masked(fo.scale_by_adam(), mask), steps=3)
    _, _, ref = run(fo.scale_by_adam(), steps=3)
    for t in range(3):
        for k in outs[t]:
            expected = ref[t][k] if params_tree()[k].ndim == 2 else grads_tree(t)[k]
            torch.testing.assert_close(outs[t][k], expected, rtol=1e-12, atol=0)
    assert isinstance(state.mu["layer.bias"], fo.combinators.MaskedNode)
    # a tree of bools works the same
    tree_mask = {k: v.ndim == 2 for k, v in params_tree().items()}
    _, _, outs2 = run(fo.masked(fo.scale_by_adam(), tree_mask), steps=3)
    close(outs2[-1], outs[-1])


def test_partition_allennlp_recipe():
    # no weight decay on biases and LayerNorm, frozen embeddings, another lr for the rest
    groups = [([r"bias", r"LayerNorm\.weight"], {"weight_decay": 0.0}),
              ([r"^embed"], {"requires_grad": False})]
    tx = fo.parameter_groups(fo.adamw, groups, lr=1e-2, weight_decay=0.1)
    params, state, outs = run(tx, steps=4)
    no_decay = fo.adamw(lr=1e-2, weight_decay=0.0)
    decay = fo.adamw(lr=1e-2, weight_decay=0.1)
    for name, ref_tx in [("layer.bias", no_decay), ("norm.LayerNorm.weight", no_decay),
                         ("layer.weight", decay)]:
        p = {name: params_tree()[name]}
        s = ref_tx.init(p)
        for t in range(4):
            u, s = ref_tx.update({name: grads_tree(t)[name]}, s, p)
            p = fo.apply_updates(p, u)
        torch.testing.assert_close(params[name], p[name], rtol=1e-12, atol=1e-14)
    assert torch.equal(params["embed.weight"], params_tree()["embed.weight"])  # frozen
    assert state["group_1"] == fo.EmptyState()  # no state for frozen parameters
    assert fo.label_params(params_tree(), [(r"bias", "a"), (r"weight", "b")]) == {
        "embed.weight": "b", "layer.weight": "b", "layer.bias": "a",
        "norm.LayerNorm.weight": "b"}


def test_partition_first_match_wins_and_default_group():
    rules = [(r"layer", "first"), (r"bias", "second")]
    labels = fo.label_params(params_tree(), rules + [(r"norm", "second")])
    assert labels["layer.bias"] == "first" and labels["embed.weight"] == "default"


def test_partition_unused_regex_is_an_error_naming_it():
    tx = fo.partition({"a": fo.sgd(lr=0.1), "default": fo.sgd(lr=0.2)},
                      [(r"bias", "a"), (r"^decoder\.", "a")])
    with pytest.raises(ValueError, match=r"\^decoder"):
        tx.init(params_tree())


def test_partition_unmatched_without_default_and_unknown_label():
    with pytest.raises(ValueError, match="embed.weight"):
        fo.partition({"a": fo.sgd(lr=0.1)}, [(r"layer|norm", "a")]).init(params_tree())
    with pytest.raises(ValueError, match="'c'"):
        fo.partition({"a": fo.sgd(lr=0.1)}, lambda p: {k: "c" for k in p}).init(params_tree())


def test_partition_per_group_hparams_and_nested_names():
    params = {"enc": {"layers": [rand(2, 2, seed=1), rand(2, seed=2)]}, "head": rand(2, seed=3)}
    tx = fo.partition({"slow": fo.sgd(lr=0.1), "fast": fo.sgd(lr=1.0)},
                      [(r"^enc\.layers\.\d+$", "slow"), (r"^head", "fast")])
    state = tx.init(params)
    g = fo.tree.map(torch.ones_like, params)
    u, _ = tx.update(g, state, params, hparams={"fast": {"lr": 2.0}})
    assert torch.equal(u["head"], -2.0 * torch.ones(2, dtype=D))
    assert torch.equal(u["enc"]["layers"][1], -0.1 * torch.ones(2, dtype=D))


# --------------------------------------------------------------------------------------------


def test_inject_hparams_schedule_equals_scheduled_alias_and_reads_back():
    s = sch.warmup_cosine_decay(0.0, 0.1, 2, 10)
    tx = fo.inject_hparams(fo.adamw(lr=0.1, weight_decay=0.1), {"lr": s})
    params, state, _ = run(tx, steps=6)
    ref, _, _ = run(fo.adamw(lr=s, weight_decay=0.1), steps=6)
    close(params, ref)
    assert fo.get_hparam(state, "lr").item() == pytest.approx(s(5).item(), rel=1e-15)
    assert tx.hparams["lr"] == s.hparams  # the schedule's own hparams are the values


def test_inject_hparams_named_chain_paths_and_state_functions():
    chain = fo.chain(adam=fo.scale_by_adam(), lr=fo.scale_by_learning_rate(0.1))
    beta1 = sch.linear(0.5, 0.9, 4)
    tx = fo.inject_hparams(chain, {"adam.betas.0": beta1},
                           from_state={"lr.lr": lambda st, t: 0.1 / (1.0 + t.to(D))})
    params = params_tree()
    state = tx.init(params)
    adam_state = fo.scale_by_adam().init(params)
    for t in range(5):
        g = grads_tree(t)
        u, state = tx.update(g, state, params)
        ru, adam_state = fo.scale_by_adam().update(g, adam_state, hparams={
            "betas": (beta1(t), 0.999)})
        close(u, {k: -0.1 / (1 + t) * v for k, v in ru.items()})
    top = fo.chain(clip=fo.identity(), opt=tx)
    st = top.init(params)
    _, st = top.update(grads_tree(0), st, params)
    assert fo.get_hparam(st, "opt.adam.betas.0").item() == 0.5
    assert fo.get_hparam(st, "lr.lr").item() == pytest.approx(0.1)
    with pytest.raises(fo.HParamError, match="betas"):
        fo.inject_hparams(chain, {"adam.beta1": beta1})
    with pytest.raises(KeyError, match="nothing"):
        fo.get_hparam(st, "nothing")


def test_inject_hparams_schedule_hparam_meta_gradient():
    s = sch.exponential_decay(0.1, 2, 0.5)
    tx = fo.inject_hparams(fo.sgd(lr=0.1), {"lr": s})
    g = {"w": torch.ones(2, dtype=D)}
    state = tx.init(g)
    init = torch.tensor(0.1, dtype=D, requires_grad=True)
    total = 0
    for _ in range(3):
        u, state = tx.update(g, state, g, hparams={"lr": {"init_value": init}})
        total = total + u["w"].sum()
    (grad,) = torch.autograd.grad(total, init)
    assert grad.item() == pytest.approx(-2 * (1 + 0.5**0.5 + 0.5), rel=1e-12)


# --------------------------------------------------------------------------------------------


def test_multi_steps_equals_big_batch_and_emits_zeros_between():
    k = 3
    tx = fo.multi_steps(fo.adam(lr=0.01), k)
    params = params_tree()
    state = tx.init(params)
    ref_tx = fo.adam(lr=0.01)
    ref_params, ref_state = params_tree(), ref_tx.init(params_tree())
    for big in range(3):
        micro = [grads_tree(big * k + j) for j in range(k)]
        for j, g in enumerate(micro):
            u, state = tx.update(g, state, params)
            if j < k - 1:
                assert all(torch.equal(v, torch.zeros_like(v)) for v in u.values())
            params = fo.apply_updates(params, u)
        mean = {n: sum(m[n] for m in micro) / k for n in micro[0]}
        ru, ref_state = ref_tx.update(mean, ref_state, ref_params)
        ref_params = fo.apply_updates(ref_params, ru)
        close(params, ref_params)
    assert state.mini_step.item() == 0


def test_multi_steps_accumulator_dtype():
    tx = fo.multi_steps(fo.sgd(lr=1.0), 2, accumulator_dtype=torch.float32)
    p = {"w": torch.zeros(4, dtype=torch.bfloat16)}
    state = tx.init(p)
    assert state.acc["w"].dtype == torch.float32
    g = {"w": torch.full((4,), 1.0 + 2**-9, dtype=torch.float32).to(torch.bfloat16)}
    _, state = tx.update(g, state, p)
    u, state = tx.update(g, state, p)
    assert u["w"].dtype == torch.bfloat16


def test_apply_if_finite_skips_counts_and_gives_up():
    tx = fo.apply_if_finite(fo.adam(lr=0.1), max_consecutive_errors=2)
    p = {"w": torch.ones(2, dtype=D)}
    state = tx.init(p)
    good = {"w": torch.tensor([1.0, -1.0], dtype=D)}
    bad = {"w": torch.tensor([float("nan"), 1.0], dtype=D)}
    u, state = tx.update(good, state, p)
    inner_after_good = state.inner_state
    for i in range(2):
        u, state = tx.update(bad, state, p)
        assert torch.equal(u["w"], torch.zeros(2, dtype=D))
        assert state.notfinite_count.item() == i + 1 and not state.last_finite.item()
        assert all(torch.equal(a, b) for a, b in zip(fo.tree.leaves(state.inner_state),
                                                     fo.tree.leaves(inner_after_good)))
    u, state = tx.update(bad, state, p)  # the third in a row: applied (optax's behaviour)
    assert torch.isnan(u["w"]).any()
    assert state.total_notfinite.item() == 3
    _, state = tx.update(good, state, p)
    assert state.notfinite_count.item() == 0 and state.total_notfinite.item() == 3


def test_zero_nans_and_centralize():
    tx = fo.zero_nans()
    g = {"a": torch.tensor([1.0, float("nan")], dtype=D), "b": torch.ones(2, dtype=D)}
    u, state = tx.update(g, tx.init(g))
    assert torch.equal(u["a"], torch.tensor([1.0, 0.0], dtype=D))
    assert state.found_nan["a"].item() and not state.found_nan["b"].item()
    c = fo.centralize()
    g = {"w": rand(3, 4, 2), "b": rand(3)}
    u, _ = c.update(g, c.init(g))
    torch.testing.assert_close(u["w"], g["w"] - g["w"].mean(dim=(1, 2), keepdim=True))
    assert torch.equal(u["b"], g["b"])


def test_lookahead_matches_written_out_reference():
    k, alpha, lr = 3, 0.4, 0.1
    tx = fo.lookahead(fo.sgd(lr=lr, momentum=0.9), sync_period=k, alpha=alpha)
    params, _, _ = run(tx, steps=8)
    # reference: fast weights by SGD-momentum, every k steps slow += alpha (fast - slow),
    # fast = slow (Zhang et al., 2019, Algorithm 1)
    fast = params_tree()
    slow = {n: v.clone() for n, v in fast.items()}
    buf = {}
    for t in range(8):
        g = grads_tree(t)
        for n in fast:
            buf[n] = g[n].clone() if t == 0 else 0.9 * buf[n] + g[n]
            fast[n] = fast[n] - lr * buf[n]
        if (t + 1) % k == 0:
            for n in fast:
                slow[n] = slow[n] + alpha * (fast[n] - slow[n])
                fast[n] = slow[n].clone()
    close(params, fast)


def test_ema_debiased_reference():
    tx = fo.ema(0.8)
    _, _, outs = run(tx, steps=4)
    m = {n: torch.zeros_like(v) for n, v in params_tree().items()}
    for t in range(4):
        for n in m:
            m[n] = 0.8 * m[n] + 0.2 * grads_tree(t)[n]
        close(outs[t], {n: v / (1 - 0.8 ** (t + 1)) for n, v in m.items()})


@pytest.mark.parametrize("decay", [None, 0.9])
def test_average_params_matches_averaged_model(decay):
    model = torch.nn.Linear(3, 2).double()
    avg_fn = None if decay is None else torch.optim.swa_utils.get_ema_multi_avg_fn(decay)
    averaged = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=avg_fn)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    tx = fo.chain(fo.sgd(lr=0.1), fo.average_params(decay))
    state = tx.init(params)
    for t in range(6):
        x = rand(4, 3, seed=t)
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        averaged.update_parameters(model)
        u, state = tx.update(grads, state, params)
        params = fo.apply_updates(params, u)
    for n, p in averaged.module.named_parameters():
        torch.testing.assert_close(state[1].average[n], p.detach(), rtol=1e-12, atol=1e-14)


def test_conditionally_every_k_and_predicate():
    tx = fo.conditionally(fo.trace(0.5), every_k=2)
    g = {"w": torch.ones(1, dtype=D)}
    state = tx.init(g)
    got = []
    for _ in range(5):
        u, state = tx.update(g, state)
        got.append(u["w"].item())
    assert got == [1.0, 0.0, 1.5, 0.0, 1.75]
    tx = fo.conditionally(fo.scale(2.0), predicate=lambda t: t >= 3)
    state = tx.init(g)
    got = []
    for _ in range(5):
        u, state = tx.update(g, state)
        got.append(u["w"].item())
    assert got == [0.0, 0.0, 0.0, 2.0, 2.0]


def test_freeze():
    g = grads_tree(0)
    u, _ = fo.freeze().update(g, fo.freeze().init(g))
    assert all(torch.equal(v, torch.zeros_like(v)) for v in u.values())
    tx = fo.freeze(lambda p: {k: k.startswith("embed") for k in p})
    u, _ = tx.update(g, tx.init(g))
    assert torch.equal(u["embed.weight"], torch.zeros(5, 3, dtype=D))
    assert torch.equal(u["layer.bias"], g["layer.bias"])


def test_flatten_equals_per_leaf_and_mixes_dtypes():
    inner = fo.chain(fo.clip_by_global_norm(1.0), fo.adamw(lr=0.01, weight_decay=0.1))
    p1, s1, _ = run(fo.flatten(inner), steps=4)
    p2, _, _ = run(inner, steps=4)
    close(p1, p2)
    assert set(s1[1][0].mu) == {"float64@cpu"} if isinstance(s1[1], tuple) else True
    mixed = {"a": torch.ones(3), "b": torch.ones(2, dtype=D), "c": torch.ones(4)}
    tx = fo.flatten(fo.adam(lr=0.1))
    state = tx.init(mixed)
    u, state = tx.update(fo.tree.map(torch.ones_like, mixed), state, mixed)
    assert u["a"].dtype == torch.float32 and u["b"].dtype == D and u["c"].shape == (4,)


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [
    dict(),
    dict(mode="max", threshold_mode="abs", threshold=0.05, cooldown=3, patience=2,
         min_lr=0.002, factor=0.5),
    dict(patience=0, cooldown=1, factor=0.3, min_lr=1e-3, eps=1e-3),
    dict(mode="min", threshold_mode="abs", threshold=0.01, patience=3),
    dict(mode="max", threshold=0.001, patience=4, cooldown=2),
])
def test_reduce_on_plateau_matches_torch(kw):
    rng = random.Random(0)
    p = torch.nn.Parameter(torch.zeros(1, dtype=D))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)
    tx = fo.reduce_on_plateau(lr=0.1, **kw)
    state = tx.init({"w": p.detach()})
    g = {"w": torch.ones(1, dtype=D)}
    lrs = set()
    for i in range(300):
        v = 1.0 / (1 + i) ** 0.3 + 0.05 * rng.random()
        sched.step(v)
        u, state = tx.update(g, state, value=torch.tensor(v))
        expected = opt.param_groups[0]["lr"]
        assert u["w"].item() == pytest.approx(expected, rel=1e-12), i
        lrs.add(expected)
    assert len(lrs) > 1  # the schedule did reduce


def test_reduce_on_plateau_without_value_makes_no_measurement_and_compiles():
    tx = fo.reduce_on_plateau(lr=1.0, patience=0, factor=0.5)
    g = {"w": torch.ones(1, dtype=D)}
    state = tx.init(g)
    for v in (1.0, 2.0, 3.0):
        _, state = tx.update(g, state, value=v)
    assert state.scale.item() == 0.25
    _, state2 = tx.update(g, state)
    assert state2 is state or all(torch.equal(a, b) for a, b in zip(state2, state))
    compiled = torch.compile(lambda g, s, v: tx.update(g, s, value=v), fullgraph=True,
                             backend="aot_eager")
    u, s = compiled(g, state, torch.tensor(5.0, dtype=D))
    assert s.scale.item() == 0.125 and u["w"].item() == 0.125
