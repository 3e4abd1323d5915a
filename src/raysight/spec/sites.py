"""Site grammar: ``<module path>[.<output|input|inputs>][index…]``.

Pure Python on purpose (no torch): specs validate and builders run anywhere.

A *value site* names a value inside a forward pass (``layers.5.output[:, -1]``); its last dotted
part is always the attribute, so a module that is itself called ``output`` (BERT's
``encoder.layer.0.output``) is reached as ``encoder.layer.0.output.output``. A *module site*
(``skip`` targets, ``cache`` globs, ``apply`` modules) has no attribute.

Module paths may hold ``*`` (any child) and ``a:b[:step]`` (children a..b-1) parts; they expand
against the model's module tree in :func:`expand_module_pattern`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from .tl_names import from_transformer_lens

__all__ = [
    "ATTRS",
    "DERIVED",
    "ROOT",
    "IndexItem",
    "Key",
    "Site",
    "SiteError",
    "Slice",
    "expand_module_pattern",
    "format_index",
    "parse_index",
    "parse_module_site",
    "parse_value_site",
]

ATTRS = ("output", "input", "inputs")
#: the model itself, as a module path (``root.output``: what the model returns)
ROOT = "root"
#: a layer's values that no module returns, named without an attribute (``layers.3.resid_mid``)
DERIVED = ("resid_mid",)
_PART = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*|-?\d+|\*|-?\d*:-?\d*(?::[1-9]\d*)?)$")


class SiteError(ValueError):
    """A site string that does not follow the grammar."""


@dataclass(frozen=True)
class Slice:
    """A ``start:stop:step`` index item (``None`` for an omitted bound)."""

    start: int | None = None
    stop: int | None = None
    step: int | None = None

    def __str__(self) -> str:
        parts = ["" if v is None else str(v) for v in (self.start, self.stop, self.step)]
        return ":".join(parts[:2]) if self.step is None else ":".join(parts)


@dataclass(frozen=True)
class Key:
    """A keyword argument's name, picked from the kwargs half of ``.inputs``:
    ``inputs[1]['position_ids']``."""

    name: str

    def __str__(self) -> str:
        return repr(self.name)


# An index item: an int, a Slice, Ellipsis (``...``), None (``None``: a new axis) or a Key.
IndexItem = int | Slice | type(Ellipsis) | None | Key
_KEY = re.compile(r"""^(['"])([A-Za-z_][A-Za-z0-9_]*)\1$""")


@dataclass(frozen=True)
class Site:
    """A parsed site. ``module`` may still hold wildcard or range parts."""

    module: str
    attr: str | None = None
    index: tuple[tuple[IndexItem, ...], ...] = ()

    def __str__(self) -> str:
        text = self.module + (f".{self.attr}" if self.attr else "")
        return text + "".join(format_index(ix) for ix in self.index)

    @property
    def is_pattern(self) -> bool:
        return any(p == "*" or ":" in p for p in self.module.split("."))

    def with_module(self, module: str) -> Site:
        return Site(module, self.attr, self.index)


def _split(text: str, what: str) -> tuple[str, str]:
    if not isinstance(text, str) or not text.strip():
        raise SiteError(f"{what} must be a non-empty string, got {text!r}")
    text = text.strip()
    cut = text.find("[")
    head, tail = (text, "") if cut < 0 else (text[:cut], text[cut:])
    if not head:
        raise SiteError(f"{what} {text!r} has no module path before '['")
    for part in head.split("."):
        if not _PART.match(part):
            raise SiteError(
                f"{what} {text!r}: bad path part {part!r} "
                "(expected a name, an integer (-1 is the last), '*' or a range like '2:6' or "
                "'0:12:4')"
            )
    return head, tail


def parse_value_site(text: str) -> Site:
    """Parse a value site such as ``layers.5.output[:, -1, :]`` or ``logits``; a
    TransformerLens hook name (``blocks.5.hook_resid_post``) stands for its standardized site
    (spec/tl_names.py)."""
    head, tail = _split(text, "site")
    try:
        alias = from_transformer_lens(head)
    except ValueError as e:
        raise SiteError(str(e)) from None
    if alias is not None:  # an alias may pick a tuple element first (hook_pattern: [1])
        head, pick = _split(alias, "site")
        tail = pick + (tail or "")
    parts = head.split(".")
    if parts[-1] in ATTRS and len(parts) > 1:
        module, attr = ".".join(parts[:-1]), parts[-1]
    elif head == "logits":
        module, attr = "logits", "output"
    elif parts[-1] in DERIVED and len(parts) > 1:
        module, attr = head, None
    else:
        raise SiteError(
            f"site {text!r} must end in .output, .input or .inputs "
            f"(e.g. '{head}.output'); only 'logits' and a layer's resid_mid stand alone"
        )
    index = parse_index(tail) if tail else ()
    if attr == "inputs" and index and not isinstance(index[0][0], int):
        raise SiteError(f"site {text!r}: .inputs is (args, kwargs); index it with [0] or [1] first")
    return Site(module, attr, index)


def parse_module_site(text: str) -> Site:
    """Parse a module site (no attribute, no index), e.g. ``layers.7`` or ``layers.*.mlp``."""
    head, tail = _split(text, "module")
    if tail:
        raise SiteError(f"module {text!r} takes no index; index a value site instead")
    if head.split(".")[-1] in ATTRS and head != "logits":
        raise SiteError(
            f"{text!r} names a value, not a module; drop the trailing .{head.split('.')[-1]}"
        )
    return Site(head)


def _parse_int(tok: str, where: str) -> int:
    try:
        return int(tok)
    except ValueError:
        raise SiteError(f"index {where!r}: {tok!r} is not an integer") from None


def _parse_item(tok: str, where: str) -> IndexItem:
    tok = tok.strip()
    if tok == "...":
        return ...
    if tok == "None":
        return None
    if ":" in tok:
        bits = tok.split(":")
        if len(bits) > 3:
            raise SiteError(f"index {where!r}: bad slice {tok!r}")
        vals = [_parse_int(b, where) if b.strip() else None for b in bits]
        vals += [None] * (3 - len(vals))
        if vals[2] is not None and vals[2] <= 0:
            raise SiteError(f"index {where!r}: slice step must be positive, got {vals[2]}")
        return Slice(*vals)
    if not tok:
        raise SiteError(f"index {where!r}: empty index item")
    key = _KEY.match(tok)
    if key:
        return Key(key.group(2))
    return _parse_int(tok, where)


def parse_index(text: str) -> tuple[tuple[IndexItem, ...], ...]:
    """Parse ``[0][:, -1, :]`` into ``((0,), (Slice(), -1, Slice()))``."""
    groups: list[tuple[IndexItem, ...]] = []
    rest = text.strip()
    while rest:
        if not rest.startswith("[") or "]" not in rest:
            raise SiteError(f"index {text!r}: expected '[...]' groups, got {rest!r}")
        body, rest = rest[1 : rest.index("]")], rest[rest.index("]") + 1 :].strip()
        items = tuple(_parse_item(tok, text) for tok in body.split(","))
        if sum(1 for i in items if i is ...) > 1:
            raise SiteError(f"index {text!r}: at most one '...' per group")
        if len(items) > 1 and any(isinstance(i, Key) for i in items):
            raise SiteError(f"index {text!r}: a keyword name stands alone: ['name']")
        groups.append(items)
    return tuple(groups)


def format_index(group: tuple[IndexItem, ...]) -> str:
    def one(item: IndexItem) -> str:
        if item is ...:
            return "..."
        return "None" if item is None else str(item)

    return "[" + ", ".join(one(i) for i in group) + "]"


def expand_module_pattern(pattern: str, children: dict[str, list[str]]) -> list[str]:
    """Expand ``*`` and ``a:b`` parts of a dotted module path.

    ``children`` maps a module path ('' for the root) to its child names in definition order.
    Returns concrete paths in tree order; raises :class:`SiteError` naming the part that matches
    nothing, with what the model has there.
    """
    paths = [""]
    for part in pattern.split("."):
        nxt: list[str] = []
        for base in paths:
            kids = children.get(base, [])
            if part == "*":
                chosen = kids
            elif ":" in part:
                bounds = [int(b) if b else None for b in part.split(":")]
                numeric = [k for k in kids if k.isdigit()]
                span = range(len(numeric))[slice(*bounds)]
                chosen = [str(i) for i in span if str(i) in kids]
            elif part.startswith("-"):  # from the end, as Python indexes: -1 is the last
                numeric = [k for k in kids if k.isdigit()]
                i = len(numeric) + int(part)
                chosen = [str(i)] if 0 <= i < len(numeric) and str(i) in kids else []
            else:
                chosen = [part] if part in kids else []
            nxt += [f"{base}.{k}" if base else k for k in chosen]
        if not nxt:
            raise SiteError(_no_match(paths[0], part, children.get(paths[0], [])))
        paths = nxt
    return paths


def _no_match(base: str, part: str, kids: list[str]) -> str:
    full = f"{base}.{part}" if base else part
    where = base or "the model"
    numeric = [k for k in kids if k.isdigit()]
    if not kids:
        return f"no module '{full}' ({where} has no child modules)"
    if numeric and (part.lstrip("-").isdigit() or ":" in part):
        return f"no module '{full}' (model has {base}.0–{len(numeric) - 1})"
    close = difflib.get_close_matches(part, kids, n=3, cutoff=0.5)
    if close:
        return f"no module '{full}'; did you mean {' or '.join(repr(c) for c in close)}?"
    shown = ", ".join(kids[:8]) + (", …" if len(kids) > 8 else "")
    return f"no module '{full}' ({where} has: {shown})"
