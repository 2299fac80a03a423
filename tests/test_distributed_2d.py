"""DTensor parameters beyond one FSDP2 mesh (DESIGN §5): a 2-D (data x tensor parallel) model,
Adafactor's factored statistics, and the blocks that reduce over a leaf.

One launch of ``WORLD = 4`` ranks of this file (the harness: :mod:`dist_harness`) runs:

- **2-D**: a 2 (``dp``) x 2 (``tp``) mesh; a float64 MLP 6 -> 8 -> 3 -> 3 whose first two layers
  are tensor parallel (``ColwiseParallel``/``RowwiseParallel`` over ``tp``) and whose last is not,
  every layer ``fully_shard``-ed over ``dp``: parameters on two meshes (the 2-D one and ``dp``)
  with five layouts. Each ``dp`` rank has its own batches. ``AdamW`` (default path),
  ``SGD(momentum, foreach=True)`` and ``FunctionalOptimizer(fo.adamw)`` run beside torch.optim's
  counterparts; Adafactor (the drop-in class and ``FunctionalOptimizer(fo.adafactor)``) is compared
  with the unsharded single-process runs of ours and of torch's (torch.optim.Adafactor does not
  run on DTensor parameters: it squares a partial norm in place).
- **TP**: the same MLP, tensor parallel over all four ranks and not sharded otherwise: a mix of
  DTensor and plain parameters; every rank sees every batch. The same three optimizers.
- **1-D**: the same Adafactor runs on FSDP2 over all four ranks (the MLP of
  ``test_distributed``, sharded unevenly), one batch per rank.
- **blocks**: a tree of DTensors on both meshes (sharded along either dimension, replicated,
  uneven) through every block that reduces over a leaf or across leaves, on the per-leaf and
  the multi-tensor path, against the same blocks on the full tensors; updates and state must keep
  their leaf's layout.

Tolerance: float64 results agree to ``max|a-b| <= RTOL * max|b|`` (``dist_harness.RTOL``).
"""

from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path

import pytest
import torch
from dist_harness import (
    Checks,
    check_same_on_ranks,
    comm_counts,
    full_params,
    full_value,
    init,
    launch,
    worker_main,
)
from test_distributed import _shard, batch, build_model, loss_on
from torch import nn

import functional_optim as fo
from functional_optim import _execute
from functional_optim.optim import SGD, Adafactor, AdamW, FunctionalOptimizer

WORLD = 4
DP, TP = 2, 2
STEPS = 5
# the launch: about 60 s on two idle cores (four ranks importing torch take a third of it)
TIMEOUT_S = 300

pytestmark = [
    pytest.mark.skipif(
        not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
        reason="torch built without torch.distributed/gloo"),
    pytest.mark.slow,
]

_ADAMW = dict(lr=1e-2, weight_decay=0.1)
_SGD = dict(lr=0.1, momentum=0.9, weight_decay=1e-2, foreach=True)
# torch's SGD(foreach=True) fails on a mix of DTensor and plain parameters (pure TP): its for-loop
# is the reference (the same numbers)
_TORCH_SGD = {**_SGD, "foreach": False}
_ADAFACTOR = dict(lr=1e-2, weight_decay=0.1)

# name -> {"ours"/"torch": (optimizer class or factory, kwargs)}
VARIANTS = {
    "AdamW": {"ours": (AdamW, _ADAMW), "torch": (torch.optim.AdamW, _ADAMW)},
    "SGD(momentum, foreach=True)": {"ours": (SGD, _SGD), "torch": (torch.optim.SGD, _TORCH_SGD)},
    "FunctionalOptimizer(adamw)": {
        "ours": (functools.partial(FunctionalOptimizer,
                                   transform=functools.partial(fo.adamw, **_ADAMW)), {}),
        "torch": (torch.optim.AdamW, _ADAMW),
    },
    # DTensor groups keep the usual layout, with a warning
    "AdamW.use_flat()": {"ours": (lambda params, **kw: AdamW(params, **kw).use_flat(), _ADAMW),
                         "torch": (torch.optim.AdamW, _ADAMW)},
}
# run sharded by ours only; compared with the unsharded runs of ours and torch's
ADAFACTOR = {
    "Adafactor": {"ours": (Adafactor, _ADAFACTOR), "torch": (torch.optim.Adafactor, _ADAFACTOR)},
    "FunctionalOptimizer(adafactor)": {
        "ours": (functools.partial(FunctionalOptimizer,
                                   transform=functools.partial(fo.adafactor, **_ADAFACTOR)), {}),
        "torch": (torch.optim.Adafactor, _ADAFACTOR),
    },
}


