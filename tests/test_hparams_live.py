"""Every float hyperparameter is a live value (DESIGN.md §1).

The cells are enumerated from the registry itself: for every case of ``conformance.CASES`` and
every float leaf of its ``tx.hparams`` (each element of ``betas``, ``etas``, ``eps`` pairs,
``ns_coefficients`` too, and the zeros: a weight decay or momentum of 0 keeps its block), so a
transform registered there has its hyperparameters checked without anyone listing them:

a. ``same_value``: the value as a 0-d tensor gives the trajectory the Python number gives;
b. ``other_value``: another value, as a tensor and as a number, gives one trajectory, and it
   differs from the default's (the value is read; where the math makes it inert on ordinary
   inputs, the case's :class:`conformance.Live` entry gives inputs that exercise it);
c. ``vmap``: ``torch.func.vmap`` over 4 values equals a loop over them (no fallback warning);
d. ``grad``: ``torch.func.grad`` of a loss of a 3-step trajectory w.r.t. the value matches a
   central finite difference (float64);
e. ``compile``: ``torch.compile(update, fullgraph=True)``, compiled once per case on a tree that
   mixes float32 and float64 leaves, takes a new value of each hyperparameter in turn without
   recompiling and gives eager's numbers: ``test_conformance.test_compile_fullgraph_no_recompile``
   (one compile per case, so that check lives with the other per-case ones).

(a)-(c) run on float32 and on float64 parameters. A trajectory is 3 updates from ``init``, each
applied to the parameters, so a value read at the first step only (Rprop's ``lr``) counts.
A check that cannot hold by construction is excluded per case and hyperparameter, with its
reason (``Live.excluded``), or inherited from the case's exclusion of the matching conformance
test (L-BFGS's host decisions, SparseAdam's sparse gradients).
"""

from __future__ import annotations

import warnings

import optree
import pytest
import torch
import torch._dynamo.testing
from conformance import CASES, LIVE_CHECKS, float_hparams, other_value, with_hparam
from tolerance import assert_close_ulps, ulp

import functional_optim as fo

F32, F64 = torch.float32, torch.float64

# the conformance test whose exclusion a live check inherits
_INHERITED = {"vmap": "test_vmap_equals_loop", "grad": "test_grad_matches_finite_differences",
              "compile": "test_compile_fullgraph_no_recompile"}

CELLS = [(case, path, value) for case in CASES
         for path, value in float_hparams(case.make().hparams)]
CELL_IDS = [f"{case.name}-{path}" for case, path, _ in CELLS]


def skip_if_excluded(case, path: str, check: str) -> None:
    assert check in LIVE_CHECKS
    reason = dict(case.live_for(path).excluded).get(check)
    if reason is None and check in _INHERITED:
        reason = case.exclusion(_INHERITED[check])
    if reason:
        pytest.skip(f"{check} excluded for {case.name} {path}: {reason}")


def _inputs(case, path: str, dtype: torch.dtype):
    """Parameters, gradients and ``update`` keyword arguments of a trajectory (the conformance
    sample tree: nested, with a 0-d leaf; scaled as the cell's :class:`Live` says)."""
    how = case.live_for(path)

    def scaled(tree, factor):
        return optree.tree_map(lambda x: x * factor, tree) if factor != 1 else tree

    params = scaled(case.params_tree(0, dtype), how.params_scale)
    grads = [case.adapt_grads(scaled(case.params_tree(10 + i, dtype), how.grads_scale))
             for i in range(how.steps)]
    extras = [{} if how.values is None else {"value": how.values[i]} for i in range(how.steps)]
    return params, grads, extras


def _hparams(case, tx, path: str, value) -> dict:
    """``tx.hparams`` with ``path`` set to ``value`` and the cell's ``others`` set."""
    h = tx.hparams
    for other, v in case.live_for(path).others.items():
        h = with_hparam(h, other, v)
    return h if value is None else with_hparam(h, path, value)


def _trajectory(tx, hparams, params, grads, extras, with_state: bool = True) -> list:
    """Every update, the final parameters and (``with_state``) the final state's floating
    leaves."""
    state = tx.init(params)
    outs = []
    for g, extra in zip(grads, extras):
        u, state = tx.update(g, state, params, hparams, **extra)
        params = fo.apply_updates(params, u)
        outs.append(u)
    return [x for x in optree.tree_leaves((outs, params, state if with_state else ()),
                                          none_is_leaf=True)
            if isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex())]


def _dense(x: torch.Tensor) -> torch.Tensor:
    return x.to_dense() if x.is_sparse else x


def _real(x: torch.Tensor) -> torch.Tensor:
    x = _dense(x)
    return torch.view_as_real(x) if x.is_complex() else x


