"""optax's API over this library: ``import functional_optim.compat.optax as optax``.

A PyTorch port of an optax program keeps its optax calls: the names of ``optax`` (top
level), ``optax.tree`` (and ``optax.tree_utils``), ``optax.contrib``, ``optax.projections`` and
``optax.schedules``, with optax's arguments, defaults and numbers. Every one is a name over a
native transform (DESIGN.md §7: compat layers are names, not code): an optax optimizer is the
chain of native blocks optax builds, with optax's variant of each selected, and its
hyperparameters under optax's argument names (``learning_rate``, ``b1``, ``b2``, ...), so
:func:`inject_hyperparams` and ``state.hparams["learning_rate"]`` work as in optax.

A transform is a :class:`~functional_optim.Transform`: ``tx.init(params)``,
``tx.update(updates, state, params=None, **extra)`` (optax's protocol), pure, and usable
under ``torch.func``, ``vmap``, ``torch.compile`` and CUDA graphs. What differs from optax:
trees hold torch tensors; randomness comes from integer seeds or :class:`torch.Generator`
(``key=`` arguments take either); there is no ``jax.jit`` (use ``torch.compile``). The
"Migrating from optax" page of the docs has the details and a side-by-side example.
"""

from ... import microbatching
from ... import numerics as _numerics
from ... import tree_math as _tree_math
from ...base import EmptyState
from ...combinators import (
    ApplyIfFiniteState,
    ConditionallyState,
    EmaState,
    InjectHparamsState,
    LookaheadState,
    MaskedNode,
    MonitorState,
    MultiStepsState,
    SnapshotState,
    ZeroNansState,
    apply_if_finite,
    flatten,
    measure_with_ema,
    monitor,
    skip_large_updates,
    skip_not_finite,
)
from ...transforms import (
    AddNoiseState,
    ScaleByAdadeltaState,
    ScaleByAdamState,
    ScaleByAdanState,
    ScaleByBacktrackingLinesearchState,
    ScaleByBeliefState,
    ScaleByFactoredRmsState,
    ScaleByLbfgsDirectionState,
    ScaleByLionState,
    ScaleByNovogradState,
    ScaleByRmsState,
    ScaleByRpropState,
    ScaleByRssState,
    ScaleByScheduleState,
    ScaleBySm3State,
    ScaleByZoomLinesearchState,
    TraceState,
    ZoomLinesearchInfo,
)
from . import contrib, projections, schedules, tree
from ._aliases import (
    adabelief,
    adadelta,
    adafactor,
    adagrad,
    adam,
    adamax,
    adamaxw,
    adamw,
    adan,
    amsgrad,
    fromage,
    lamb,
    lars,
    lbfgs,
    lion,
    nadam,
    nadamw,
    noisy_sgd,
    novograd,
    optimistic_adam,
    optimistic_adam_v2,
    optimistic_gradient_descent,
    polyak_sgd,
    radam,
    rmsprop,
    rprop,
    sgd,
    sign_sgd,
    signum,
    sm3,
    yogi,
)
from ._base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    MaskOrFn,
    OptState,
    Params,
    ScalarOrSchedule,
    TransformInitFn,
    TransformUpdateExtraArgsFn,
    TransformUpdateFn,
    Updates,
    apply_updates,
    chain,
    identity,
    init_empty_state,
    named_chain,
    set_to_zero,
    with_extra_args_support,
)
from ._transforms import (
    adaptive_grad_clip,
    add_decayed_weights,
    add_noise,
    centralize,
    clip,
    clip_by_block_rms,
    clip_by_global_norm,
    ema,
    keep_params_nonnegative,
    normalize_by_update_norm,
    per_example_global_norm_clip,
    per_example_layer_norm_clip,
    scale,
    scale_by_adadelta,
    scale_by_adam,
    scale_by_adamax,
    scale_by_adan,
    scale_by_amsgrad,
    scale_by_backtracking_linesearch,
    scale_by_belief,
    scale_by_distance_over_gradients,
    scale_by_factored_rms,
    scale_by_lbfgs,
    scale_by_learning_rate,
    scale_by_lion,
    scale_by_novograd,
    scale_by_optimistic_gradient,
    scale_by_param_block_norm,
    scale_by_param_block_rms,
    scale_by_polyak,
    scale_by_radam,
    scale_by_rms,
    scale_by_rprop,
    scale_by_rss,
    scale_by_schedule,
    scale_by_sign,
    scale_by_sm3,
    scale_by_stddev,
    scale_by_trust_ratio,
    scale_by_yogi,
    scale_by_zoom_linesearch,
    trace,
    zero_nans,
)
from ._utilities import (
    global_norm,
    incremental_update,
    matrix_inverse_pth_root,
    microbatch,
    multi_normal,
    nnls,
    periodic_update,
    power_iteration,
    safe_norm,
    scale_gradient,
    snapshot,
    stateless,
    stateless_with_tree_map,
    tree_map_params,
    value_and_grad_from_state,
)
from ._wrappers import (
    LookaheadParams,
    MultiSteps,
    ShouldSkipUpdateFunction,
    apply_every,
    conditionally_mask,
    conditionally_transform,
    freeze,
    inject_hyperparams,
    inject_stateful_hyperparams,
    lookahead,
    masked,
    multi_transform,
    partition,
    selective_transform,
)
from .schedules import (
    Schedule,
    WrappedSchedule,
    constant_schedule,
    cosine_decay_schedule,
    cosine_onecycle_schedule,
    exponential_decay,
    join_schedules,
    linear_onecycle_schedule,
    linear_schedule,
    piecewise_constant_schedule,
    piecewise_interpolate_schedule,
    polynomial_schedule,
    sgdr_schedule,
    warmup_constant_schedule,
    warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule,
)

