"""CUDA-graph capture of ``update`` (``pytest -m cuda``; skipped without a GPU).

DESIGN.md §2.5: capture one update in a ``torch.cuda.CUDAGraph``, replay it N times, equal to N
eager steps, with hyperparameters changed in place (``fill_``) between replays honoured, and no
implicit host-device sync.
"""

import optree
import pytest
import torch
from conformance import CASES, tensor_hparams

import functional_optim as fo

pytestmark = pytest.mark.cuda

# Cases documented as not capturable (Case.excluded: LBFGS's host-side decisions, sparse COO)
# are left out here for the same reason.
CAPTURABLE = [c for c in CASES if not c.exclusion("test_capturable_fake_cuda_trace")]
CAPTURED = [c for c in CAPTURABLE if c.name in {
    "scale_by_adam_amsgrad_eps_root", "scale_by_rms_centered", "trace_nesterov",
    "clip_by_global_norm", "sgd_momentum_wd_nesterov", "adam_amsgrad_wd_maximize", "adamw",
    "adamw_schedule", "chain", "chain_named", "adafactor", "muon", "nadam", "radam",
    "multi_steps", "apply_if_finite", "lookahead", "inject_hparams_alias"}]


def _leaves(tree):
    return [x for x in optree.tree_leaves(tree, none_is_leaf=True) if isinstance(x, torch.Tensor)]


@pytest.mark.parametrize("case", CAPTURED, ids=[c.name for c in CAPTURED])
def test_capture_replay_equals_eager(case):
    device = "cuda"
    tx = case.make()
    params = case.params_tree(0, device=device)
    hp, rebuild = tensor_hparams(tx.hparams, device=device)
    state = tx.init(params)
    grads = case.grads_tree(1, device=device)

    eager_params = optree.tree_map(torch.clone, params)
    eager_state = optree.tree_map(torch.clone, state, none_is_leaf=True)
    eager_hp = [h.clone() for h in hp]

    step = fo.capture.inplace_step(tx)
    graph = fo.capture.capture(step, grads, state, params, rebuild(hp))

    for i in range(6):
        factor = 1.0 - 0.05 * i  # hyperparameters change between replays
        for h, e in zip(hp, eager_hp):
            h.fill_(e.item() * factor if i else e.item())
        new_grads = case.grads_tree(10 + i, device=device)
        for g, n in zip(_leaves(grads), _leaves(new_grads)):
            g.copy_(n)
        graph.replay()
        step(new_grads, eager_state, eager_params, rebuild([h.clone() for h in hp]))
    torch.cuda.synchronize()
    for a, b in zip(_leaves(params), _leaves(eager_params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(_leaves(state), _leaves(eager_state)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CAPTURABLE, ids=[c.name for c in CAPTURABLE])
def test_update_does_not_sync(case):
    tx = case.make()
    params = case.params_tree(0, device="cuda")
    grads = case.grads_tree(1, device="cuda")
    hp, rebuild = tensor_hparams(tx.hparams, device="cuda")
    state = tx.init(params)
    tx.update(grads, state, params, rebuild(hp))  # first call: lazy CUDA init may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        updates, state = tx.update(grads, state, params, rebuild(hp))
        fo.apply_updates(params, updates)
    finally:
        torch.cuda.set_sync_debug_mode("default")
