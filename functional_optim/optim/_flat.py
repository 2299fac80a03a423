"""The adapter's flat layout: one contiguous buffer per (device, dtype) for a group's parameters,
gradients and every state leaf, with per-parameter views in ``optimizer.state[p]``.

The transform then runs once per buffer, on a one-leaf tree ``{"flat": buffer}``: one kernel per
op for the whole group instead of one per tensor, and (with ``compile=True``) one compiled
kernel for the whole update. ``state_dict()`` still reads per-parameter tensors in the usual
format (views of the buffers), and a loaded checkpoint is gathered into new buffers on the next
step.

Each parameter's piece of every buffer has the parameter's strides where its layout is dense
(channels_last, a transpose), so that its gradient and state share them (as fused kernels
need, and as the usual layout keeps them); a parameter that is a strided view of another tensor
is not moved into the buffer (nor are the others of its segment), as with ``params=False``.

What the layout needs (checked when the buffers are built, with a clear error):

- a transform whose math is elementwise or uses global reductions (every alias except
  ``adafactor``, ``muon``, ``lbfgs`` and ``sparse_adam``; ``clip_by_global_norm``); a per-leaf
  norm would become a per-buffer one;
- state leaves that are per element (moments) or scalars shared by the group (step counts);
- plain tensors: a group of DTensor parameters (FSDP2, tensor parallel) keeps the usual layout,
  with a warning.

The parameters of a group step together in one buffer, so their step counts must agree: after a
step where some had no gradient (torch skips those, and so does the usual layout this falls
back to for that step), the counts differ and the group stays in the usual layout, with a
warning.
"""

from __future__ import annotations

import types
from numbers import Number
from typing import Any

import optree
import torch

from .. import _execute
from .. import tree as _tree
from .._fused import dense
from . import _layout

__all__ = ["FlatGroup", "NotFlat"]


# Inductor inlines a 0-d intermediate (a bias correction) into every loop iteration of the kernel
# that reads it: computed once per 16 elements, ``pow``/``sqrt`` in float64 cost 3x the memory
# traffic (3.9 ms vs 1.3 ms for AdamW on 1.2M floats). Realizing every intermediate of more than
# two ops computes such scalars once, before the elementwise kernel. (Older torch builds have no
# CPU threshold: torch.compile rejects an option it does not know, so only known ones are given.)
_INDUCTOR = {"realize_cpu_opcount_threshold": 2, "realize_opcount_threshold": 2}


class NotFlat(Exception):
    """The group's state cannot live in one buffer now (it takes the usual layout)."""

_NAME = "flat"


def _as_tensor(value: Any) -> Any:
    """A number hyperparameter as a 0-d float64 tensor (so a compiled step does not recompile
    when a scheduler changes it); 0 and booleans stay numbers (aliases branch on them)."""
    if isinstance(value, Number) and not isinstance(value, bool) and value != 0:
        return torch.tensor(value, dtype=torch.float64)
    return value


