"""Whole optimizers as short chains of building blocks, by family: torch.optim's (with its names
and defaults), HuggingFace's, AllenNLP's.

Each alias exposes one flat hparams dict with PyTorch's keys (``lr``, ``betas``, ``eps``,
``weight_decay``, ``momentum``, ``dampening``), so a ``param_group`` *is* an hparams dict.

*Live and structural arguments.* Every float hyperparameter is live: a value (a Python number or
a 0-d tensor, which may require grad, be batched under ``vmap`` or be refilled between CUDA-graph
replays) read at every update, whatever it was at construction. No block is left out because of
a value: a weight decay or a momentum of 0 keeps its block in the chain, and where the value at
update time is the Python number 0 the block skips its work (and ``params`` are not needed for a
decay of 0). Only options that change the computation's structure are fixed at construction:
``amsgrad``, ``nesterov``, ``centered``, ``maximize``, ``decoupled_weight_decay``,
``initial_accumulator_value`` (read by ``init``), ``ns_steps``, ``adjust_lr_fn``, ``ns_dtype``,
``scalar_state_dtype``, L-BFGS's iteration limits and line search, and ``momentum=None`` (no
momentum block at all, so no buffer: the memory-lean plain SGD/RMSprop). Each alias's docstring
lists its structural arguments; giving one in ``hparams`` raises an error that says so.
"""

from .basic import adam, adamw, sgd
from .classic import adadelta, adagrad, adamax, asgd, nadam, radam, rmsprop, rprop
from .contrib_free import (
    cocob,
    dadapt_adamw,
    dog,
    dowg,
    mechanic_adam,
    momo,
    momo_adam,
    prodigy,
    schedule_free_adamw,
    schedule_free_sgd,
)
from .contrib_more import (
    acprop,
    ademamix,
    adopt,
    dpsgd,
    galore_adamw,
    madgrad,
    sam_sgd,
    simplified_ademamix,
    sophia,
)
from .huggingface import adam_weight_decay, huggingface_adafactor, huggingface_adamw
from .optax_adaptive import adabelief, adamaxw, adan, nadamw, novograd, optimistic_adam, sm3, yogi
from .optax_core import (
    fromage,
    lamb,
    lars,
    lion,
    noisy_sgd,
    optimistic_gradient_descent,
    polyak_sgd,
    sign_sgd,
    signum,
)
from .optax_orthogonal import optax_muon, optax_muon_labels
from .optax_variants import (
    optax_adafactor,
    optax_adagrad,
    optax_amsgrad,
    optax_nadam,
    optax_radam,
    optax_rmsprop,
    optax_rprop,
)
from .preconditioned import psgd_kron, shampoo, soap
from .quantized import adam_8bit, adamw_4bit, adamw_8bit
from .search import optax_lbfgs
from .special import adafactor, dense_sparse_adam, lbfgs, muon, sparse_adam
from .tricks import (
    adam_mini,
    adamc,
    adamw_ema,
    asam_sgd,
    cautious_adamw,
    laprop,
    mars_adamw,
    msam_sgd,
    muon_adamw,
    muon_labels,
    orthograd_adamw,
)

__all__ = ["sgd", "adam", "adamw", "adagrad", "adadelta", "adamax", "nadam", "radam", "rmsprop",
           "rprop", "asgd", "adafactor", "muon", "lbfgs", "sparse_adam", "dense_sparse_adam",
           "huggingface_adamw", "huggingface_adafactor", "adam_weight_decay", "adopt", "acprop",
           "ademamix", "simplified_ademamix", "madgrad", "sophia", "sam_sgd", "galore_adamw",
           "dpsgd", "schedule_free_sgd", "schedule_free_adamw", "prodigy", "dadapt_adamw", "dog",
           "dowg", "cocob", "momo", "momo_adam", "mechanic_adam", "lion", "sign_sgd", "signum",
           "lamb", "lars", "fromage", "noisy_sgd", "polyak_sgd", "optimistic_gradient_descent",
           "adabelief", "yogi", "novograd", "adan", "sm3", "optimistic_adam", "adamaxw", "nadamw",
           "optax_nadam", "optax_amsgrad", "optax_adagrad", "optax_rmsprop", "optax_radam",
           "optax_rprop", "optax_adafactor", "optax_lbfgs", "optax_muon", "optax_muon_labels",
           "adam_8bit", "adamw_8bit", "adamw_4bit", "cautious_adamw", "laprop", "mars_adamw",
           "adam_mini", "adamc", "orthograd_adamw", "muon_adamw", "muon_labels", "adamw_ema",
           "asam_sgd", "msam_sgd", "soap", "shampoo", "psgd_kron"]
