"""Building blocks, by family; each returns a :class:`~functional_optim.Transform`."""

from .adaptive import (
    ScaleByAdadeltaState,
    ScaleByAdamaxState,
    ScaleByAsgdState,
    ScaleByNadamState,
    ScaleByRadamState,
    ScaleByRssState,
    scale_by_adadelta,
    scale_by_adamax,
    scale_by_asgd,
    scale_by_nadam,
    scale_by_radam,
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
    corrected_first_moment,
    scale_by_adam,
    scale_by_rms,
    trace,
)
from .plateau import (
    GreedyLrState,
    ReduceOnPlateauAveragedState,
    ReduceOnPlateauState,
    greedy_lr_step,
    is_better,
    reduce_on_plateau,
    scale_by_greedy_lr,
)
from .rprop import ScaleByRpropState, scale_by_rprop

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
    "ReduceOnPlateauAveragedState",
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
    "corrected_first_moment",
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
    NS_COEFFICIENTS,
    MuonDimensionNumbers,
    ScaleByMuonCountedState,
    ScaleByMuonState,
    orthogonalize_via_newton_schulz,
    resolve_ns_coefficients,
    scale_by_muon,
    scale_by_newton_schulz,
)
from .sparse import ScaleBySparseAdamState, scale_by_sparse_adam

