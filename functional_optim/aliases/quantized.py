"""Adam and AdamW with blockwise-quantized moments (bitsandbytes' 8-bit Adam, torchao's 4-bit
AdamW): torch.optim's chains with the Adam block's state stored by
:func:`~functional_optim.transforms.quantized_state`."""

from __future__ import annotations

import torch

from ..base import Transform
from ..registry import register
from ..transforms import quantized_state, scale_by_adam
from .basic import adam_chain

__all__ = ["adam_8bit", "adamw_8bit", "adamw_4bit"]

_DETTMERS = ('Dettmers et al., 2022, "8-bit Optimizers via Block-wise Quantization"; '
             'Loshchilov & Hutter, 2019 (decoupled decay)')


def _quantized_adam(owner: str, bits: int, lr, betas, eps, weight_decay, amsgrad: bool,
                    maximize: bool, decoupled: bool, block_size: int, min_size: int
                    ) -> Transform:
    def block():
        return quantized_state(scale_by_adam(betas, eps, amsgrad=amsgrad), bits, block_size,
                               min_size=min_size)

    return adam_chain(owner, block, lr, betas, eps, weight_decay, maximize, decoupled,
                      dict(amsgrad=amsgrad, maximize=maximize, block_size=block_size,
                           min_size=min_size))


@register(paper=_DETTMERS, drop_in="AdamW8bit")
def adamw_8bit(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
               eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
               maximize: bool = False, block_size: int = 256, min_size: int = 4096
               ) -> Transform:
    r"""AdamW with 8-bit blockwise-quantized moments, as bitsandbytes' ``AdamW8bit``.

    :func:`~functional_optim.adamw`'s chain and numbers, with the Adam block's ``mu`` (signed
    dynamic map) and ``nu`` (unsigned dynamic map; ``nu_max`` with ``amsgrad``) stored in one
    byte per element plus a float32 maximum per block of ``block_size`` elements
    (:func:`~functional_optim.transforms.quantized_state`): about 2 bytes of state per
    parameter instead of 8. Each step dequantizes the moments, runs Adam's update in the
    parameters' dtype and quantizes them again. Parameters with fewer than ``min_size``
    elements keep float moments (bitsandbytes' ``min_8bit_size``).

    ``lr``, ``betas``, ``eps``, ``weight_decay``, ``amsgrad`` and ``maximize`` are
    :func:`~functional_optim.adamw`'s.

    Args:
        block_size: elements per quantization block (structural; default 256).
        min_size: smallest parameter whose moments are quantized (structural; default 4096).
    """
    return _quantized_adam("adamw_8bit", 8, lr, betas, eps, weight_decay, amsgrad, maximize,
                           True, block_size, min_size)


@register(paper='Dettmers et al., 2022, "8-bit Optimizers via Block-wise Quantization"',
          drop_in="Adam8bit")
def adam_8bit(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
              eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *,
              maximize: bool = False, block_size: int = 256, min_size: int = 4096
              ) -> Transform:
    r"""Adam with 8-bit blockwise-quantized moments, as bitsandbytes' ``Adam8bit``: the same
    as :func:`adamw_8bit` with torch.optim.Adam's coupled (L2) weight decay, default 0."""
    return _quantized_adam("adam_8bit", 8, lr, betas, eps, weight_decay, amsgrad, maximize,
                           False, block_size, min_size)


@register(paper=('Li et al., 2023, "Memory Efficient Optimizers with 4-bit States"; '
                 'Loshchilov & Hutter, 2019 (decoupled decay)'),
          drop_in="AdamW4bit")
def adamw_4bit(lr: float | torch.Tensor = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
               eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *,
               maximize: bool = False, block_size: int = 128, min_size: int = 4096
               ) -> Transform:
    r"""AdamW with 4-bit blockwise-quantized moments, as torchao's ``AdamW4bit``.

    As :func:`adamw_8bit` in 4 bits (two codes per byte, a float32 maximum per block of
    ``block_size`` elements: about 1.06 bytes of state per parameter): ``mu`` with the signed
    dynamic map of 3 exponent bits, ``nu`` with the linear map :math:`\{k/16\}_{k=1}^{16}`
    without zero (Li et al., 2023; a zero code would make :math:`1/\sqrt{\hat v}` explode).

    ``lr``, ``betas``, ``eps``, ``weight_decay``, ``amsgrad`` and ``maximize`` are
    :func:`~functional_optim.adamw`'s.

    Args:
        block_size: elements per quantization block (structural; default 128, torchao's).
        min_size: smallest parameter whose moments are quantized (structural; default 4096).
    """
    return _quantized_adam("adamw_4bit", 4, lr, betas, eps, weight_decay, amsgrad, maximize,
                           True, block_size, min_size)
