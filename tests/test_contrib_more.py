"""optax.contrib's other algorithms (``aliases.contrib_more`` and their blocks) against their
reference formulas, written out plainly below from optax's source (``optax/contrib/_adopt.py``,
``_acprop.py``, ``_ademamix.py``, ``_madgrad.py``, ``_sophia.py``, ``_sam.py``, ``_galore.py``,
``_privacy.py``): float64 trajectories of 25 steps on a few shapes, non-default arguments,
~1e-10 relative. Then the drop-in classes' own steps (SAM's two passes, Sophia's
Hessian-vector products from ``create_graph``, DP-SGD's ``p.grad_sample``).

Random draws (Hutchinson's probes, DP-SGD's noise) are the documented stream of
:mod:`functional_optim._random`; the references read it where they need the same numbers.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import functional_optim as fo
from functional_optim import _random
from functional_optim import optim as fo_optim

pytestmark = pytest.mark.filterwarnings(  # Sophia's drop-in takes create_graph gradients
    "ignore:Using backward\\(\\) with create_graph=True:UserWarning")

STEPS = 25
SHAPES = [(3,), (2, 4), (5, 3)]
RTOL = 1e-10


def _params(shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def _grad_fn(seed=1):
    """A step's gradients at ``params``: a quartic bowl's plus a fixed random term per step."""
    noise = {}

    def grads(params, step):
        if step not in noise:
            g = torch.Generator().manual_seed(seed * 1000 + step)
            noise[step] = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        return [p ** 3 / 3 + p + 0.5 * n for p, n in zip(params, noise[step])]

    return grads


def _trajectory(tx, params, grads, steps=STEPS, **extra):
    """The library's parameters after each step (as a list tree)."""
    state = tx.init(params)
    out = []
    for t in range(steps):
        u, state = tx.update(grads(params, t), state, params, **extra)
        params = fo.apply_updates(params, u)
        out.append(params)
    return out


def _reference(step, params, grads, steps=STEPS):
    """``step(t, p, g, i) -> new p`` applied leaf by leaf (leaf index ``i``)."""
    out = []
    for t in range(steps):
        g = grads(params, t)
        params = [step(t, p, gi, i) for i, (p, gi) in enumerate(zip(params, g))]
        out.append(params)
    return out


def _close(actual, expected, rtol=RTOL):
    for t, (a, e) in enumerate(zip(actual, expected)):
        for x, y in zip(a, e):
            torch.testing.assert_close(x, y, rtol=rtol, atol=rtol * float(y.abs().max()),
                                       msg=lambda m, t=t: f"step {t}: {m}")


class _Leafwise:
    """Per-leaf state of a reference, created on first use."""

    def __init__(self, **zeros_like):
        self.state: dict = {}
        self.zeros = zeros_like

    def __call__(self, i, p):
        if i not in self.state:
            self.state[i] = {k: (torch.zeros_like(p) if v is None else v(p))
                             for k, v in self.zeros.items()}
        return self.state[i]


# -- ADOPT ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("nesterov, clipping, decay", [
    (False, True, None), (True, True, "coupled"), (False, False, "decoupled")])
def test_adopt(nesterov, clipping, decay):
    lr, b1, b2, eps, wd = 0.03, 0.8, 0.95, 1e-3, 0.1
    tx = fo.adopt(lr, (b1, b2), eps, 0.0 if decay is None else wd, nesterov=nesterov,
                  clip_value=fo.adopt_clip_value if clipping else None,
                  decoupled_weight_decay=decay == "decoupled")
    s = _Leafwise(mu=None, nu=None)

    def step(t, p, g, i):
        st = s(i, p)
        if decay == "coupled":
            g = g + wd * p
        b1_, b2_ = (1.0, 0.0) if t == 0 else (b1, b2)
        normalized = g / torch.clamp(torch.sqrt(st["nu"]), min=eps)
        if clipping:
            normalized = torch.clamp(normalized, -t ** 0.25, t ** 0.25)
        st["nu"] = b2_ * st["nu"] + (1 - b2_) * g * g
        st["mu"] = b1_ * st["mu"] + (1 - b1_) * normalized
        u = b1_ * st["mu"] + (1 - b1_) * normalized if nesterov else st["mu"]
        if decay == "decoupled":
            u = u + wd * p
        return p - lr * u

    grads = _grad_fn()
    _close(_trajectory(tx, _params(), grads), _reference(step, _params(), grads))


