"""Distribution runs on PyTorch's engines (DESIGN §5): DDP, ZeroRedundancyOptimizer, FSDP2
(``fully_shard``) with ``torch.distributed.checkpoint``, and DTensor-correct global norms.

Each test launches fresh worker processes of this very file on CPU with gloo, bounded in time
(:mod:`dist_harness`); the assertions run here, against ``torch.optim`` run the same way and
against an unsharded single-process reference.

Setup shared by every scenario: a float64 MLP (6 -> 9 -> 3, so that FSDP2 shards unevenly),
two ranks with different batches (gradients averaged across ranks by DDP/FSDP2), ``STEPS``
steps, a checkpoint after ``RESUME_AT`` steps. Optimizers (``VARIANTS``): functional_optim's
``AdamW``, ``Adam(amsgrad)``, ``SGD(nesterov)`` (torch's state format) and the generic
``FunctionalOptimizer`` (nested state) running ``fo.adamw`` or a chain with
``clip_by_global_norm``, each beside its torch.optim counterpart.

ZeroRedundancyOptimizer forwards its extra keyword arguments both to the local optimizer and into
its own ``param_groups`` (and so into checkpoints), so the generic adapter is passed with its
transform bound: ``optimizer_class=functools.partial(FunctionalOptimizer, transform=tx)``
(``transform=tx`` as a ZeRO keyword would put ``tx`` in every param group: a closure then fails to
pickle in ``consolidate_state_dict``). A cross-parameter transform such as
``clip_by_global_norm`` inside ZeRO's local optimizer sees only that rank's partition, so the
clipping chain is not run under ZeRO (clip with ``torch.nn.utils.clip_grad_norm_`` there).

Tolerance: float64 parameters agree with torch's to ``max|a-b| <= RTOL * max|b|``
(``dist_harness.RTOL``).
"""

from __future__ import annotations

import functools
import sys
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
    tensor_leaves,
    worker_main,
)
from dist_harness import launch as _launch
from torch import nn

import functional_optim as fo
from functional_optim.optim import SGD, Adam, AdamW, FunctionalOptimizer

STEPS, RESUME_AT = 6, 3
WORLD = 2
IN, HIDDEN, OUT, BATCH = 6, 9, 3, 4
CLIP = 0.05  # below every step's gradient norm here, so the clip is always active

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch built without torch.distributed/gloo",
)


def launch(scenario: str, outdir: Path, world: int = WORLD) -> list[dict]:
    """Run a scenario of this file's ``WORKERS`` on ``world`` ranks."""
    return _launch(__file__, scenario, outdir, world)


# -- the experiment -------------------------------------------------------------------------


def _clip_adam():
    return fo.chain(clip=fo.clip_by_global_norm(CLIP), adam=fo.scale_by_adam(),
                    lr=fo.scale_by_learning_rate(1e-2))


_ADAMW = dict(lr=1e-2, weight_decay=0.1)
_ADAM = dict(lr=1e-2, weight_decay=0.05, amsgrad=True)
_SGD = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)

# name -> {"ours"/"torch": (optimizer class or factory, kwargs)}
VARIANTS = {
    "AdamW": {"ours": (AdamW, _ADAMW), "torch": (torch.optim.AdamW, _ADAMW)},
    "Adam(amsgrad)": {"ours": (Adam, _ADAM), "torch": (torch.optim.Adam, _ADAM)},
    "SGD(nesterov)": {"ours": (SGD, _SGD), "torch": (torch.optim.SGD, _SGD)},
    "FunctionalOptimizer(adamw)": {
        "ours": (functools.partial(FunctionalOptimizer,
                                   transform=functools.partial(fo.adamw, **_ADAMW)), {}),
        "torch": (torch.optim.AdamW, _ADAMW),
    },
    "FunctionalOptimizer(clip+adam)": {
        "ours": (functools.partial(FunctionalOptimizer, transform=_clip_adam), {}),
        "torch": (torch.optim.Adam, dict(lr=1e-2)),
    },
}
# torch's side of a variant clips with torch.nn.utils.clip_grad_norm_ before step()
TORCH_CLIP = {"FunctionalOptimizer(clip+adam)": CLIP}


