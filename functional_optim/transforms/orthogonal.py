"""Orthogonalized updates: Newton-Schulz iteration and Muon (Jordan et al., 2024)."""

from __future__ import annotations

import functools
import math
from numbers import Number
from typing import Any, NamedTuple

import optree
import torch

from .. import tree as _tree
from .._execute import (
    LIKE,
    cast_hparams,
    elementwise,
    init_count,
    lerp,
    placed_like,
    scalar_dtype,
)
from ..base import EmptyState, HParamError, Transform, check_hparam, check_state, resolve_hparams

__all__ = [
    "MUON_NS_COEFFICIENTS",
    "MuonDimensionNumbers",
    "NS_COEFFICIENTS",
    "ScaleByMuonState",
    "ScaleByMuonCountedState",
    "orthogonalize_via_newton_schulz",
    "resolve_ns_coefficients",
    "scale_by_newton_schulz",
    "scale_by_muon",
]

#: the quintic Newton-Schulz coefficients ``(a, b, c)`` of Muon (and torch.optim.Muon)
MUON_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
#: Newton-Schulz coefficients used in practice, for ``ns_coefficients=NS_COEFFICIENTS[name]``:
#: one ``(a, b, c)`` for every iteration, or one per iteration (then ``ns_steps`` is their
#: number)
NS_COEFFICIENTS = {
    # Jordan et al., 2024 (Muon, torch.optim.Muon): the quintic of largest slope at 0
    "muon": MUON_NS_COEFFICIENTS,
    # the cubic Newton-Schulz iteration X <- 1.5 X - 0.5 X X^T X (Kovarik, 1970; Bjorck &
    # Bowie, 1971): converges to U V^T exactly, slowly from small singular values
    "cubic": (1.5, -0.5, 0.0),
    # You Jiacheng's six per-iteration quintics (modded-nanogpt, 2025; Bernstein's modula):
    # singular values closer to 1 than Muon's in six steps
    "you": ((3955 / 1024, -8306 / 1024, 5008 / 1024), (3735 / 1024, -6681 / 1024, 3463 / 1024),
            (3799 / 1024, -6499 / 1024, 3211 / 1024), (4019 / 1024, -6385 / 1024, 2906 / 1024),
            (2677 / 1024, -3029 / 1024, 1162 / 1024), (2172 / 1024, -1833 / 1024, 682 / 1024)),
    # Ahn et al., 2025 ("Dion: Distributed Orthonormalized Updates"; optax's "dion" preset):
    # five per-iteration quintics
    "dion": ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
             (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)),
}
_ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "spectral", "none")


def orthogonalize_via_newton_schulz(g: torch.Tensor, coefficients: Any = MUON_NS_COEFFICIENTS,
                                    steps: int = 5, eps: Any = 1e-7,
                                    dtype: torch.dtype | None = torch.bfloat16,
                                    eps_added: bool = False) -> torch.Tensor:
    r"""Approximately orthogonalize a matrix: ``k`` steps of the quintic Newton-Schulz map.

    With :math:`X_0 = G / \max(\lVert G\rVert_F, \epsilon)` (``eps_added``:
    :math:`G / (\lVert G\rVert_F + \epsilon)`, as optax) (transposed when it has more rows
    than columns, so that :math:`X X^\top` is the smaller Gram matrix),

    .. math:: A = X_k X_k^\top, \qquad X_{k+1} = a X_k + (b A + c A^2) X_k

    which pushes every singular value of :math:`G` towards 1 (to roughly ``U S' V^T`` with
    :math:`S'_{ii} \in [0.5, 1.5]`, not exactly ``U V^T``: the coefficients maximize the slope
    at zero). ``coefficients`` is one ``(a, b, c)`` or a sequence of ``steps`` of them, one per
    iteration (``NS_COEFFICIENTS`` names some). Pure; ``dtype`` is the precision of the
    iteration (bfloat16, as torch.optim.Muon; ``None``: the input's dtype); the result is
    returned in that precision.
    """
    if g.ndim != 2:
        raise ValueError(f"Newton-Schulz orthogonalization needs a 2-D matrix, got shape "
                         f"{tuple(g.shape)}")
    per_step = _per_step(coefficients)
    x = g if dtype is None else g.to(dtype)
    tall = g.shape[0] > g.shape[1]
    if tall:
        x = x.T
    norm = torch.linalg.vector_norm(x)
    if eps_added:
        x = x / (norm + _in(eps, norm))
    else:
        x = x / (torch.clamp(norm, min=eps) if isinstance(eps, Number) else torch.maximum(
            norm, eps.to(norm.dtype)))
    for i in range(steps):
        a, b, c = coefficients[i] if per_step else coefficients
        fused = all(isinstance(v, Number) for v in (a, b, c))
        gram = x @ x.T
        if fused:  # one kernel each, as torch.optim.Muon
            poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.addmm(x, poly, x, beta=a)
        else:  # tensor coefficients (meta-gradients, vmap): the same polynomial, unfused
            poly = gram * _in(b, x) + (gram @ gram) * _in(c, x)
            x = x * _in(a, x) + poly @ x
    return x.T if tall else x


