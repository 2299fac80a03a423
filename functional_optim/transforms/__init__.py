"""Building blocks, by family. Each is a function returning a :class:`~functional_optim.Transform`."""

from .basic import (
    ScaleByScheduleState,
    identity,
    scale,
    scale_by_learning_rate,
    set_to_zero,
    sign,
)
from .clipping import clip, clip_by_global_norm, clip_by_norm
from .decay import add_decayed_weights
from .plateau import ReduceOnPlateauState, reduce_on_plateau
from .moments import (
    ScaleByAdamState,
    ScaleByRmsState,
    TraceState,
    scale_by_adam,
    scale_by_rms,
    trace,
)

__all__ = [
    "ReduceOnPlateauState",
    "reduce_on_plateau",
    "ScaleByAdamState",
    "ScaleByRmsState",
    "ScaleByScheduleState",
    "TraceState",
    "add_decayed_weights",
    "clip",
    "clip_by_global_norm",
    "clip_by_norm",
    "identity",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_rms",
    "set_to_zero",
    "sign",
    "trace",
]
