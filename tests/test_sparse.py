"""Sparse gradients (``nn.Embedding(sparse=True)``) where torch.optim takes them: ``SGD``,
``Adagrad``, ``LBFGS`` (and ``SparseAdam``: ``test_algorithms_special.py``), drop-in and
functional.

A group of an embedding (sparse gradients with repeated rows, or coalesced) and a linear layer
(dense gradients), stepped by ours and torch's side by side: the parameters and the state agree
to ``1e-10`` relative in float64 (SGD's momentum buffer is dense here, torch's sparse: compared
densely). Where torch raises, ours raises torch's error before anything changes; checkpoints move
both ways; the flat layout and ``torch.compile`` step sparse gradients as the usual layout does.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import functional_optim as fo
import functional_optim.optim as foo

RTOL = 1e-10
STEPS = 6
ROWS = torch.tensor([[1, 4, 4, 7], [0, 4, 9, 9], [2, 3, 5, 8]])  # repeated rows: uncoalesced


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 3, sparse=True, dtype=torch.float64)
        self.lin = nn.Linear(3, 2, dtype=torch.float64)

    def forward(self, i: int) -> torch.Tensor:
        return self.lin(torch.tanh(self.emb(ROWS[i % len(ROWS)]))).pow(2).sum() * (1 + 0.1 * i)


def _backward(net: _Net, opt: torch.optim.Optimizer, i: int, coalesce: bool) -> None:
    opt.zero_grad()
    net(i).backward()
    if coalesce:
        net.emb.weight.grad = net.emb.weight.grad.coalesce()


def _dense(x):
    return x.to_dense() if isinstance(x, torch.Tensor) and x.is_sparse else x


def _close(a: torch.Tensor, b: torch.Tensor, where: str) -> None:
    a, b = _dense(a), _dense(b)
    assert a.dtype == b.dtype, f"{where}: {a.dtype} != {b.dtype}"
    err = (a - b).abs().max().item()
    assert err <= RTOL * max(b.abs().max().item(), 1e-300), f"{where}: max|a-b| = {err:.3e}"


def _same(n1: _Net, o1, n2: _Net, o2) -> None:
    for (name, a), b in zip(n1.named_parameters(), n2.parameters(), strict=True):
        _close(a, b, name)
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s2:
        assert s1[k].keys() == s2[k].keys(), (k, s1[k].keys(), s2[k].keys())
        for key in s2[k]:
            _close(s1[k][key], s2[k][key], f"state[{k}][{key!r}]")


def _pair(name: str, kwargs: dict):
    n1, n2 = _Net(), _Net()
    k1, k2 = copy.deepcopy(kwargs), copy.deepcopy(kwargs)  # (a tensor lr each)
    return n1, getattr(foo, name)(n1.parameters(), **k1), n2, getattr(torch.optim, name)(
        n2.parameters(), **k2)


def _train(n1, o1, n2, o2, coalesce: bool, steps: range = range(STEPS), step1=None) -> None:
    for i in steps:
        for net, opt, step in ((n1, o1, step1 or o1.step), (n2, o2, o2.step)):
            _backward(net, opt, i, coalesce)
            step()


CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, maximize=True)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.5, maximize=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, foreach=True)),
    ("SGD", dict(lr=0.1, momentum=0.9, foreach=False)),
    ("SGD", dict(lr=torch.tensor(0.1, dtype=torch.float64), momentum=0.5)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.2, eps=1e-6)),
    ("Adagrad", dict(lr=0.1, maximize=True)),
    ("Adagrad", dict(lr=0.1, foreach=True)),
    ("Adagrad", dict(lr=0.1, foreach=False)),
    ("Adagrad", dict(lr=torch.tensor(0.1, dtype=torch.float64))),
]


def _id(case) -> str:
    name, kwargs = case
    return "-".join([name] + [f"{k}={float(v) if torch.is_tensor(v) else v}"
                              for k, v in kwargs.items()])


@pytest.mark.parametrize("coalesce", [False, True], ids=["uncoalesced", "coalesced"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_sparse_gradients_as_torch(case, coalesce):
    n1, o1, n2, o2 = _pair(*case)
    _train(n1, o1, n2, o2, coalesce)
    _same(n1, o1, n2, o2)
    if case[0] == "Adagrad":  # only the rows the gradients had changed
        untouched = [r for r in range(10) if r not in ROWS]
        torch.testing.assert_close(n1.emb.weight[untouched], _Net().emb.weight[untouched],
                                   rtol=0, atol=0)


REFUSED = [("SGD", dict(lr=0.1, weight_decay=0.01)), ("SGD", dict(lr=0.1, fused=True)),
           ("Adagrad", dict(weight_decay=0.01)), ("Adagrad", dict(fused=True))] + [
    (name, {}) for name in ("Adam", "AdamW", "Adadelta", "Adamax", "NAdam", "RAdam", "RMSprop",
                            "Rprop", "ASGD", "Adafactor", "Muon")]


@pytest.mark.parametrize("case", REFUSED, ids=_id)
def test_refused_with_torchs_error_before_anything_changes(case):
    name, kwargs = case
    messages = []
    for lib in (torch.optim, foo):
        net = _Net()
        opt = getattr(lib, name)([net.emb.weight], **kwargs)
        _backward(net, opt, 0, coalesce=False)
        before = (net.emb.weight.detach().clone(), copy.deepcopy(opt.state_dict()))
        with pytest.raises(RuntimeError) as info:
            opt.step()
        messages.append(str(info.value))
    ours, theirs = messages[1], messages[0]
    # (SGD's weight decay: torch's message is an internal one; ours says what it means)
    assert ours == theirs or ours.endswith(f"(torch.optim.SGD: {theirs})"), (ours, theirs)
    assert torch.equal(net.emb.weight, before[0])
    assert str(opt.state_dict()) == str(before[1])


def test_generic_adapter_names_the_block_that_refuses():
    net = _Net()
    opt = foo.FunctionalOptimizer(net.parameters(), fo.adam(lr=0.1))
    _backward(net, opt, 0, coalesce=False)
    weight = net.emb.weight.detach().clone()
    with pytest.raises(TypeError, match=r"does not support sparse updates \(leaf '0'\)"):
        opt.step()
    assert torch.equal(net.emb.weight, weight) and not any(opt.state.values())


@pytest.mark.parametrize("first, second", [("torch", "ours"), ("ours", "torch")])
def test_sgd_momentum_checkpoint_moves_both_ways(first, second):
    """torch's sparse momentum buffer loads into ours (made dense), ours into torch; both
    continue on torch's trajectory."""
    libs = {"torch": torch.optim, "ours": foo}
    kwargs = dict(lr=0.1, momentum=0.9)
    ref, ref_opt = _Net(), torch.optim.SGD(_Net().parameters(), **kwargs)
    ref_opt = torch.optim.SGD(ref.parameters(), **kwargs)
    net = _Net()
    opt = libs[first].SGD(net.parameters(), **kwargs)
    _train(net, opt, ref, ref_opt, coalesce=False, steps=range(3))
    resumed = libs[second].SGD(net.parameters(), **kwargs)
    resumed.load_state_dict(opt.state_dict())
    if second == "ours":
        assert not resumed.state[net.emb.weight]["momentum_buffer"].is_sparse
    _train(net, resumed, ref, ref_opt, coalesce=False, steps=range(3, STEPS))
    for a, b in zip(net.parameters(), ref.parameters(), strict=True):
        _close(a, b, "parameter")