# -- ACProp --------------------------------------------------------------------------------------

def test_acprop():
    lr, b1, b2, eps, eps_root, wd = 0.02, 0.85, 0.9, 1e-6, 1e-8, 0.05
    tx = fo.acprop(lr, (b1, b2), eps, eps_root, wd)
    s = _Leafwise(mu=None, nu=None)

    def step(t, p, g, i):
        st = s(i, p)
        nu_hat = torch.ones_like(p) if t == 0 else st["nu"] / (1 - b2 ** t)
        u = g / (torch.sqrt(nu_hat) + eps)  # optax's: the gradient over the previous nu
        error = g - st["mu"]
        st["mu"] = b1 * st["mu"] + (1 - b1) * g
        st["nu"] = b2 * st["nu"] + (1 - b2) * error * error + eps_root
        return p - lr * (u + wd * p)

    grads = _grad_fn()
    _close(_trajectory(tx, _params(), grads), _reference(step, _params(), grads))


# -- AdEMAMix ------------------------------------------------------------------------------------

def test_ademamix():
    lr, b1, b2, b3, alpha, eps, eps_root, wd = 0.01, 0.8, 0.95, 0.99, 3.0, 1e-6, 1e-9, 0.1
    tx = fo.ademamix(lr, (b1, b2, b3), alpha, eps, eps_root, wd)
    s = _Leafwise(m1=None, m2=None, nu=None)

    def step(t, p, g, i):
        st = s(i, p)
        st["m1"] = b1 * st["m1"] + (1 - b1) * g
        st["m2"] = b3 * st["m2"] + (1 - b3) * g
        st["nu"] = b2 * st["nu"] + (1 - b2) * g * g
        m1_hat = st["m1"] / (1 - b1 ** (t + 1))
        nu_hat = st["nu"] / (1 - b2 ** (t + 1))
        u = (m1_hat + alpha * st["m2"]) / (torch.sqrt(nu_hat + eps_root) + eps)
        return p - lr * (u + wd * p)

    grads = _grad_fn()
    _close(_trajectory(tx, _params(), grads), _reference(step, _params(), grads))


def test_simplified_ademamix():
    lr, b1, b2, alpha, eps, eps_root, wd = 0.003, 0.9, 0.8, 2.0, 1e-6, 1e-9, 0.1
    tx = fo.simplified_ademamix(lr, (b1, b2), alpha, eps, eps_root, wd)
    s = _Leafwise(m=None, n=None)

    def step(t, p, g, i):
        st = s(i, p)
        st["m"] = b1 * st["m"] + g  # an accumulation, not a mean
        st["n"] = b2 * st["n"] + (1 - b2) * g * g
        n_hat = st["n"] / (1 - b2 ** (t + 1))
        u = (st["m"] + alpha * g) / (torch.sqrt(n_hat + eps_root) + eps)
        return p - lr * (u + wd * p)

    grads = _grad_fn()
    _close(_trajectory(tx, _params(), grads), _reference(step, _params(), grads))


# -- MADGRAD -------------------------------------------------------------------------------------

def test_madgrad():
    lr, momentum, wd, eps = 0.05, 0.7, 0.1, 1e-5
    tx = fo.madgrad(lr, momentum, wd, eps)
    s = _Leafwise(big_g=None, s=None, x0=torch.clone)

    def step(t, p, g, i):
        st = s(i, p)
        g = g + wd * p
        lamb = (lr + eps) * math.sqrt(t + 1)
        st["big_g"] = st["big_g"] + lamb * g * g
        st["s"] = st["s"] + lamb * g
        z = st["x0"] - st["s"] / (torch.pow(st["big_g"], 1 / 3) + eps)
        return (1 - momentum) * z + momentum * p

    grads = _grad_fn()
    _close(_trajectory(tx, _params(), grads), _reference(step, _params(), grads))


# -- Sophia and Hutchinson's estimator -----------------------------------------------------------

