"""On a CUDA GPU (``pytest -m cuda``; skipped without one).

DESIGN.md §2.5: capture one update in a ``torch.cuda.CUDAGraph``, replay it N times, equal to N
eager steps, with hyperparameters changed in place (``fill_``) between replays honoured, and no
implicit host-device sync. And the eager steps on CUDA tensors: torch's CUDA kernels under
``fo.step`` and the drop-in classes, and every drop-in class against torch.optim there.
"""

import optree
import pytest
import torch
from conformance import CASES, tensor_hparams
from test_blocked import CASES as BLOCKED_CASES
from test_blocked import _close, _ops
from tolerance import UPDATE_OPS, assert_close_ulps, ulp_budget

import functional_optim as fo

pytestmark = pytest.mark.cuda

# Cases documented as not capturable (Case.excluded: LBFGS's host-side decisions, sparse COO)
# are left out here for the same reason.
CAPTURABLE = [c for c in CASES if not c.exclusion("test_capturable_fake_cuda_trace")]
CAPTURED = [c for c in CAPTURABLE if c.name in {
    "scale_by_adam_amsgrad_eps_root", "scale_by_rms_centered", "trace_nesterov",
    "clip_by_global_norm", "sgd_momentum_wd_nesterov", "adam_amsgrad_wd_maximize", "adamw",
    "adamw_schedule", "chain", "chain_named", "adafactor", "muon", "nadam", "radam",
    "multi_steps", "apply_if_finite", "lookahead", "inject_hparams_alias"}]


def _leaves(tree):
    return [x for x in optree.tree_leaves(tree, none_is_leaf=True) if isinstance(x, torch.Tensor)]


