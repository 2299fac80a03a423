"""``functional_optim.projections`` (optax's ``optax.projections``) against their formulas written
out, and against their definition: the result lies in the set, projecting twice changes nothing,
and no point of the set is nearer (a brute-force minimization over many points of the set, on
small vectors split over two leaves)."""

from __future__ import annotations

import pytest
import torch

import functional_optim as fo
from functional_optim import projections as P

F64 = torch.float64
N_SAMPLES = 40000


def _x(seed: int, scale: float = 2.0):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(3, generator=gen, dtype=F64) * scale
    return {"a": v[:2], "b": (v[2:], None)}


def _vec(tree) -> torch.Tensor:
    return torch.cat([x.reshape(-1) for x in fo.tree.leaves(tree) if x is not None])


def _tree_of(v: torch.Tensor):
    return {"a": v[:2], "b": (v[2:], None)}


A = torch.tensor([1.0, -2.0, 0.5], dtype=F64)  # the normal of the hyperplane and half-space
UPPER = torch.tensor([0.4, 1.0, 0.3], dtype=F64)


def _simplex_reference(v: torch.Tensor, s: float) -> torch.Tensor:
    """Held et al.'s algorithm as a plain loop: the threshold of the sorted values."""
    u = sorted(v.tolist(), reverse=True)
    total, tau = 0.0, 0.0
    for j, uj in enumerate(u, start=1):
        total += uj
        if uj - (total - s) / j > 0:
            tau = (total - s) / j
    return torch.clamp(v - tau, min=0)


def _in_set(name: str, v: torch.Tensor, tol: float = 1e-12) -> bool:
    l1, l2 = v.abs().sum(), v.norm()
    return {
        "non_negative": bool((v >= -tol).all()),
        "box": bool(((v >= -0.5 - tol) & (v <= UPPER + tol)).all()),
        "hypercube": bool(((v >= -tol) & (v <= 0.7 + tol)).all()),
        "simplex": bool((v >= -tol).all() and abs(float(v.sum()) - 1.5) < 1e-12),
        "l1_sphere": abs(float(l1) - 1.5) < 1e-12,
        "l1_ball": float(l1) <= 1.5 + tol,
        "l2_sphere": abs(float(l2) - 1.5) < 1e-12,
        "l2_ball": float(l2) <= 1.5 + tol,
        "linf_ball": bool((v.abs() <= 0.8 + tol).all()),
        "vector": float(torch.linalg.cross(v, A).norm()) < 1e-12,
        "hyperplane": abs(float(v @ A) - 0.5) < 1e-12,
        "halfspace": float(v @ A) <= 0.5 + tol,
    }[name]


def _samples(name: str) -> torch.Tensor:
    """Many points of the set (N_SAMPLES x 3)."""
    gen = torch.Generator().manual_seed(11)
    n = N_SAMPLES

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, 3, generator=gen, dtype=F64)

    def simplex():
        e = -torch.log(torch.rand(n, 3, generator=gen, dtype=F64))
        return 1.5 * e / e.sum(1, keepdim=True)

    def signs():
        return torch.where(torch.rand(n, 3, generator=gen, dtype=F64) < 0.5, -1.0, 1.0)

    def sphere():
        z = torch.randn(n, 3, generator=gen, dtype=F64)
        return 1.5 * z / z.norm(dim=1, keepdim=True)

    radius = torch.rand(n, 1, generator=gen, dtype=F64) ** (1 / 3)
    plane = torch.randn(n, 3, generator=gen, dtype=F64) * 3
    plane = plane - (plane @ A - 0.5)[:, None] * A / (A @ A)
    return {
        "non_negative": uniform(0.0, 4.0),
        "box": uniform(-0.5, UPPER),
        "hypercube": uniform(0.0, 0.7),
        "simplex": simplex(),
        "l1_sphere": simplex() * signs(),
        "l1_ball": simplex() * signs() * radius,
        "l2_sphere": sphere(),
        "l2_ball": sphere() * radius,
        "linf_ball": uniform(-0.8, 0.8),
        "vector": torch.linspace(-4, 4, n, dtype=F64)[:, None] * A,
        "hyperplane": plane,
        "halfspace": torch.cat([plane, plane - torch.rand(n, 1, generator=gen, dtype=F64) * A]),
    }[name]


