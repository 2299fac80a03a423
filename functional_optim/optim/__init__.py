"""Drop-in ``torch.optim.Optimizer`` classes backed by functional transforms.

``FunctionalOptimizer`` wraps any transform; ``SGD``, ``Adam``, ``AdamW``, ``Adagrad``,
``Adadelta``, ``Adamax``, ``NAdam``, ``RAdam``, ``RMSprop``, ``Rprop``, ``ASGD``, ``Adafactor``,
``Muon``, ``SparseAdam`` and ``LBFGS`` are drop-in replacements for torch.optim's classes of
those names (same constructor, numbers and ``state_dict`` format); ``HuggingFaceAdamW`` and
``HuggingFaceAdafactor`` for HuggingFace transformers' (see
:mod:`functional_optim.compat.transformers` for HF's names). Every other registered alias has
a class here too, named by its registration and made by one mechanism
(:mod:`functional_optim.optim.generated`).
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

# the drop-in class of every other registered alias, made by one mechanism (generated.py)
from .. import registry as _registry  # noqa: E402
from .generated import drop_in_class as _drop_in_class  # noqa: E402

for _name in _registry.names():
    _entry = _registry.entry(_name)
    if _entry.drop_in not in globals():
        globals()[_entry.drop_in] = _drop_in_class(_entry)
        __all__.append(_entry.drop_in)