class _Segment:
    """The parameters of one group on one (device, dtype), and their buffers."""

    def __init__(self, opt: Any, group: dict, tx: Any, params: list, rehome: bool):
        self.params = params
        self.sizes = [p.numel() for p in params]
        # each parameter's piece of every buffer has the parameter's memory layout where that
        # is dense (channels_last, a transpose), so that its gradient and state share its
        # strides (as torch's state does, and as fused kernels need); else row-major
        self.strides = [None if p.is_contiguous() or not dense(p) else p.stride()
                        for p in params]
        # a parameter that is a strided view of a larger tensor stays where it is (moving it
        # would cut it off from that tensor)
        self.rehome = rehome and all(map(dense, params))
        with torch.no_grad():
            first = params[0]
            self.flat_params = torch.empty(sum(self.sizes), dtype=first.dtype,
                                           device=first.device)
            self.param_views = self._views(self.flat_params)
            torch._foreach_copy_(self.param_views, [p.detach() for p in params])
            if self.rehome:  # the parameters become views of the buffer
                for p, view in zip(params, self.param_views):
                    p.data = view
            self.flat_grads = torch.zeros_like(self.flat_params)
        self.grad_views = self._views(self.flat_grads)
        self.param_ptrs = [p.data_ptr() for p in params] if self.rehome else None
        self.mirrors: list = []  # (0-d leaf, its per-parameter copies), see _gather_state
        self.state = self._gather_state(opt, group, tx)  # a tree of the buffers

    def _views(self, flat: torch.Tensor) -> list:
        """Each parameter's piece of ``flat``, shaped (and strided) as its views are."""
        return [piece.view(p.shape) if stride is None else piece.as_strided(p.shape, stride)
                for piece, p, stride in zip(flat.split(self.sizes), self.params, self.strides)]

    def _gather_state(self, opt: Any, group: dict, tx: Any) -> tuple:
        template = tx.init({_NAME: torch.empty_like(self.flat_params, device="meta")})
        fresh = None
        leaves = []
        total = self.flat_params.numel()
        for path, owner, leaf in _layout.walk_state(template, frozenset([_NAME])):
            elementwise = owner is not None and leaf.ndim == 1 and leaf.numel() == total
            if not (elementwise or leaf.ndim == 0):
                raise ValueError(
                    f"flat layout: state {'.'.join(path)!r} of this transform has shape "
                    f"{tuple(leaf.shape)} on a flat buffer of {total} elements; the flat layout "
                    "needs elementwise state (not adafactor's factored moments, for example)"
                )
            values = [opt._load_leaf(opt.state[p], path, p, group) for p in self.params]
            if any(v is None for v in values):
                if fresh is None:
                    fresh = {(pa, ow): x for pa, ow, x in _layout.walk_state(
                        tx.init({_NAME: self.flat_params}), frozenset([_NAME]))}
                values = [v if v is not None else self._fresh(opt, group, p, path, owner, leaf,
                                                              fresh[(path, owner)], i)
                          for i, (p, v) in enumerate(zip(self.params, values))]
            if elementwise:
                flat = torch.empty_like(self.flat_params, dtype=leaf.dtype)
                stored = self._views(flat)
                torch._foreach_copy_(stored, values)
            else:  # each parameter keeps its own tensor (views of one mirror, refreshed after
                # every step): torch updates per-parameter state in place, so a checkpoint
                # whose parameters share one step tensor would count it once per parameter
                flat = self._shared(values, path)
                mirror = flat.expand(len(self.params)).clone()
                self.mirrors.append((flat, mirror))
                stored = list(mirror.unbind())
            for p, value in zip(self.params, stored):
                opt._store_leaf(opt.state[p], path, value, group)
            leaves.append(flat)
        return optree.tree_unflatten(optree.tree_structure(template), leaves)

    def _fresh(self, opt, group, p, path, owner, leaf, value, i):
        if owner is not None and leaf.ndim == 1:  # this parameter's piece of the flat init
            value = value.split(self.sizes)[i].view(p.shape)
        return opt._fresh_leaf(p, path, value, group)

    @staticmethod
    def _shared(values: list, path: tuple) -> torch.Tensor:
        first = values[0]
        for v in values[1:]:
            if v is not first and not torch.equal(v.to(first.dtype), first):
                raise NotFlat(
                    f"their state {'.'.join(path)!r} differs between parameters ({first.item()} "
                    f"vs {v.item()}: some skipped steps), and in one buffer they step together"
                )
        return first.clone()  # ours: the step writes it in place

    def mirror(self) -> None:
        """The per-parameter copies of the 0-d state leaves, updated."""
        for flat, mirror in self.mirrors:
            mirror.copy_(flat.expand_as(mirror))

    def valid(self) -> bool:
        """Whether every parameter still lives in the buffer (nobody replaced ``p.data``)."""
        return not self.rehome or [p.data_ptr() for p in self.params] == self.param_ptrs

    def gather_grads(self) -> bool:
        """Gradients into the flat buffer (a copy only for those that are not its views); each
        ``p.grad`` becomes its view, so that a backward after ``zero_grad(set_to_none=False)``
        accumulates straight into the buffer. ``False`` (nothing changed) when a gradient is
        sparse: the step keeps it sparse, in the usual layout."""
        stale = [(p, view) for p, view in zip(self.params, self.grad_views)
                 if p.grad is not view]
        if stale:
            if any(p.grad.is_sparse for p, _ in stale):
                return False
            torch._foreach_copy_([view for _, view in stale], [p.grad for p, _ in stale])
            for p, view in stale:
                p.grad = view
        return True

    def flat_params_now(self) -> torch.Tensor:
        """The parameters' buffer, with their current values (copied in unless they live
        there)."""
        if not self.rehome:
            torch._foreach_copy_(self.param_views, [p.detach() for p in self.params])
        return self.flat_params

    def apply(self, update: torch.Tensor) -> None:
        if self.rehome:
            self.flat_params.add_(update)
        else:
            torch._foreach_add_(self.params, self._views(update))