def _diagonal_hvp(params, v):
    """The Hessian-vector product of the quartic bowl (``_grad_fn`` without its noise):
    ``(p^2 + 1) v``, a diagonal Hessian, so Hutchinson's estimate is exact."""
    return [(p * p + 1) * x for p, x in zip(params, v)]


def _quartic(params):
    return sum((p ** 4 / 12 + p * p / 2).sum() for p in params)


@pytest.mark.parametrize("extra", ["hvp_fn", "obj_fn"])
def test_sophia(extra):
    lr, b1, b2, eps, wd, gamma, clip, k = 0.05, 0.9, 0.8, 1e-4, 0.1, 0.5, 0.7, 3
    tx = fo.sophia(lr, (b1, b2), eps, wd, gamma, clip, update_interval=k, seed=5)
    s = _Leafwise(mu=None, nu=None)

    def step(t, p, g, i):
        st = s(i, p)
        st["mu"] = b1 * st["mu"] + (1 - b1) * g
        u = (st["mu"] / (1 - b1 ** (t + 1))) / torch.clamp(gamma * st["nu"], min=eps)
        u = torch.clamp(u, -clip, clip)
        if t % k == 0:  # Hutchinson's estimate of the diagonal Hessian p^2 + 1: exact here
            st["nu"] = b2 * st["nu"] + (1 - b2) * (p * p + 1)
        return p - lr * (u + wd * p)

    grads = _grad_fn()
    kwargs = {"hvp_fn": _diagonal_hvp} if extra == "hvp_fn" else {"obj_fn": _quartic}
    _close(_trajectory(tx, _params(), grads, **kwargs), _reference(step, _params(), grads))


def test_hutchinson_estimator_draws_documented_probes():
    """``v ⊙ (H v)`` with ``v`` the Rademacher probes of the key's stream (leaf ``i``: salt
    ``i``), the key advanced once per update; a dense symmetric Hessian per leaf."""
    params = _params([(4,), (3,)])
    mats = []
    for p in params:
        a = torch.randn(p.numel(), p.numel(), dtype=torch.float64)
        mats.append(a + a.T)

    def hvp(ps, v):
        return [m @ x for m, x in zip(mats, v)]

    tx = fo.hutchinson_estimator_diag_hessian(seed=7)
    state = tx.init(params)
    key = _random.key(7)
    for _ in range(3):
        out, state = tx.update(params, state, params, hvp_fn=hvp)
        for i, (o, p, m) in enumerate(zip(out, params, mats)):
            v = _random.rademacher(key, i, p)
            torch.testing.assert_close(o, v * (m @ v), rtol=1e-14, atol=1e-14)
        key = _random.next_key(key)
    # unbiased: the mean over many probes approaches the diagonal
    state, total, n = tx.init(params), [torch.zeros_like(p) for p in params], 400
    for _ in range(n):
        out, state = tx.update(params, state, params, hvp_fn=hvp)
        total = [a + b for a, b in zip(total, out)]
    for t, m in zip(total, mats):
        assert (t / n - m.diagonal()).abs().max() < 5 * m.abs().max() / n ** 0.5


# -- SAM and normalize ---------------------------------------------------------------------------

def _quartic_grads(params):
    return [p ** 3 / 3 + p for p in params]


def _sam_reference(params, lr, rho, momentum, wd, eps, adaptive, nesterov, cycles):
    """davda54/sam's SAM around torch.optim.SGD: ascend to ``p + ρ e``, take the gradient there,
    step from ``p``; returns the parameters after each cycle."""
    bufs: list = [None] * len(params)
    out = []
    for _ in range(cycles):
        g = _quartic_grads(params)
        scaled = [gi * p.abs() for gi, p in zip(g, params)] if adaptive else g
        norm = torch.sqrt(sum((x * x).sum() for x in scaled))
        e = [(p * p if adaptive else 1) * gi * rho / (norm + eps) for p, gi in zip(params, g)]
        g2 = _quartic_grads([p + ei for p, ei in zip(params, e)])
        new = []
        for i, (p, gi) in enumerate(zip(params, g2)):
            d = gi + wd * p
            bufs[i] = d.clone() if bufs[i] is None else momentum * bufs[i] + d
            step = d + momentum * bufs[i] if nesterov else bufs[i]
            new.append(p - lr * step)
        params = new
        out.append(params)
    return out


