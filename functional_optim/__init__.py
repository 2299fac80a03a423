"""functional_optim: every optimizer and schedule as a pair of pure functions that compose.

>>> import functional_optim as fo
>>> tx = fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(), fo.scale_by_learning_rate(1e-3))
"""

from . import schedules, tree
from .aliases import adam, adamw, sgd
from .base import (
    EmptyState,
    HParamError,
    MissingParamsError,
    Transform,
    TreeMismatchError,
    apply_updates,
    apply_updates_,
    chain,
    reparametrize,
    resolve_hparams,
)
from .transforms import (
    ScaleByAdamState,
    ScaleByRmsState,
    ScaleByScheduleState,
    TraceState,
    add_decayed_weights,
    clip,
    clip_by_global_norm,
    clip_by_norm,
    identity,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_rms,
    set_to_zero,
    sign,
    trace,
)

__version__ = "0.1.0"

__all__ = [
    "EmptyState",
    "HParamError",
    "MissingParamsError",
    "ScaleByAdamState",
    "ScaleByRmsState",
    "ScaleByScheduleState",
    "TraceState",
    "Transform",
    "TreeMismatchError",
    "adam",
    "adamw",
    "add_decayed_weights",
    "apply_updates",
    "apply_updates_",
    "chain",
    "clip",
    "clip_by_global_norm",
    "clip_by_norm",
    "identity",
    "reparametrize",
    "resolve_hparams",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_rms",
    "schedules",
    "set_to_zero",
    "sign",
    "trace",
    "tree",
    "sgd",
]