def _in(value: Any, x: torch.Tensor) -> Any:
    """A coefficient in the iteration's dtype (a number stays a number)."""
    return value.to(x.dtype) if isinstance(value, torch.Tensor) else value


def _per_step(coefficients: Any) -> bool:
    """Whether ``coefficients`` holds one ``(a, b, c)`` per iteration."""
    return isinstance(coefficients[0], (tuple, list))


def _lr_ratio(shape: torch.Size, adjust_lr_fn: str | None, layout: str = "torch",
              rms_scale: Any = 0.2) -> Any:
    """The learning-rate adjustment of a matrix of ``shape``: ``(fan_out, fan_in)`` for
    ``layout="torch"`` (``nn.Linear``'s weight), ``(fan_in, fan_out)`` for ``"jax"``."""
    rows, cols = (shape[0], shape[1]) if layout == "torch" else (shape[1], shape[0])
    if not rows * cols:  # (an empty matrix: no update to scale)
        return 1.0
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "spectral":
        return math.sqrt(rows / cols)
    if adjust_lr_fn == "none":
        return 1.0
    return math.sqrt(max(rows, cols)) * rms_scale


def resolve_ns_coefficients(ns_coefficients: Any) -> Any:
    """``ns_coefficients`` as a tuple, of tuples when it gives one per iteration (lists, as a
    checkpoint's param group holds them, made tuples); anything else as it is (for
    :func:`_check_ns` to refuse)."""
    if not isinstance(ns_coefficients, (tuple, list)) or not ns_coefficients:
        return ns_coefficients
    if _per_step(ns_coefficients):
        return tuple(tuple(c) if isinstance(c, (tuple, list)) else c for c in ns_coefficients)
    return tuple(ns_coefficients)


def _check_ns(owner: str, ns_coefficients: Any, ns_steps: Any, eps: Any,
              adjust_lr_fn: Any) -> None:
    """Validates the resolved coefficients (:func:`resolve_ns_coefficients`) and options."""
    if not isinstance(ns_steps, int) or isinstance(ns_steps, bool) or not 0 <= ns_steps < 100:
        raise HParamError(f"{owner}: ns_steps must be an int in [0, 100), got {ns_steps!r}")
    per_step = isinstance(ns_coefficients, tuple) and bool(ns_coefficients) and _per_step(
        ns_coefficients)
    triples = ns_coefficients if per_step else (ns_coefficients,)
    if not triples or any(not isinstance(t, tuple) or len(t) != 3 for t in triples):
        raise HParamError(f"{owner}: ns_coefficients must be a tuple (a, b, c), one per "
                          f"iteration (e.g. NS_COEFFICIENTS['you']), got {ns_coefficients!r}")
    if per_step and len(triples) != ns_steps:
        raise HParamError(f"{owner}: ns_coefficients gives {len(triples)} iterations' "
                          f"coefficients; ns_steps must be {len(triples)}, got {ns_steps}")
    for k, triple in enumerate(triples):
        for i, v in enumerate(triple):
            check_hparam(owner, f"ns_coefficients[{k}][{i}]" if per_step else
                         f"ns_coefficients[{i}]", v)
    check_hparam(owner, "eps", eps, ge=0)
    if adjust_lr_fn not in _ADJUST_LR_FNS:
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")