@pytest.mark.parametrize("case", CAPTURED, ids=[c.name for c in CAPTURED])
def test_capture_replay_equals_eager(case):
    device = "cuda"
    tx = case.make()
    params = case.params_tree(0, device=device)
    hp, rebuild = tensor_hparams(tx.hparams, device=device)
    state = tx.init(params)
    grads = case.grads_tree(1, device=device)

    eager_params = optree.tree_map(torch.clone, params)
    eager_state = optree.tree_map(torch.clone, state, none_is_leaf=True)
    eager_hp = [h.clone() for h in hp]

    step = fo.capture.inplace_step(tx)
    graph = fo.capture.capture(step, grads, state, params, rebuild(hp))

    for i in range(6):
        factor = 1.0 - 0.05 * i  # hyperparameters change between replays
        for h, e in zip(hp, eager_hp):
            h.fill_(e.item() * factor if i else e.item())
        new_grads = case.grads_tree(10 + i, device=device)
        for g, n in zip(_leaves(grads), _leaves(new_grads)):
            g.copy_(n)
        graph.replay()
        step(new_grads, eager_state, eager_params, rebuild([h.clone() for h in hp]))
    torch.cuda.synchronize()
    for a, b in zip(_leaves(params), _leaves(eager_params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(_leaves(state), _leaves(eager_state)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CAPTURABLE, ids=[c.name for c in CAPTURABLE])
def test_update_does_not_sync(case):
    tx = case.make()
    params = case.params_tree(0, device="cuda")
    grads = case.grads_tree(1, device="cuda")
    hp, rebuild = tensor_hparams(tx.hparams, device="cuda")
    state = tx.init(params)
    tx.update(grads, state, params, rebuild(hp))  # first call: lazy CUDA init may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        updates, state = tx.update(grads, state, params, rebuild(hp))
        fo.apply_updates(params, updates)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("live_lr", [False, True], ids=["schedule_chain", "adamw_live_lr"])
def test_train_step_graph_equals_eager(live_lr):
    """A whole step (forward, backward, update) captured by ``train_step`` replays as the same
    step run eagerly, with the lr changed in place between replays."""
    from test_capture import _batch, _chain, _loss, _mlp

    lr = torch.tensor(0.05, dtype=torch.float64, device="cuda")
    tx = fo.adamw(lr=lr, weight_decay=0.1) if live_lr else _chain()
    hparams = {"lr": lr} if live_lr else None
    steps = {}
    for graph in (True, False):
        params = _mlp(device="cuda")
        state = tx.init(params)
        steps[graph] = (params, state, fo.capture.train_step(
            _loss, tx, params, state, *_batch(0, "cuda"), hparams=hparams, graph=graph))
    assert steps[True][2].graph is not None and steps[False][2].graph is None
    for i in range(6):
        lr.fill_(0.05 * 0.9 ** i)
        batch = _batch(i, "cuda")
        captured = steps[True][2](*batch).clone()
        eager = steps[False][2](*batch)
        torch.testing.assert_close(captured, eager, rtol=1e-10, atol=1e-12)
    torch.cuda.synchronize()
    for a, b in zip(_leaves(steps[True][:2]), _leaves(steps[False][:2])):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_dropin_in_whole_network_capture_matches_torch(name):
    """PyTorch's whole-network capture recipe with a drop-in (capturable=True) gives the numbers
    of torch.optim's capturable optimizer run eagerly on the same batches."""
    import copy

    from functional_optim import optim as foo

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 1)).cuda()
    reference = copy.deepcopy(model)
    opt = getattr(foo, name)(model.parameters(), lr=1e-2, weight_decay=0.1, capturable=True)
    ref = getattr(torch.optim, name)(reference.parameters(), lr=1e-2, weight_decay=0.1,
                                     capturable=True)
    batches = [(torch.randn(64, 16, device="cuda"), torch.randn(64, 1, device="cuda"))
               for _ in range(8)]
    x, y = (t.clone() for t in batches[0])

    def train(m, o, bx, by):
        o.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(m(bx), by)
        loss.backward()
        o.step()
        return loss

    peak = [p.abs().max().item() for p in reference.parameters()]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up steps, taken by both
        for bx, by in batches[:3]:
            train(model, opt, bx, by)
            train(reference, ref, bx, by)
            peak = [max(top, p.abs().max().item()) for top, p in zip(peak, reference.parameters())]
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = train(model, opt, x, y)
    for bx, by in batches[3:]:
        x.copy_(bx)
        y.copy_(by)
        graph.replay()
        loss = train(reference, ref, bx, by)
        peak = [max(top, p.abs().max().item()) for top, p in zip(peak, reference.parameters())]
        torch.testing.assert_close(static_loss, loss, rtol=1e-5, atol=1e-6)
    # float32: the 8 steps of the update rule's ops, 2 ulps each, of each tensor's peak (each
    # side's gradients come from its own parameters: a difference feeds back, by little at lr
    # 0.01). At least the former rtol=1e-5, atol=1e-6 wherever the peak is over 0.052, as for
    # every tensor of this seeded model (its smallest, the last bias, starts at 0.059).
    for a, b, top in zip(model.parameters(), reference.parameters(), peak):
        assert_close_ulps(a, b, ulps=ulp_budget(8, UPDATE_OPS[name.lower()]), scale=top)