tree_utils = tree

# optax's state classes are the native transforms' states; optax's stateless transforms (whose
# own states are empty NamedTuples) have the native EmptyState.
AddDecayedWeightsState = AdaptiveGradClipState = ClipByGlobalNormState = ClipState = EmptyState
NonNegativeParamsState = ScaleState = ScaleByTrustRatioState = EmptyState
ApplyEvery = MultiStepsState
ConditionallyMaskState = ConditionallyTransformState = ConditionallyState
InjectHyperparamsState = InjectStatefulHyperparamsState = InjectHparamsState
ScaleByAdaDeltaState = ScaleByAdadeltaState
FactoredState = ScaleByFactoredRmsState
ScaleByLBFGSState = ScaleByLbfgsDirectionState
ScaleByAmsgradState = ScaleByAdamState
ScaleByRStdDevState = ScaleByRmsState
ScaleBySM3State = ScaleBySm3State

# optax's numerics and tree helpers at the top level
bias_correction = _tree_math.bias_correction
update_moment = _tree_math.update_moment
update_moment_per_elem_norm = _tree_math.update_moment_per_elem_norm
update_infinity_moment = _tree_math.update_infinity_moment
safe_root_mean_squares = _numerics.safe_root_mean_squares
safe_increment = safe_int32_increment = _numerics.safe_increment