@pytest.mark.parametrize("name, kwargs", [("SGD", dict(lr=0.1, momentum=0.9)),
                                          ("Adagrad", dict(lr=0.1))])
def test_flat_layout_steps_sparse_gradients_in_the_usual_one(name, kwargs):
    n1, o1, n2, o2 = _pair(name, kwargs)
    o1.use_flat()
    _train(n1, o1, n2, o2, coalesce=False)
    _same(n1, o1, n2, o2)


@pytest.mark.parametrize("name, kwargs", [("SGD", dict(lr=0.1, momentum=0.9)),
                                          ("Adagrad", dict(lr=0.1)),
                                          ("SparseAdam", dict(lr=0.01))])
def test_compiled_step_with_sparse_gradients(name, kwargs):
    """dynamo cannot trace sparse tensors: the compiled step runs eagerly, as a whole."""
    n1, n2 = _Net(), _Net()
    o1, o2 = getattr(foo, name)([n1.emb.weight], **kwargs), getattr(torch.optim, name)(
        [n2.emb.weight], **kwargs)
    compiled = torch.compile(o1.step, backend="aot_eager")
    torch._dynamo.reset()
    try:
        _train(n1, o1, n2, o2, coalesce=False, step1=compiled)
    finally:
        torch._dynamo.reset()
    _close(n1.emb.weight, n2.emb.weight, "embedding")


def test_functional_adagrad_complex_sparse_as_torch():
    """torch's sparse Adagrad squares complex entries as complex numbers (its dense path views
    them as pairs of reals): the sparse path of ``scale_by_rss`` does the same."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(6, 2, dtype=torch.complex128, generator=gen)
    tx = fo.adagrad(0.1, initial_accumulator_value=0.1)
    params, state = {"w": w.clone()}, tx.init({"w": w})
    ref = nn.Parameter(w.clone())
    opt = torch.optim.Adagrad([ref], lr=0.1, initial_accumulator_value=0.1)
    for i in range(4):
        values = torch.randn(3, 2, dtype=torch.complex128, generator=gen)
        g = torch.sparse_coo_tensor(ROWS[i % len(ROWS), :3][None] % 6, values, (6, 2))
        updates, state = tx.update({"w": g}, state, params)
        params = fo.apply_updates(params, updates)
        ref.grad = g
        opt.step()
    _close(params["w"], ref.detach(), "parameter")
    _close(state["rss"].sum["w"], opt.state[ref]["sum"], "sum")


def test_lbfgs_takes_sparse_gradients_as_torch():
    """torch's LBFGS makes them dense; so does ours."""
    n1, n2 = _Net(), _Net()
    o1 = foo.LBFGS(n1.parameters(), lr=0.5, max_iter=4)
    o2 = torch.optim.LBFGS(n2.parameters(), lr=0.5, max_iter=4)
    for i in range(3):
        for net, opt in ((n1, o1), (n2, o2)):
            def closure(net=net, opt=opt, i=i):
                opt.zero_grad()
                loss = net(i)
                loss.backward()
                return loss
            opt.step(closure)
    for a, b in zip(n1.parameters(), n2.parameters(), strict=True):
        _close(a, b, "parameter")