def build_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT)).double()


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return (torch.randn(BATCH, IN, generator=gen, dtype=torch.float64),
            torch.randn(BATCH, OUT, generator=gen, dtype=torch.float64))


def loss_on(model: nn.Module, ranks) -> torch.Tensor:
    """The mean loss of the given ranks' batches (what averaging their gradients computes)."""
    return sum(((model(x) - y) ** 2).mean() for x, y in ranks) / len(ranks)


def make_optimizer(variant: str, impl: str, params):
    cls, kwargs = VARIANTS[variant][impl]
    return cls(params, **kwargs)


def train(model: nn.Module, opt, steps, variant: str, impl: str, ranks) -> list[float]:
    """Run ``steps``; ``ranks`` are the data ranks this process computes the loss of.

    Returns the global gradient norm of every step (before clipping).
    """
    norms = []
    for step in steps:
        loss_on(model, [batch(step, r) for r in ranks]).backward()
        clip = TORCH_CLIP.get(variant) if impl == "torch" else None
        grads = [p.grad for p in model.parameters()]
        norm = fo.tree.global_norm(grads)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        norms.append(float(full_value(norm)))
        opt.step()
        opt.zero_grad()
    return norms


def reference(variant: str, impl: str) -> dict:
    """The unsharded run: one process, both ranks' batches, no torch.distributed."""
    model = build_model()
    opt = make_optimizer(variant, impl, model.parameters())
    norms = train(model, opt, range(STEPS), variant, impl, range(WORLD))
    return {"final": full_params(model), "norms": norms}


# -- the workers ----------------------------------------------------------------------------


def worker_ddp(outdir: Path) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank = init(WORLD)
    out = {}
    for variant in VARIANTS:
        for impl in ("ours", "torch"):
            model = DDP(build_model())
            opt = make_optimizer(variant, impl, model.parameters())
            train(model, opt, range(STEPS), variant, impl, [rank])
            out[variant, impl] = {"final": full_params(model.module)}
    return out


def worker_zero(outdir: Path) -> dict:
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank = init(WORLD)

    def zero(variant, impl, model, **options):
        cls, kwargs = VARIANTS[variant][impl]
        return ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls, **options,
                                       **kwargs)

    out = {}
    for variant in ("AdamW", "FunctionalOptimizer(adamw)"):  # parameters as bucket views
        for impl in ("ours", "torch"):
            model = DDP(build_model())
            opt = zero(variant, impl, model, parameters_as_bucket_view=True)
            train(model, opt, range(STEPS), variant, impl, [rank])
            out[variant, impl, "bucket view"] = {"final": full_params(model.module)}
    for variant in VARIANTS:
        if variant in TORCH_CLIP:  # a global norm in ZeRO's local optimizer sees one partition
            continue
        for impl in ("ours", "torch"):
            model = DDP(build_model())
            opt = zero(variant, impl, model)
            train(model, opt, range(RESUME_AT), variant, impl, [rank])
            opt.consolidate_state_dict(to=0)
            path = outdir / f"zero-{variant}-{impl}.pt"
            if rank == 0:
                torch.save({"model": model.module.state_dict(), "optim": opt.state_dict()}, path)
            dist.barrier()
            local = {id(p) for g in opt.optim.param_groups for p in g["params"]}
            n_local = sum(id(p) in local for p in model.parameters())
            train(model, opt, range(RESUME_AT, STEPS), variant, impl, [rank])
            out[variant, impl] = {"final": full_params(model.module), "n_local": n_local,
                                  "checkpoint": str(path)}
        for impl, source in _resumes(variant):
            ckpt = torch.load(out[variant, source]["checkpoint"], weights_only=True)
            model = build_model(seed=1)
            model.load_state_dict(ckpt["model"])
            model = DDP(model)
            opt = zero(variant, impl, model)
            opt.load_state_dict(ckpt["optim"])
            train(model, opt, range(RESUME_AT, STEPS), variant, impl, [rank])
            out[variant, impl, "resumed from " + source] = {"final": full_params(model.module)}
    return out