__all__ = [
    "AdaptiveGradClipState", "AddDecayedWeightsState", "AddNoiseState", "ApplyEvery",
    "ApplyIfFiniteState", "ClipByGlobalNormState", "ClipState", "ConditionallyMaskState",
    "ConditionallyState", "ConditionallyTransformState", "EmaState", "EmptyState",
    "FactoredState", "GradientTransformation", "GradientTransformationExtraArgs",
    "InjectHparamsState", "InjectHyperparamsState", "InjectStatefulHyperparamsState",
    "LookaheadParams", "LookaheadState", "MaskOrFn", "MaskedNode", "MonitorState", "MultiSteps",
    "MultiStepsState", "NonNegativeParamsState", "OptState", "Params", "ScalarOrSchedule",
    "ScaleByAdaDeltaState", "ScaleByAdadeltaState", "ScaleByAdamState", "ScaleByAdanState",
    "ScaleByAmsgradState", "ScaleByBacktrackingLinesearchState", "ScaleByBeliefState",
    "ScaleByFactoredRmsState", "ScaleByLBFGSState", "ScaleByLbfgsDirectionState",
    "ScaleByLionState", "ScaleByNovogradState", "ScaleByRStdDevState", "ScaleByRmsState",
    "ScaleByRpropState", "ScaleByRssState", "ScaleBySM3State", "ScaleByScheduleState",
    "ScaleBySm3State", "ScaleByTrustRatioState", "ScaleByZoomLinesearchState", "ScaleState",
    "Schedule", "ShouldSkipUpdateFunction", "SnapshotState", "TraceState", "TransformInitFn",
    "TransformUpdateExtraArgsFn", "TransformUpdateFn", "Updates", "WrappedSchedule",
    "ZeroNansState", "ZoomLinesearchInfo", "adabelief", "adadelta", "adafactor", "adagrad",
    "adam", "adamax", "adamaxw", "adamw", "adan", "adaptive_grad_clip", "add_decayed_weights",
    "add_noise", "amsgrad", "apply_every", "apply_if_finite", "apply_updates",
    "bias_correction", "centralize", "chain", "clip", "clip_by_block_rms",
    "clip_by_global_norm", "conditionally_mask", "conditionally_transform", "constant_schedule",
    "contrib", "cosine_decay_schedule", "cosine_onecycle_schedule", "ema", "exponential_decay",
    "flatten", "freeze", "fromage", "global_norm", "identity", "incremental_update",
    "init_empty_state", "inject_hyperparams", "inject_stateful_hyperparams", "join_schedules",
    "keep_params_nonnegative", "lamb", "lars", "lbfgs", "linear_onecycle_schedule",
    "linear_schedule", "lion", "lookahead", "masked", "matrix_inverse_pth_root",
    "measure_with_ema", "microbatch", "microbatching", "monitor", "multi_normal",
    "multi_transform", "nadam", "nadamw", "named_chain", "nnls", "noisy_sgd",
    "normalize_by_update_norm", "novograd", "optimistic_adam", "optimistic_adam_v2",
    "optimistic_gradient_descent", "partition", "per_example_global_norm_clip",
    "per_example_layer_norm_clip", "periodic_update", "piecewise_constant_schedule",
    "piecewise_interpolate_schedule", "polyak_sgd", "polynomial_schedule", "power_iteration",
    "projections", "radam", "rmsprop", "rprop", "safe_increment", "safe_int32_increment",
    "safe_norm", "safe_root_mean_squares", "scale", "scale_by_adadelta", "scale_by_adam",
    "scale_by_adamax", "scale_by_adan", "scale_by_amsgrad", "scale_by_backtracking_linesearch",
    "scale_by_belief", "scale_by_distance_over_gradients", "scale_by_factored_rms",
    "scale_by_lbfgs", "scale_by_learning_rate", "scale_by_lion", "scale_by_novograd",
    "scale_by_optimistic_gradient", "scale_by_param_block_norm", "scale_by_param_block_rms",
    "scale_by_polyak", "scale_by_radam", "scale_by_rms", "scale_by_rprop", "scale_by_rss",
    "scale_by_schedule", "scale_by_sign", "scale_by_sm3", "scale_by_stddev",
    "scale_by_trust_ratio", "scale_by_yogi", "scale_by_zoom_linesearch", "scale_gradient",
    "schedules", "selective_transform", "set_to_zero", "sgd", "sgdr_schedule", "sign_sgd",
    "signum", "skip_large_updates", "skip_not_finite", "sm3", "snapshot", "stateless",
    "stateless_with_tree_map", "trace", "tree", "tree_map_params", "tree_utils",
    "update_infinity_moment", "update_moment", "update_moment_per_elem_norm",
    "value_and_grad_from_state", "warmup_constant_schedule", "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule", "with_extra_args_support", "yogi", "zero_nans",
]