def _update(tx: Any, flat_grads: torch.Tensor, flat_params: torch.Tensor, state: Any,
            hparams: Any) -> torch.Tensor:
    """The transform on one buffer; returns the update. The state buffers are updated in place
    (``copy_`` where the rule did not donate); ``tree_map``, as it compiles."""
    updates, new_state = tx.update({_NAME: flat_grads}, state, {_NAME: flat_params}, hparams)
    _write_back(state, new_state)
    return updates[_NAME]


def _write_back(state: Any, new_state: Any) -> None:
    """Each new state leaf into its buffer (nothing to do for one updated in place)."""
    optree.tree_map(lambda old, new: old if new is old else old.copy_(new), state, new_state)


class FlatGroup:
    """A param group in the flat layout: one :class:`_Segment` per (device, dtype)."""

    def __init__(self, opt: Any, group: dict, tx: Any, *, rehome: bool, compile: bool):
        by_key: dict = {}
        for p in group["params"]:
            if _tree.layout(p) is not None:
                raise NotFlat("its parameters are DTensors (FSDP2, tensor parallel): one buffer "
                              "cannot hold shards of several parameters")
            by_key.setdefault((p.device, p.dtype), []).append(p)
        self.tx = tx
        self.segments = [_Segment(opt, group, tx, ps, rehome) for ps in by_key.values()]
        self.compiled = None
        if compile:
            # a copy of the code object per group: dynamo caches (and counts recompiles) per code
            # object, so every optimizer would otherwise share one budget of 8 graphs
            step = FlatGroup._compiled_step
            code = types.FunctionType(step.__code__.replace(), step.__globals__, step.__name__)
            from torch._inductor import config
            self.compiled = torch.compile(types.MethodType(code, self), fullgraph=True, options={
                k: v for k, v in _INDUCTOR.items() if hasattr(config, k)})

    def valid(self) -> bool:
        return all(seg.valid() for seg in self.segments)

    def _fused(self, seg: _Segment, hparams: Any) -> bool:
        """The alias's fused kernel on the buffers (one call for the whole segment)."""
        new_state = self.tx.fused({_NAME: seg.flat_params}, {_NAME: seg.flat_grads}, seg.state,
                                  hparams)
        if new_state is None:
            return False
        _write_back(seg.state, new_state)
        return True

    def _compiled_step(self, flat_grads, flat_params, state, hparams, apply):
        update = _update(self.tx, flat_grads, flat_params, state, hparams)
        if apply:  # inside the graph: the parameter update fuses with the rest
            flat_params.add_(update)
            return None
        return update

    def gather_grads(self) -> bool:
        """Every segment's gradients into its buffer (see :meth:`_Segment.gather_grads`)."""
        return all(seg.gather_grads() for seg in self.segments)

    def step(self, hparams: Any) -> None:
        """One update of the buffers (after :meth:`gather_grads`)."""
        if self.compiled is not None:
            hparams = optree.tree_map(_as_tensor, hparams)
        with torch.no_grad(), _execute.multi_tensor(self.compiled is None,
                                                    donate=_execute.donates_to(self.tx)):
            for seg in self.segments:
                if self.tx.fused is not None and seg.rehome and self.compiled is None and \
                        self._fused(seg, hparams):
                    continue
                flat_params = seg.flat_params_now()
                if self.compiled is not None:
                    update = self.compiled(seg.flat_grads, flat_params, seg.state, hparams,
                                           seg.rehome)
                else:
                    update = _update(self.tx, seg.flat_grads, flat_params, seg.state, hparams)
                if update is not None:
                    seg.apply(update)
            for seg in self.segments:
                seg.mirror()