@pytest.mark.parametrize("adaptive, nesterov", [(False, False), (True, True)])
def test_sam_sgd_transparent(adaptive, nesterov):
    lr, rho, momentum, wd, eps = 0.05, 0.1, 0.8, 0.01, 1e-6
    tx = fo.sam_sgd(lr, rho, momentum, 0.0, wd, nesterov, adaptive=adaptive, eps=eps)
    passes = _trajectory(tx, _params(), lambda ps, t: _quartic_grads(ps), steps=2 * 12)
    _close(passes[1::2], _sam_reference(_params(), lr, rho, momentum, wd, eps, adaptive,
                                        nesterov, 12))


def test_sam_opaque():
    """One ``update`` per SAM step; ``grad_fn`` gives the gradient at the perturbed point;
    optax's ``normalize`` (no ε) in the adversarial chain."""
    lr, rho = 0.05, 0.1
    tx = fo.sam(fo.sgd(lr), fo.chain(fo.normalize(), fo.scale_by_learning_rate(rho)),
                opaque_mode=True)
    actual = _trajectory(tx, _params(), lambda ps, t: _quartic_grads(ps), steps=12,
                         grad_fn=lambda ps, i: _quartic_grads(ps))
    _close(actual, _sam_reference(_params(), lr, rho, 0.0, 0.0, 0.0, False, False, 12))


def test_normalize():
    params = _params()
    g = _quartic_grads(params)
    out, _ = fo.normalize().update(g, fo.normalize().init(params))
    norm = torch.sqrt(sum((x * x).sum() for x in g))
    _close([out], [[x / norm for x in g]], rtol=1e-14)
    out, _ = fo.normalize(0.5, adaptive=True).update(g, None, params)
    norm = torch.sqrt(sum(((x * p.abs()) ** 2).sum() for x, p in zip(g, params)))
    _close([out], [[p * p * x / (norm + 0.5) for x, p in zip(g, params)]], rtol=1e-14)


# -- GaLore --------------------------------------------------------------------------------------

def _canonical(p):
    """Columns signed so that each one's largest-magnitude entry is positive (the library's
    documented choice of the singular vectors' signs)."""
    top = p.gather(0, p.abs().argmax(0, keepdim=True))
    return p * torch.where(top < 0, -1.0, 1.0)


def test_galore_adamw():
    """Adam on the projected gradient of each 2-D leaf (left singular vectors of a tall one,
    right ones of a wide one), unprojected on the 1-D leaf; the projector refreshed every
    ``T`` steps; decoupled decay in the full space."""
    lr, b1, b2, eps, wd, scale, rank, gap = 0.01, 0.8, 0.9, 1e-6, 0.1, 0.5, 2, 4
    shapes = [(3,), (2, 4), (5, 3)]
    tx = fo.galore_adamw(lr, (b1, b2), eps, wd, scale, rank=rank, update_proj_gap=gap,
                         svd_dtype=None)
    s = _Leafwise(m=None, v=None, P=None)

    def step(t, p, g, i):
        st = s(i, p)
        if p.ndim == 2:
            left = p.shape[0] >= p.shape[1]
            if t % gap == 0:
                u_, _, vh = torch.linalg.svd(g, full_matrices=False)
                st["P"] = _canonical(u_[:, :rank] if left else vh[:rank].T)
            g = st["P"].T @ g if left else g @ st["P"]
        if st["m"].shape != g.shape:
            st["m"], st["v"] = torch.zeros_like(g), torch.zeros_like(g)
        st["m"] = b1 * st["m"] + (1 - b1) * g
        st["v"] = b2 * st["v"] + (1 - b2) * g * g
        u = (st["m"] / (1 - b1 ** (t + 1))) / (torch.sqrt(st["v"] / (1 - b2 ** (t + 1))) + eps)
        if p.ndim == 2:
            u = scale * (st["P"] @ u if left else u @ st["P"].T)
        return p - lr * (u + wd * p)

    grads = _grad_fn()
    _close(_trajectory(tx, _params(shapes), grads), _reference(step, _params(shapes), grads))