GPU_STEPS = {
    "adamw": ("adamw", "_fused_adamw_"), "adam_amsgrad": ("adam", "_fused_adam_"),
    "sgd": ("sgd", "_fused_sgd_"), "user_chain": ("adamw", "_fused_adamw_"),
    "adagrad": ("adagrad", None),  # (torch's Adagrad kernel is for the CPU alone: the chain runs)
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", GPU_STEPS)
def test_step_on_the_gpu_runs_the_kernel_with_the_chains_numbers(name, dtype, monkeypatch):
    """``fo.step`` on CUDA tensors, donated and pure, runs torch's CUDA kernel where it has one
    and gives the chain's numbers. The CUDA kernels read a tensor lr (the user chain's schedule:
    float64) and each count (ours: int64) as float32; given as they are, the lr raised and an
    int64 count read as 1e-45, a step of inf. A float64 schedule's lr for float64 parameters
    stays on the chain (rounded to float32, it moved them by 1e-9 relative)."""
    from test_donation import ALIASES, _clone, _pure, _trees

    algo, kernel = GPU_STEPS[name]
    calls = []
    if kernel is not None:
        real = getattr(torch, kernel)
        monkeypatch.setattr(torch, kernel, lambda *a, **k: calls.append(1) or real(*a, **k))
    tx = ALIASES[name]()
    params, grads = optree.tree_map(lambda x: x.cuda(), _trees(dtype=dtype))
    expected, state = _pure(tx, params, grads)
    peak = max(float(p.abs().max()) for p in (*params.values(), *expected.values()))
    donated, pure = (_clone(params), tx.init(params)), (params, tx.init(params))
    for g in grads:
        donated = fo.step(tx, g, donated[1], donated[0], donate=True)
        pure = fo.step(tx, g, pure[1], pure[0])
    runs = kernel and not (name == "user_chain" and dtype == torch.float64)
    assert len(calls) == (2 * len(grads) if runs else 0)
    for got in (donated, pure):
        for a, b in zip(optree.tree_leaves(got[0]), optree.tree_leaves(expected)):
            assert a.device == b.device and a.dtype == b.dtype
            # float32: 3 steps of the algorithm's ops (+ the clip's 3), 2 ulps each, at the
            # largest parameter; float64: a fused kernel's order, as on the CPU
            if dtype == torch.float32:
                assert_close_ulps(a, b, ulps=ulp_budget(3, UPDATE_OPS[algo] + 3), scale=peak)
            else:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        for a, b in zip(optree.tree_leaves(got[1]), optree.tree_leaves(state)):
            if not a.is_floating_point():
                assert torch.equal(a, b)  # every count advanced once per step


ADVANCED_COUNTS = {
    "rmsprop": lambda: fo.rmsprop(lr=0.01, centered=True, weight_decay=0.1),
    "adadelta": lambda: fo.adadelta(weight_decay=0.1),
}


@pytest.mark.parametrize("name", ADVANCED_COUNTS)
def test_functional_blocked_step_on_the_gpu_advances_device_counts(name, monkeypatch):
    """RMSprop's and Adadelta's rules only advance their step counts (no coefficient reads
    them), so ``fo.step`` on the functional state, whose counts are on the GPU, runs their
    blocked program there, donated and pure (a foreach kernel adds one to the counts, no value
    read on the host), with the chain's numbers (float64: the program's rounding order) and
    the chain's counts."""
    from test_donation import _clone, _pure, _trees

    from functional_optim import _blocked

    runs = []
    real = _blocked._Programs.run
    monkeypatch.setattr(_blocked._Programs, "run",
                        lambda self, *a: runs.append(1) or real(self, *a))
    tx = ADVANCED_COUNTS[name]()
    params, grads = optree.tree_map(lambda x: x.cuda(), _trees())
    with monkeypatch.context() as m:
        m.setattr(_blocked._Programs, "run", real)
        expected, state = _pure(tx, params, grads)
    donated, pure = (_clone(params), tx.init(params)), (params, tx.init(params))
    for g in grads:
        donated = fo.step(tx, g, donated[1], donated[0], donate=True)
        pure = fo.step(tx, g, pure[1], pure[0])
    assert len(runs) == 2 * len(grads)
    for got in (donated, pure):
        for a, b in zip(optree.tree_leaves(got[0]), optree.tree_leaves(expected)):
            assert a.device == b.device and a.dtype == b.dtype
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        for a, b in zip(optree.tree_leaves(got[1]), optree.tree_leaves(state)):
            assert a.device == b.device
            if not a.is_floating_point():
                assert torch.equal(a, b)  # every count advanced once per step


def _kernels(fn) -> int:
    """The CUDA kernels one call of ``fn`` launches (the profiler's device events)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


@pytest.mark.parametrize("name", ["adamw", "adam_amsgrad", "sgd", "adagrad", "rmsprop",
                                  "adadelta", "adamax", "nadam", "radam", "asgd", "rprop",
                                  "user_chain"])
def test_host_counts_on_the_gpu_give_the_device_counts_numbers(name):
    """A state made within ``fo.host_counts()`` (per-leaf counts on the CPU, as torch.optim
    keeps them) steps GPU parameters with the numbers of the device counts' state: the pure
    update, the pure ``fo.step`` and the donated one (float64: the coefficients' rounding, the
    fused and blocked steps' order); its per-leaf 0-d state (counts, NAdam's ``mu_product``,
    ASGD's ``eta`` and ``mu``) stays on the CPU and advances as the others (the user chain's
    schedule keeps its one count on the GPU)."""
    from test_donation import ALIASES, _clone, _pure, _trees

    tx = ALIASES[name]()
    params, grads = optree.tree_map(lambda x: x.cuda(), _trees())
    expected, expected_state = _pure(tx, params, grads)
    with fo.host_counts():
        pure_state, step_state, donated_state = (tx.init(params) for _ in range(3))
    pure, step, donated = params, params, _clone(params)
    for g in grads:
        updates, pure_state = tx.update(g, pure_state, pure)
        pure = fo.apply_updates(pure, updates)
        step, step_state = fo.step(tx, g, step_state, step)
        donated, donated_state = fo.step(tx, g, donated_state, donated, donate=True)
    for got, state in ((pure, pure_state), (step, step_state), (donated, donated_state)):
        for a, b in zip(optree.tree_leaves(got), optree.tree_leaves(expected)):
            assert a.device == b.device
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        scalars = [(a, b) for a, b in zip(optree.tree_leaves(state),
                                          optree.tree_leaves(expected_state))
                   if isinstance(a, torch.Tensor) and not a.ndim]
        counts = [(a, b) for a, b in scalars if not a.is_floating_point()]
        assert all(int(a) == int(b) for a, b in counts)
        assert sum(a.device.type != "cpu" for a, _ in counts) == (name == "user_chain")
        moved = [(a, b) for a, b in scalars if a.is_floating_point() and a.device.type == "cpu"]
        assert len(moved) == {"nadam": 3, "asgd": 6}.get(name, 0)  # (per leaf: mu_product;
        for a, b in moved:  # eta and mu. The 0-d parameter's moments stay on the GPU)
            torch.testing.assert_close(a, b.cpu(), rtol=1e-12, atol=0)


def test_host_counts_take_the_one_launch_path():
    """AdamW's pure update on 64 GPU leaves launches a kernel per leaf for each bias
    correction with the state's device counts (0-d GPU coefficients, which torch's foreach
    kernels take one tensor at a time) and none with host counts (numbers)."""
    tx = fo.adamw(lr=1e-3, weight_decay=1e-2)
    params = {str(i): torch.randn(32, device="cuda") for i in range(64)}
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    with fo.host_counts():
        host = tx.init(params)
    device = tx.init(params)
    for state in (host, device):  # (warm)
        tx.update(grads, state, params)
    on_device = _kernels(lambda: tx.update(grads, device, params))
    on_host = _kernels(lambda: tx.update(grads, host, params))
    assert on_device >= 2 * len(params) > on_host


def test_pure_steps_copies_on_the_gpu_are_bit_for_bit():
    """The pure ``fo.step`` copies the state and parameters on a GPU with one foreach kernel
    per (device, dtype) list (floating tensors times one, allocated in C++; the others copied
    into new tensors): new memory, each source's dtype and strides, the same bits (signed
    zeros, infinities, a subnormal; a transposed matrix; counts; half precision), a NaN a NaN
    (the GPU's arithmetic gives its canonical NaN, another payload)."""
    from functional_optim._fused import _copies

    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, 3.0],
                           device="cuda")
    sources = [special, torch.randn(3, 5, device="cuda").t(), torch.arange(4, device="cuda"),
               torch.randn(6, device="cuda", dtype=torch.float16), special.double(),
               torch.randn(2, 3, device="cuda")]
    made = _copies(sources)
    for old, new in zip(sources, made):
        assert new.data_ptr() != old.data_ptr()
        assert (new.dtype, new.stride(), new.device) == (old.dtype, old.stride(), old.device)
        nan = torch.isnan(old)
        assert torch.equal(torch.isnan(new), nan)
        assert new[~nan].cpu().numpy().tobytes() == old[~nan].cpu().numpy().tobytes()


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_dropin_on_the_gpu_runs_the_kernel_with_torchs_state(name, monkeypatch):
    """The drop-in's default step on CUDA parameters keeps torch.optim's state (``step`` a
    float32 CPU tensor) and still runs torch's CUDA kernel (the counts copied over from pinned
    memory, without a sync), with torch.optim's numbers."""
    from functional_optim import optim as foo

    kernel = f"_fused_{name.lower()}_"
    real, calls = getattr(torch, kernel), []
    monkeypatch.setattr(torch, kernel, lambda *a, **k: calls.append(1) or real(*a, **k))
    gen = torch.Generator().manual_seed(0)
    shapes = [(33, 17), (17,), ()]
    ours = [torch.randn(s, generator=gen).cuda().requires_grad_() for s in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt = getattr(foo, name)(ours, lr=1e-2, weight_decay=0.1)
    ref = getattr(torch.optim, name)(theirs, lr=1e-2, weight_decay=0.1, foreach=True)
    peak = [float(p.detach().abs().max()) for p in theirs]
    steps = 5
    for i in range(steps):
        grads = [torch.randn(s, generator=gen).cuda() for s in shapes]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        if i:  # (the first step builds the state, and may sync as torch's does)
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        ref.step()
        peak = [max(top, float(q.abs().max())) for top, q in zip(peak, theirs)]
    assert len(calls) == steps
    for p, q, top in zip(ours, theirs, peak):
        assert_close_ulps(p.detach(), q.detach(), ulps=ulp_budget(steps, UPDATE_OPS["adam"]),
                          scale=top)
        step = opt.state[p]["step"]
        assert step.device.type == "cpu" and step.dtype == torch.float32 and float(step) == steps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,kwargs", [
    ("SGD", dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.1)), ("Adam", {}),
    ("AdamW", dict(amsgrad=True)), ("Adagrad", dict(lr=0.01, weight_decay=0.1)),
    *[c for c in BLOCKED_CASES if c[1]]])
