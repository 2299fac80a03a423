"""A whole training step (forward, grad, update, apply) under ``torch.compile(fullgraph=True)``."""

import re

import pytest
import torch
import torch._dynamo.testing

import functional_optim as fo


def _model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model = model.double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randn(16, 1, dtype=torch.float64)
    return model, params, x, y


@pytest.mark.parametrize("make", [
    lambda: fo.adamw(lr=1e-2, weight_decay=0.1),
    lambda: fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(),
                     fo.add_decayed_weights(0.01),
                     fo.scale_by_learning_rate(
                         fo.schedules.warmup_cosine_decay(0.0, 1e-2, 3, 20))),
    lambda: fo.sgd(lr=1e-2, momentum=0.9, nesterov=True),
], ids=["adamw", "chain", "sgd_nesterov"])
def test_train_step_compiles_without_graph_break(make):
    model, params, x, y = _model_and_data()
    tx = make()

    def loss_fn(p):
        return torch.nn.functional.mse_loss(torch.func.functional_call(model, p, (x,)), y)

    def step(params, state, hparams):
        loss, grads = torch.func.grad_and_value(loss_fn)(params)[::-1]
        updates, state = tx.update(grads, state, params, hparams)
        return fo.apply_updates(params, updates), state, loss

    hparams = {"lr": torch.tensor(1e-2, dtype=torch.float64)} if "lr" in tx.hparams else None
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    torch._dynamo.reset()
    eager_p, eager_s = params, tx.init(params)
    comp_p, comp_s = params, tx.init(params)
    frames = None
    for i in range(4):
        if hparams is not None:
            hparams = {"lr": torch.tensor(1e-2 / (i + 1), dtype=torch.float64)}
        eager_p, eager_s, eager_loss = step(eager_p, eager_s, hparams)
        comp_p, comp_s, comp_loss = compiled(comp_p, comp_s, hparams)
        torch.testing.assert_close(comp_loss, eager_loss, rtol=1e-10, atol=1e-12)
        for k in params:
            torch.testing.assert_close(comp_p[k], eager_p[k], rtol=1e-10, atol=1e-12)
        if i == 1:  # the first call may compile twice (0-d state guards settle after step 1)
            frames = counter.frame_count
    torch._dynamo.reset()
    assert counter.frame_count == frames, "a new learning-rate value recompiled the step"


# -- what inductor generates: each 0-d coefficient computed once per step ------------------------

_SCALAR_MATH = re.compile(r"std::(pow|sqrt|exp|log|cos|sin)\b")


def _loop_bodies(source: str) -> list[str]:
    """The body of every ``for`` loop in inductor's generated C++ (nested loops included)."""
    bodies = []
    for match in re.finditer(r"for\(int64_t", source):
        start = source.index("{", match.end())
        depth = 0
        for end in range(start, len(source)):
            depth += {"{": 1, "}": -1}.get(source[end], 0)
            if depth == 0:
                break
        bodies.append(source[start:end])
    return bodies


def _assert_no_scalar_math_in_loops(code: list[str]) -> None:
    """No ``std::pow``/``sqrt``/... inside the element loops of inductor's generated code."""
    loops = _loop_bodies("\n".join(code))
    if not any("Vectorized" in body for body in loops):
        pytest.skip("inductor did not vectorize on this CPU (scalar loops call std:: per element)")
    inside = [m.group(0) for body in loops for m in _SCALAR_MATH.finditer(body)]
    assert not inside, f"scalar math inside the element loops: {inside}"


