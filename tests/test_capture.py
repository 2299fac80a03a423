"""``functional_optim.capture``: the in-place step a CUDA graph replays (CPU checks; the graph
itself is exercised in ``test_cuda.py``)."""

import optree
import pytest
import torch
from conformance import CASES, tensor_hparams

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
