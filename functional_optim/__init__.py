"""functional_optim: every optimizer and schedule as a pair of pure functions that compose.

>>> import functional_optim as fo
>>> tx = fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(), fo.scale_by_learning_rate(1e-3))
"""

from . import (  # meta-learning (nothing in the core imports them)
    capture,
    combinators,
    implicit,
    meta,
    projections,
    registry,
    schedules,
    tree,
    tree_math,
)
from .aliases import adadelta, adagrad, adam, adamax, adamw, asgd, nadam, radam, rmsprop, rprop, sgd
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
from .combinators import (
    ApplyIfFiniteState,
    AverageParamsState,
    ConditionallyState,
    EmaState,
    InjectHparamsState,
    LookaheadState,
    MultiStepsState,
    ZeroNansState,
    apply_if_finite,
    average_params,
    centralize,
    conditionally,
    ema,
    flatten,
    freeze,
    get_hparam,
    inject_hparams,
    label_params,
    lookahead,
    masked,
    multi_steps,
    partition,
    zero_nans,
)
from .groups import parameter_groups
from .registry import get_optimizer, optimizer_from_config
from .transforms import (
    ReduceOnPlateauState,
    ScaleByAdadeltaState,
    ScaleByAdamaxState,
    ScaleByAdamState,
    ScaleByAsgdState,
    ScaleByNadamState,
    ScaleByRadamState,
    ScaleByRmsState,
    ScaleByRpropState,
    ScaleByRssState,
    ScaleByScheduleState,
    TraceState,
    add_decayed_weights,
    clip,
    clip_by_global_norm,
    clip_by_norm,
    identity,
    reduce_on_plateau,
    scale,
    scale_by_adadelta,
    scale_by_adam,
    scale_by_adamax,
    scale_by_asgd,
    scale_by_learning_rate,
    scale_by_nadam,
    scale_by_radam,
    scale_by_rms,
    scale_by_rprop,
    scale_by_rss,
    set_to_zero,
    sign,
    trace,
)

__version__ = "0.1.0"

__all__ = [
    "adadelta",
    "adagrad",
    "adamax",
    "asgd",
    "nadam",
    "radam",
    "rmsprop",
    "rprop",
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
    "ApplyIfFiniteState",
    "AverageParamsState",
    "ConditionallyState",
    "EmaState",
    "InjectHparamsState",
    "LookaheadState",
    "MultiStepsState",
    "ZeroNansState",
    "apply_if_finite",
    "average_params",
    "centralize",
    "conditionally",
    "ema",
    "flatten",
    "freeze",
    "get_hparam",
    "inject_hparams",
    "label_params",
    "lookahead",
    "masked",
    "multi_steps",
    "parameter_groups",
    "partition",
    "zero_nans",
    "ReduceOnPlateauState",
    "reduce_on_plateau",
    "capture",
    "combinators",
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
    "tree_math",
    "projections",
    "meta",
    "implicit",
    "registry",
    "get_optimizer",
    "optimizer_from_config",
    "sgd",
]

# Adafactor, Muon, L-BFGS, SparseAdam
# HuggingFace transformers' optimizers (compat.transformers maps HF's module onto them)
from .aliases import (  # noqa: E402  # noqa: E402
    adafactor,
    adam_weight_decay,
    huggingface_adafactor,
    huggingface_adamw,
    lbfgs,
    muon,
    sparse_adam,
)
from .transforms import (  # noqa: E402
    LbfgsState,
    ScaleByFactoredRmsState,
    ScaleByMuonState,
    ScaleBySparseAdamState,
    orthogonalize_via_newton_schulz,
    relative_step_size,
    scale_by_factored_rms,
    scale_by_lbfgs,
    scale_by_muon,
    scale_by_newton_schulz,
    scale_by_sparse_adam,
)

__all__ += [
    "adam_weight_decay",
    "huggingface_adafactor",
    "huggingface_adamw",
    "adafactor",
    "lbfgs",
    "muon",
    "sparse_adam",
    "LbfgsState",
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
from .aliases import dense_sparse_adam  # noqa: E402
from .transforms import scale_by_dense_sparse_adam  # noqa: E402

__all__ += ["dense_sparse_adam", "scale_by_dense_sparse_adam"]

# optax's vocabulary outside the optimizers: bounds on updates, numerics
from . import numerics  # noqa: E402
from .transforms import (  # noqa: E402
    adaptive_grad_clip,
    clip_by_block_rms,
    keep_params_nonnegative,
    per_example_global_norm_clip,
    per_example_layer_norm_clip,
)

__all__ += [
    "numerics",
    "adaptive_grad_clip",
    "clip_by_block_rms",
    "keep_params_nonnegative",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
]

# optax's wrappers and utilities outside the optimizers
from .combinators import (  # noqa: E402
    MonitorState,
    SnapshotState,
    incremental_update,
    measure_with_ema,
    monitor,
    periodic_update,
    skip_large_updates,
    skip_not_finite,
    snapshot,
    stateless,
    stateless_with_tree_map,
)
from .numerics import scale_gradient  # noqa: E402

__all__ += [
    "MonitorState",
    "SnapshotState",
    "incremental_update",
    "measure_with_ema",
    "monitor",
    "periodic_update",
    "skip_large_updates",
    "skip_not_finite",
    "snapshot",
    "stateless",
    "stateless_with_tree_map",
    "scale_gradient",
]

# optax's line searches, pure L-BFGS, microbatching and linear-algebra utilities
from . import linear_algebra, microbatching  # noqa: E402
from .aliases import optax_lbfgs  # noqa: E402
from .linear_algebra import (  # noqa: E402
    matrix_inverse_pth_root,
    multi_normal,
    nnls,
    power_iteration,
)
from .microbatching import microbatch  # noqa: E402
from .transforms import (  # noqa: E402
    BacktrackingLinesearchInfo,
    ScaleByBacktrackingLinesearchState,
    ScaleByLbfgsDirectionState,
    ScaleByZoomLinesearchState,
    ZoomLinesearchInfo,
    scale_by_backtracking_linesearch,
    scale_by_lbfgs_direction,
    scale_by_zoom_linesearch,
    value_and_grad_from_state,
)

__all__ += [
    "linear_algebra",
    "matrix_inverse_pth_root",
    "multi_normal",
    "nnls",
    "power_iteration",
    "microbatching",
    "microbatch",
    "optax_lbfgs",
    "BacktrackingLinesearchInfo",
    "ScaleByBacktrackingLinesearchState",
    "ScaleByLbfgsDirectionState",
    "ScaleByZoomLinesearchState",
    "ZoomLinesearchInfo",
    "scale_by_backtracking_linesearch",
    "scale_by_lbfgs_direction",
    "scale_by_zoom_linesearch",
    "value_and_grad_from_state",
]
