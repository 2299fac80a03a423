"""``torch.compile(opt.step)`` mixed with eager steps, for every drop-in class and a generic chain.

The ordinary patterns "warm up eagerly, then compile" and "compile, then step eagerly" (a
validation pass, a debugging session): each optimizer runs compiled and eager steps in turn
(``aot_eager`` backend, ``fullgraph=True`` but for LBFGS), the first one compiled so that the
state is made inside a compiled step, and must end where ``torch.optim``'s eager class ends
(float64, ``1e-10`` relative). torch's fused kernels have no fake implementation on the CPU, so a
compiled step never reaches them, even when dynamo runs the step eagerly; a tree specification
made eagerly (or while tracing) never crosses into the other mode.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import functional_optim as fo
import functional_optim.optim as foo

RTOL = 1e-10
# compiled, eager, compiled, eager: state made compiled, read eagerly, then compiled again
COMPILED = (True, False, True, False)

_GEN = torch.Generator().manual_seed(7)
X = torch.randn(8, 3, generator=_GEN, dtype=torch.float64)
Y = torch.randn(8, 2, generator=_GEN, dtype=torch.float64)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _closure(model: nn.Module, opt: torch.optim.Optimizer, i: int):
    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(X), Y * (1 + 0.1 * i))
        loss.backward()
        return loss
    return closure


KWARGS = {"SGD": dict(lr=0.05, momentum=0.9), "Adam": dict(lr=0.01), "AdamW": dict(lr=0.01),
          "Adagrad": dict(lr=0.05), "Adadelta": {}, "Adamax": {}, "NAdam": {}, "RAdam": {},
          "RMSprop": dict(momentum=0.5), "Rprop": {}, "ASGD": {}, "Adafactor": {},
          "Muon": {}, "LBFGS": dict(lr=0.1, max_iter=3)}


def _weights(model: nn.Module) -> list:
    """Muon takes 2-D parameters only."""
    return [model[0].weight, model[2].weight]


def _pair(name: str):
    """Our optimizer and torch's reference on identical models."""
    m1, m2 = _model(), _model()
    if name.startswith("chain"):  # the generic adapter, on torch's fused kernel by default
        if name == "chain-adam":
            tx = fo.chain(fo.scale_by_adam(), fo.add_decayed_weights(0.1),
                          fo.scale_by_learning_rate(0.01))
            theirs = torch.optim.AdamW(m2.parameters(), lr=0.01, weight_decay=0.1)
        else:
            tx = fo.sgd(0.05, momentum=0.9)
            theirs = torch.optim.SGD(m2.parameters(), lr=0.05, momentum=0.9)
        return m1, foo.FunctionalOptimizer(m1.parameters(), tx), m2, theirs
    select = _weights if name == "Muon" else nn.Module.parameters
    ours = getattr(foo, name)(select(m1), **KWARGS[name])
    return m1, ours, m2, getattr(torch.optim, name)(select(m2), **KWARGS[name])


def _same_params(m1: nn.Module, m2: nn.Module) -> None:
    for (n, a), b in zip(m1.named_parameters(), m2.parameters(), strict=True):
        err = (a - b).abs().max().item()
        assert err <= RTOL * b.abs().max().item(), f"{n}: max|a-b| = {err:.3e}"


def _mix(m1: nn.Module, ours, m2: nn.Module, theirs, *, fullgraph: bool = False,
         closure_step: bool = False) -> None:
    """The steps of :data:`COMPILED` on ours, eager steps on torch's; then the same params."""
    compiled = torch.compile(ours.step, backend="aot_eager", fullgraph=fullgraph)
    torch._dynamo.reset()
    try:
        for i, compile_now in enumerate(COMPILED):
            step = compiled if compile_now else ours.step
            if closure_step:
                step(_closure(m1, ours, i))
                theirs.step(_closure(m2, theirs, i))
                continue
            for m, opt, run in ((m1, ours, step), (m2, theirs, theirs.step)):
                _closure(m, opt, i)()
                run()
    finally:
        torch._dynamo.reset()
    _same_params(m1, m2)


@pytest.mark.parametrize("name", [*KWARGS, "chain-adam", "chain-sgd"])
def test_compiled_and_eager_steps_mix(name):
    m1, ours, m2, theirs = _pair(name)
    _mix(m1, ours, m2, theirs, fullgraph=name != "LBFGS", closure_step=name == "LBFGS")


def test_compiled_step_with_the_flat_layout():
    """``use_flat()`` (its own buffers, torch's fused kernel eagerly) under a compiled step."""
    m1, m2 = _model(), _model()
    _mix(m1, foo.AdamW(m1.parameters(), lr=0.01).use_flat(),
         m2, torch.optim.AdamW(m2.parameters(), lr=0.01))


class _ReadingOptimizer(foo.FunctionalOptimizer):
    """Reads a value where the adapter makes state (as user code may): a graph break that
    dynamo cannot resume, so it runs ``_step_group`` eagerly and compiles each call it makes on
    its own (the plan, torch's fused kernel)."""

    def _fresh_leaf(self, p, path, value, group):
        return value + 0 * float(value.sum())


def test_compiled_step_that_dynamo_runs_eagerly():
    m1, m2 = _model(), _model()
    _mix(m1, _ReadingOptimizer(m1.parameters(), fo.adamw(0.01)),
         m2, torch.optim.AdamW(m2.parameters(), lr=0.01))
