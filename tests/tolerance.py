"""Low-precision tolerances as a number of ulps, sized by an error model (one helper, all tests).

A bare relative bound (``16 * eps32``) tuned until the suite passes on one CPU fails on another:
the same formula rounds differently across machines and builds (vector width, FMA contraction,
the vectorised ``exp``/``log``/``pow`` kernels, summation order). So every float32, complex64,
bfloat16 and float16 comparison of two computations is written

    assert_close_ulps(actual, expected, ulps=ulp_budget(steps, ops), scale=S)

with the budget derived from how many rounded operations separate the two values and ``S``, the
magnitude they run at, stated at the call.

**The unit.** ``ulp(x)`` is the spacing of the dtype's numbers at ``|x|``:
``2**floor(log2|x|) * eps`` (the subnormal spacing below the smallest normal), so
``eps*|x|/2 < ulp(x) <= eps*|x|``. The scale is

- ``None``: each element's own ``|expected[i]|``, for values a few elementwise ops compute from
  the same inputs;
- a number, or a tensor broadcast against ``expected``: the magnitude the computation ran at.
  For a parameter trajectory it is the tensor's **peak** ``max_t max_i |p_t[i]|`` over the run:
  every step's ``p + u`` rounds at ``|p_t|``, so an element that ends near zero after passing
  through larger values carries their rounding (its own ulp would be far too fine). For a
  reduction (a norm, a product of matrices) it is the tensor's max-abs.

**The error model** (first order, worst case; :func:`ulp_budget`). An IEEE ``+ - * /`` or
``sqrt`` rounds correctly on every machine: its relative error is at most ``eps/2``, which on a
value no larger than the scale ``S`` is less than one ``ulp(S)`` (``eps*S/2 < ulp(S)``). So two
implementations of one op (ours and torch's; one build on two CPUs: FMA contraction, vector
width, summation order) differ by at most :data:`ULPS_PER_OP` = 2 ulps of the scale. Every op on
the path to the compared value is counted at the scale's magnitude: an optimizer's update, and
each quantity it is made of, is smaller than the parameter it moves (a generous count: most run
at the update's magnitude). A step of ``k`` ops then differs by at most ``2k`` ulps, and over
``n`` steps the differences add up, all of one sign: an optimizer's state is an average (factors
at most 1) that carries an old error forward without amplifying it. So ``budget = 2 * k * n``.
(The one simplification: an error a state carries into later updates is counted once, at the
step that made it; counting every op at the parameter's magnitude, when most run at the
update's, leaves room for that.) Where an update is about an ulp of the parameter (bfloat16),
that room is gone: :func:`assert_low_precision_trajectory` counts the update's ops at the
update's magnitude.

:data:`UPDATE_OPS` counts ``k`` for each algorithm the suite compares with torch.optim, from
torch's formula with every option on (a bound for the simpler variants too). Counting rules:
every rounding on the path counts once: each ``+ - * / sqrt``, each hyperparameter (rounded from
a Python float to the parameter's dtype), each coefficient computed from them (``1 - b1`` is 1);
``pow`` counts 2 (the vectorised and libm ``pow``/``exp``/``log`` are within 1 ulp, not 1/2); a
``lerp`` is 3 (``a + w*(b - a)``); a sum of ``N`` terms is :func:`sum_ops` (torch sums by
cascades and vector lanes: each term passes ``ceil(log2 N)`` additions). Negation, ``sign``,
``max``, ``clamp``, ``where``, a product by a power of two, copies and casts to a wider dtype are
exact and free.

Complex values are compared by modulus, in ulps of the real dtype (the real and imaginary parts
each round within an ulp of ``|z|``).
"""

from __future__ import annotations

import math

import torch

ULPS_PER_OP = 2
"""Two implementations of one op (or one build on two CPUs) differ by at most 2 ulps of the scale:
each rounds within ``eps/2`` relative, less than 1 ulp of any scale at least as large as the
result (see the module docstring)."""


def sum_ops(n: int) -> int:
    """The ops a sum of ``n`` terms puts on each term's path: ``ceil(log2 n)`` additions."""
    return max(1, math.ceil(math.log2(n)))