__all__ += [
    "LbfgsState",
    "MUON_NS_COEFFICIENTS",
    "NS_COEFFICIENTS",
    "resolve_ns_coefficients",
    "ScaleByFactoredRmsState",
    "ScaleByMuonState",
    "ScaleByMuonCountedState",
    "MuonDimensionNumbers",
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

# optax.contrib's other algorithms: ADOPT, ACProp, AdEMAMix, MADGRAD, Sophia, SAM, GaLore, DP-SGD
from .asynchronous import (  # noqa: E402
    ScaleByAcpropState,
    ScaleByAdoptState,
    adopt_clip_value,
    scale_by_acprop,
    scale_by_adopt,
)
from .dual_averaging import ScaleByMadgradState, scale_by_madgrad  # noqa: E402
from .lowrank import GaLoreDimensionNumbers, ScaleByGaloreState, scale_by_galore  # noqa: E402
from .momentum_mixtures import (  # noqa: E402
    ScaleByAdemamixState,
    ScaleBySimplifiedAdemamixState,
    scale_by_ademamix,
    scale_by_simplified_ademamix,
)
from .private import (  # noqa: E402
    DifferentiallyPrivateAggregateState,
    differentially_private_aggregate,
)
from .second_order import (  # noqa: E402
    HutchinsonState,
    ScaleBySophiaState,
    hessian_vector_product,
    hutchinson_estimator_diag_hessian,
    scale_by_sophia,
)
from .sharpness import SamState, asam_scale, normalize, sam  # noqa: E402

__all__ += [
    "DifferentiallyPrivateAggregateState",
    "GaLoreDimensionNumbers",
    "HutchinsonState",
    "SamState",
    "ScaleByAcpropState",
    "ScaleByAdemamixState",
    "ScaleByAdoptState",
    "ScaleByGaloreState",
    "ScaleByMadgradState",
    "ScaleBySimplifiedAdemamixState",
    "ScaleBySophiaState",
    "adopt_clip_value",
    "differentially_private_aggregate",
    "hessian_vector_product",
    "hutchinson_estimator_diag_hessian",
    "normalize",
    "sam",
    "scale_by_acprop",
    "scale_by_ademamix",
    "scale_by_adopt",
    "scale_by_galore",
    "scale_by_madgrad",
    "scale_by_simplified_ademamix",
    "scale_by_sophia",
]

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

# optax's line searches and pure L-BFGS direction
from .linesearch import (  # noqa: E402
    BacktrackingLinesearchInfo,
    ScaleByBacktrackingLinesearchState,
    scale_by_backtracking_linesearch,
    value_and_grad_from_state,
)
from .quasi_newton import ScaleByLbfgsDirectionState, scale_by_lbfgs_direction  # noqa: E402
from .zoom import (  # noqa: E402
    ScaleByZoomLinesearchState,
    ZoomLinesearchInfo,
    scale_by_zoom_linesearch,
)

__all__ += [
    "BacktrackingLinesearchInfo",
    "ScaleByBacktrackingLinesearchState",
    "ScaleByZoomLinesearchState",
    "ZoomLinesearchInfo",
    "scale_by_backtracking_linesearch",
    "scale_by_zoom_linesearch",
    "value_and_grad_from_state",
    "ScaleByLbfgsDirectionState",
    "scale_by_lbfgs_direction",
]

# optax.contrib's parameter-free and schedule-free blocks
from .distance_over_gradients import (  # noqa: E402
    ScaleByDistanceOverGradientsState,
    ScaleByDogState,
    ScaleByDowgState,
    scale_by_distance_over_gradients,
    scale_by_dog,
    scale_by_dowg,
)
from .mechanic import MechanicState, mechanize  # noqa: E402
from .momo import (  # noqa: E402
    ScaleByMomoAdamState,
    ScaleByMomoState,
    scale_by_momo,
    scale_by_momo_adam,
)
from .parameter_free import (  # noqa: E402
    ScaleByCocobState,
    ScaleByDadaptAdamwState,
    ScaleByProdigyState,
    scale_by_cocob,
    scale_by_dadapt_adamw,
    scale_by_prodigy,
)
from .schedule_free_learning import (  # noqa: E402
    ScheduleFreeState,
    schedule_free,
    schedule_free_eval_params,
    schedule_free_train_params,
)

__all__ += [
    "MechanicState",
    "ScaleByCocobState",
    "ScaleByDadaptAdamwState",
    "ScaleByDistanceOverGradientsState",
    "ScaleByDogState",
    "ScaleByDowgState",
    "ScaleByMomoAdamState",
    "ScaleByMomoState",
    "ScaleByProdigyState",
    "ScheduleFreeState",
    "mechanize",
    "scale_by_cocob",
    "scale_by_dadapt_adamw",
    "scale_by_distance_over_gradients",
    "scale_by_dog",
    "scale_by_dowg",
    "scale_by_momo",
    "scale_by_momo_adam",
    "scale_by_prodigy",
    "schedule_free",
    "schedule_free_eval_params",
    "schedule_free_train_params",
]

# optax's core algorithms that torch.optim lacks (issue 19)
from .belief import (  # noqa: E402
    ScaleByAdanState,
    ScaleByBeliefState,
    ScaleByYogiState,
    scale_by_adan,
    scale_by_belief,
    scale_by_yogi,
)
from .lion import ScaleByLionState, scale_by_lion  # noqa: E402
from .noise import AddNoiseState, add_noise  # noqa: E402
from .optimistic import ScaleByOptimisticGradientState, scale_by_optimistic_gradient  # noqa: E402
from .polyak import scale_by_polyak  # noqa: E402
from .sublinear import (  # noqa: E402
    ScaleByNovogradState,
    ScaleBySm3State,
    scale_by_novograd,
    scale_by_sm3,
)
from .trust_ratio import (  # noqa: E402
    scale_by_param_block_norm,
    scale_by_param_block_rms,
    scale_by_trust_ratio,
)

__all__ += [
    "AddNoiseState",
    "ScaleByAdanState",
    "ScaleByBeliefState",
    "ScaleByLionState",
    "ScaleByNovogradState",
    "ScaleByOptimisticGradientState",
    "ScaleBySm3State",
    "ScaleByYogiState",
    "add_noise",
    "scale_by_adan",
    "scale_by_belief",
    "scale_by_lion",
    "scale_by_novograd",
    "scale_by_optimistic_gradient",
    "scale_by_param_block_norm",
    "scale_by_param_block_rms",
    "scale_by_polyak",
    "scale_by_sm3",
    "scale_by_trust_ratio",
    "scale_by_yogi",
]

# the precision policy: state storage dtypes, stochastic rounding, Kahan, master weights
from .low_precision import (  # noqa: E402
    KahanState,
    MasterWeightsState,
    PrecisionState,
    StochasticRoundingState,
    kahan_summation,
    master_weights,
    precision,
    quantize_tree,
    quantized_state,
    stochastic_rounding,
    with_state_dtype,
)
from .storage import CastStorage, QuantizedStorage, Storage, stochastic_round  # noqa: E402

__all__ += [
    "CastStorage",
    "KahanState",
    "MasterWeightsState",
    "PrecisionState",
    "QuantizedStorage",
    "StochasticRoundingState",
    "Storage",
    "kahan_summation",
    "master_weights",
    "precision",
    "stochastic_round",
    "stochastic_rounding",
    "with_state_dtype",
]
# quantized optimizer state (issue 21 §2): blockwise 8-bit and 4-bit codes, the storage
# (QuantizedStorage, quantized_state) of the precision policy above
from .quantized import (  # noqa: E402
    Quantized,
    dequantize,
    quantization_map,
    quantize,
)

__all__ += ["Quantized", "dequantize", "quantization_map", "quantize", "quantize_tree",
            "quantized_state"]

# the tricks of current research: cautious masking and decay, MARS, OrthoGrad, trust-region
# clipping, LaProp, Adam-mini, Momentum-SAM
from .adam_variants import (  # noqa: E402
    ScaleByAdamMiniState,
    ScaleByLapropState,
    scale_by_adam_mini,
    scale_by_laprop,
)
from .sharpness import (  # noqa: E402
    MomentumSamState,
    momentum_sam,
    momentum_sam_eval_params,
    momentum_sam_train_params,
)
from .tricks import (  # noqa: E402
    ScaleByMarsState,
    add_cautious_decayed_weights,
    cautious,
    clip_by_trust_ratio,
    orthograd,
    scale_by_mars,
)

__all__ += [
    "asam_scale",
    "ScaleByAdamMiniState",
    "ScaleByLapropState",
    "scale_by_adam_mini",
    "scale_by_laprop",
    "MomentumSamState",
    "momentum_sam",
    "momentum_sam_eval_params",
    "momentum_sam_train_params",
    "ScaleByMarsState",
    "add_cautious_decayed_weights",
    "cautious",
    "clip_by_trust_ratio",
    "orthograd",
    "scale_by_mars",
]
# the Kronecker-factored and eigenbasis preconditioners: SOAP, Shampoo, PSGD-Kron
from .psgd import ScaleByPsgdKronState, scale_by_psgd_kron  # noqa: E402
from .shampoo import ScaleByShampooState, scale_by_shampoo  # noqa: E402
from .soap import ScaleBySoapState, scale_by_soap  # noqa: E402

__all__ += ["ScaleBySoapState", "scale_by_soap", "ScaleByShampooState", "scale_by_shampoo",
            "ScaleByPsgdKronState", "scale_by_psgd_kron"]
