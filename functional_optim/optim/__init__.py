"""Drop-in ``torch.optim.Optimizer`` classes backed by functional transforms.

``FunctionalOptimizer`` wraps any transform; ``SGD``, ``Adam``, ``AdamW``, ``Adagrad``,
``Adadelta``, ``Adamax``, ``NAdam``, ``RAdam``, ``RMSprop``, ``Rprop``, ``ASGD``, ``Adafactor``,
``Muon``, ``SparseAdam`` and ``LBFGS`` are drop-in replacements for torch.optim's classes of
those names (same constructor, numbers and ``state_dict`` format); ``HuggingFaceAdamW`` and
``HuggingFaceAdafactor`` for HuggingFace transformers' (see
:mod:`functional_optim.compat.transformers` for HF's names).
"""

from .adapter import FunctionalOptimizer
from .basic import SGD, Adam, AdamW
from .classic import ASGD, Adadelta, Adagrad, Adamax, NAdam, RAdam, RMSprop, Rprop
from .huggingface import HuggingFaceAdafactor, HuggingFaceAdafactorSchedule, HuggingFaceAdamW
from .sparse import DenseSparseAdam
from .special import LBFGS, Adafactor, Muon, SparseAdam

__all__ = ["FunctionalOptimizer", "SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax",
           "NAdam", "RAdam", "RMSprop", "Rprop", "ASGD", "Adafactor", "Muon", "SparseAdam",
           "LBFGS", "HuggingFaceAdamW", "HuggingFaceAdafactor", "HuggingFaceAdafactorSchedule",
           "DenseSparseAdam"]