def make_optimizer(variant: str, impl: str, params):
    cls, kwargs = {**VARIANTS, **ADAFACTOR}[variant][impl]
    return cls(params, **kwargs)


def build_2d_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3),
                         nn.Linear(3, 3)).double()


def _tensor_parallel(model: nn.Module, mesh) -> nn.Module:
    """The first two layers tensor parallel over ``mesh``; the last one left alone."""
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    return parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})


def _parallelize(model: nn.Module, mesh) -> nn.Module:
    """Tensor parallel over ``tp``, then every layer ``fully_shard``-ed over ``dp``."""
    from torch.distributed.fsdp import fully_shard

    _tensor_parallel(model, mesh["tp"])
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh["dp"])
    return fully_shard(model, mesh=mesh["dp"])


def train(model: nn.Module, opt, data_ranks) -> dict:
    """Run ``STEPS`` steps; return the collectives of the last ``opt.step()``."""
    from torch.distributed.tensor.debug import CommDebugMode

    for step in range(STEPS):
        loss_on(model, [batch(step, r) for r in data_ranks]).backward()
        with CommDebugMode() as comm:
            opt.step()
        opt.zero_grad()
    return comm_counts(comm)


def _names(model: nn.Module) -> dict:
    return {id(p): name for name, p in model.named_parameters()}


def run(model: nn.Module, variant: str, impl: str, data_ranks) -> dict:
    """Train; the final parameters, the kinds of the state tensors, and the drop-in
    Adafactor's full optimizer state by parameter name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        opt = make_optimizer(variant, impl, model.parameters())
        comm = train(model, opt, data_ranks)
    out = {"final": full_params(model), "comm": comm,
           "warnings": [str(w.message) for w in caught if w.category is RuntimeWarning],
           "state_kinds": sorted({type(v).__name__ for s in opt.state.values() for v in
                                  fo.tree.leaves(s) if isinstance(v, torch.Tensor)})}
    if variant == "Adafactor":
        osd = get_optimizer_state_dict(model, opt, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        out["state"] = {name: {k: v.clone() for k, v in st.items()}  # on rank 0 only
                        for name, st in osd.get("state", {}).items()}
    return out


def reference(model: nn.Module, variant: str, impl: str, data_ranks) -> dict:
    """The unsharded run: one process, every data rank's batches."""
    opt = make_optimizer(variant, impl, model.parameters())
    train(model, opt, data_ranks)
    names = _names(model)
    return {"final": full_params(model),
            "state": {names[id(p)]: {k: v.clone() for k, v in st.items()}
                      for p, st in opt.state.items()}}


# -- the blocks that reduce over a leaf -----------------------------------------------------

SHAPES = [(8, 6), (3, 8), (5, 7), (7,), (6, 5), (9, 4)]
# (mesh, placements) of each leaf: "2d" is (dp, tp), "1d" all four ranks; (kind, dim) pairs
LAYOUTS = [("2d", (("S", 0), ("S", 0))), ("2d", (("S", 0), ("S", 1))), ("2d", (("R",), ("S", 1))),
           ("2d", (("S", 0), ("R",))), ("1d", (("S", 0),)), ("1d", (("S", 1),))]
BLOCKS = {  # name -> (transform factory, 2-D leaves only)
    "clip_by_norm": (lambda: fo.clip_by_norm(0.5), False),
    "clip_by_global_norm": (lambda: fo.clip_by_global_norm(0.5), False),
    "centralize": (lambda: fo.centralize(), False),
    "scale_by_newton_schulz": (lambda: fo.scale_by_newton_schulz(ns_dtype=None), True),
    "muon": (lambda: fo.muon(ns_dtype=None), True),
    "muon_adamw": (lambda: fo.muon_adamw(ns_dtype=None, adjust_lr_fn="spectral"), False),
    "scale_by_factored_rms": (lambda: fo.scale_by_factored_rms(weight_decay=0.1), False),
    "adafactor": (lambda: fo.adafactor(), False),
    "apply_if_finite": (lambda: fo.apply_if_finite(fo.scale_by_adam(), 3), False),
    "zero_nans": (lambda: fo.zero_nans(), False),
}
NAN_AT = (1, (2, 5))  # a NaN in this element of this leaf's gradient (the "with NaN" inputs)


def block_inputs(with_nan: bool, matrices: bool) -> tuple[dict, dict]:
    """Full gradients and parameters, keyed ``l0``, ``l1``, ... (``LAYOUTS``' order)."""
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(*s, generator=gen, dtype=torch.float64) for s in SHAPES]
    params = [torch.randn(*s, generator=gen, dtype=torch.float64) for s in SHAPES]
    if with_nan:
        grads[NAN_AT[0]][NAN_AT[1]] = float("nan")
    keep = [i for i, s in enumerate(SHAPES) if len(s) == 2 or not matrices]
    return {f"l{i}": grads[i] for i in keep}, {f"l{i}": params[i] for i in keep}