@pytest.mark.parametrize("make", [
    lambda: fo.adamw(lr=1e-3, weight_decay=1e-2),
    lambda: fo.radam(),
    lambda: fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(),
                     fo.add_decayed_weights(0.01),
                     fo.scale_by_learning_rate(
                         fo.schedules.warmup_cosine_decay(0.0, 1e-2, 3, 20))),
    lambda: fo.adam_mini(),
    lambda: fo.msam_sgd(lr=1e-2, momentum=0.9),
], ids=["adamw", "radam", "chain_schedule", "adam_mini", "msam_sgd"])
def test_inductor_computes_each_coefficient_once_per_step(make):
    """Compiled with inductor on CPU, the 0-d coefficients of a step (bias corrections
    ``1 - β**t``, RAdam's rectification, a schedule's value, SAM's ``ρ / ‖g‖``: float64
    ``pow``/``sqrt``/``cos``) are computed once per step, outside the loops over the tensors'
    elements. Inlined into the loops they ran once per vector of elements: the compiled AdamW
    step took 3.6x torch's fused kernel on 4 x 4M floats. Blocks that loop over their leaves
    themselves (Adam-mini) and combinators (momentum SAM) too, within an alias or a chain.
    Deterministic: the generated code is read, not timed."""
    from torch._inductor.utils import run_and_get_code

    tx = make()
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(32, 32, generator=gen), "b": torch.randn(1024, generator=gen)}
    grads = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
    state = tx.init(params)
    torch._dynamo.reset()
    step = torch.compile(lambda g, s, p: fo.step(tx, g, s, p, donate=True), fullgraph=True)
    _, code = run_and_get_code(step, grads, state, params)
    torch._dynamo.reset()
    _assert_no_scalar_math_in_loops(code)


def test_inductor_computes_tree_math_bias_correction_once():
    """``tree_math.bias_correction`` (optax's helper, called from a user's own update)
    computes ``1 - β**t`` once per leaf under inductor too, not inside the element loop."""
    from torch._inductor.utils import run_and_get_code

    moments = {"w": torch.randn(32, 32), "b": torch.randn(1024)}
    correct = torch.compile(
        lambda m, t: fo.tree_math.bias_correction(m, 0.999, t), fullgraph=True)
    torch._dynamo.reset()
    out, code = run_and_get_code(correct, moments, torch.tensor(3))
    torch._dynamo.reset()
    for k, m in moments.items():
        torch.testing.assert_close(out[k], m / (1 - 0.999**3))
    _assert_no_scalar_math_in_loops(code)


def test_inductor_inlines_the_coefficients_of_small_tensors():
    """Below ``ONCE_MIN_NUMEL`` elements a leaf's coefficients stay inlined in its loop (a 0-d
    buffer, allocated by inductor every call, costs more than a few vectors' recomputation:
    100 leaves of 16 floats stepped 1.5x slower with them)."""
    from torch._inductor.utils import run_and_get_code

    from functional_optim._rulemath import ONCE_MIN_NUMEL

    tx = fo.adamw()
    params = {"w": torch.randn(ONCE_MIN_NUMEL // 2), "b": torch.randn(16)}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    torch._dynamo.reset()
    step = torch.compile(lambda g, s, p: fo.step(tx, g, s, p, donate=True), fullgraph=True)
    _, code = run_and_get_code(step, grads, tx.init(params), params)
    torch._dynamo.reset()
    assert "empty_strided_cpu((), ()" not in "\n".join(code)


def test_compiled_step_on_large_leaves_matches_eager_without_recompiling():
    """On leaves large enough for ``scalars_once`` to take the coefficients apart, the
    compiled donated step gives the eager step's numbers, and a new learning-rate value does
    not recompile it."""
    tx = fo.adamw(lr=1e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    shapes = {"w": (32, 32), "b": (1024,)}
    params = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    grads = [{k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
             for _ in range(4)]
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda g, s, p, h: fo.step(tx, g, s, p, h, donate=True),
                             backend=counter, fullgraph=True)
    torch._dynamo.reset()
    eager_p = {k: v.clone() for k, v in params.items()}
    comp_p = {k: v.clone() for k, v in params.items()}
    eager_s, comp_s = tx.init(params), tx.init(params)
    frames = None
    for i, g in enumerate(grads):
        h = {"lr": torch.tensor(1e-2 / (i + 1), dtype=torch.float64)}
        eager_p, eager_s = fo.step(tx, g, eager_s, eager_p, h, donate=True)
        comp_p, comp_s = compiled(g, comp_s, comp_p, h)
        for k in shapes:
            torch.testing.assert_close(comp_p[k], eager_p[k], rtol=1e-12, atol=1e-14)
        if i == 1:
            frames = counter.frame_count
    torch._dynamo.reset()
    assert counter.frame_count == frames, "a new learning-rate value recompiled the step"
