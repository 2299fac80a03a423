"""functional_optim: every optimizer and schedule as a pair of pure functions that compose.

>>> import functional_optim as fo
>>> tx = fo.chain(fo.clip_by_global_norm(1.0), fo.scale_by_adam(), fo.scale_by_learning_rate(1e-3))

The top level holds the core (``base``, ``fo.step``) and re-exports every public name of
:mod:`~functional_optim.aliases`, :mod:`~functional_optim.transforms` and
:mod:`~functional_optim.combinators` (their ``__all__``: each name is listed once, beside its
family).
"""

from . import (  # meta-learning and the helpers' modules (nothing in the core imports them)
    aliases,
    capture,
    combinators,
    implicit,
    linear_algebra,
    meta,
    microbatching,
    numerics,
    projections,
    registry,
    schedules,
    transforms,
    tree,
    tree_math,
)
from ._step import host_counts, step
from .aliases import *  # noqa: F403
from .base import (
    DonatedStateError,
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
from .combinators import *  # noqa: F403
from .groups import parameter_groups
from .linear_algebra import matrix_inverse_pth_root, multi_normal, nnls, power_iteration
from .microbatching import microbatch
from .numerics import scale_gradient
from .registry import get_optimizer, optimizer_from_config
from .transforms import *  # noqa: F403

__version__ = "0.1.0"

__all__ = [
    "DonatedStateError",
    "EmptyState",
    "HParamError",
    "MissingParamsError",
    "Transform",
    "TreeMismatchError",
    "apply_updates",
    "apply_updates_",
    "capture",
    "chain",
    "combinators",
    "get_optimizer",
    "host_counts",
    "implicit",
    "linear_algebra",
    "matrix_inverse_pth_root",
    "meta",
    "microbatch",
    "microbatching",
    "multi_normal",
    "nnls",
    "numerics",
    "optimizer_from_config",
    "parameter_groups",
    "power_iteration",
    "projections",
    "registry",
    "reparametrize",
    "resolve_hparams",
    "scale_gradient",
    "schedules",
    "step",
    "tree",
    "tree_math",
]
__all__ += aliases.__all__
__all__ += combinators.__all__
__all__ += transforms.__all__
