"""A whole training step (forward, grad, update, apply) under ``torch.compile(fullgraph=True)``."""

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
