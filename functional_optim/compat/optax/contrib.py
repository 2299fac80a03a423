"""``optax.contrib``: optax's contributed optimizers under their optax names, over the native
blocks and aliases (the same arguments and defaults; hyperparameters under optax's names)."""

from __future__ import annotations

__all__: list[str] = []