def test_every_dropin_on_the_gpu_gives_torchs_numbers(name, kwargs, dtype, monkeypatch):
    """Each drop-in class's default step on CUDA parameters (a kernel, the chain, whatever the
    device takes) against torch.optim's default on the same device: 12 steps, one parameter
    without a gradient on one of them. The classes with a blocked step run its program there,
    every step, on whole lists (ASGD excepted: torch.optim keeps its counts on the GPU, where
    reading them would be a host sync; Adafactor's written-out step is for the CPU)."""
    from functional_optim import _program
    from functional_optim import optim as foo

    plans, plan = [], _program.Program.plan
    monkeypatch.setattr(_program.Program, "plan", lambda *a: plans.append(a[4]) or plan(*a))

    gen = torch.Generator().manual_seed(0)
    shapes = [(7, 3), (300, 5), (5,), (64, 64)]
    ours = [torch.randn(s, generator=gen, dtype=dtype).cuda().requires_grad_() for s in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    opt = getattr(foo, name)(ours, **kwargs)
    # torch's foreach ASGD (its CUDA default) computes each step's eta in float32 on the GPU
    # from the float32 count, its for-loop in Python floats (rounded to float32 at the end): a
    # float32 ulp of eta apart (9e-8 relative in float64 parameters after 12 steps, measured on
    # an H200). Ours computes it as the for-loop does, the reference here as on the CPU.
    ref = getattr(torch.optim, name)(theirs, **kwargs, **(
        {"foreach": False} if name == "ASGD" else {}))
    peak = [float(p.detach().abs().max()) for p in theirs]
    for i in range(12):
        for k, (p, q) in enumerate(zip(ours, theirs)):
            g = torch.randn(p.shape, generator=gen, dtype=dtype).cuda()
            p.grad, q.grad = (None, None) if (i, k) == (5, 2) else (g, g.clone())
        opt.step()
        ref.step()
        peak = [max(top, float(q.detach().abs().max())) for top, q in zip(peak, theirs)]
    blocked = name in ("RMSprop", "Adadelta", "Adamax", "NAdam", "RAdam", "Rprop")
    assert len(plans) >= (12 if blocked else 0) and all(plans) and (blocked or not plans)
    # float32: 2 ulps per op of the update rule, every step, of the peak (tests/tolerance.py)
    ulps = ulp_budget(12, _ops(name) if name not in ("SGD", "Adam", "AdamW", "Adagrad")
                      else UPDATE_OPS[name.lower()])
    for p, q, top in zip(ours, theirs, peak):
        _close(p.detach(), q.detach(), dtype, top, ulps)
        assert set(opt.state[p]) == set(ref.state[q])
        for key, value in ref.state[q].items():
            mine = opt.state[p][key]
            assert mine.dtype == value.dtype and mine.device == value.device, key
            _close(mine, value, dtype, value.abs().max(), ulps)