def _resumes(variant: str) -> list[tuple[str, str]]:
    """``(impl, checkpoint source)`` pairs: each resumes from its own checkpoint; the classes
    with torch's state format also from the other's (the generic adapter's state is nested)."""
    pairs = [("ours", "ours"), ("torch", "torch")]
    if VARIANTS[variant]["ours"][0] in (AdamW, Adam, SGD):
        pairs += [("ours", "torch"), ("torch", "ours")]
    return pairs


def _shard(model: nn.Module, mesh) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _resume_dcp(variant, impl, model, ckpt, ranks, options=None) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opt = make_optimizer(variant, impl, model.parameters())
    state = {"model": get_model_state_dict(model),
             "optim": get_optimizer_state_dict(model, opt, options=options)}
    dcp.load(state, checkpoint_id=ckpt)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"], options=options)
    train(model, opt, range(RESUME_AT, STEPS), variant, impl, ranks)
    return {"final": full_params(model)}


def worker_fsdp(outdir: Path) -> dict:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    rank = init(WORLD)
    mesh = init_device_mesh("cpu", (WORLD,))
    flat = StateDictOptions(flatten_optimizer_state_dict=True)  # torchtitan's format
    out = {}
    for variant in VARIANTS:
        for impl in ("ours", "torch"):
            model = _shard(build_model(), mesh)
            opt = make_optimizer(variant, impl, model.parameters())
            norms = train(model, opt, range(RESUME_AT), variant, impl, [rank])
            osd = get_optimizer_state_dict(model, opt)
            kinds = sorted({type(v).__name__ for v in tensor_leaves(osd["state"])})
            ckpt = str(outdir / f"dcp-{variant}-{impl}")
            dcp.save({"model": get_model_state_dict(model), "optim": osd}, checkpoint_id=ckpt)
            dcp.save({"model": get_model_state_dict(model),
                      "optim": get_optimizer_state_dict(model, opt, options=flat)},
                     checkpoint_id=ckpt + "-flat")
            full_osd = get_optimizer_state_dict(  # a snapshot: torch's "step" is updated in place
                model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            full_osd = fo.tree.map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x,
                                   full_osd)
            norms += train(model, opt, range(RESUME_AT, STEPS), variant, impl, [rank])
            out[variant, impl] = {"final": full_params(model), "norms": norms,
                                  "state_kinds": kinds, "full_state": full_osd,
                                  "dtensor_params": all(isinstance(p, DTensor)
                                                        for p in model.parameters()),
                                  "checkpoint": ckpt}
            out[variant, impl, "resumed on 2 ranks"] = _resume_dcp(
                variant, impl, _shard(build_model(seed=1), mesh), ckpt + "-flat", [rank], flat)
    return out


def worker_reshard(outdir: Path) -> dict:
    """One rank loads the 2-rank DCP checkpoints: into FSDP2 on a 1-rank mesh and unsharded."""
    from torch.distributed.device_mesh import init_device_mesh

    init(1)
    mesh = init_device_mesh("cpu", (1,))
    out = {}
    for variant in VARIANTS:
        for impl, source in _resumes(variant):
            ckpt = str(outdir / f"dcp-{variant}-{source}")
            out[variant, impl, f"resumed from {source}'s on 1 rank (FSDP2)"] = _resume_dcp(
                variant, impl, _shard(build_model(seed=2), mesh), ckpt, range(WORLD))
            if impl == source:
                out[variant, impl, "resumed on 1 rank (unsharded)"] = _resume_dcp(
                    variant, impl, build_model(seed=3), ckpt, range(WORLD))
    return out