def block_cases():
    for name, (_, matrices) in BLOCKS.items():
        for with_nan in ((False, True) if name in ("apply_if_finite", "zero_nans") else (False,)):
            yield name, matrices, with_nan


def two_steps(tx, grads: dict, params: dict) -> tuple[dict, object, object]:
    state = tx.init(params)
    updates, mid = tx.update(grads, state, params)
    updates, last = tx.update(grads, mid, params)
    return updates, state, last


def worker_blocks(meshes: dict) -> dict:
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    def distribute(tree: dict) -> dict:
        out = {}
        for key, x in tree.items():
            mesh, placements = LAYOUTS[int(key[1:])]
            out[key] = distribute_tensor(x, meshes[mesh], [
                Shard(p[1]) if p[0] == "S" else Replicate() for p in placements])
        return out

    def layouts(tree) -> list:
        return [(x.device_mesh, x.placements) if isinstance(x, DTensor) else None
                for x in fo.tree.leaves(tree)]

    def one(name, grads, params, multi) -> dict:
        with torch.no_grad(), _execute.multi_tensor(multi):
            updates, state, last = two_steps(BLOCKS[name][0](), grads, params)
        return {"updates": {k: full_value(v) for k, v in updates.items()},
                "same layouts": (layouts(updates) == layouts(grads)
                                 and layouts(last) == layouts(state)),
                "state": [full_value(x) for x in fo.tree.leaves(last)]}

    out = {}
    for name, matrices, with_nan in block_cases():
        grads, params = (distribute(t) for t in block_inputs(with_nan, matrices))
        for multi in (False, True):
            out[name, with_nan, multi] = attempt(one, name, grads, params, multi)
    out["flatten"] = attempt(two_steps, fo.flatten(fo.scale_by_adam()), grads, params)
    return out


# -- the worker ------------------------------------------------------------------------------


def worker_mesh(outdir: Path) -> dict:
    from torch.distributed.device_mesh import init_device_mesh

    rank = init(WORLD)
    mesh = init_device_mesh("cpu", (DP, TP), mesh_dim_names=("dp", "tp"))
    flat = init_device_mesh("cpu", (WORLD,))
    dp_rank = mesh["dp"].get_local_rank()
    out = {}
    for variant in VARIANTS:
        for impl in ("ours", "torch"):
            out["2-D", variant, impl] = attempt(
                run, _parallelize(build_2d_model(), mesh), variant, impl, [dp_rank])
            out["TP", variant, impl] = attempt(  # every rank sees every batch
                run, _tensor_parallel(build_2d_model(), flat), variant, impl, range(DP))
    for variant in ADAFACTOR:
        out["2-D", variant, "ours"] = attempt(
            run, _parallelize(build_2d_model(), mesh), variant, "ours", [dp_rank])
        out["1-D", variant, "ours"] = attempt(
            run, _shard(build_model(), flat), variant, "ours", [rank])
    out["blocks"] = worker_blocks({"2d": mesh, "1d": flat})
    return out


