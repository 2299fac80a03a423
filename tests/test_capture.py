"""``functional_optim.capture``: the in-place step a CUDA graph replays (CPU checks; the graph
itself is exercised in ``test_cuda.py``)."""

import optree
import pytest
import torch
from conformance import CASES, tensor_hparams
from tolerance import UPDATE_OPS, assert_close_ulps, ulp_budget

import functional_optim as fo

CAPTURABLE = [c for c in CASES if c.name in {
    "adamw", "adamw_schedule", "sgd_momentum_wd_nesterov", "chain", "chain_named",
    "multi_steps", "inject_hparams_alias", "adafactor", "muon"}]


def _tensors(tree):
    return [x for x in optree.tree_leaves(tree, none_is_leaf=True) if isinstance(x, torch.Tensor)]


@pytest.mark.parametrize("case", CAPTURABLE, ids=[c.name for c in CAPTURABLE])
def test_inplace_step_equals_pure_updates(case):
    tx = case.make()
    params = case.params_tree(0)
    state = tx.init(params)
    hp, rebuild = tensor_hparams(tx.hparams)
    pure_params, pure_state = optree.tree_map(torch.clone, params), tx.init(params)
    buffers = _tensors(state) + _tensors(params)
    step = fo.capture.inplace_step(tx)
    for i in range(4):
        grads = case.grads_tree(10 + i)
        h = rebuild([x * (1 - 0.05 * i) for x in hp])  # hyperparameters changing between steps
        step(grads, state, params, h)
        updates, pure_state = tx.update(grads, pure_state, pure_params, h)
        pure_params = fo.apply_updates(pure_params, updates)
    # the same buffers hold the results ...
    assert all(a is b for a, b in zip(buffers, _tensors(state) + _tensors(params)))
    # ... and the numbers are the pure update's
    for a, b in zip(_tensors((state, params)), _tensors((pure_state, pure_params))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_capture_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("has CUDA: test_cuda.py covers capture")
    with pytest.raises(RuntimeError, match="CUDA"):
        fo.capture.capture(lambda: None)


# -- train_step: a whole training step (forward, backward, update) on static buffers -----------

def _mlp(seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"w1": (8, 4), "b1": (8,), "w2": (1, 8), "b2": (1,)}
    return {k: torch.randn(s, generator=gen, dtype=torch.float64).to(device)
            for k, s in shapes.items()}


def _loss(params, x, y):
    h = torch.tanh(x @ params["w1"].T + params["b1"])
    return ((h @ params["w2"].T + params["b2"] - y) ** 2).mean()


def _batch(i, device="cpu"):
    gen = torch.Generator().manual_seed(100 + i)
    x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
    return x.to(device), torch.sin(x.sum(1, keepdim=True)).to(device)


def _chain():
    return fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(),
                    fo.add_decayed_weights(0.01),
                    fo.scale_by_learning_rate(fo.schedules.warmup_cosine_decay(0.0, 0.1, 3, 20)))


def _pure_loop(tx, params, hparams_at, steps, loss_fn=_loss):
    """The reference: torch.func.grad, the pure update and apply_updates, step after step."""
    state, losses = tx.init(params), []
    for i in range(steps):
        x, y = _batch(i)
        losses.append(loss_fn(params, x, y))
        grads = torch.func.grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params, hparams_at(i))
        params = fo.apply_updates(params, updates)
    return params, state, losses


@pytest.mark.parametrize("make", [_chain, lambda: fo.adamw(lr=0.05, weight_decay=0.1)],
                         ids=["chain", "adamw_live_lr"])
