"""MkDocs hook: the table of every registered optimizer, made from the registry at build time.

A page holding the marker ``<!-- registry-table -->`` gets, in its place, one row per entry of
:mod:`functional_optim.registry`: the alias, its drop-in class, the paper, its live
hyperparameters (with their defaults), its structural options, and the optimizer state it keeps
per parameter element (measured: ``init`` on a 64 x 32 float32 parameter, state bytes divided
by its 2048 elements; factored states depend on the shape). Adding an optimizer adds its row.
"""

from __future__ import annotations

import optree
import torch

import functional_optim as fo
from functional_optim import registry

MARKER = "<!-- registry-table -->"
SHAPE = (64, 32)


def _state_bytes_per_element(make) -> str:
    param = {"w": torch.zeros(SHAPE)}
    state = make().init(param)
    leaves = [x for x in optree.tree_leaves(state) if isinstance(x, torch.Tensor)]
    per_param = sum(x.numel() * x.element_size() for x in leaves if x.ndim > 0)
    return f"{per_param / param['w'].numel():g} B"


def _value(v) -> str:
    return repr(tuple(v)) if isinstance(v, list) else repr(v)


def table() -> str:
    rows = ["| alias | drop-in class | paper | live hyperparameters (defaults) | structural "
            "options | state per element (float32) |", "|---|---|---|---|---|---|"]
    for name in registry.names():
        e = registry.entry(name)
        live = ", ".join(f"`{k}={_value(v)}`" for k, v in e.hyperparameters.items())
        structural = ", ".join(f"`{k}`" for k in e.structural) or "-"
        rows.append(f"| `fo.{name}` | `fo.optim.{e.drop_in}` | {e.paper} | {live} | "
                    f"{structural} | {_state_bytes_per_element(e.make)} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replaces the marker by the table."""
    return markdown.replace(MARKER, table()) if MARKER in markdown else markdown


assert fo  # (the package's import registers every alias)