def test_galore_dimension_numbers_views_a_3d_leaf():
    """A ``(4, 2, 3)`` leaf viewed as ``(4, 6)`` by ``GaLoreDimensionNumbers(0, (1, 2))``:
    the same updates as the ``(4, 6)`` matrix."""
    g = torch.randn(4, 2, 3, dtype=torch.float64)
    tx3 = fo.scale_by_galore(2, 3, weight_dimension_numbers=fo.GaLoreDimensionNumbers(0, (1, 2)),
                             svd_dtype=None)
    tx2 = fo.scale_by_galore(2, 3, svd_dtype=None)
    s3, s2 = tx3.init([g]), tx2.init([g.reshape(4, 6)])
    for k in range(4):
        u3, s3 = tx3.update([g * (k + 1)], s3)
        u2, s2 = tx2.update([g.reshape(4, 6) * (k + 1)], s2)
        torch.testing.assert_close(u3[0].reshape(4, 6), u2[0], rtol=1e-13, atol=1e-13)


# -- DP-SGD --------------------------------------------------------------------------------------

def _per_example(params, t, batch=4):
    """Per-example gradients (a leading batch axis) of different norms, so that clipping acts."""
    g = torch.Generator().manual_seed(100 + t)
    return [torch.stack([(b + 1) * 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype)
                         + p for b in range(batch)]) for p in params]


@pytest.mark.parametrize("sigma, momentum, nesterov", [(0.0, 0.0, False), (0.7, 0.6, True)])
def test_dpsgd(sigma, momentum, nesterov):
    lr, clip, seed = 0.1, 1.5, 11
    tx = fo.dpsgd(lr, clip, sigma, momentum, nesterov, seed=seed)
    params = _params()
    expected, ps, bufs, key = [], list(params), [None] * len(params), _random.key(seed)
    for t in range(STEPS):
        g = _per_example(ps, t)
        norms = torch.sqrt(sum((x * x).flatten(1).sum(1) for x in g))
        factor = torch.clamp(clip / norms, max=1.0)
        new = []
        for i, (p, x) in enumerate(zip(ps, g)):
            mean = (torch.tensordot(factor, x, dims=1)
                    + sigma * clip * _random.normal(key, i, p)) / x.shape[0]
            bufs[i] = mean if bufs[i] is None else mean + momentum * bufs[i]
            new.append(p - lr * (mean + momentum * bufs[i] if nesterov else bufs[i]))
        ps, key = new, _random.next_key(key)
        expected.append(ps)
    _close(_trajectory(tx, params, _per_example), expected)


# -- the drop-in classes' own steps --------------------------------------------------------------

def _module_params():
    return [torch.nn.Parameter(p.clone()) for p in _params()]


def test_drop_in_sam_closure_runs_both_passes():
    """``SAM.step(closure)``: the ascent with the gradients present, the closure at the
    perturbed point, the SGD step from the point before it; davda54/sam's numbers, with the
    norm over both param groups."""
    lr, rho, momentum = 0.05, 0.1, 0.8
    params = _module_params()
    opt = fo_optim.SAM([{"params": params[:1]}, {"params": params[1:]}], lr=lr, rho=rho,
                       momentum=momentum)

    def closure():
        opt.zero_grad()
        loss = _quartic(params)
        loss.backward()
        return loss

    expected = _sam_reference(_params(), lr, rho, momentum, 0.0, 1e-12, False, False, 10)
    actual = []
    for _ in range(10):
        closure()
        loss = opt.step(closure)
        assert isinstance(loss, torch.Tensor)
        actual.append([p.detach().clone() for p in params])
    _close(actual, expected)


def test_drop_in_sophia_takes_hvp_from_create_graph():
    lr, k = 0.05, 2
    params = _module_params()
    opt = fo_optim.Sophia([{"params": params[:2]}, {"params": params[2:]}], lr=lr,
                          update_interval=k)
    tx = fo.sophia(lr, update_interval=k)
    ps = _params()
    state = tx.init(ps)
    for _ in range(6):
        opt.zero_grad()
        _quartic(params).backward(create_graph=True)
        opt.step()
        u, state = tx.update(_quartic_grads(ps), state, ps, hvp_fn=_diagonal_hvp)
        ps = fo.apply_updates(ps, u)
    _close([[p.detach() for p in params]], [ps])
    opt.zero_grad()
    _quartic(params).backward()
    with pytest.raises(RuntimeError, match="create_graph=True"):
        opt.step()