# A number and a tensor hyperparameter reach the same arithmetic except for the order of a few
# ops (``addcmul`` for a number weight, ``mul`` + ``add`` for a tensor one; a fused ``addmm`` or
# an unfused polynomial): at most ~10 ops per step round differently, each within 2 ulps of the
# leaf's max-abs (tests/tolerance.py's model), over the 3 steps of a trajectory:
# ulp_budget(3, 10) = 60 -> 64. A transform that computes in a narrower dtype than its
# parameters is measured in that dtype's ulps (``Case.precision``). An actual difference in the
# value (a beta read as another, a block skipped) moves a trajectory by far more than that.
ULPS = 64


def _finite_pair(a: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, e)`` as real views, with NaN where both are NaN (a "none yet" marker) set to 0."""
    a, e = _real(a), _real(e)
    both = torch.isnan(a) & torch.isnan(e)
    return torch.where(both, 0.0, a), torch.where(both, 0.0, e)


def _max_abs(x: torch.Tensor) -> torch.Tensor:
    return x.abs().max() if x.numel() else torch.zeros((), dtype=x.dtype)


def assert_close(actual: list, expected: list, where: str, precision=None,
                 ulps: int | None = None, scalars: torch.dtype | None = None,
                 floor: torch.Tensor | None = None) -> None:
    """Each tensor within ``ulps`` (default :data:`ULPS`) ulps (of ``precision``, else its own
    dtype) of its reference's max-abs (or of ``floor`` where that is larger: a case's
    ``rounded_params``, the parameters' scale); integer tensors (counts) equal. ``scalars``:
    the dtype whose ulps bound the 0-d float64 outputs (a case's ``float64_scalars``: global
    sums of leaves of that dtype carry its rounding)."""
    assert len(actual) == len(expected), where
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.dtype == e.dtype and a.shape == e.shape, (where, i, a.dtype, e.dtype)
        if not (e.is_floating_point() or e.is_complex()):
            assert torch.equal(a, e), (where, i, a, e)
            continue
        a, e = _finite_pair(a, e)
        bound = precision
        if scalars is not None and e.ndim == 0 and e.dtype == torch.float64:
            bound = scalars
        narrow = torch.finfo(bound).eps / torch.finfo(e.dtype).eps if bound else 1
        scale = _max_abs(e) if floor is None else torch.maximum(_max_abs(e), floor.to(e.dtype))
        assert_close_ulps(a, e, ulps=(ulps or ULPS) * narrow, scale=scale,
                          where=f"{where}: output {i}")


def _floor(case, params) -> torch.Tensor | None:
    """The parameters' max-abs for a case with ``rounded_params`` (see :func:`assert_close`)."""
    if not case.rounded_params:
        return None
    return max(_max_abs(_real(x)).double() for x in optree.tree_leaves(params)
               if isinstance(x, torch.Tensor) and x.is_floating_point())


def _scalars(case, dtype: torch.dtype) -> torch.dtype | None:
    """The precision of a case's 0-d float64 bookkeeping scalars in a run on ``dtype``
    parameters (see :func:`assert_close`)."""
    return dtype if case.float64_scalars else None


def _differs(a: list, b: list) -> bool:
    """Whether two trajectories differ in some tensor by more than 16 times the number/tensor
    noise that :func:`assert_close` allows."""
    for x, y in zip(a, b):
        x, y = _finite_pair(x, y)
        if not y.numel():
            continue
        scale = torch.maximum(_max_abs(x), _max_abs(y))
        if bool((x - y).abs().max() > 16 * ULPS * ulp(scale, y.dtype)):
            return True
    return False


def live_value(case, path: str, default: float) -> float:
    how = case.live_for(path)
    return other_value(default) if how.value is None else how.value


