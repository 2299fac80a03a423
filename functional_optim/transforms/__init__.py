"""Building blocks, by family; each returns a :class:`~functional_optim.Transform`."""

from .adaptive import (
    ScaleByAdadeltaState,
    ScaleByAdamaxState,
    ScaleByAsgdState,
    ScaleByNadamState,
    ScaleByRadamState,
    ScaleByRpropState,
    ScaleByRssState,
    scale_by_adadelta,
    scale_by_adamax,
    scale_by_asgd,
    scale_by_nadam,
    scale_by_radam,
    scale_by_rprop,
    scale_by_rss,
)
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
from .moments import (
    ScaleByAdamState,
    ScaleByRmsState,
    TraceState,
    scale_by_adam,
    scale_by_rms,
    trace,
)
from .plateau import (
    GreedyLrState,
    ReduceOnPlateauState,
    greedy_lr_step,
    is_better,
    reduce_on_plateau,
    scale_by_greedy_lr,
)

__all__ = [
    "ScaleByAdadeltaState",
    "ScaleByAdamaxState",
    "ScaleByAsgdState",
    "ScaleByNadamState",
    "ScaleByRadamState",
    "ScaleByRpropState",
    "ScaleByRssState",
    "scale_by_adadelta",
    "scale_by_adamax",
    "scale_by_asgd",
    "scale_by_nadam",
    "scale_by_radam",
    "scale_by_rprop",
    "scale_by_rss",
    "ReduceOnPlateauState",
    "reduce_on_plateau",
    "GreedyLrState",
    "greedy_lr_step",
    "is_better",
    "scale_by_greedy_lr",
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

# Adafactor, Muon, SparseAdam, L-BFGS (torch.optim's special algorithms)
from .factored import ScaleByFactoredRmsState, relative_step_size, scale_by_factored_rms
from .lbfgs import LbfgsState, scale_by_lbfgs
from .orthogonal import (
    MUON_NS_COEFFICIENTS,
    ScaleByMuonState,
    orthogonalize_via_newton_schulz,
    scale_by_muon,
    scale_by_newton_schulz,
)
from .sparse import ScaleBySparseAdamState, scale_by_sparse_adam

__all__ += [
    "LbfgsState",
    "MUON_NS_COEFFICIENTS",
    "ScaleByFactoredRmsState",
    "ScaleByMuonState",
    "ScaleBySparseAdamState",
    "orthogonalize_via_newton_schulz",
    "relative_step_size",
    "scale_by_factored_rms",
    "scale_by_lbfgs",
    "scale_by_muon",
    "scale_by_newton_schulz",
    "scale_by_sparse_adam",
]

# AllenNLP's DenseSparseAdam
from .sparse import scale_by_dense_sparse_adam  # noqa: E402

__all__ += ["scale_by_dense_sparse_adam"]

# optax's vocabulary outside the optimizers: bounds on updates (block RMS, adaptive gradient
# clipping, per-example clipping, non-negative parameters)
from .bounding import (  # noqa: E402
    adaptive_grad_clip,
    clip_by_block_rms,
    keep_params_nonnegative,
    per_example_global_norm_clip,
    per_example_layer_norm_clip,
    unitwise_clip,
    unitwise_norm,
)

__all__ += [
    "adaptive_grad_clip",
    "clip_by_block_rms",
    "keep_params_nonnegative",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
    "unitwise_clip",
    "unitwise_norm",
]
