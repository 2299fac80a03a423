"""``optax.schedules``: optax's schedules are :mod:`functional_optim.schedules`' (the same
arguments and numbers, step counted from 0), under optax's names, with the hyperparameter
injection of :func:`~functional_optim.compat.optax.inject_hyperparams`."""

from ...combinators import InjectHparamsState as InjectHyperparamsState
from ...schedules import Schedule, exponential_decay
from ...schedules import constant as constant_schedule
from ...schedules import cosine_decay as cosine_decay_schedule
from ...schedules import cosine_onecycle as cosine_onecycle_schedule
from ...schedules import join as join_schedules
from ...schedules import linear as linear_schedule
from ...schedules import linear_onecycle as linear_onecycle_schedule
from ...schedules import piecewise_constant as piecewise_constant_schedule
from ...schedules import piecewise_interpolate as piecewise_interpolate_schedule
from ...schedules import polynomial as polynomial_schedule
from ...schedules import sgdr as sgdr_schedule
from ...schedules import warmup_constant as warmup_constant_schedule
from ...schedules import warmup_cosine_decay as warmup_cosine_decay_schedule
from ...schedules import warmup_exponential_decay as warmup_exponential_decay_schedule
from ._wrappers import (
    StatefulSchedule,
    WrappedSchedule,
    inject_hyperparams,
    inject_stateful_hyperparams,
)

InjectStatefulHyperparamsState = InjectHyperparamsState

__all__ = [
    "InjectHyperparamsState",
    "InjectStatefulHyperparamsState",
    "Schedule",
    "StatefulSchedule",
    "WrappedSchedule",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "exponential_decay",
    "inject_hyperparams",
    "inject_stateful_hyperparams",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polynomial_schedule",
    "sgdr_schedule",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
]
