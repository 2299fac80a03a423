"""Drop-in ``torch.optim.Optimizer`` classes backed by functional transforms.

``FunctionalOptimizer`` wraps any transform; ``SGD``, ``Adam`` and ``AdamW`` are drop-in
replacements for torch.optim's classes (same constructor, numbers and ``state_dict`` format).
"""

from .adapter import FunctionalOptimizer
from .classes import SGD, Adam, AdamW

__all__ = ["FunctionalOptimizer", "SGD", "Adam", "AdamW"]