def attempt(fn, *args) -> dict:
    """``fn(*args)``, or ``{"error": message}`` when it raises: each case fails on its own (an
    error in sharding propagation raises on every rank alike, so the ranks stay in step)."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - reported by the test
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}


WORKERS = {"mesh": worker_mesh}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> list[dict]:
    return launch(__file__, "mesh", tmp_path_factory.mktemp("mesh"), WORLD, timeout_s=TIMEOUT_S)


def test_2d_mesh_vs_torch(results):
    """On parameters of two meshes and several placements (FSDP2 + TP), and on a mix of
    DTensor and plain parameters (TP alone), the multi-tensor paths group leaves by mesh and
    placements: our optimizers follow torch.optim's trajectory, and their steps are local (no
    collective)."""
    checks = Checks()
    check_same_on_ranks(checks, results)
    for setup in ("2-D", "TP"):
        for variant in VARIANTS:
            ours, theirs = results[0][setup, variant, "ours"], results[0][setup, variant, "torch"]
            if not checks.ran(f"{setup} {variant}", ours, theirs):
                continue
            checks.true(ours["state_kinds"] == theirs["state_kinds"],
                        f"{setup} {variant}: state tensors {ours['state_kinds']} vs torch's "
                        f"{theirs['state_kinds']}")
            checks.close(f"{setup} {variant}: ours vs torch", "vs torch", ours["final"],
                         theirs["final"])
            checks.true(ours["comm"] == {}, f"{setup} {variant}: the step communicates "
                        f"({ours['comm']}); elementwise math on shards is local")
            flat = variant.endswith("use_flat()")
            checks.true(any("DTensor" in w for w in ours["warnings"]) == flat,
                        f"{setup} {variant}: warnings {ours['warnings']}")
    checks.done()


def test_adafactor_dtensor(results):
    """Adafactor on DTensor parameters (FSDP2 on 1-D and on the 2-D mesh): the factored
    statistics are reductions across shards, so the run equals the unsharded single-process runs
    of ours and of torch.optim.Adafactor; the state is DTensors, and the drop-in class's full
    optimizer state (``get_optimizer_state_dict``) equals the unsharded run's."""
    checks = Checks()
    references = {}
    for variant in ADAFACTOR:
        for impl in ("ours", "torch"):
            references["2-D", variant, impl] = reference(build_2d_model(), variant, impl,
                                                         range(DP))
            references["1-D", variant, impl] = reference(build_model(), variant, impl,
                                                         range(WORLD))
    for mesh in ("1-D", "2-D"):
        for variant in ADAFACTOR:
            ours = results[0][mesh, variant, "ours"]
            if not checks.ran(f"{mesh} {variant}", ours):
                continue
            checks.true("DTensor" in ours["state_kinds"],
                        f"{mesh} {variant}: no DTensor in the state ({ours['state_kinds']})")
            for impl in ("ours", "torch"):
                checks.close(f"{mesh} {variant}: sharded vs unsharded {impl}",
                             f"vs unsharded {impl}", ours["final"],
                             references[mesh, variant, impl]["final"])
        if "error" in results[0][mesh, "Adafactor", "ours"]:
            continue
        state, expected = (results[0][mesh, "Adafactor", "ours"]["state"],
                           references[mesh, "Adafactor", "torch"]["state"])
        checks.true(state.keys() == expected.keys(), f"{mesh} Adafactor: parameter names")
        for name, st in expected.items():
            checks.true(state[name].keys() == st.keys(),
                        f"{mesh} Adafactor {name}: state keys {sorted(state[name])} vs "
                        f"torch's {sorted(st)}")
            checks.close(f"{mesh} Adafactor {name}: full optimizer state", "state",
                         {k: state[name][k].double() for k in st},
                         {k: v.double() for k, v in st.items()})
    checks.done()


def _comparable(x: torch.Tensor) -> torch.Tensor:
    """A state or update tensor as float64 with NaN as a number (a NaN must stay a NaN)."""
    return x.double().nan_to_num(7.0)


def test_blocks_dtensor(results):
    """``clip_by_norm``, ``clip_by_global_norm``, ``centralize``, Newton-Schulz, Muon (and
    Muon with AdamW on the vectors; Newton-Schulz gathers each leaf once),
    Adafactor's factored statistics, ``apply_if_finite`` and ``zero_nans`` on DTensor leaves of
    two meshes: the values of the same blocks on the full tensors, on both execution paths, and
    the updates and the state keep each leaf's layout (a NaN on one shard is seen by all).
    ``flatten`` (one buffer for all leaves) refuses DTensor leaves with a clear error."""
    checks = Checks()
    for name, matrices, with_nan in block_cases():
        grads, params = block_inputs(with_nan, matrices)
        expected, _, last = two_steps(BLOCKS[name][0](), grads, params)
        for multi in (False, True):
            what = f"{name}{' (NaN)' if with_nan else ''} (multi-tensor={multi})"
            for rank, res in enumerate(results):
                got = res["blocks"][name, with_nan, multi]
                if "error" in got:  # raised on every rank alike: reported once
                    checks.ran(what, got) if rank == 0 else None
                    continue
                checks.true(got["same layouts"], f"{what}: a layout changed on rank {rank}")
                checks.close(f"{what} on rank {rank}: updates", "blocks",
                             {k: _comparable(v) for k, v in got["updates"].items()},
                             {k: _comparable(v) for k, v in expected.items()})
                checks.close(f"{what} on rank {rank}: state", "blocks",
                             dict(enumerate(map(_comparable, got["state"]))),
                             dict(enumerate(map(_comparable, fo.tree.leaves(last)))))
    for rank, res in enumerate(results):
        error = res["blocks"]["flatten"].get("error", "")
        checks.true(error.startswith("TypeError: flatten: params leaf 'l0' is a DTensor"),
                    f"flatten of DTensor leaves on rank {rank}: expected a clear TypeError, got "
                    f"{error or 'no error'}")
    checks.done()


if __name__ == "__main__":
    worker_main(WORKERS, sys.argv)