def worker_norm(outdir: Path) -> dict:
    """``fo.tree.global_norm`` and ``clip_by_global_norm`` on DTensor trees."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.debug import CommDebugMode

    rank = init(WORLD)
    mesh = init_device_mesh("cpu", (WORLD,))
    out = {}

    # FSDP2 gradients: one all-reduce for the whole tree
    model = _shard(build_model(), mesh)
    loss_on(model, [batch(0, rank)]).backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    with CommDebugMode() as comm:
        norm = fo.tree.global_norm(grads)
    out["fsdp grads"] = {"norm": norm, "comm": comm_counts(comm),
                         "grads": {k: g.full_tensor() for k, g in grads.items()}}

    # leaves on two meshes, sharded/replicated on different dims, and plain tensors
    mesh2 = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("dp", "tp"))
    gen = torch.Generator().manual_seed(7)
    full = [torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(6)]
    tree = {
        "a": distribute_tensor(full[0], mesh, [Shard(0)]),
        "b": distribute_tensor(full[1], mesh, [Replicate()]),
        "c": distribute_tensor(full[2], mesh2, [Shard(0), Replicate()]),
        "d": distribute_tensor(full[3], mesh2, [Replicate(), Shard(1)]),
        "e": full[4],
        "f": [None, full[5]],
    }
    with CommDebugMode() as comm:
        norm = fo.tree.global_norm(tree)
    tx = fo.clip_by_global_norm(1.0)
    clipped, _ = tx.update(tree, tx.init(tree))
    clipped = fo.tree.map(full_value, clipped)
    out["mixed tree"] = {"norm": norm, "comm": comm_counts(comm), "full": full,
                         "clipped": clipped, "type": type(norm).__name__}

    # a whole optimizer step on FSDP2 parameters: elementwise math is local (no collective);
    # a chain with clip_by_global_norm costs one all-reduce per step. Both execution paths.
    for variant in ("AdamW", "FunctionalOptimizer(clip+adam)"):
        for foreach in (False, True):
            model = _shard(build_model(), mesh)
            cls, kwargs = VARIANTS[variant]["ours"]
            opt = cls(model.parameters(), foreach=foreach, **kwargs)
            comms = []
            for step in range(2):
                loss_on(model, [batch(step, rank)]).backward()
                with CommDebugMode() as comm:
                    opt.step()
                comms.append(comm_counts(comm))
                opt.zero_grad()
            out["step", variant, foreach] = {"comm": comms, "final": full_params(model)}
    return out


WORKERS = {"ddp": worker_ddp, "zero": worker_zero, "fsdp": worker_fsdp,
           "reshard": worker_reshard, "norm": worker_norm}


@pytest.fixture(scope="module")
def references() -> dict:
    return {(v, impl): reference(v, impl) for v in VARIANTS for impl in ("ours", "torch")}


def test_reference_clips(references):
    """The clip is active at every step, so the clip tests below test it."""
    for impl in ("ours", "torch"):
        norms = references["FunctionalOptimizer(clip+adam)", impl]["norms"]
        assert min(norms) > 2 * CLIP, norms


def test_ddp(tmp_path, references):
    """DDP: every optimizer follows torch.optim's trajectory and the unsharded run."""
    results = launch("ddp", tmp_path)
    checks = Checks()
    check_same_on_ranks(checks, results)
    for variant in VARIANTS:
        ours, theirs = results[0][variant, "ours"], results[0][variant, "torch"]
        checks.close(f"DDP {variant}: ours vs torch", "vs torch", ours["final"], theirs["final"])
        checks.close(f"DDP {variant}: ours vs unsharded", "vs unsharded", ours["final"],
                     references[variant, "ours"]["final"])
    checks.done()