def test_train_step_equals_the_pure_loop(make):
    tx = make()
    lr = torch.tensor(0.05, dtype=torch.float64)
    hparams = {"lr": lr} if "lr" in tx.hparams else None
    at = (lambda i: {"lr": torch.tensor(0.05 * 0.9 ** i, dtype=torch.float64)}) \
        if hparams else (lambda i: None)
    params = _mlp()
    ref_params, ref_state, ref_losses = _pure_loop(tx, _mlp(), at, 5)
    state = tx.init(params)
    buffers = _tensors((params, state))
    step = fo.capture.train_step(_loss, tx, params, state, *_batch(0), hparams=hparams)
    assert step.graph is None  # CPU: eager
    for i in range(5):
        lr.fill_(0.05 * 0.9 ** i)  # a live hyperparameter, changed in place
        loss = step(*_batch(i))
        torch.testing.assert_close(loss, ref_losses[i])
        assert not loss.requires_grad
    assert all(a is b for a, b in zip(buffers, _tensors((params, state))))
    for a, b in zip(_tensors((params, state)), _tensors((ref_params, ref_state))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_train_step_frozen_and_unused_parameters_and_aux():
    params = {**_mlp(), "frozen": None, "unused": torch.ones(3, dtype=torch.float64)}

    def loss_fn(p, x, y):
        loss = _loss(p, x, y)
        return loss, {"twice": 2 * loss}

    tx = fo.sgd(lr=0.1, momentum=0.9)
    state = tx.init(params)
    step = fo.capture.train_step(loss_fn, tx, params, state, *_batch(0), has_aux=True)
    ref = _mlp()
    ref_params, _, ref_losses = _pure_loop(tx, ref, lambda i: None, 3)
    for i in range(3):
        loss, aux = step(*_batch(i))
        torch.testing.assert_close(aux["twice"], 2 * ref_losses[i])
    assert params["frozen"] is None
    torch.testing.assert_close(params["unused"], torch.ones(3, dtype=torch.float64))
    for k in ref_params:
        torch.testing.assert_close(params[k], ref_params[k], rtol=1e-12, atol=1e-14)


def test_train_step_takes_a_module_through_functional_call():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    reference = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    reference.load_state_dict(model.state_dict())
    params = dict(model.named_parameters())

    def loss_fn(p, x, y):
        return torch.nn.functional.mse_loss(torch.func.functional_call(model, p, (x,)), y)

    tx = fo.adamw(lr=1e-2, weight_decay=0.1)
    x0, y0 = (t.float() for t in _batch(0))
    step = fo.capture.train_step(loss_fn, tx, params, tx.init(params), x0, y0)
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1)
    peak = {k: p.abs().max().item() for k, p in reference.named_parameters()}
    for i in range(4):
        x, y = (t.float() for t in _batch(i))
        step(x, y)
        opt.zero_grad()
        torch.nn.functional.mse_loss(reference(x), y).backward()
        opt.step()
        peak = {k: max(peak[k], p.abs().max().item()) for k, p in reference.named_parameters()}
    # float32: AdamW's ops, 2 ulps each, every step, of each tensor's peak (each side's
    # gradients come from its own parameters, which feeds a difference back, by little in 4
    # steps at lr 0.01)
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert_close_ulps(a, b, ulps=ulp_budget(4, UPDATE_OPS["adamw"]), scale=peak[name],
                          where=name)


def test_train_step_errors_name_what_is_wrong():
    params = _mlp()
    tx = fo.sgd(lr=0.1)
    step = fo.capture.train_step(_loss, tx, params, tx.init(params), *_batch(0))
    x, y = _batch(0)
    with pytest.raises(ValueError, match=r"batch argument 1 .*shape \(16, 1\).*got shape \(3, 1\)"):
        step(x, y[:3])
    with pytest.raises(ValueError, match=r"batch argument 0 .*torch.float64.*got shape "
                                         r"\(16, 4\), torch.float32"):
        step(x.float(), y)
    with pytest.raises(fo.tree.TreeMismatchError, match="example batch"):
        step(x)
    with pytest.raises(ValueError, match="0-d loss tensor; got a tensor of shape"):
        fo.capture.train_step(lambda p, x, y: (x - y).sum(1), tx, params, tx.init(params),
                              x, y)(x, y)
    with pytest.raises(TypeError, match=r"params\[n\] must be a floating-point tensor.*int64"):
        bad = {**params, "n": torch.tensor(3)}
        fo.capture.train_step(_loss, tx, bad, tx.init(bad), x, y)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="graph=True needs a CUDA device.*graph=False"):
            fo.capture.train_step(_loss, tx, params, tx.init(params), x, y, graph=True)


class _ReplayOnCPU:
    """Stands in for a CUDA graph: replay reruns the recorded call on the same tensors and
    writes its outputs into the recorded outputs' tensors, as a replay does."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def replay(self):
        for a, b in zip(_tensors(self.outputs), _tensors(self.fn(*self.args))):
            a.copy_(b)


def test_train_step_graph_branch_uses_static_buffers(monkeypatch):
    """The captured branch of train_step on the CPU, with a stand-in graph: each call copies
    the batch into the static buffers, replays, and returns the same (rewritten) loss tensor;
    building it leaves params and state as they were (capture records without running)."""
    def record(fn, args, warmup, pool):
        graph = _ReplayOnCPU(fn, args)
        graph.outputs = fn(*fo.tree.map(lambda x: x.clone() if torch.is_tensor(x) else x, args))
        return graph, graph.outputs

    monkeypatch.setattr(fo.capture, "_record", record)
    monkeypatch.setattr(fo.capture.torch.cuda, "is_available", lambda: True)
    tx = _chain()
    params = _mlp()
    state = tx.init(params)
    step = fo.capture.train_step(_loss, tx, params, state, *_batch(0), graph=True)
    torch.testing.assert_close(params, _mlp())
    ref_params, ref_state, ref_losses = _pure_loop(tx, _mlp(), lambda i: None, 4)
    first = step(*_batch(0))
    for i in range(1, 4):
        x, y = _batch(i)
        assert step(x, y) is first  # the static output, rewritten
        torch.testing.assert_close(first, ref_losses[i])
    for a, b in zip(_tensors((params, state)), _tensors((ref_params, ref_state))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