def _check_matrices(owner: str, updates: Any, flatten: bool = False) -> None:
    """A clear error for complex or non-2-D leaves (with ``flatten``: under 2-D; names are
    computed only when raising)."""
    for g in _tree.leaves(updates):
        if g is not None and (g.is_complex() or (g.ndim < 2 if flatten else g.ndim != 2)):
            break
    else:
        return
    for name, g in _tree.named_leaves(updates):
        if g is None:
            continue
        if g.is_complex():
            raise TypeError(f"{owner} does not support complex updates (leaf {name!r}, dtype "
                            f"{g.dtype})")
        if g.ndim < 2 if flatten else g.ndim != 2:
            raise ValueError(
                f"{owner} only supports {'2-D or larger' if flatten else '2-D'} parameters, "
                f"but leaf {name!r} has shape "
                f"{tuple(g.shape)}; optimize the others with another transform (e.g. "
                "fo.partition)")


class MuonDimensionNumbers(NamedTuple):
    """Which axes of a leaf form the matrix Muon orthogonalizes (optax's convention): the
    ``reduction_axis`` axes (fan-in) and the ``output_axis`` axes (fan-out), an int or a
    sequence each; every other axis is a batch axis (one matrix per index)."""

    reduction_axis: Any = 0
    output_axis: Any = 1


def _spec_axes(owner: str, spec: MuonDimensionNumbers, shape: torch.Size) -> tuple:
    """``spec``'s (batch, reduction, output) axes of a leaf of ``shape``, non-negative."""
    ndim = len(shape)
    red, out = [(a,) if isinstance(a, int) else tuple(a)
                for a in (spec.reduction_axis, spec.output_axis)]
    if ndim < 2 or not all([-ndim <= a < ndim for a in red + out]):
        raise ValueError(f"{owner}: dimension numbers {spec} do not fit a leaf of shape "
                         f"{tuple(shape)}")
    red, out = tuple([a % ndim for a in red]), tuple([a % ndim for a in out])
    if set(red) & set(out):
        raise ValueError(f"{owner}: the reduction and output axes of {spec} overlap")
    return tuple([a for a in range(ndim) if a not in red + out]), red, out


def _batched_matrices(owner: str, x: torch.Tensor, spec: MuonDimensionNumbers) -> tuple:
    """``x`` as ``(batch, fan_in, fan_out)`` matrices, and the map back to ``x``'s layout."""
    batch, red, out = _spec_axes(owner, spec, x.shape)
    perm = batch + red + out
    permuted = [x.shape[a] for a in perm]
    sizes = [math.prod([x.shape[a] for a in axes]) for axes in (batch, red, out)]
    inverse = sorted(range(x.ndim), key=perm.__getitem__)
    return (x.permute(perm).reshape(sizes),
            lambda m: m.reshape(permuted).permute(inverse))


