"""CUDA-graph capture of optimizer steps with static buffers.

A captured graph replays fixed kernels on fixed memory, so the step it records must read its inputs
from, and write its results to, the same tensors every time. :func:`inplace_step` turns a pure
``update`` into such a step (new state copied into the state buffers, updates added to the
parameters in place); :func:`capture` records any such function in a ``torch.cuda.CUDAGraph``.
Hyperparameters stay live between replays when they are 0-d tensors on the device changed in
place (``lr.fill_(...)``); a schedule's step count lives in the state, so schedules advance too.

Typical use::

    step = fo.capture.inplace_step(tx)
    graph = fo.capture.capture(step, grads, state, params, hparams)   # static buffers
    for batch in loader:
        compute_grads_into(grads, batch)     # e.g. loss.backward() with .grad as the buffers
        hparams["lr"].fill_(new_lr)          # optional: live hyperparameters
        graph.replay()

The whole training step (forward, backward and update) can be captured the same way, following
PyTorch's whole-network capture recipe, with the update done by ``inplace_step``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import tree as _tree
from .base import Transform, apply_updates_

__all__ = ["inplace_step", "capture"]


def inplace_step(tx: Transform) -> Callable[..., None]:
    """``step(grads, state, params, hparams=None)``: one ``tx.update`` written back in place.

    The new state is copied into ``state``'s tensors and the updates are added to ``params``
    (``apply_updates_``), so the same buffers serve every call, as a CUDA graph needs. The
    numbers are those of the pure ``update``.
    """

    def step(grads: Any, state: Any, params: Any, hparams: Any = None) -> None:
        updates, new_state = tx.update(grads, state, params, hparams)
        old, new = _tree.leaves(state), _tree.leaves(new_state)
        if len(old) != len(new):
            raise _tree.TreeMismatchError(
                "inplace_step: the transform returned a state of another structure; only "
                "transforms whose state keeps its structure can run on static buffers"
            )
        with torch.no_grad():
            for buffer, value in zip(old, new):
                if isinstance(buffer, torch.Tensor) and buffer is not value:
                    buffer.copy_(value)
        apply_updates_(params, updates)

    return step


def capture(fn: Callable[..., Any], *args: Any, warmup: int = 3,
            pool: Any = None) -> torch.cuda.CUDAGraph:
    """Record ``fn(*args)`` in a ``torch.cuda.CUDAGraph`` and return the graph.

    ``fn`` must change only tensors it was given, in place (see :func:`inplace_step`). It first
    runs ``warmup`` times on a side stream, on clones of the tensor arguments (lazy
    initialisation must not happen during capture, and ``args`` are left as they are); capturing
    records kernels without running them. Replay with ``graph.replay()``.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("capture: CUDA graphs need a CUDA device")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn(*_tree.map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, args))
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        fn(*args)
    return graph
