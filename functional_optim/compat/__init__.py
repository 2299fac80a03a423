"""Other libraries' optimizer modules, as names over the native transforms (DESIGN.md §7):
:mod:`functional_optim.compat.transformers` stands in for ``transformers.optimization`` (and the
PyTorch side of ``transformers.optimization_tf``), :mod:`functional_optim.compat.allennlp` for
``allennlp.training.optimizers``, :mod:`functional_optim.compat.optax` for ``optax``. A module
here maps names, signatures, defaults and error messages; the math is the native blocks'."""
