"""optax on JAX (CPU) for ``bench_speed.py`` and ``bench_functional.py``: one jitted step with
donated params and state.

Prints one JSON line ``{"<algo>/<layout>": {"ms": ..., "first_s": ..., "peak_mb": null}}``.
Run by those scripts in a subprocess (thread settings through ``XLA_FLAGS``):
``bench_speed_optax.py REPEATS --suite speed|functional``.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

LR, WD, MOMENTUM, MAX_NORM = 1e-3, 1e-2, 0.9, 1.0


def transform(algo: str, suite: str):
    """The optax transform of ``algo`` with the hyperparameters (torch.optim's defaults) the
    suite gives ours; ``None`` where optax has no such alias (ASGD)."""
    if algo == "chain":
        lr = (optax.warmup_cosine_decay_schedule(0.0, LR, 100, 10_000) if suite == "speed"
              else LR)
        return optax.chain(optax.clip_by_global_norm(MAX_NORM), optax.adamw(lr, weight_decay=WD))
    return {
        "adamw": lambda: optax.adamw(LR, weight_decay=WD),
        "adam": lambda: optax.adam(LR),
        "sgd": lambda: optax.sgd(LR, momentum=MOMENTUM),
        "adagrad": lambda: optax.adagrad(1e-2, initial_accumulator_value=0.0, eps=1e-10),
        "rmsprop": lambda: optax.rmsprop(LR, decay=0.99, eps=1e-8),
        "adadelta": lambda: optax.adadelta(1.0, rho=0.9, eps=1e-6),
        "adamax": lambda: optax.adamax(2e-3),
        "nadam": lambda: optax.nadam(2e-3),
        "radam": lambda: optax.radam(LR),
        "rprop": lambda: optax.rprop(1e-2),
    }.get(algo, lambda: None)()


def measure(tx, shapes, repeats: int) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(0), 2 * len(shapes))
    params = [jax.random.normal(k, s, jnp.float32) for k, s in zip(keys[::2], shapes)]
    grads = [1e-2 * jax.random.normal(k, s, jnp.float32) for k, s in zip(keys[1::2], shapes)]

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    start = time.perf_counter()
    state = tx.init(params)
    params, state = jax.block_until_ready(step(params, state, grads))
    first = time.perf_counter() - start
    params, state = jax.block_until_ready(step(params, state, grads))
    times = []
    for _ in range(4 * repeats):
        t = time.perf_counter()
        params, state = jax.block_until_ready(step(params, state, grads))
        times.append(time.perf_counter() - t)
    return {"ms": statistics.median(times) * 1e3, "first_s": first, "peak_mb": None}


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    suite = sys.argv[sys.argv.index("--suite") + 1] if "--suite" in sys.argv else "speed"
    if suite == "functional":
        from bench_functional import ALGOS, layouts
        algos = list(ALGOS)
    else:
        from bench_step import layouts
        algos = ["adamw", "sgd", "chain"]
    out = {}
    for algo in algos:
        for layout, shapes in layouts().items():
            tx = transform(algo, suite)
            if tx is not None:
                out[f"{algo}/{layout}"] = measure(tx, shapes, repeats)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
