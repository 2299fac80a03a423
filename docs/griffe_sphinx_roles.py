"""Griffe extension: the package's Sphinx markup, rewritten so that mkdocstrings renders it.

The docstrings use reStructuredText roles (``:class:`Transform```, ``:func:`~a.b.c```,
``:mod:``, ``:meth:``, ``:attr:``, ``:data:``, ...), ``.. math::`` / ``:math:`` and literal
blocks (``Example::`` over an indented block). Once the package is loaded, every docstring is
rewritten:

- A role's target is resolved from the documented object's context, as in Sphinx: in the scope (the
  object, its class, its module, then each enclosing package up to the root; the names a module
  imports count), first for an object of the role's kind (``:func:`ema``` in a class with an
  ``ema`` field is the function), then for any; then as a fully qualified path. ``~`` shows only
  the last component, ``!`` never links, ``title <target>`` shows ``title``.
- A target that a public path reaches (``functional_optim.Transform``) becomes an autorefs
  cross-reference (``[`Transform`][functional_optim.base.Transform]``; a field without a
  docstring links to its class): autorefs fails ``mkdocs build --strict`` if no API page renders
  it, naming the docstring's file, line and object. A private target (``functional_optim._fused``,
  ``_take``) and an importable object of another package (``torch.where``) become code without a
  link: no page documents them.
- A target that names nothing, in a docstring that the API pages can show, warns (so the strict
  build fails) with the docstring's file, line and object and the role as written. (Docstrings
  of private objects are rewritten too, without the warning: no page shows them.)
- ``:math:`x``` becomes ``\\(x\\)`` and a ``.. math::`` block a ``$$`` block (one centred equation
  per ``\\\\``-separated line), for pymdownx.arithmatex; ``text::`` and its indented block become
  ``text:`` and a fenced code block.

Load it from ``mkdocs.yml``: ``plugins: mkdocstrings: handlers: python: options: extensions:
[docs/griffe_sphinx_roles.py]``.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import textwrap
from typing import Any

import griffe

LOGGER = griffe.get_logger(__name__)

ROLE = re.compile(r":(?:py:)?(?P<role>class|func|meth|attr|mod|data|obj|exc|const)"
                  r":`(?P<body>[^`]+)`")
MATH_ROLE = re.compile(r":math:`(?P<tex>[^`]+)`")
MATH_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")
LITERAL = re.compile(r"^(?P<indent>[ \t]*)(?!\.\. )(?P<text>.*?)::[ \t]*$")
TITLED = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$")
KINDS = {"class": griffe.Kind.CLASS, "exc": griffe.Kind.CLASS, "func": griffe.Kind.FUNCTION,
         "meth": griffe.Kind.FUNCTION, "attr": griffe.Kind.ATTRIBUTE, "data": griffe.Kind.ATTRIBUTE,
         "const": griffe.Kind.ATTRIBUTE, "mod": griffe.Kind.MODULE}


class SphinxRoles(griffe.Extension):
    """Rewrites the Sphinx roles, math and literal blocks of every docstring of a package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrites each docstring of ``pkg`` (modules, classes, functions, attributes)."""
        members = list(_walk(pkg))
        for alias in (m for m in members if m.is_alias and not m.resolved):
            # Resolving records the re-export on its target (``_exported`` reads it).
            with contextlib.suppress(griffe.AliasResolutionError, griffe.CyclicAliasError):
                alias.resolve_target()
        for obj in members:
            if not obj.is_alias and obj.docstring is not None:
                obj.docstring.value = _rewrite(obj, obj.docstring.value)


def _walk(obj: griffe.Object):
    """``obj`` and everything under it: the objects it defines and the names it imports."""
    yield obj
    for member in obj.members.values():
        if member.is_alias:
            yield member
        else:
            yield from _walk(member)


def _rewrite(obj: griffe.Object, text: str) -> str:
    text = _blocks(text)
    text = MATH_ROLE.sub(lambda m: rf"\({m['tex']}\)", text)
    return ROLE.sub(lambda m: _reference(obj, m), text)


def _blocks(text: str) -> str:
    """Each ``.. math::`` directive as a ``$$`` block, and each literal block (a paragraph ending
    in ``::``, then an indented block) as the paragraph ending in ``:`` and a fenced block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        head = MATH_BLOCK.match(lines[i]) or LITERAL.match(lines[i])
        body, end = _body(lines, i + 1, len(head["indent"])) if head else ([], i + 1)
        if head is not None and head.re is MATH_BLOCK:
            out += _math(head["indent"], [head["first"], *body])
        elif head is not None and body:
            out += _literal(head["indent"], head["text"], body)
        else:
            out.append(lines[i])
            end = i + 1
        i = end
    return "\n".join(out)