PROJECTIONS = {
    "non_negative": lambda x: P.projection_non_negative(x),
    "box": lambda x: P.projection_box(x, -0.5, _tree_of(UPPER)),
    "hypercube": lambda x: P.projection_hypercube(x, 0.7),
    "simplex": lambda x: P.projection_simplex(x, 1.5),
    "l1_sphere": lambda x: P.projection_l1_sphere(x, 1.5),
    "l1_ball": lambda x: P.projection_l1_ball(x, 1.5),
    "l2_sphere": lambda x: P.projection_l2_sphere(x, 1.5),
    "l2_ball": lambda x: P.projection_l2_ball(x, 1.5),
    "linf_ball": lambda x: P.projection_linf_ball(x, 0.8),
    "vector": lambda x: P.projection_vector(x, _tree_of(A)),
    "hyperplane": lambda x: P.projection_hyperplane(x, _tree_of(A), 0.5),
    "halfspace": lambda x: P.projection_halfspace(x, _tree_of(A), 0.5),
}


def _formula(name: str, v: torch.Tensor) -> torch.Tensor:
    """Each projection's formula, on the vector of all elements."""
    l2, coef = v.norm(), (0.5 - v @ A) / (A @ A)
    return {
        "non_negative": torch.clamp(v, min=0),
        "box": torch.minimum(torch.clamp(v, min=-0.5), UPPER),
        "hypercube": torch.clamp(v, 0, 0.7),
        "simplex": _simplex_reference(v, 1.5),
        "l1_sphere": torch.sign(v) * _simplex_reference(v.abs(), 1.5),
        "l1_ball": v if v.abs().sum() <= 1.5 else torch.sign(v) * _simplex_reference(v.abs(), 1.5),
        "l2_sphere": 1.5 * v / l2,
        "l2_ball": v * 1.5 / max(l2, 1.5),
        "linf_ball": torch.clamp(v, -0.8, 0.8),
        "vector": (v @ A) / (A @ A) * A,
        "hyperplane": v + coef * A,
        "halfspace": v + min(coef, 0) * A,
    }[name]


@pytest.mark.parametrize("name", sorted(PROJECTIONS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection(name, seed):
    project = PROJECTIONS[name]
    x = _x(seed, scale=0.3 if seed == 2 else 2.0)  # seed 2: small inputs, inside the balls
    p = project(x)
    assert p["b"][1] is None and p["a"].dtype == F64
    pv, xv = _vec(p), _vec(x)
    torch.testing.assert_close(pv, _formula(name, xv), rtol=1e-12, atol=1e-14)
    assert _in_set(name, pv), f"{name}: {pv} is not in the set"
    torch.testing.assert_close(_vec(project(p)), pv, rtol=1e-12, atol=1e-14)  # idempotent
    ys = _samples(name)
    assert all(_in_set(name, y, tol=1e-9) for y in ys[:50])
    nearest = (ys - xv).norm(dim=1).min()
    assert (pv - xv).norm() <= nearest + 1e-12, f"{name}: a point of the set is nearer"


def test_simplex_gradient_vmap_and_compile():
    """The simplex projection's Jacobian is diag(s) - s s^T/|s| on its support s; it runs under
    vmap and compiles without a graph break (the index is gathered, no host sync)."""
    v = torch.tensor([0.9, 0.2, 0.4, -1.0], dtype=F64)

    def f(v):
        return P.projection_simplex({"v": v})["v"]

    jac = torch.func.jacrev(f)(v)
    support = (f(v) > 0).to(F64)
    expected = torch.diag(support) - support[:, None] * support[None, :] / support.sum()
    torch.testing.assert_close(jac, expected)
    batch = torch.randn(5, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.func.vmap(f)(batch), torch.stack([f(b) for b in batch]))
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(v), f(v))


def test_live_radius_and_empty_trees():
    x = _x(0)
    scale = torch.tensor(1.5, dtype=F64, requires_grad=True)
    out = P.projection_l2_ball(x, scale)
    (g,) = torch.autograd.grad(_vec(out).sum(), scale)
    torch.testing.assert_close(g, _vec(x).sum() / _vec(x).norm())
    assert P.projection_simplex({}) == {} and P.projection_l1_ball({"a": None}) == {"a": None}
    # a number bound beside a tensor one keeps every digit (not rounded to float32)
    box = P.projection_box(x, -0.1, torch.tensor(0.3, dtype=F64))
    torch.testing.assert_close(_vec(box), _vec(x).clamp(-0.1, 0.3), rtol=0, atol=0)