def _orthogonalize_tree(owner: str, updates: Any, h: dict, ns_steps: int,
                        ns_dtype: torch.dtype | None, adjust_lr_fn: Any, scale_lr: bool,
                        flatten: bool = False, *, eps_added: bool = False,
                        adaptive: bool = False, fans: str = "torch",
                        dimension_numbers: Any = None) -> Any:
    if dimension_numbers is None:
        _check_matrices(owner, updates, flatten)

    def ns(matrix, hh):
        return orthogonalize_via_newton_schulz(matrix, tuple(hh["ns_coefficients"]), ns_steps,
                                               hh["eps"], ns_dtype, eps_added)

    def one(g, spec=None):
        hh = cast_hparams(h, g)
        layout = _tree.layout(g)
        full = g if layout is None else g.full_tensor()  # (the one all-gather of a DTensor)
        if spec is not None:  # one (fan_in x fan_out) matrix per batch index
            mats, back = _batched_matrices(owner, full, spec)
            out = back(torch.stack([ns(m, hh) for m in mats.unbind(0)]).to(g.dtype))
            matrix, shape = full, mats.shape[1:]
        else:
            matrix = full.reshape(full.shape[0], math.prod(full.shape[1:])) \
                if flatten and full.ndim > 2 else full
            out, shape = ns(matrix, hh).to(g.dtype), matrix.shape
        if adaptive:  # the dual norm of the direction: <B, O> O
            out = (matrix * out).sum() * out
        if scale_lr:
            out = out * _lr_ratio(shape, adjust_lr_fn, fans, hh.get("rms_scale", 0.2))
        out = out.reshape(full.shape)
        if layout is not None:  # every rank holds the result: keep its own shard (no traffic)
            mesh = layout[0]
            out = type(g).from_local(out, mesh, [_replicate()] * mesh.ndim, run_check=False)
        return placed_like(out, g)

    if dimension_numbers is None:
        return _tree.map(one, updates)
    specs = dimension_numbers(updates) if callable(dimension_numbers) else dimension_numbers

    def with_spec(g, spec):
        if not isinstance(g, torch.Tensor):  # None, or a leaf another transform owns
            return g
        if spec is None:
            raise ValueError(f"{owner}: an update of shape {tuple(g.shape)} has no dimension "
                             "numbers (None); give it to another transform (e.g. fo.partition)")
        return one(g, spec)

    # (an empty node, e.g. partition's MaskedNode of a leaf it gives another transform, is
    # a leaf here, as its spec is None)
    return optree.tree_map(with_spec, updates, specs, none_is_leaf=True,
                           is_leaf=lambda x: isinstance(x, MuonDimensionNumbers) or (
                               isinstance(x, tuple) and not x))


def _replicate() -> Any:
    from torch.distributed.tensor import Replicate  # (loaded: a DTensor exists)

    return Replicate()


def scale_by_newton_schulz(ns_coefficients: tuple[float, float, float] = MUON_NS_COEFFICIENTS,
                           ns_steps: int = 5, eps: float = 1e-7, *,
                           ns_dtype: torch.dtype | None = torch.bfloat16) -> Transform:
    r"""Replaces each 2-D update by its Newton-Schulz orthogonalization
    (:func:`orthogonalize_via_newton_schulz`; Jordan et al., 2024).

    Stateless. Only 2-D updates (a clear ``ValueError`` names any other leaf); real only.

    A DTensor leaf (FSDP2, tensor parallel) is gathered whole once per step (one all-gather
    of the leaf over its mesh, ``full_tensor()``); every rank runs the iteration on the full
    matrix (the orthogonalization couples all its entries, so no shard can be done alone) and
    keeps its own shard of the result (no more traffic). The update and state keep the leaf's
    layout. Communication per step: each matrix leaf's size, once; compute: the full
    iteration on every rank of the mesh.

    Args:
        ns_coefficients: ``(a, b, c)``, or one per iteration (``NS_COEFFICIENTS`` holds those
            used in practice; hparams; default Muon's quintic coefficients).
        ns_steps: iterations (static int, < 100; default 5).
        eps: ``ε`` in the normalization (default 1e-7).
        ns_dtype: precision of the iteration (static; default bfloat16 as torch.optim.Muon;
            ``None``: the update's dtype, which is differentiable to float64 precision).
    """
    owner = "scale_by_newton_schulz"
    ns_coefficients = resolve_ns_coefficients(ns_coefficients)
    _check_ns(owner, ns_coefficients, ns_steps, eps, None)
    defaults = {"ns_coefficients": ns_coefficients, "eps": eps}

    def init(params):
        return EmptyState()

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        return _orthogonalize_tree(owner, updates, h, ns_steps, ns_dtype, None, False), state

    return Transform(init, update, defaults)


class ScaleByMuonState(NamedTuple):
    """State of :func:`scale_by_muon`.

    Attributes:
        momentum_buffer: the momentum :math:`B_t` (torch.optim.Muon's ``momentum_buffer``),
            zeros at first.
    """

    momentum_buffer: Any