def test_zero_redundancy_optimizer(tmp_path):
    """ZeroRedundancyOptimizer(optimizer_class=ours): same trajectory as torch.optim's class
    under ZeRO; consolidate_state_dict/state_dict/load_state_dict resume on the same trajectory;
    checkpoints load across ours and torch in both directions (torch.load weights_only)."""
    results = launch("zero", tmp_path)
    checks = Checks()
    check_same_on_ranks(checks, results)
    for variant in VARIANTS:
        if variant in TORCH_CLIP:
            continue
        counts = [r[variant, "ours"]["n_local"] for r in results]
        checks.true(all(counts) and sum(counts) == 4,
                    f"ZeRO {variant}: parameters per rank {counts}, expected a real split")
        ours, theirs = results[0][variant, "ours"], results[0][variant, "torch"]
        checks.close(f"ZeRO {variant}: ours vs torch", "vs torch", ours["final"],
                     theirs["final"])
        if (variant, "ours", "bucket view") in results[0]:
            checks.close(f"ZeRO {variant} bucket view: ours vs torch", "vs torch",
                         results[0][variant, "ours", "bucket view"]["final"],
                         results[0][variant, "torch", "bucket view"]["final"])
        for impl, source in _resumes(variant):
            resumed = results[0][variant, impl, "resumed from " + source]["final"]
            checks.close(f"ZeRO {variant}: {impl} resumed from {source}'s checkpoint",
                         "resumed vs uninterrupted", resumed, results[0][variant, impl]["final"])
    # the consolidated checkpoints have torch's format: same keys, same values
    for variant in ("AdamW", "Adam(amsgrad)", "SGD(nesterov)"):
        ours = torch.load(results[0][variant, "ours"]["checkpoint"], weights_only=True)["optim"]
        theirs = torch.load(results[0][variant, "torch"]["checkpoint"],
                            weights_only=True)["optim"]
        checks.true(ours["state"].keys() == theirs["state"].keys(),
                    f"ZeRO {variant}: state indices differ")
        for i in theirs["state"]:
            checks.true(ours["state"][i].keys() == theirs["state"][i].keys(),
                        f"ZeRO {variant}: state keys {sorted(ours['state'][i])} vs torch's "
                        f"{sorted(theirs['state'][i])}")
            tensors = {k: v for k, v in theirs["state"][i].items()
                       if isinstance(v, torch.Tensor) and k in ours["state"][i]}
            checks.close(f"ZeRO {variant}: checkpointed state of param {i}", "state vs torch",
                         {k: ours["state"][i][k].double() for k in tensors},
                         {k: v.double() for k, v in tensors.items()})
    checks.done()


@pytest.mark.slow
def test_fsdp2_dcp(tmp_path, references):
    """FSDP2 parameters (DTensor) with get/set_optimizer_state_dict and DCP:

    - on 2 ranks: the same trajectory as torch.optim under FSDP2 and as the unsharded run
      (``clip_by_global_norm`` included); saved with ``dcp.save`` after ``RESUME_AT`` steps
      (nested and ``flatten_optimizer_state_dict=True`` formats) and the flattened one loaded into
      fresh models/optimizers, a run continues on the uninterrupted trajectory;
      the torch-format classes' ``get_optimizer_state_dict`` equals torch's (keys and values);
    - resharded onto 1 rank (FSDP2 on a 1-rank mesh, and an unsharded model): the 2-rank
      (nested-format) checkpoints continue on the 2-rank trajectory, across ours and torch's in
      both directions for the torch-format classes.

    One test, two launches (the 1-rank launch reads the 2-rank one's checkpoints), so that
    pytest-xdist never runs the 2-rank launch twice.
    """
    results = launch("fsdp", tmp_path)
    checks = Checks()
    check_same_on_ranks(checks, results)
    for variant in VARIANTS:
        ours, theirs = results[0][variant, "ours"], results[0][variant, "torch"]
        checks.true(ours["dtensor_params"], f"FSDP2 {variant}: parameters are not DTensors")
        checks.true("DTensor" in ours["state_kinds"],
                    f"FSDP2 {variant}: no DTensor in the optimizer state ({ours['state_kinds']})")
        checks.close(f"FSDP2 {variant}: ours vs torch", "vs torch", ours["final"],
                     theirs["final"])
        checks.close(f"FSDP2 {variant}: ours vs unsharded", "vs unsharded", ours["final"],
                     references[variant, "ours"]["final"])
        checks.close(f"FSDP2 {variant}: gradient norms vs unsharded", "vs unsharded",
                     {"norms": torch.tensor(ours["norms"])},
                     {"norms": torch.tensor(references[variant, "ours"]["norms"])})
        for impl in ("ours", "torch"):
            checks.close(f"FSDP2 {variant}: {impl} resumed on 2 ranks", "resumed on 2 ranks",
                         results[0][variant, impl, "resumed on 2 ranks"]["final"],
                         results[0][variant, impl]["final"])
    # torch-format classes: get_optimizer_state_dict gives torch's keys and values
    for variant in ("AdamW", "Adam(amsgrad)", "SGD(nesterov)"):
        ours = results[0][variant, "ours"]["full_state"]["state"]
        theirs = results[0][variant, "torch"]["full_state"]["state"]
        checks.true(ours.keys() == theirs.keys(), f"FSDP2 {variant}: FQNs differ")
        for name, st in theirs.items():
            checks.true(ours[name].keys() == st.keys(),
                        f"FSDP2 {variant} {name}: keys {sorted(ours[name])} vs {sorted(st)}")
            checks.close(f"FSDP2 {variant} {name}: full optimizer state", "state vs torch",
                         {k: ours[name][k].double() for k in st},
                         {k: v.double() for k, v in st.items()})

    (resharded,) = launch("reshard", tmp_path, world=1)
    for (variant, impl, how), value in resharded.items():
        checks.close(f"{variant} {impl} {how}", "resharded to 1 rank", value["final"],
                     results[0][variant, impl]["final"])
    expected = sum(len(_resumes(v)) + 2 for v in VARIANTS)  # + 2: unsharded, from own
    checks.true(len(resharded) == expected,
                f"expected {expected} resharded runs, got {len(resharded)}")
    checks.done()


