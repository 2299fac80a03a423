"""functional_optim.implicit: hypergradients by the implicit function theorem."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, vmap

import functional_optim as fo
from functional_optim import implicit, meta

DT = torch.float64
GEN = torch.Generator().manual_seed(0)
A = torch.randn(40, 5, generator=GEN, dtype=DT)
B = torch.randn(40, generator=GEN, dtype=DT)
A_VAL = torch.randn(30, 5, generator=GEN, dtype=DT)
B_VAL = torch.randn(30, generator=GEN, dtype=DT)
L_MAX = float(torch.linalg.matrix_norm(A.T @ A, 2))


def inner_loss(x, lam):
    return ((A @ x - B) ** 2).sum() / 2 + lam * (x ** 2).sum() / 2


def outer_loss(x):
    return ((A_VAL @ x - B_VAL) ** 2).sum() / 2


def closed_form_hypergradient(lam):
    """d outer_loss(x*(λ)) / dλ with x*(λ) = (AᵀA + λI)⁻¹ Aᵀb:  -∇Lᵀ (AᵀA + λI)⁻¹ x*."""
    h = A.T @ A + lam * torch.eye(5, dtype=DT)
    x = torch.linalg.solve(h, A.T @ B)
    return -(A_VAL.T @ (A_VAL @ x - B_VAL)) @ torch.linalg.solve(h, x)


def exact_solver(x0, lam):
    return torch.linalg.solve(A.T @ A + lam * torch.eye(5, dtype=DT), A.T @ B)


def gd_solver(x0, lam):
    """The inner problem solved by functional_optim itself: 150 steps of gradient descent."""
    return meta.unroll(inner_loss, fo.sgd(lr=1.0 / (L_MAX + 1.0)), x0,
                       batches=[(lam,)] * 150).params


SOLVERS = {
    "cg": implicit.cg,
    "normal_cg": implicit.normal_cg,
    "neumann": lambda mv, b, **kw: implicit.neumann(mv, b, maxiter=300,
                                                    alpha=1.0 / (L_MAX + 2.0), **kw),
}


@pytest.mark.parametrize("solve", list(SOLVERS))
@pytest.mark.parametrize("solver", [exact_solver, gd_solver], ids=["exact", "fo_sgd"])
def test_ridge_hypergradient_matches_closed_form(solve, solver):
    ridge = implicit.custom_root(implicit.stationary(inner_loss), solve=SOLVERS[solve])(solver)
    lam = torch.tensor(0.7, dtype=DT)
    objective = lambda lam: outer_loss(ridge(torch.zeros(5, dtype=DT), lam))  # noqa: E731
    expected = closed_form_hypergradient(lam)
    torch.testing.assert_close(grad(objective)(lam), expected, rtol=1e-8, atol=1e-10)
    # and through torch.autograd
    lam_ag = lam.clone().requires_grad_()
    objective(lam_ag).backward()
    torch.testing.assert_close(lam_ag.grad, expected, rtol=1e-8, atol=1e-10)


def test_vmap_over_outer_problems():
    ridge = implicit.custom_root(implicit.stationary(inner_loss))(exact_solver)
    lams = torch.tensor([0.1, 0.5, 1.0, 3.0], dtype=DT)
    g = vmap(grad(lambda lam: outer_loss(ridge(torch.zeros(5, dtype=DT), lam))))(lams)
    expected = torch.stack([closed_form_hypergradient(lam) for lam in lams])
    torch.testing.assert_close(g, expected, rtol=1e-8, atol=1e-10)


def test_pytree_theta_and_solution():
    """θ and x* are dicts; a non-tensor entry in θ is a constant."""
    def inner(x, theta, scale):
        return (scale * ((A @ x["w"] - B) ** 2).sum() / 2
                + theta["lam"] * (x["w"] ** 2).sum() / 2 + theta["mu"] * x["w"].sum())

    @implicit.custom_root(implicit.stationary(inner))
    def solve_inner(x0, theta, scale):
        h = scale * A.T @ A + theta["lam"] * torch.eye(5, dtype=DT)
        return {"w": torch.linalg.solve(h, scale * A.T @ B - theta["mu"])}

    def objective(theta):
        return outer_loss(solve_inner(None, theta, 2.0)["w"])

    theta = {"lam": torch.tensor(0.5, dtype=DT), "mu": torch.tensor(0.3, dtype=DT)}
    g = grad(objective)(theta)
    for k in theta:
        e = 1e-6
        plus = dict(theta, **{k: theta[k] + e})
        minus = dict(theta, **{k: theta[k] - e})
        fd = (objective(plus) - objective(minus)) / (2 * e)
        torch.testing.assert_close(g[k], fd, rtol=1e-7, atol=1e-10)


def test_non_symmetric_fixed_point_needs_normal_cg():
    """F(x, θ) = x - (M x + θ) with a non-symmetric contraction M: x* = (I - M)⁻¹ θ."""
    gen = torch.Generator().manual_seed(3)
    m = torch.randn(6, 6, generator=gen, dtype=DT)
    m = 0.5 * m / torch.linalg.matrix_norm(m, 2)
    c = torch.randn(6, generator=gen, dtype=DT)

    def fixed_point(x0, theta):
        x = x0
        for _ in range(200):
            x = m @ x + theta
        return x

    theta = torch.randn(6, generator=gen, dtype=DT)
    expected = torch.linalg.solve((torch.eye(6, dtype=DT) - m).T, c)  # d(c·x*)/dθ
    for solve in (implicit.normal_cg, lambda mv, b, **kw: implicit.neumann(mv, b, maxiter=200)):
        f = implicit.custom_root(lambda x, th: x - (m @ x + th), solve=solve)(fixed_point)
        g = grad(lambda th, f=f: c @ f(torch.zeros(6, dtype=DT), th))(theta)
        torch.testing.assert_close(g, expected, rtol=1e-9, atol=1e-12)


def test_cg_on_pytrees_and_under_vmap():
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(7, 7, generator=gen, dtype=DT)
    spd = q @ q.T + 7 * torch.eye(7, dtype=DT)

    def matvec(t):
        flat = torch.cat([t["a"], t["b"]])
        out = spd @ flat
        return {"a": out[:3], "b": out[3:]}

    rhs = torch.randn(7, generator=gen, dtype=DT)
    x = implicit.cg(matvec, {"a": rhs[:3], "b": rhs[3:]})
    torch.testing.assert_close(torch.cat([x["a"], x["b"]]), torch.linalg.solve(spd, rhs),
                               rtol=1e-10, atol=1e-12)
    rhs_many = torch.randn(5, 7, generator=gen, dtype=DT)
    xs = vmap(lambda b: implicit.cg(lambda v: spd @ v, b))(rhs_many)
    torch.testing.assert_close(xs, torch.linalg.solve(spd, rhs_many.T).T, rtol=1e-10, atol=1e-12)
    # a zero right-hand side converges at once, no NaN
    assert torch.equal(implicit.cg(lambda v: spd @ v, torch.zeros(7, dtype=DT)),
                       torch.zeros(7, dtype=DT))
    with pytest.raises(TypeError, match="rmatvec"):
        implicit.normal_cg(lambda v: v, rhs)