def _muon_momentum_rule(h, g, buf, *, nesterov):
    mu = h["momentum"]
    buf = lerp(buf, g, 1 - mu)
    return (lerp(g, buf, mu) if nesterov else buf), buf


class ScaleByMuonCountedState(NamedTuple):
    """State of :func:`scale_by_muon` with ``bias_correction=True`` (optax's ``MuonState``).

    Attributes:
        step: per-parameter step count (0-d int64).
        momentum_buffer: the momentum :math:`B_t`, zeros at first.
    """

    step: Any
    momentum_buffer: Any


def _muon_corrected_rule(h, g, t, buf, *, nesterov):
    """optax's Muon momentum: bias-corrected; Nesterov's form mixes ``B_t / (1 - μ^{t+1})``
    and ``g_t / (1 - μ^t)``."""
    mu = h["momentum"]
    t = t + 1
    tf = t.to(scalar_dtype(g))
    buf = lerp(buf, g, 1 - mu)
    if nesterov:
        direction = mu * buf / (1 - mu ** (tf + 1)) + (1 - mu) * g / (1 - mu ** tf)
    else:
        direction = buf / (1 - mu ** tf)
    return direction, t, buf


def scale_by_muon(momentum: float = 0.95, nesterov: bool = True,
                  ns_coefficients: tuple[float, float, float] = MUON_NS_COEFFICIENTS,
                  eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None, *,
                  ns_dtype: torch.dtype | None = torch.bfloat16,
                  flatten: bool = False, bias_correction: bool = False,
                  eps_added: bool = False, adaptive: bool = False, layout: str = "torch",
                  rms_scale: float | None = None, dimension_numbers: Any = None) -> Transform:
    r"""Muon's direction (Jordan et al., 2024): momentum, Newton-Schulz orthogonalization and
    the shape-dependent learning-rate ratio, as torch.optim.Muon computes them.

    .. math::
        B_t = \mu B_{t-1} + (1-\mu) g_t, \qquad
        \tilde B_t = (1-\mu) g_t + \mu B_t \text{ (nesterov) or } B_t, \qquad
        u_t = r(A, B)\,\mathrm{NS}^{(a,b,c)}_k(\tilde B_t; \epsilon)

    with, for an ``A x B`` parameter, the learning-rate adjustment ``adjust_lr_fn``:
    :math:`r = \sqrt{\max(1, A/B)}` (``None``/``"original"``, Jordan),
    :math:`0.2\sqrt{\max(A, B)}` (``"match_rms_adamw"``; Liu et al., 2025, "Muon is Scalable for
    LLM Training": the update's RMS of AdamW's, so AdamW's rate and decay carry over),
    :math:`\sqrt{A/B}` (``"spectral"``: the RMS-to-RMS operator norm's scaling, fan-out over
    fan-in; Bernstein & Newhouse, 2024, "Modular Duality in Deep Learning") or 1 (``"none"``).
    Follow with decoupled weight decay and ``scale_by_learning_rate`` (the
    :func:`~functional_optim.muon` alias). DTensor leaves: the momentum stays local, the
    orthogonalization gathers each leaf once (see :func:`scale_by_newton_schulz`). 2-D
    parameters only, unless ``flatten``: then a leaf of more dimensions (a convolution's
    ``out x in x kh x kw``) is orthogonalized as the matrix ``A x (rest)`` (Jordan's Muon
    reshapes them so), and its adjustment is that matrix's.

    Args:
        momentum: ``μ`` (default 0.95).
        nesterov: Nesterov momentum (static; default True).
        ns_coefficients: ``(a, b, c)``, or one per iteration (``NS_COEFFICIENTS``).
        eps: ``ε`` of the Newton-Schulz normalization (default 1e-7).
        ns_steps: Newton-Schulz iterations (static; default 5).
        adjust_lr_fn: ``None``, ``"original"``, ``"match_rms_adamw"``, ``"spectral"`` or
            ``"none"`` (static).
        ns_dtype: precision of the iteration (static; default bfloat16, as torch).
        flatten: orthogonalize leaves of more than 2 dimensions as matrices (static).
        bias_correction: optax's momentum (static): :math:`\tilde B_t = \mu B_t / (1 -
            \mu^{t+1}) + (1-\mu) g_t / (1 - \mu^t)` (nesterov) or :math:`B_t / (1 - \mu^t)`;
            the state is then a :class:`ScaleByMuonCountedState`.
        eps_added: normalize by :math:`\lVert \tilde B\rVert_F + \epsilon` (optax) instead
            of :math:`\max(\lVert \tilde B\rVert_F, \epsilon)` (static).
        adaptive: scale the orthogonalized :math:`O` by the dual norm
            :math:`\langle \tilde B, O\rangle` (Bernstein & Newhouse, 2024, "Old Optimizer,
            New Norm"; optax's ``adaptive``; static).
        layout: ``"torch"``: a matrix is ``fan_out x fan_in`` (``nn.Linear``); ``"jax"``:
            ``fan_in x fan_out`` (optax's ``x W = y``), for the adjustment (static).
        rms_scale: with ``adjust_lr_fn="match_rms_adamw"``, the RMS matched instead of 0.2
            (optax's ``consistent_rms``; hparam when given).
        dimension_numbers: a tree of :class:`MuonDimensionNumbers` (a prefix of the updates;
            ``None`` where a leaf is not Muon's), or a function ``updates -> tree``: each leaf
            is orthogonalized as the ``fan_in x fan_out`` matrices its axes give, one per
            batch index, with the adjustment of that matrix (optax's
            ``weight_dimension_numbers``; needs ``layout="jax"``; static).
    """
    owner = "scale_by_muon"
    check_hparam(owner, "momentum", momentum, ge=0)
    ns_coefficients = resolve_ns_coefficients(ns_coefficients)
    _check_ns(owner, ns_coefficients, ns_steps, eps, adjust_lr_fn)
    if layout not in ("torch", "jax"):
        raise ValueError(f"{owner}: layout must be 'torch' or 'jax', got {layout!r}")
    if dimension_numbers is not None and layout != "jax":
        raise ValueError(f"{owner}: dimension_numbers give (fan_in, fan_out) axes: they need "
                         f"layout='jax', got layout={layout!r}")
    defaults = {"momentum": momentum, "ns_coefficients": ns_coefficients, "eps": eps}
    if rms_scale is not None:
        if adjust_lr_fn != "match_rms_adamw":
            raise ValueError(f"{owner}: rms_scale is the RMS of adjust_lr_fn='match_rms_adamw'; "
                             f"got adjust_lr_fn={adjust_lr_fn!r}")
        check_hparam(owner, "rms_scale", rms_scale, ge=0)
        defaults["rms_scale"] = rms_scale
    rule = functools.partial(_muon_corrected_rule if bias_correction else _muon_momentum_rule,
                             nesterov=nesterov)
    state_cls = ScaleByMuonCountedState if bias_correction else ScaleByMuonState

    def init(params):
        buf = _tree.map(lambda p: torch.zeros_like(p, memory_format=torch.preserve_format),
                        params)
        return ScaleByMuonCountedState(init_count(params), buf) if bias_correction else \
            ScaleByMuonState(buf)

    def update(updates, state, params=None, hparams=None, **extra):
        h = resolve_hparams(defaults, hparams, f"{owner} hparams")
        check_state(owner, state, state_cls)
        if dimension_numbers is None:
            _check_matrices(owner, updates, flatten)
        direction, *new = elementwise(rule, h, updates, tuple(state), name=owner,
                                      real_only=True, state_like=(None, LIKE)[-len(state):])
        out = _orthogonalize_tree(owner, direction, h, ns_steps, ns_dtype, adjust_lr_fn, True,
                                  flatten, eps_added=eps_added, adaptive=adaptive, fans=layout,
                                  dimension_numbers=dimension_numbers)
        return out, state_cls(*new)

    return Transform(init, update, defaults)