def adafactor_ops(numel: int) -> int:
    """torch.optim.Adafactor's step on a leaf of ``numel`` elements (``L = sum_ops(numel)``, which
    bounds the row and column sums too): ``alpha`` from the parameter's RMS (square, sum, sqrt,
    ``/sqrt(N)``, ``eps2``, ``*rho``: 6 + L), ``rho_t = min(lr, 1/sqrt(t))`` (3),
    ``beta2_t = t**decay`` (3), the decay ``p*(1 - lr*wd)`` (5), the row and column means of
    ``g**2`` (square, sum, sqrt, square, divide: 4 + L each) and their ``lerp`` (3 each), the
    outer product (1), the row mean it is divided by (L + 1) and the division (1), the ``eps1**2``
    floor (2), ``rsqrt`` (2) and ``*g`` (1), the update's RMS for the clip (square, sum, sqrt,
    ``/(sqrt(N)*d)``: 6 + L), ``alpha/denom`` (1), ``p + c*u`` (2): 48 + 5L."""
    return 48 + 5 * sum_ops(numel)


UPDATE_OPS = {
    # g + wd*p (3); b <- mu*b + (1 - tau)*g (5); nesterov g + mu*b (2); p - lr*g (3)
    "sgd": 13,
    # decoupled p*(1 - lr*wd) (5; coupled g + wd*p: 3); m lerp (3 + 1 - b1); v <- b2*v +
    # (1 - b2)*g**2 (6); bc1 = 1 - b1**t (4), bc2 (3); lr/bc1 (1); sqrt(v)/sqrt(bc2) + eps (5);
    # p - step*m/d (3)
    "adam": 31,
    "adamw": 31,
    # g + wd*p (3); lr/(1 + (t-1)*lr_decay) (5); s + g**2 (2); p - c*g/(sqrt(s) + eps) (6)
    "adagrad": 16,
    # g + wd*p (3); v <- rho*v + (1 - rho)*g**2 (6); sqrt(a + eps)/sqrt(v + eps)*g (7);
    # a <- rho*a + (1 - rho)*d**2 (4); p - lr*d (3)
    "adadelta": 23,
    # g + wd*p (3); m lerp (4); max(b2*u, |g| + eps) (4); p - lr/(1 - b1**t)*m/u (9)
    "adamax": 20,
    # decay (5); mu_t = b1*(1 - 0.5*0.96**(t*psi)) (7) and mu_t+1 (5); their product (1); m lerp
    # (4); v (6); sqrt(v/(1 - b2**t)) + eps (7); -lr*(1 - mu)/(1 - prod) (4) and
    # -lr*mu_t+1/(1 - prod*mu_t+1) (4); p + c1*g/d + c2*m/d (6)
    "nadam": 49,
    # decay (5); m lerp (4); v (6); bc1 (4), bc2 (3); m/bc1 (1); rho_inf = 2/(1 - b2) - 1 (3);
    # rho_t = rho_inf - 2t*b2**t/bc2 (5); the rectification, sqrt of a ratio of products (10);
    # sqrt(bc2)/(sqrt(v) + eps) (5); p - m_hat*lr*a*r (5)
    "radam": 51,
    # g + wd*p (3); v <- a*v + (1 - a)*g**2 (6); centered: g_avg lerp (3), sqrt(v - g_avg**2)
    # + eps (5); b <- mu*b + g/d (4); p - lr*b (3)
    "rmsprop": 24,
    # the initial step size lr (1); s*eta (2); p - sign(g)*s (the product by a sign is exact; 1)
    "rprop": 4,
    # g + wd*p (3); eta = lr/(1 + lambd*lr*t)**alpha (9); p*(1 - lambd*eta) (3); p - eta*g (2)
    "asgd": 17,
    # the duplicate rows coalesce sums (3: up to 8 terms); m += (g - m)*(1 - b1) (4);
    # v += (g**2 - v)*(1 - b2) (5); bias corrections (8); lr*sqrt(bc2)/bc1 (4); sqrt(v) + eps
    # (3); p - step*m/d (3)
    "sparse_adam": 30,
    # momentum lerp (4); nesterov lerp (4); the shape ratio and lr (4); decay (5); p + c*O (1).
    # The Newton-Schulz iteration runs in bfloat16 by the same kernels on both sides from the
    # same momentum (the same ops on the same inputs), so it adds no difference: a bfloat16
    # rounding flip there would be 2**16 float32 ulps of the update, and fail, as it should.
    "muon": 18,
}