def test_drop_in_sophia_coupled_groups():
    """A loss coupling two param groups: every group's Hessian-vector product is taken before
    any parameter moves (the graph stays valid)."""
    a, b = torch.nn.Parameter(torch.ones(2, dtype=torch.float64)), torch.nn.Parameter(
        torch.full((2,), 2.0, dtype=torch.float64))
    opt = fo_optim.Sophia([{"params": [a]}, {"params": [b]}], lr=0.1, update_interval=1)
    for _ in range(3):
        opt.zero_grad()
        ((a * b) ** 2).sum().backward(create_graph=True)
        opt.step()
    assert torch.isfinite(a).all() and torch.isfinite(b).all()


def test_drop_in_dpsgd_reads_grad_sample():
    lr, clip, sigma = 0.1, 1.5, 0.5
    params = _module_params()
    opt = fo_optim.DPSGD(params, lr=lr, l2_norm_clip=clip, noise_multiplier=sigma, seed=4)
    tx = fo.dpsgd(lr, clip, sigma, seed=4)
    ps = _params()
    state = tx.init(ps)
    for t in range(5):
        for p, g in zip(params, _per_example([p.detach() for p in params], t)):
            p.grad_sample = g
        opt.step()
        u, state = tx.update(_per_example(ps, t), state, ps)
        ps = fo.apply_updates(ps, u)
        opt.zero_grad()
        assert all(p.grad_sample is None for p in params)
    _close([[p.detach() for p in params]], [ps])
    with pytest.raises(TypeError, match="grad_sample"):
        opt.use_flat()


def test_drop_in_state_copies_are_not_graphs():
    """State made from the parameters (MADGRAD's ``x0``; the generic adapter's lookahead) is a
    plain copy: the optimizer deep-copies after a step (it failed: the copy was made under
    grad mode, a non-leaf of the parameters' graph)."""
    for opt_of in (lambda ps: fo_optim.MADGRAD(ps),
                   lambda ps: fo.optim.FunctionalOptimizer(
                       ps, transform=fo.lookahead(fo.sgd(0.1), 2, 0.5))):
        params = _module_params()
        opt = opt_of(params)
        _quartic(params).backward()
        opt.step()
        copied = copy.deepcopy(opt)
        for leaf in copied.state_dict()["state"][0].values():
            if isinstance(leaf, torch.Tensor):
                assert leaf.grad_fn is None and not leaf.requires_grad


def loss_scaled_sgd(lr: float = 0.1):
    """SGD whose step is scaled by the loss (``update(..., value=loss)``)."""

    def update(updates, state, params=None, hparams=None, *, value, **extra):
        h = fo.base.resolve_hparams({"lr": lr}, hparams, "loss_scaled_sgd hparams")
        return fo.tree.map(lambda g: -h["lr"] * value * g, updates), state

    return fo.Transform(lambda params: fo.EmptyState(), update, {"lr": lr})


def test_loss_as_value_protocol():
    """``registry.LOSS_AS_VALUE``: ``step(closure)`` passes the closure's loss as ``value=``;
    without a closure it says what it needs."""
    entry = fo.registry.Entry("loss_scaled_sgd", loss_scaled_sgd, "a test", "LossScaledSGD",
                              fo.registry.LOSS_AS_VALUE)
    cls = fo.optim.generated.drop_in_class(entry, module=__name__)
    params = _module_params()
    opt = cls(params, lr=0.1)
    expected = _params()
    for _ in range(3):
        opt.zero_grad()
        loss = _quartic(params)
        loss.backward()
        assert opt.step(lambda loss=loss: loss) is loss
        value = _quartic(expected)
        expected = [p - 0.1 * value * g for p, g in zip(expected, _quartic_grads(expected))]
    _close([[p.detach() for p in params]], [expected], rtol=1e-13)
    with pytest.raises(RuntimeError, match="closure that returns the loss"):
        opt.step()