def _as_tensor(value: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("case, path, default", CELLS, ids=CELL_IDS)
def test_same_value(case, path, default, dtype):
    """(a) The default value as a 0-d tensor (of the parameters' dtype, as ``torch.tensor``
    makes one) gives the updates (so the parameters) of the same number. (Not always the
    state: where a number is 0 its block skips its work, a tensor runs the math, e.g. a momentum
    of 0 leaves the buffer untouched as a number and fills it as a tensor.)"""
    skip_if_excluded(case, path, "same_value")
    tx = case.make()
    params, grads, extras = _inputs(case, path, dtype)
    tensor = _as_tensor(default, dtype)
    number = tensor.item()  # the very value the tensor holds
    expected = _trajectory(tx, _hparams(case, tx, path, number), params, grads, extras,
                           with_state=False)
    actual = _trajectory(tx, _hparams(case, tx, path, tensor), params, grads, extras,
                         with_state=False)
    assert_close(actual, expected, f"{case.name} {path}={default} as a tensor", case.precision,
                 case.ulps, _scalars(case, dtype), _floor(case, params))


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("case, path, default", CELLS, ids=CELL_IDS)
def test_other_value(case, path, default, dtype):
    """(b) Another value gives one trajectory as a tensor and as a number, and it is not the
    default's (float64: a change of the value is seen above the rounding noise)."""
    skip_if_excluded(case, path, "other_value")
    tx = case.make()
    params, grads, extras = _inputs(case, path, dtype)
    tensor = _as_tensor(live_value(case, path, default), dtype)
    number = tensor.item()
    expected = _trajectory(tx, _hparams(case, tx, path, number), params, grads, extras)
    actual = _trajectory(tx, _hparams(case, tx, path, tensor), params, grads, extras)
    assert_close(actual, expected, f"{case.name} {path}={number} as a tensor", case.precision,
                 case.ulps, _scalars(case, dtype), _floor(case, params))
    if dtype == F64:
        baseline = _trajectory(tx, _hparams(case, tx, path, None), params, grads, extras)
        assert _differs(expected, baseline), (
            f"{case.name}: {path}={number} gives the trajectory of {path}={default}; give "
            "inputs that exercise it in the case's Live entry")


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("case, path, default", CELLS, ids=CELL_IDS)
def test_vmap(case, path, default, dtype):
    """(c) ``vmap`` over 4 values (from the default to the other value) equals a loop."""
    skip_if_excluded(case, path, "vmap")
    tx = case.make()
    params, grads, extras = _inputs(case, path, dtype)
    values = torch.linspace(default, live_value(case, path, default), 4, dtype=dtype)

    def run(h):
        return _trajectory(tx, _hparams(case, tx, path, h), params, grads, extras)

    torch._C._functorch._set_vmap_fallback_warning_enabled(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batched = torch.func.vmap(run)(values)
    finally:
        torch._C._functorch._set_vmap_fallback_warning_enabled(False)
    fallbacks = [str(w.message) for w in caught if "fallback" in str(w.message).lower()
                 or "performance drop" in str(w.message).lower()]
    assert not fallbacks, fallbacks
    for m in range(len(values)):
        assert_close([x[m] for x in batched], run(values[m]),
                     f"{case.name} {path}: vmap member {m}", case.precision,
                     case.ulps, _scalars(case, dtype))


@pytest.mark.parametrize("case, path, default", CELLS, ids=CELL_IDS)
def test_grad(case, path, default):
    """(d) ``torch.func.grad`` of a 3-step loss w.r.t. the value equals a finite difference
    (float64).

    The difference is the fourth-order central one (Richardson's extrapolation of two central
    differences) with a relative step ``δ = 1e-5 |v|``: its truncation error is ``O(δ⁴)``
    (the plain central difference's ``O(δ²)`` is 6e-6 of the derivative through 5
    Newton-Schulz iterations), and its rounding error is about ``1.5 ε64 S / δ`` for a loss
    whose terms sum to ``S`` in magnitude, times the ~100 operations of a trajectory: the bound
    is ``1e-6`` relative plus ``1e-9 S / |v|``. A wrong gradient is off by O(1)."""
    skip_if_excluded(case, path, "grad")
    tx = case.make()
    params, grads, extras = _inputs(case, path, F64)
    value = live_value(case, path, default)
    gen = torch.Generator().manual_seed(7)
    reference = _trajectory(tx, _hparams(case, tx, path, None), params, grads, extras)
    weights = [torch.randn(_dense(x).shape, generator=gen, dtype=F64) for x in reference]

    def terms(h):
        outs = _trajectory(tx, _hparams(case, tx, path, h), params, grads, extras)
        return [(torch.view_as_real(o) if o.is_complex() else _dense(o)) * (
            w[..., None] if o.is_complex() else w) for o, w in zip(outs, weights)]

    def loss(h):
        return sum((t.sum() for t in terms(h)), torch.zeros((), dtype=F64))

    point = torch.tensor(value, dtype=F64)
    analytic = torch.func.grad(loss)(point)
    assert torch.isfinite(analytic), f"{case.name} {path}: non-finite meta-gradient"
    delta = 1e-5 * abs(value)
    numeric = (8 * (loss(point + delta) - loss(point - delta))
               - (loss(point + 2 * delta) - loss(point - 2 * delta))) / (12 * delta)
    size = sum(float(t.abs().sum()) for t in terms(point))
    bound = 1e-6 * max(abs(float(numeric)), abs(float(analytic))) + 1e-9 * size / abs(value)
    assert abs(float(analytic - numeric)) <= bound, (
        f"{case.name} d/d{path}: grad {float(analytic):.10g}, finite difference "
        f"{float(numeric):.10g} (bound {bound:.3g})")