def ulp_budget(steps: int, ops_per_step: int, ulps_per_op: int = ULPS_PER_OP) -> int:
    """How many ulps of the scale two roundings of ``steps`` steps of ``ops_per_step`` ops may
    differ by: ``steps * ops_per_step * ulps_per_op`` (the error model of the module docstring:
    each op at most ``ulps_per_op`` apart, the steps adding up linearly)."""
    return steps * ops_per_step * ulps_per_op


def ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of ``dtype``'s numbers at magnitude ``|x|``, as a float64 tensor."""
    info = torch.finfo(dtype)
    mag = x.abs().to(torch.float64)
    _, exponent = torch.frexp(mag)  # mag = m * 2**exponent with 0.5 <= m < 1
    spacing = torch.ldexp(torch.full_like(mag, info.eps), exponent - 1)
    spacing = torch.where(mag >= info.tiny, spacing, info.tiny * info.eps)
    return torch.where(mag.isinf(), mag, spacing)


def assert_close_ulps(actual: torch.Tensor, expected: torch.Tensor, *, ulps: float,
                      scale: float | torch.Tensor | None = None, where: str = "") -> None:
    """``|actual - expected| <= ulps * ulp(scale)`` element-wise, in ``actual``'s precision.

    Args:
        actual: the value under test.
        expected: the reference: of ``actual``'s dtype, or a float64/complex128 one.
        ulps: the budget (:func:`ulp_budget`; say at the call why it is that).
        scale: the magnitude whose ulp is the unit: ``None`` for each element's own
            ``|expected[i]|``; a number, or a tensor broadcast against ``expected`` (a
            trajectory's peak, a tensor's max-abs). See the module docstring.
        where: what is compared, for the failure message.

    The failure names the worst element (in ulps), its index, both values, how many ulps it is
    off, the budget and the unit. Equal infinities are equal; a NaN is infinitely far.
    """
    assert actual.shape == expected.shape, \
        f"{where}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype or expected.dtype in (torch.float64, torch.complex128), \
        f"{where}: dtype {actual.dtype} != {expected.dtype}"
    if actual.numel() == 0:
        return
    real = actual.real.dtype if actual.is_complex() else actual.dtype
    a = actual.detach().to(torch.complex128 if actual.is_complex() else torch.float64)
    b = expected.detach().to(a.dtype)
    mag = (b.abs() if scale is None else torch.as_tensor(
        scale, dtype=torch.float64, device=b.device).abs()).expand(b.shape)
    unit = ulp(mag, real)
    off = (torch.where(a == b, 0.0, (a - b).abs()) / unit).nan_to_num(nan=math.inf)
    worst = int(off.argmax())
    if off.flatten()[worst] <= ulps:
        return
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), b.shape))
    raise AssertionError(
        f"{where}: element {index}: actual {a.flatten()[worst].item()}, expected "
        f"{b.flatten()[worst].item()}: {off.flatten()[worst].item():.1f} ulps off > {ulps} ulps "
        f"of {'|expected|' if scale is None else 'the scale'} "
        f"{mag.flatten()[worst].item():.6g} ({real}: 1 ulp = {unit.flatten()[worst].item():.3e})")


def assert_low_precision_trajectory(ours, theirs, peak, largest_step, steps: int,
                                    update_ops: int) -> None:
    """Parameters after ``steps`` steps of two implementations that round differently, in a low
    precision (bfloat16) where an update is about an ulp of the parameter; element-wise.

    Per step each element's ``p + u`` rounds at its own magnitude (``peak``: the element-wise max
    ``|p|`` along the reference run; 1 op, 2 ulps). The update's ``update_ops`` ops round at the
    update's magnitude ``U`` (``largest_step``: the largest ``|p_t+1 - p_t|`` of the tensor, one
    number per tensor): ``update_ops * 2 ulp(U) <= 2 eps * update_ops * U < 4 ulp(update_ops *
    U)``, worth 2 ops at ``update_ops * U``. So ``ulp_budget(steps, 3)`` ulps of
    ``max(peak, update_ops * U)``. In bfloat16 that is about the size of the steps themselves
    (the 31 ops of an AdamW update may be off by ``31 * 2**-7``, a quarter of it, between two
    implementations): the check catches gross errors only.
    """
    for a, b, top, step in zip(ours, theirs, peak, largest_step, strict=True):
        assert_close_ulps(a, b, ulps=ulp_budget(steps, 3),
                          scale=torch.clamp(top.double(), min=update_ops * step))
