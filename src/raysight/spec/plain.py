"""Read spec text as plain data, and refuse what plain data cannot hold.

A spec is JSON-shaped data: mappings with string keys, lists, strings, finite numbers, booleans
and nulls. YAML can say more than that, and each extra is a way to hurt or confuse a run:

- a key given twice (PyYAML and ``json`` keep the last one, silently);
- ``!!binary``, ``!!set``, ``!!omap``, ``!!pairs`` values, which JSON cannot write back
  (timestamps stay the text they were written as, as in YAML 1.2 and JSON; so do YAML 1.1's
  base-60 numbers: ``steps: 1:3`` is the range "1:3", not the integer 63);
- ``.nan`` / ``.inf``, which no JSON file can hold;
- nesting so deep that the parser recurses out of its stack;
- aliases that expand a 1 KB file into billions of nodes ("billion laughs").

Each is reported as a :class:`PlainDataError` naming the line (YAML) or field path (data).
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

__all__ = ["MAX_DEPTH", "MAX_NODES", "PlainDataError", "check_plain", "load_json", "load_yaml"]

#: deepest nesting of mappings and lists a spec may have (real specs use about 6)
MAX_DEPTH = 64
#: most values a spec may expand to, aliases counted each time they are used
MAX_NODES = 1_000_000


class PlainDataError(ValueError):
    """Spec text or data that is not plain JSON-shaped data; the message names where."""


def _where(node: yaml.Node) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}"


class _SpecLoader(yaml.SafeLoader):
    """``yaml.safe_load``, stricter: see the module docstring."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        # PyYAML composes recursively: bound the depth before Python's stack does.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ComposerError(
                    None, None, f"the YAML nests deeper than {MAX_DEPTH} levels", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        size = self._size(node)
        if size > MAX_NODES:
            raise ConstructorError(
                None,
                None,
                f"the YAML expands to more than {MAX_NODES:,} values (aliases repeat what they "
                "point to); write the data out in a file and name it in data.source",
                node.start_mark,
            )
        return super().construct_document(node)

    def _size(self, node: yaml.Node) -> int:
        """Values the node expands to, each alias counted in full (memoised per node)."""
        key = id(node)
        if key not in self._sizes:
            self._sizes[key] = MAX_NODES + 1  # a node that contains itself expands forever
            if isinstance(node, yaml.MappingNode):
                n = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                n = 1 + sum(self._size(v) for v in node.value)
            else:
                n = 1
            self._sizes[key] = min(n, MAX_NODES + 1)
        return self._sizes[key]

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys merged in with << may be overridden: that is their purpose
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if first is not key_node:
                    raise ConstructorError(
                        None,
                        None,
                        f"key {key!r} is given twice (first at {_where(first)}); a spec "
                        "keeps no silent last-one-wins",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.Node) -> Any:
        if ":" in node.value:  # YAML 1.1's base 60 (1:30 is 90); in a spec it is a range
            return self.construct_yaml_str(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.Node) -> Any:
        if ":" in node.value:  # base 60 too (1:30.5)
            return self.construct_yaml_str(node)
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise ConstructorError(
                None, None, f"{node.value!r} is not a finite number", node.start_mark
            )
        return value

    def refuse(self, node: yaml.Node) -> Any:
        kind = node.tag.rsplit(":", 1)[-1]
        raise ConstructorError(
            None,
            None,
            f"a YAML !!{kind} value has no JSON equivalent; a spec holds strings, numbers, "
            "booleans, lists and mappings",
            node.start_mark,
        )


_SpecLoader.add_constructor("tag:yaml.org,2002:int", _SpecLoader.construct_yaml_int)
_SpecLoader.add_constructor("tag:yaml.org,2002:float", _SpecLoader.construct_yaml_float)
_SpecLoader.add_constructor("tag:yaml.org,2002:timestamp", _SpecLoader.construct_yaml_str)
for _tag in ("binary", "set", "omap", "pairs"):
    _SpecLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _SpecLoader.refuse)


def load_yaml(text: str) -> Any:
    """Parse YAML text strictly; raises PlainDataError with the line and column."""
    try:
        return yaml.load(text, Loader=_SpecLoader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e)
        raise PlainDataError(f"invalid YAML{where}: {what}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PlainDataError(f"invalid JSON: key {key!r} is given twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise PlainDataError(f"invalid JSON: {name} is not a finite number")


def load_json(text: str) -> Any:
    """Parse JSON text strictly (no repeated keys, no NaN/Infinity, bounded nesting)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno}, column {e.colno}"
        raise PlainDataError(f"invalid JSON at {where}: {e.msg}") from None
    except RecursionError:
        raise PlainDataError("invalid JSON: it nests too deeply to read") from None


_SCALARS = (str, bool, int, type(None))


def check_plain(data: Any) -> list[str]:
    """Problems that keep ``data`` from being a plain spec, each with its field path.

    Walks iteratively (no recursion limit to hit), counting every value as often as it is
    reachable, and stops at MAX_NODES.
    """
    problems: list[str] = []
    stack: list[tuple[Any, tuple, int]] = [(data, (), 0)]
    nodes = 0
    while stack:
        value, path, depth = stack.pop()
        nodes += 1
        where = ".".join(map(str, path)) or "the spec"
        if nodes > MAX_NODES:
            return [*problems, f"the spec expands to more than {MAX_NODES:,} values"]
        if depth > MAX_DEPTH:
            problems.append(f"{where}: nests deeper than {MAX_DEPTH} levels")
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                problems.append(f"{where}: {value!r} is not a finite number")
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):  # popped in the order written
                if not isinstance(key, str):
                    problems.append(
                        f"{where}: key {key!r} is a {type(key).__name__}; keys are strings"
                    )
                    continue
                stack.append((item, (*path, key), depth + 1))
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
            stack.extend((item, (*path, i), depth + 1) for i, item in reversed(items))
        elif not isinstance(value, _SCALARS):
            problems.append(
                f"{where}: a {type(value).__name__} value has no place in a spec (strings, "
                "numbers, booleans, lists and mappings only)"
            )
    return problems
