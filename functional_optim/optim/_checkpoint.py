"""What ``load_state_dict`` accepts: every rule is checked on the checkpoint as given (after the
user's load pre-hooks, before torch's ``load_state_dict`` casts or stores anything), so a refused
checkpoint leaves the optimizer unchanged.

The rules (``FunctionalOptimizer.load_state_dict``'s docstring sums them up, and the migration
guide's "Loading checkpoints" lists them for users):

*Param groups.* As many groups as the optimizer has, each listing as many parameters (torch's own
errors); no parameter index listed twice; a state entry for an index no group lists is refused
(torch would keep it, attached to nothing). A group option that an older version did not save
(``foreach``, ``maximize``, ``amsgrad``, ...) takes its default, as torch's ``__setstate__``
fills it; a missing hyperparameter (``lr``, ``betas``, ...) is refused. Extra keys (a
scheduler's ``initial_lr``) are kept. ``param_names``, when given, name each parameter once.

*State entries.* Each is a dict; an empty one (or none at all) means the parameter has not
stepped and starts fresh. A key that this optimizer never keeps is refused (an Adam checkpoint
given to ``SGD(momentum=0.9)``); a key of one of its other options (Adam's ``max_exp_avg_sq``
without ``amsgrad``) is kept, unused, as torch keeps it; ``None`` counts as absent (old SGD
checkpoints hold ``momentum_buffer: None``). An entry that holds any of the state a parameter
keeps must hold all of it (``step`` and every moment), so nothing silently restarts from zero;
state shared by a whole group (a schedule's count, in a chain) may stand alone, for a parameter
that never had a gradient. Each value is checked against what ``init`` makes for that parameter:
a tensor (not a string or a list) of that shape, of its kind (complex for a complex parameter,
real floating point for a real one; the precision may differ, torch casts it); a 0-d integer
state is a step count, which holds a whole number >= 0 (a float tensor, as torch keeps ``step``,
or a Python number where torch's older format had one). NaN, infinite, negative or fractional
counts are refused: torch would load them and then write NaN (or another bias correction) into
the parameters.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, NamedTuple

import torch

Path = tuple


class Leaf(NamedTuple):
    """A state leaf that an optimizer keeps for a parameter."""

    like: torch.Tensor  # what ``init`` makes (on the meta device): its shape and dtype
    shared: bool  # kept for the whole group, in every parameter's entry


class Where(NamedTuple):
    """Which parameter a state entry belongs to, for error messages."""

    owner: str  # "ClassName.load_state_dict"
    name: str | None  # its ``param_names`` entry
    group: int
    index: Any  # its key in ``state_dict["state"]``

    @classmethod
    def of(cls, owner: str, group_index: int, group: dict, ids: list, k: int) -> Where:
        """The ``k``-th parameter of a loaded ``group`` whose checkpoint indices are ``ids``."""
        names = group.get("param_names")
        return cls(owner, names[k] if names else None, group_index, ids[k])

    def fail(self, key: Path | str | None, expected: str, got: str) -> None:
        what = "" if key is None else f"state {_dotted(key)!r} of "
        name = "" if self.name is None else f"{self.name!r} "
        raise ValueError(f"{self.owner}: {what}parameter {name}(group {self.group}, index "
                         f"{self.index}): expected {expected}, got {got}; nothing was loaded")


def _dotted(key: Path | str) -> str:
    return key if isinstance(key, str) else ".".join(map(str, key))


def describe(value: Any) -> str:
    """``value`` in an error message: its type, and its shape and dtype for a tensor."""
    if isinstance(value, torch.Tensor):
        layout = "" if value.layout == torch.strided else f" ({value.layout})"
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape " \
               f"{tuple(value.shape)}{layout}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))}"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_complex:
        return "complex"
    if dtype == torch.bool:
        return "bool"
    return "real floating-point" if dtype.is_floating_point else "integer"


def is_count(like: torch.Tensor) -> bool:
    """Whether a template leaf is a step count (0-d integer)."""
    return like.ndim == 0 and _kind(like.dtype) == "integer"


def _whole(value: float) -> bool:
    return math.isfinite(value) and value >= 0 and value == int(value)


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_groups(owner: str, groups: list, saved_groups: list, state: dict) -> bool:
    """The checks of the groups' parameter lists; ``False`` when their numbers or sizes differ
    from the optimizer's (torch's ``load_state_dict`` raises its own error then)."""
    if len(groups) != len(saved_groups) or any(
            len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)):
        return False
    seen: set = set()
    for index, saved in enumerate(saved_groups):
        for i in saved["params"]:
            if i in seen:
                raise ValueError(f"{owner}: param group {index} lists parameter index {i!r} "
                                 "a second time; nothing was loaded")
            seen.add(i)
    orphans = [k for k in state if k not in seen]
    if orphans:
        raise ValueError(f"{owner}: state_dict['state'] has entries for parameter indices "
                         f"{orphans} that no param group lists (they list {len(seen)} "
                         "parameters); nothing was loaded")
    return True


def check_names(owner: str, index: int, group: dict) -> None:
    """A group's ``param_names`` (if any) name each of its parameters once."""
    names = group.get("param_names")
    if names is None:
        return
    n = len(group["params"])
    if not isinstance(names, (list, tuple)) or len(names) != n or not all(
            isinstance(x, str) for x in names) or len(set(names)) != n:
        raise ValueError(f"{owner}: param group {index}: expected param_names to be {n} distinct "
                         f"strings (one per parameter), got {describe(names)}: {names!r:.200}; "
                         "nothing was loaded")


