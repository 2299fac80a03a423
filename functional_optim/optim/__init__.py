"""Drop-in ``torch.optim.Optimizer`` classes backed by functional transforms.

``FunctionalOptimizer`` wraps any transform; ``SGD``, ``Adam``, ``AdamW``, ``Adagrad``,
``Adadelta``, ``Adamax``, ``NAdam``, ``RAdam``, ``RMSprop``, ``Rprop``, ``ASGD``, ``Adafactor``,
``Muon``, ``SparseAdam`` and ``LBFGS`` are drop-in replacements for torch.optim's classes of
those names (same constructor, numbers and ``state_dict`` format); ``HuggingFaceAdamW`` and
``HuggingFaceAdafactor`` for HuggingFace transformers' (see
:mod:`functional_optim.compat.transformers` for HF's names).
"""

from .adapter import FunctionalOptimizer
from .classes import ASGD, SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, NAdam, RAdam, RMSprop, Rprop

__all__ = ["FunctionalOptimizer", "SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax",
           "NAdam", "RAdam", "RMSprop", "Rprop", "ASGD"]
from .classes import LBFGS, Adafactor, Muon, SparseAdam  # noqa: E402

__all__ += ["Adafactor", "Muon", "SparseAdam", "LBFGS"]
from .huggingface import (  # noqa: E402
    HuggingFaceAdafactor,
    HuggingFaceAdafactorSchedule,
    HuggingFaceAdamW,
)

__all__ += ["HuggingFaceAdamW", "HuggingFaceAdafactor", "HuggingFaceAdafactorSchedule"]

from .sparse import DenseSparseAdam  # noqa: E402

__all__ += ["DenseSparseAdam"]
