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

:func:`train_step` captures a whole training step (forward, backward and update) of a loss
written as a function of the parameters::

    step = fo.capture.train_step(loss_fn, tx, params, state, x0, y0)   # an example batch
    for x, y in loader:
        loss = step(x, y)    # the batch copied into static buffers, one replay
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optree
import torch

from . import tree as _tree
from .base import Transform, apply_updates_

__all__ = ["inplace_step", "capture", "train_step", "TrainStep"]


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
    return _record(fn, args, warmup, pool)[0]


def _clones(tree: Any) -> Any:
    return _tree.map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, tree)


def _record(fn: Callable[..., Any], args: tuple, warmup: int, pool: Any) -> tuple:
    """``(graph, outputs)``: :func:`capture`, also returning what the captured call returned
    (tensors in the graph's memory, rewritten by every replay)."""
    if not torch.cuda.is_available():
        raise RuntimeError("capture: CUDA graphs need a CUDA device")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn(*_clones(args))
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        outputs = fn(*args)
    return graph, outputs


def _check_params(params: Any) -> None:
    _tree.check_params(params, "train_step: params")
    for name, p in _tree.named_leaves(params):
        if p is not None and not p.is_floating_point():
            raise TypeError(f"train_step: params[{name}] must be a floating-point tensor (or "
                            f"None for a frozen one); got a {p.dtype} tensor")


def _whole_step(loss_fn: Callable[..., Any], tx: Transform, has_aux: bool) -> Callable:
    """``run(params, state, hparams, *batch)``: loss, gradients and an in-place update."""
    update = inplace_step(tx)

    def run(params: Any, state: Any, hparams: Any, *batch: Any) -> Any:
        spec = _tree.structure(params)
        with torch.enable_grad():
            alias = [None if p is None else p.detach().requires_grad_()
                     for p in _tree.leaves(params)]
            out = loss_fn(optree.tree_unflatten(spec, alias), *batch)
            loss = out[0] if has_aux else out
            if not (isinstance(loss, torch.Tensor) and loss.ndim == 0):
                got = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
                       else type(loss).__name__)
                raise ValueError(f"train_step: loss_fn must return a 0-d loss tensor"
                                 f"{' first (has_aux=True)' if has_aux else ''}; got {got}")
            wanted = [a for a in alias if a is not None]
            found = iter(torch.autograd.grad(loss, wanted, allow_unused=True))
            grads = optree.tree_unflatten(spec, [None if a is None else next(found)
                                                 for a in alias])
        update(grads, state, params, hparams)
        return _tree.map(lambda x: x.detach() if isinstance(x, torch.Tensor) else x, out)

    return run


def _describe_leaf(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)}, {x.dtype}, on {x.device}"
    return f"{type(x).__name__} {x!r}"


def _matches(new: Any, old: Any) -> bool:
    if isinstance(old, torch.Tensor):
        return isinstance(new, torch.Tensor) and (new.shape, new.dtype, new.device) == (
            old.shape, old.dtype, old.device)
    return not isinstance(new, torch.Tensor) and new == old


class TrainStep:
    """``outputs = step(*batch)``: a whole training step on static buffers (:func:`train_step`).

    ``graph`` is the ``torch.cuda.CUDAGraph`` that replays it, or ``None`` when it runs eagerly.
    A captured step returns the same loss tensor (and aux) every call, rewritten by each replay:
    read it (``.item()``) or clone it before the next call.
    """

    def __init__(self, run: Callable, fixed: tuple, batch: tuple, graph: Any,
                 outputs: Any) -> None:
        self._run, self._fixed, self.graph, self._outputs = run, fixed, graph, outputs
        self._spec = _tree.structure(batch)
        self._batch = _tree.named_leaves(batch)

    def __call__(self, *batch: Any) -> Any:
        given = _tree.flatten_like(batch, self._spec, "batch", "the example batch")
        for new, (name, old) in zip(given, self._batch):
            if not _matches(new, old):
                raise ValueError(
                    f"train_step: batch argument {name} must match the example the step was "
                    f"built with ({_describe_leaf(old)}); got {_describe_leaf(new)}")
        if self.graph is None:
            return self._run(*self._fixed, *batch)
        for new, (_, old) in zip(given, self._batch):
            if isinstance(old, torch.Tensor):
                old.copy_(new)
        self.graph.replay()
        return self._outputs


def train_step(loss_fn: Callable[..., Any], tx: Transform, params: Any, state: Any,
               *example: Any, hparams: Any = None, has_aux: bool = False,
               graph: bool | None = None, warmup: int = 3, pool: Any = None) -> TrainStep:
    """A whole training step (forward, backward, update) captured in one CUDA graph.

    Each call ``step(*batch)`` computes ``loss = loss_fn(params, *batch)``, its gradient with
    respect to every tensor of ``params``, and ``tx.update``, written back into ``params`` and
    ``state`` in place (:func:`inplace_step`). It returns the loss (``(loss, aux)`` with
    ``has_aux=True``), detached. The numbers are those of the pure loop::

        grads = torch.func.grad(loss_fn)(params, *batch)
        updates, state = tx.update(grads, state, params, hparams)
        params = fo.apply_updates(params, updates)

    Args:
      loss_fn: ``loss_fn(params, *batch)``, a 0-d loss (or ``(loss, aux)``); an ``nn.Module``
        runs as ``torch.func.functional_call(model, params, inputs)``. With a graph it must not
        synchronize with the host (no ``.item()``, no data-dependent shapes).
      tx: the transform.
      params: the parameters, a pytree of floating-point tensors (``None`` for frozen ones):
        static buffers, updated in place by every call.
      state: ``tx.init(params)``, updated in place likewise.
      *example: a batch: its tensors fix the shapes, dtypes and devices of every later batch
        (copied into static buffers before each replay).
      hparams: hyperparameter overrides for ``tx.update``; 0-d tensors on the device changed
        in place (``lr.fill_(...)``) between calls stay live in a graph. Default ``None``.
      has_aux: ``loss_fn`` returns ``(loss, aux)``. Default ``False``.
      graph: capture in a CUDA graph (``True``), run eagerly (``False``), or capture when the
        parameters are on a CUDA device (``None``, the default).
      warmup: runs before capture, on clones of ``params``, ``state``, ``hparams`` and the
        batch, which they leave as they are. Default 3.
      pool: the graph's memory pool, as in :func:`capture`. Default ``None``.
    """
    _check_params(params)
    if graph is None:
        graph = any(isinstance(p, torch.Tensor) and p.is_cuda for p in _tree.leaves(params))
    run = _whole_step(loss_fn, tx, has_aux)
    if not graph:
        return TrainStep(run, (params, state, hparams), example, None, None)
    if not torch.cuda.is_available():
        raise RuntimeError("train_step: graph=True needs a CUDA device (CUDA graphs exist only "
                           "there); pass graph=False to run the same step eagerly")
    static = _clones(example)
    try:
        recorded, outputs = _record(run, (params, state, hparams, *static), warmup, pool)
    except RuntimeError as e:
        raise RuntimeError(f"train_step: capturing the step in a CUDA graph failed ({e}). A "
                           "graph cannot record host synchronizations (.item(), printing a "
                           "tensor, data-dependent shapes); pass graph=False to run eagerly"
                           ) from e
    return TrainStep(run, (params, state, hparams), static, recorded, outputs)