def check_entry(where: Where, saved: Any, expected: dict[Path, Leaf], known: set,
                numbers: frozenset) -> dict:
    """The rules above for one parameter's state entry; returns its values by key path (those
    that are not ``None``).

    Args:
        expected: what the optimizer keeps for the parameter, by stored key path.
        known: every key path the optimizer may keep (with any of its options).
        numbers: key paths that may hold a Python number (torch's older format).
    """
    if not isinstance(saved, dict):
        where.fail(None, "a dict of its state (or no entry)", describe(saved))
    prefixes = {k[:i] for k in known for i in range(1, len(k))}
    present: dict = {}
    unknown: list = []
    _collect(saved, (), known, prefixes, present, unknown)
    if unknown:
        keys = ", ".join(repr(_dotted(k)) for k in sorted(known, key=_dotted))
        where.fail(unknown[0], f"only the state this optimizer keeps ({keys or 'none'})",
                   f"{describe(_get(saved, unknown[0]))}, a state it never keeps")
    own = any(not (k in expected and expected[k].shared) for k in present)
    required = [k for k, leaf in expected.items() if own or (present and leaf.shared)]
    missing = [k for k in required if k not in present]
    if missing:
        where.fail(missing[0], "all of " + ", ".join(repr(_dotted(k)) for k in required) +
                   " (an entry that holds any of this state holds all of it)",
                   f"an entry without {_dotted(missing[0])!r} (it has "
                   f"{', '.join(repr(_dotted(k)) for k in present)})")
    for k, value in present.items():
        if k in expected:
            check_value(where, k, value, expected[k].like, k in numbers)
    return present


def _collect(node: dict, path: Path, known: set, prefixes: set, present: dict,
             unknown: list) -> None:
    for k, value in node.items():
        here = path + (k,)
        if here in known:
            if value is not None:
                present[here] = value
        elif here in prefixes and isinstance(value, dict):
            _collect(value, here, known, prefixes, present, unknown)
        else:
            unknown.append(here)


def _get(node: dict, path: Path) -> Any:
    for k in path:
        node = node[k]
    return node


def _expect(like: torch.Tensor, number_ok: bool) -> str:
    if is_count(like):
        return "a step count: a whole number >= 0 (a 0-d tensor" + (
            " or a Python number)" if number_ok else ")")
    what = f"a {_kind(like.dtype)} tensor of shape {tuple(like.shape)}"
    return what + " (or a Python number)" if number_ok and like.ndim == 0 else what


