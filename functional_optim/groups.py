"""Parameter groups by regex, with AllenNLP's semantics (``make_parameter_groups``).

A group is ``(regexes, options)``: a parameter joins the group one of whose regexes
:func:`re.search`-matches its (dotted) name; parameters that no group matches form the last,
default group. A parameter that two groups match is an error naming it and both groups; a regex
that matches no name is a logged warning; a group with ``{"requires_grad": False}`` is frozen.
Who went where is logged with AllenNLP's lines.

The one assignment rule (:func:`assign`) and its log (:func:`log_assignment`) serve both
:func:`parameter_groups` (functional: a :func:`~functional_optim.partition` of one optimizer
constructor per group) and :func:`functional_optim.compat.allennlp.make_parameter_groups`
(torch param-group dicts). A :class:`~functional_optim.optim.FunctionalOptimizer` built on a
:func:`parameter_groups` transform has one torch param group per (unfrozen) group, each with
the group's hyperparameters under torch's keys (``lr``, ``betas``, ``weight_decay``, ...), so
that every ``torch.optim.lr_scheduler`` drives it as it drives torch's optimizers.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from . import tree as _tree
from .base import Transform
from .combinators import _compile_rules, _path_names, _rule_labels, freeze, partition

__all__ = ["Group", "read_groups", "assign", "log_assignment", "ParameterGroups",
           "parameter_groups", "groups_of"]

logger = logging.getLogger(__name__)

DEFAULT = "default"


class Group(NamedTuple):
    """One ``(regexes, options)`` entry of a groups list.

    Attributes:
        regexes: the regexes (a single string given is one regex).
        options: the options as given (``requires_grad`` included).
        frozen: ``options["requires_grad"] is False``.
    """

    regexes: tuple[str, ...]
    options: dict
    frozen: bool

    @property
    def overrides(self) -> dict:
        """The options without ``requires_grad``."""
        return {k: v for k, v in self.options.items() if k != "requires_grad"}


def read_groups(owner: str, groups: Any) -> list[Group]:
    """``groups`` (``[(["regex", ...], {options}), ...]``, lists or tuples; ``None``: none) as
    :class:`Group` s; a malformed entry is a ``TypeError`` naming its index."""
    if groups is None:
        return []
    if not isinstance(groups, (list, tuple)):
        raise TypeError(f"{owner}: groups must be a list of (regexes, options) pairs, got "
                        f"{type(groups).__name__}")
    out = []
    for i, g in enumerate(groups):
        if not isinstance(g, (list, tuple)) or len(g) != 2 or not isinstance(g[1], Mapping):
            raise TypeError(f"{owner}: group {i} must be a pair (list of regexes, dict of "
                            f"options), got {g!r}")
        regexes = (g[0],) if isinstance(g[0], str) else tuple(g[0])
        bad = [r for r in regexes if not isinstance(r, str)]
        if bad:
            raise TypeError(f"{owner}: group {i}'s regexes must be strings, got {bad!r}")
        options = dict(g[1])
        out.append(Group(regexes, options, options.get("requires_grad") is False))
    return out


def assign(names: Sequence[str], groups: Sequence[Group]) -> tuple[list[int], dict[str, int]]:
    """The group of each name and the use count of each regex.

    Returns ``(index, uses)``: ``index[i]`` is the position in ``groups`` of the one group
    matching ``names[i]``, or ``len(groups)`` (the default group) when none does; ``uses`` maps
    each regex to the number of names it matched. A name that regexes of two groups match is a
    ``ValueError`` (AllenNLP's message, then the two groups and regexes).
    """
    compiled = [[(r, re.compile(r)) for r in g.regexes] for g in groups]
    uses = {r: 0 for g in groups for r in g.regexes}
    index = []
    for name in names:
        found: tuple[int, str] | None = None
        for k, regexes in enumerate(compiled):
            for r, c in regexes:
                if c.search(name):
                    if found is not None and found[0] != k:
                        raise ValueError(
                            f"{name} was specified in two separate parameter groups (group "
                            f"{found[0]} by regex '{found[1]}' and group {k} by regex '{r}')")
                    found = found or (k, r)
                    uses[r] += 1
        index.append(len(groups) if found is None else found[0])
    return index, uses


def log_assignment(log: logging.Logger, groups: Sequence[Group], names: Sequence[str],
                   numels: Sequence[int], index: Sequence[int], uses: Mapping[str, int], *,
                   frozen_message: str, label: Callable[[int, int], Any]) -> None:
    """Log who went where, in AllenNLP's lines and order: each frozen group's names
    (``frozen_message``, and a warning for its other options), ``"Done constructing parameter
    groups."``, one ``"Group %s: %s, %s"`` line per kept group (``label(position among the kept,
    position in groups)``, its names, its options), a warning per unused regex, and the number
    of trainable parameters (elements): only the last without groups."""
    trainable = sum(n for n, k in zip(numels, index) if k == len(groups) or not groups[k].frozen)
    if not groups:  # (AllenNLP logs only the count then)
        log.info("Number of trainable parameters: %s", trainable)
        return
    members: list[list[str]] = [[] for _ in range(len(groups) + 1)]
    for name, k in zip(names, index):
        members[k].append(name)
    for g, who in zip(groups, members):
        if g.frozen:
            log.info(frozen_message, _SetRepr(who))
            if g.overrides:
                log.warning("Ignoring unused options %s for %s", g.overrides, _SetRepr(who))
    log.info("Done constructing parameter groups.")
    kept = [k for k in range(len(groups) + 1) if k == len(groups) or not groups[k].frozen]
    for position, k in enumerate(kept):
        options = groups[k].options if k < len(groups) else {}
        log.info("Group %s: %s, %s", label(position, k), members[k], options)
    for regex, count in uses.items():
        if count == 0:
            log.warning("When constructing parameter groups, %s does not match any parameter "
                        "name", regex)
    log.info("Number of trainable parameters: %s", trainable)


class _SetRepr(list):
    """A list that prints as a set literal (AllenNLP logs sets of names), in its order."""

    def __repr__(self) -> str:
        return "{" + ", ".join(map(repr, self)) + "}" if self else "set()"


def _named(params: Any) -> list[tuple[str, Any]]:
    """``(dotted name, leaf)`` of the non-``None`` leaves of a parameter tree."""
    return [(n, p) for n, p in zip(_tree.leaves(_path_names(params)), _tree.leaves(params))
            if p is not None]


def _label(k: int, n_groups: int) -> str:
    return DEFAULT if k == n_groups else f"group_{k}"


class ParameterGroups:
    """What :func:`parameter_groups` builds: the groups, one transform per group and the
    :func:`~functional_optim.partition` that runs them (its ``init``/``update`` are this
    object's methods, so that :func:`groups_of` finds it from the transform).

    Attributes:
        groups: the :class:`Group` s.
        transforms: ``{label: transform}``: ``"group_<i>"`` for group ``i`` (:func:`freeze` when
            frozen) and ``"default"`` for the unmatched parameters.
    """

    def __init__(self, make: Callable[..., Transform], groups: list[Group], defaults: dict,
                 params: Any = None):
        self.groups = groups
        self.transforms = {}
        known = inspect.signature(make).parameters
        open_ended = any(p.kind is p.VAR_KEYWORD for p in known.values())
        for i, g in enumerate(groups):
            unknown = sorted(set(g.overrides) - set(known))
            if unknown and not open_ended:
                raise TypeError(f"parameter_groups: group {i} has unknown option(s) {unknown} "
                                f"for {getattr(make, '__name__', make)!r}; known: "
                                f"{', '.join(known)}")
            self.transforms[_label(i, len(groups))] = freeze() if g.frozen else make(
                **{**defaults, **g.overrides})
        self.transforms[DEFAULT] = make(**defaults)
        compiled = _compile_rules("parameter_groups", [
            (list(g.regexes), _label(i, len(groups))) for i, g in enumerate(groups)])
        labels = tuple(self.transforms)

        def label_tree(tree):  # first match: the one match, once init has checked the names
            return _rule_labels("parameter_groups", _path_names(tree), compiled, DEFAULT,
                                labels, False)

        self._partition = partition(self.transforms, label_tree)
        self.hparams = self._partition.hparams
        # (update runs the partition's: donated state reaches a user's transform no more)
        self.keeps_state = getattr(self._partition.update, "keeps_state", False)
        # the names checked (and logged) at construction: init does not log them again
        self._checked = None if params is None else self.check_tree(params)

    def transform(self, index: int) -> Transform:
        """The transform of group ``index`` (``len(groups)``: the default group)."""
        return self.transforms[_label(index, len(self.groups))]

    def check(self, names: Sequence[str], numels: Sequence[int]) -> list[int]:
        """The group index of each name (:func:`assign`), after logging who went where
        (:func:`log_assignment`, each kept group named by its label)."""
        index, uses = assign(names, self.groups)
        n = len(self.groups)
        log_assignment(logger, self.groups, names, numels, index, uses,
                       frozen_message="Freezing (zero updates, no state) the following "
                                      "parameters: %s",
                       label=lambda position, k: _label(k, n))
        return index

    def check_tree(self, params: Any) -> tuple[str, ...]:
        """:meth:`check` of the non-``None`` leaves of a parameter tree, by dotted name;
        returns the names."""
        named = _named(params)
        names = tuple(n for n, _ in named)
        self.check(names, [p.numel() for _, p in named])
        return names

    def init(self, params: Any) -> Any:
        """The partition's state, after checking and logging the assignment of ``params``
        (unless these are the parameters checked at construction)."""
        if tuple(n for n, _ in _named(params)) != self._checked:
            self.check_tree(params)
        return self._partition.init(params)

    def update(self, updates: Any, state: Any, params: Any = None, hparams: Any = None,
               **extra: Any) -> tuple[Any, Any]:
        """The partition's update."""
        return self._partition.update(updates, state, params, hparams, **extra)


def parameter_groups(make: Callable[..., Transform], groups: list | None = None,
                     params: Any = None, **defaults: Any) -> Transform:
    """AllenNLP's ``make_parameter_groups`` as a transform: one ``make`` per group.

    Group ``i`` runs ``make(**{**defaults, **overrides_i})``; unmatched parameters run
    ``make(**defaults)`` (the ``"default"`` group). Parameters are matched by their dotted path
    name (``"encoder.layers.0.weight"``) as described in :mod:`functional_optim.groups`:

    - a parameter that two groups match is a ``ValueError`` naming it and both groups;
    - a regex that matches no name is a logged warning (not an error);
    - ``{"requires_grad": False}`` freezes a group: :func:`freeze` (zero updates, no state);
      its other options are ignored with a warning;
    - who went where is logged (logger ``functional_optim.groups``, AllenNLP's lines) when the
      assignment is checked: at ``init``, or here when ``params`` is given.

    ``groups`` empty or ``None``: ``make(**defaults)`` itself. Otherwise the result is a
    :func:`~functional_optim.partition` labelled ``"group_0"``, ``"group_1"``, ... and
    ``"default"``, whose hparams are ``{label: that group's hparams}``. In a
    :class:`~functional_optim.optim.FunctionalOptimizer`, each unfrozen group becomes a torch
    param group with its hyperparameters under their plain keys (``lr``, ``betas``, ...), so
    lr schedulers work as on torch's optimizers; frozen parameters are left out.

    Args:
        make: an optimizer constructor, e.g. :func:`functional_optim.adamw`.
        groups: ``[(["regex", ...], {"lr": ..., "weight_decay": ...}), ...]``; an option
            ``make`` does not take is a ``TypeError`` naming the group.
        params: optionally the parameters, to check and log the assignment now.
        **defaults: the options of every group (``lr=1e-3``, ...).
    """
    read = read_groups("parameter_groups", groups)
    if not read:
        return make(**defaults)
    built = ParameterGroups(make, read, defaults, params)
    return Transform(built.init, built.update, built.hparams)


def groups_of(tx: Transform) -> ParameterGroups | None:
    """The :class:`ParameterGroups` behind a :func:`parameter_groups` transform, else ``None``."""
    owner = getattr(tx.update, "__self__", None)
    return owner if isinstance(owner, ParameterGroups) else None