def _body(lines: list[str], start: int, indent: int) -> tuple[list[str], int]:
    """The lines from ``start`` indented deeper than ``indent`` (blank lines inside kept), and
    the index after the last of them."""
    end = start
    for j in range(start, len(lines)):
        if lines[j].strip() and len(lines[j]) - len(lines[j].lstrip()) <= indent:
            break
        if lines[j].strip():
            end = j + 1
    return lines[start:end], end


def _math(indent: str, body: list[str]) -> list[str]:
    tex = "\n".join(line.strip() for line in body if line.strip())
    if r"\\" in _outside_environments(tex):  # several lines: one centred equation per line
        tex = "\\begin{gathered}\n" + tex + "\n\\end{gathered}"
    return ["", *(indent + line for line in ["$$", *tex.split("\n"), "$$"]), ""]


def _literal(indent: str, text: str, body: list[str]) -> list[str]:
    """As Sphinx: ``text::`` reads ``text:``, ``text ::`` reads ``text``; the block is code."""
    code = textwrap.dedent("\n".join(body)).strip("\n").split("\n")
    head = [indent + (text.rstrip() if text[-1:].isspace() else text + ":")] if text.strip() else []
    return [*head, "", *(indent + line if line else "" for line in ["```python", *code, "```"]), ""]


def _outside_environments(tex: str) -> str:
    """``tex`` without its ``\\begin{...} ... \\end{...}`` environments (their line breaks are
    theirs)."""
    previous = None
    while previous != tex:
        previous, tex = tex, re.sub(r"\\begin\{(\w+)\}(?:(?!\\begin\{).)*?\\end\{\1\}", "", tex,
                                    flags=re.S)
    return tex


def _reference(obj: griffe.Object, match: re.Match) -> str:
    """The markdown for one role: a cross-reference, or code where no page can document it."""
    body = match["body"].strip()
    titled = TITLED.match(body)
    target = titled["target"] if titled else body
    no_link = target.startswith("!")
    short = target.startswith("~")
    target = target.lstrip("!~")
    text = titled["title"] if titled else (target.rsplit(".", 1)[-1] if short else target)
    found = _resolve(obj, target, KINDS.get(match["role"]))
    if found is None:
        if _exported(obj):  # a docstring the API pages can show
            where = f"{obj.relative_filepath}:{obj.docstring.lineno}"
            LOGGER.warning(
                f"{where}: docstring of {obj.path}: {match[0]} names nothing (looked in the scope "
                f"of {obj.path}, its enclosing packages, and as a full path)"
            )
        return f"`{text}`"
    if no_link or not isinstance(found, griffe.Object) or not _exported(found):
        return f"`{text}`"
    while found.docstring is None and not found.parent.is_module:
        found = found.parent  # a field without a docstring: its class documents it
    return f"[`{text}`][{found.path}]"


def _resolve(obj: griffe.Object, target: str, kind: griffe.Kind | None):
    """What ``target`` names, seen from ``obj``: an object of the package, the path of an
    importable object of another package, or None.

    The scopes are searched twice: for an object of the role's ``kind``, then for any object
    (a ``:func:`` naming a class resolves, as in Sphinx, unless a function of that name is in
    scope further out)."""
    parts = target.split(".")
    for wanted in (kind, None):
        scope: griffe.Object | None = obj
        while scope is not None:
            found = _lookup(scope, parts)
            if found is not None and (wanted is None or isinstance(found, str)
                                      or found.kind is wanted):
                return found
            scope = scope.parent
    root = obj.package
    if parts[0] == root.name:
        return _lookup(root, parts[1:])
    return _external(target)


def _lookup(scope: griffe.Object, parts: list[str]) -> griffe.Object | str | None:
    """The member of ``scope`` at the dotted ``parts``, following re-exports and imports."""
    found: griffe.Object | griffe.Alias = scope
    for i, part in enumerate(parts):
        if part not in found.members:
            return None
        found = found.members[part]
        if found.is_alias:
            try:
                found = found.final_target
            except griffe.AliasResolutionError:  # an import from another package
                return _external(".".join([found.target_path, *parts[i + 1:]]))
    return found


def _external(path: str) -> str | None:
    """``path`` if it names an importable module or an attribute of one, else None."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            if not hasattr(obj, attr):
                return None
            obj = getattr(obj, attr)
        return path
    return None


def _exported(obj: griffe.Object) -> bool:
    """Whether a public path leads to ``obj`` (so that the API pages can render it): it is
    public in an exported parent, or a public re-export of it is."""
    if obj.parent is None:
        return True
    if obj.is_public and _exported(obj.parent):
        return True
    return any(alias.is_public and _exported(alias.parent) for alias in obj.aliases.values())
