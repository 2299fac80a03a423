"""Pure schedules: ``value = schedule(step)`` for a 0-d tensor ``step``, with no host sync.

A :class:`Schedule` keeps its numbers in ``schedule.hparams`` (a dict), so they are values like
every other hyperparameter: they can be tensors, be differentiated, be batched under ``vmap`` and
be changed between CUDA-graph replays. ``schedule(step, hparams=None)`` evaluates it. Values are
0-d float64 tensors on the step's device (transforms cast them to each parameter's dtype).

Step counts start at 0: the first update uses ``schedule(0)``, as optax does.

By family, in modules of this package: ``base`` (the type and the basic shapes), ``optax``
(optax's), ``lr_scheduler`` (``torch.optim.lr_scheduler``'s, in closed form) and
``huggingface`` (HuggingFace transformers').
"""

from .base import (
    Schedule,
    as_schedule,
    constant,
    cosine_decay,
    decay_rate_schedule,
    exponential_decay,
    linear,
    warmup_cosine_decay,
)
from .huggingface import (
    SchedulerType,
    constant_with_warmup,
    cosine_warmup_with_min_lr,
    cosine_with_hard_restarts_with_warmup,
    cosine_with_warmup,
    get_schedule,
    inverse_sqrt,
    linear_with_warmup,
    polynomial_decay_with_warmup,
    warmup,
    warmup_stable_decay,
)
from .lr_scheduler import (
    chained_scheduler,
    constant_lr,
    cosine_annealing_lr,
    cosine_annealing_warm_restarts,
    cyclic_lr,
    cyclic_momentum,
    exponential_lr,
    linear_lr,
    multiplicative_lr,
    multistep_lr,
    one_cycle_lr,
    one_cycle_momentum,
    polynomial_lr,
    sequential_lr,
    step_lr,
    swalr,
)
from .optax import (
    cosine_onecycle,
    join,
    linear_onecycle,
    piecewise_constant,
    piecewise_interpolate,
    polynomial,
    sgdr,
    warmup_constant,
    warmup_exponential_decay,
)

__all__ = [
    "Schedule",
    "as_schedule",
    "constant",
    "linear",
    "cosine_decay",
    "warmup_cosine_decay",
    "exponential_decay",
    "decay_rate_schedule",
    # optax's set
    "polynomial",
    "warmup_constant",
    "warmup_exponential_decay",
    "piecewise_constant",
    "piecewise_interpolate",
    "join",
    "sgdr",
    "cosine_onecycle",
    "linear_onecycle",
    # torch.optim.lr_scheduler's formulas
    "step_lr",
    "multistep_lr",
    "constant_lr",
    "linear_lr",
    "exponential_lr",
    "polynomial_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts",
    "cyclic_lr",
    "one_cycle_lr",
    "one_cycle_momentum",
    "sequential_lr",
    "multiplicative_lr",
    "chained_scheduler",
    "swalr",
    "cyclic_momentum",
    # HuggingFace transformers' schedules
    "constant_with_warmup",
    "linear_with_warmup",
    "cosine_with_warmup",
    "cosine_with_hard_restarts_with_warmup",
    "polynomial_decay_with_warmup",
    "inverse_sqrt",
    "warmup_stable_decay",
    "cosine_warmup_with_min_lr",
    "warmup",
    "SchedulerType",
    "get_schedule",
]
