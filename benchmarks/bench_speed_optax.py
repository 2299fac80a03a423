"""optax on JAX (CPU) for ``bench_speed.py``: one jitted step with donated params and state.

Prints one JSON line ``{"<algo>/<layout>": {"ms": ..., "first_s": ..., "peak_mb": null}}``.
Run by bench_speed.py in a subprocess (thread settings through ``XLA_FLAGS``).
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
from bench_step import layouts  # noqa: E402

LR, WD, MOMENTUM, MAX_NORM = 1e-3, 1e-2, 0.9, 1.0


def transform(algo: str):
    if algo == "adamw":
        return optax.adamw(LR, weight_decay=WD)
    if algo == "sgd":
        return optax.sgd(LR, momentum=MOMENTUM)
    schedule = optax.warmup_cosine_decay_schedule(0.0, LR, 100, 10_000)
    return optax.chain(optax.clip_by_global_norm(MAX_NORM), optax.adamw(schedule, weight_decay=WD))


def measure(algo: str, shapes, repeats: int) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(0), 2 * len(shapes))
    params = [jax.random.normal(k, s, jnp.float32) for k, s in zip(keys[::2], shapes)]
    grads = [1e-2 * jax.random.normal(k, s, jnp.float32) for k, s in zip(keys[1::2], shapes)]
    tx = transform(algo)

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
    for _ in range(repeats):
        t = time.perf_counter()
        params, state = jax.block_until_ready(step(params, state, grads))
        times.append(time.perf_counter() - t)
    return {"ms": statistics.median(times) * 1e3, "first_s": first, "peak_mb": None}


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    out = {f"{algo}/{layout}": measure(algo, shapes, repeats)
           for algo in ("adamw", "sgd", "chain") for layout, shapes in layouts().items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