def check_value(where: Where, key: Path | str, value: Any, like: torch.Tensor,
                number_ok: bool) -> None:
    """One state value against the leaf ``init`` makes (see the module's rules)."""
    kind, count = _kind(like.dtype), is_count(like)
    if number_ok and _number(value) and like.ndim == 0 and kind != "complex":
        if count and not _whole(float(value)):
            where.fail(key, _expect(like, number_ok), describe(value))
        return
    if not isinstance(value, torch.Tensor) or value.layout != torch.strided or \
            value.shape != like.shape:
        where.fail(key, _expect(like, number_ok), describe(value))
    got = _kind(value.dtype)
    if got != kind and not (kind == "integer" and got == "real floating-point"):
        where.fail(key, _expect(like, number_ok), describe(value))
    if count:
        number = float(value)
        if not _whole(number):
            where.fail(key, _expect(like, number_ok), f"{describe(value)} holding {number}")


# -- LBFGS ------------------------------------------------------------------------------------

LBFGS_KEYS = ("func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag",
              "prev_flat_grad", "prev_loss", "al")


def check_lbfgs(where: Where, saved: Any, size: int, history_size: int) -> None:
    """torch.optim.LBFGS's state (on the first parameter) for flat vectors of ``size`` elements.

    ``func_evals`` and ``n_iter`` are whole numbers >= 0; once an iteration has run
    (``n_iter > 0``) the entry holds everything but ``al``: ``d`` and ``prev_flat_grad`` (1-D real
    tensors of ``size`` elements), ``t``, ``H_diag`` and ``prev_loss`` (real numbers or 0-d real
    tensors), ``old_dirs`` and ``old_stps`` (lists of at most ``history_size`` such vectors, as
    many as ``ro`` holds numbers) and, if present, ``al`` (a list of ``history_size`` numbers or
    ``None``).
    """
    if not isinstance(saved, dict):
        where.fail(None, "a dict of its state (or no entry)", describe(saved))
    unknown = [k for k in saved if k not in LBFGS_KEYS]
    if unknown:
        where.fail(unknown[0], f"only LBFGS's state ({', '.join(LBFGS_KEYS)})",
                   f"{describe(saved[unknown[0]])}, a state LBFGS never keeps")
    for key in ("func_evals", "n_iter"):
        value = saved.get(key, 0)
        if not isinstance(value, Integral) or isinstance(value, bool) or value < 0:
            where.fail(key, "a whole number >= 0 (an int)", describe(value))
    if not saved.get("n_iter", 0):
        return
    missing = [k for k in LBFGS_KEYS[2:-1] if saved.get(k) is None]
    if missing:
        where.fail(missing[0], f"a value (after an iteration LBFGS keeps all of "
                   f"{', '.join(LBFGS_KEYS[:-1])})", "nothing")
    vector = f"a 1-D real floating-point tensor of {size} elements (the flat parameters)"

    def is_vector(v):
        return isinstance(v, torch.Tensor) and v.shape == (size,) and v.dtype.is_floating_point

    def is_scalar(v, none_ok=False):
        return (none_ok and v is None) or _number(v) or (
            isinstance(v, torch.Tensor) and v.ndim == 0 and v.dtype.is_floating_point)

    for key in ("d", "prev_flat_grad"):
        if not is_vector(saved[key]):
            where.fail(key, vector, describe(saved[key]))
    for key in ("t", "H_diag", "prev_loss"):
        if not is_scalar(saved[key]):
            where.fail(key, "a real number (or a 0-d real tensor)", describe(saved[key]))
    n = None
    for key, item, each in (("old_dirs", is_vector, vector), ("old_stps", is_vector, vector),
                            ("ro", is_scalar, "a real number (or a 0-d real tensor)")):
        value = saved[key]
        if isinstance(value, (list, tuple)) and len(value) <= history_size and (
                n is None or len(value) == n) and all(item(v) for v in value):
            n = len(value)
            continue
        items = f"at most {history_size} (history_size)" if n is None else \
            f"{n} (as many as old_dirs)"
        bad = [v for v in value if not item(v)] if isinstance(value, (list, tuple)) else []
        where.fail(key, f"a list of {items} items, each {each}",
                   describe(value) + (f", one of them {describe(bad[0])}" if bad else ""))
    al = saved.get("al")
    if al is not None and (not isinstance(al, (list, tuple)) or len(al) < history_size or
                           not all(is_scalar(v, none_ok=True) for v in al)):
        where.fail("al", f"a list of {history_size} (history_size) real numbers or None",
                   describe(al))