def test_global_norm_dtensor(tmp_path):
    """``fo.tree.global_norm`` of DTensor trees: the norm of the full tensors, one all-reduce
    for a one-mesh tree (FSDP2 gradients); leaves on several meshes and plain tensors mix.
    A whole optimizer step on FSDP2 parameters is local (no collective) and a chain with
    ``clip_by_global_norm`` costs one all-reduce, on the per-leaf and multi-tensor paths."""
    results = launch("norm", tmp_path)
    checks = Checks()
    for res in results:
        fsdp = res["fsdp grads"]
        expected = fo.tree.global_norm(fsdp["grads"])
        checks.close("FSDP2 gradient norm", "norm", {"n": fsdp["norm"]}, {"n": expected})
        checks.true(fsdp["comm"] == {"c10d_functional.all_reduce": 1},
                    f"FSDP2 gradient norm: collectives {fsdp['comm']}, expected one all-reduce")
        mixed = res["mixed tree"]
        full = mixed["full"]
        plain = {"a": full[0], "b": full[1], "c": full[2], "d": full[3], "e": full[4],
                 "f": [None, full[5]]}
        checks.true(mixed["type"] == "Tensor", f"mixed-tree norm is a {mixed['type']}")
        n_reduce = mixed["comm"].get("c10d_functional.all_reduce", 0)
        checks.true(set(mixed["comm"]) <= {"c10d_functional.all_reduce"} and 2 <= n_reduce <= 3,
                    f"mixed-tree norm: collectives {mixed['comm']}, expected one all-reduce per "
                    "mesh (DTensor reduces a 2-d mesh's dimensions one by one: at most 3)")
        checks.close("mixed-tree norm", "norm", {"n": mixed["norm"]},
                     {"n": fo.tree.global_norm(plain)})
        tx = fo.clip_by_global_norm(1.0)
        expected, _ = tx.update(plain, tx.init(plain))
        checks.close("mixed-tree clip_by_global_norm", "norm",
                     dict(fo.tree.named_leaves(mixed["clipped"])[i] for i in (0, 1, 2, 3, 4, 6)),
                     dict(fo.tree.named_leaves(expected)[i] for i in (0, 1, 2, 3, 4, 6)))
        for variant, expected in (("AdamW", {}),
                                  ("FunctionalOptimizer(clip+adam)",
                                   {"c10d_functional.all_reduce": 1})):
            per_leaf, multi = res["step", variant, False], res["step", variant, True]
            for foreach, r in ((False, per_leaf), (True, multi)):
                checks.true(r["comm"] == [expected] * 2,
                            f"FSDP2 {variant} step (foreach={foreach}): collectives per step "
                            f"{r['comm']}, expected {[expected] * 2}")
            checks.close(f"FSDP2 {variant}: foreach=True vs foreach=False", "foreach vs per-leaf",
                         multi["final"], per_leaf["final"])
    checks.done()


if __name__ == "__main__":
    worker_main(WORKERS, sys.argv)
