"""Combinators and wrappers: transforms built from other transforms, by family.

Each returns a :class:`~functional_optim.Transform`; each is pure, differentiable, ``vmap``-able,
compilable with ``fullgraph=True`` and capturable: decisions that depend on values (a step
boundary, a non-finite gradient, a sync step) are taken with :func:`torch.where`, never in
Python. A wrapper whose only hyperparameters are its inner transform's exposes them unchanged
(``masked(adamw(...), m).hparams`` is ``adamw``'s dict), so a ``param_group`` still is its hparams.

Selecting a subset of the parameters (:func:`masked`, :func:`partition`) hands the inner transform
the parameter tree with ``None`` in place of the other leaves: ``None`` leaves cost nothing and
carry no state, so the inner state exists only for the leaves it owns.

The families, one module each: ``masking`` (masks, labels, groups), ``injection``
(hyperparameters from schedules or the state), ``accumulation`` (accumulation, skipping,
conditions), ``numerics`` (gradient surgery), ``averaging`` (lookahead and weight averages),
``layout`` (one buffer per dtype and device, complex leaves as real pairs), ``tricks``
(AdamC's corrected decay, an EMA of the parameters) and ``functions`` (transforms from
functions, measurements kept in the state); every public name is importable from here.
"""

from .accumulation import (
    ApplyIfFiniteState,
    ConditionallyState,
    MultiStepsState,
    accumulate,
    apply_if_finite,
    conditionally,
    has_updated,
    multi_steps,
    skip_large_updates,
    skip_not_finite,
)
from .averaging import (
    AverageParamsState,
    EmaState,
    LookaheadState,
    average_params,
    ema,
    incremental_update,
    lookahead,
    periodic_update,
)
from .functions import (
    MonitorState,
    SnapshotState,
    measure_with_ema,
    monitor,
    snapshot,
    stateless,
    stateless_with_tree_map,
)
from .injection import InjectHparamsState, get_hparam, inject_hparams
from .layout import (
    RealImaginary,
    SplitRealAndImaginaryState,
    flatten,
    split_real_and_imaginary,
)
from .masking import (
    MaskedNode,
    freeze,
    label_params,
    masked,
    partition,
)
from .masking import _compile_rules as _compile_rules  # (used by groups.py)
from .masking import _path_names as _path_names  # (groups.py, aliases/huggingface.py)
from .masking import _rule_labels as _rule_labels  # (groups.py)
from .numerics import ZeroNansState, centralize, zero_nans
from .tricks import (
    EmaParamsState,
    corrected_decay,
    ema_eval_params,
    ema_params,
    ema_train_params,
)

__all__ = [
    "EmaParamsState",
    "corrected_decay",
    "ema_eval_params",
    "ema_params",
    "ema_train_params",
    "MaskedNode",
    "masked",
    "partition",
    "label_params",
    "freeze",
    "InjectHparamsState",
    "inject_hparams",
    "get_hparam",
    "MultiStepsState",
    "accumulate",
    "multi_steps",
    "has_updated",
    "skip_not_finite",
    "skip_large_updates",
    "ApplyIfFiniteState",
    "apply_if_finite",
    "ZeroNansState",
    "zero_nans",
    "centralize",
    "LookaheadState",
    "lookahead",
    "EmaState",
    "ema",
    "AverageParamsState",
    "average_params",
    "ConditionallyState",
    "conditionally",
    "flatten",
    "RealImaginary",
    "SplitRealAndImaginaryState",
    "split_real_and_imaginary",
    "incremental_update",
    "periodic_update",
    "stateless",
    "stateless_with_tree_map",
    "SnapshotState",
    "snapshot",
    "MonitorState",
    "monitor",
    "measure_with_ema",
]
