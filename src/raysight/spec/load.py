"""Read a spec from YAML/JSON, apply ``--set a.b=value`` overrides, and report every problem.

Precedence: model defaults < spec file < overrides. Errors come back as one :class:`SpecError`
listing every problem with its field path, so a user fixes them in one pass.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import RaysightError
from .models import ALLOW_CODE, Spec
from .plain import PlainDataError, check_plain, load_json, load_yaml

__all__ = [
    "SpecError",
    "apply_overrides",
    "dump_spec",
    "load_spec",
    "parse_section",
    "parse_spec",
    "spec_data_hash",
    "spec_hash",
    "spec_to_dict",
]


class SpecError(RaysightError, ValueError):
    """A spec that cannot be used; ``problems`` lists each as ``field.path: message``."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        n = len(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{head}{n} problem{'s' if n != 1 else ''} in the spec:\n{lines}")


def _read(path: Path) -> Any:
    if path.exists() and not path.is_file():  # a FIFO or a device would block or never end
        raise SpecError([f"spec file {path} is not a regular file"])
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"spec file not found: {path}"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError([f"cannot read spec file {path}: {e}"]) from None
    try:
        return load_json(text) if path.suffix == ".json" else load_yaml(text)
    except PlainDataError as e:
        raise SpecError([str(e)], str(path)) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.0.c=value`` overrides (values parsed as YAML scalars/flow) to a spec dict."""
    data = json.loads(json.dumps(data))  # a deep copy (the caller checked the data is plain)
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item!r}: expected key.path=value")
            continue
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except PlainDataError:
            value = raw
        parts = key.strip().split(".")
        node: Any = data
        try:
            for part in parts[:-1]:
                node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
            last = parts[-1]
            if isinstance(node, list):
                node[int(last)] = value
            elif isinstance(node, dict):
                node[last] = value
            else:
                raise TypeError
        except (ValueError, IndexError, TypeError):
            problems.append(f"--set {item!r}: {key} does not name a field of the spec")
    if problems:
        raise SpecError(problems)
    return data


_OP_TAGS = {"save", "set", "skip", "cache", "grad"}
_REDUCE_TAGS = {"topk", "logit_diff", "prob", "logprob"}
_VALUE_TAGS = {"number", "zeros", "noise", "file", "from", "site"}


def _yaml_path(loc: tuple[Any, ...]) -> str:
    """Turn Pydantic's error location into the YAML path: union tags and type names dropped."""
    out: list[str] = []
    for i, part in enumerate(loc):
        prev = loc[i - 1] if i else None
        if (
            isinstance(part, str)
            and (
                (isinstance(prev, int) and part in _OP_TAGS and i + 1 < len(loc))
                or (prev in ("value", "with") and part in _VALUE_TAGS)
                or (prev == "reduce" and part == "name")
                or (prev == "reduce" and part in _REDUCE_TAGS and i + 1 < len(loc))
                or not part.replace(
                    "_", ""
                ).isalnum()  # e.g. "literal['argmax']", "function-after[…]"
                or part[:1].isupper()  # a model class name such as TopK
            )
        ):
            continue
        out.append(str(part))
    return ".".join(out)


def _format_errors(err: ValidationError, section: tuple = ()) -> list[str]:
    out: list[str] = []
    for e in err.errors(include_url=False):
        where = (*section, *e["loc"])
        loc = _yaml_path(where)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            # the key itself, however it is spelled (MODEL, data-x, "a key")
            key = str(where[-1])
            key = key if key.isidentifier() else repr(key)
            parent = _yaml_path((*where[:-1], "_")).removesuffix("_").rstrip(".")
            loc = f"{parent}.{key}" if parent else key
            msg = "unknown key (check the spelling; `raysight schema` lists the keys)"
        line = f"{loc}: {msg}" if loc else msg
        if line not in out:
            out.append(line)
    return out


def parse_spec(
    data: Any,
    overrides: list[str] | None = None,
    source: str | None = None,
    *,
    allow_code: bool = False,
) -> Spec:
    """Validate a spec given as a dict (after applying overrides).

    ``allow_code`` is the caller's opt-in to ``model.factory`` and ``model.trust_remote_code``,
    which import and run code; a spec cannot give it to itself.
    """
    if not isinstance(data, dict):
        raise SpecError([f"a spec is a mapping of sections, got {type(data).__name__}"], source)
    problems = check_plain(data)
    if problems:
        raise SpecError(problems, source)
    if overrides:
        data = apply_overrides(data, overrides)
        if problems := check_plain(data):  # an override can be a YAML alias bomb too
            raise SpecError(problems, source)
    try:
        return Spec.model_validate(data, context={ALLOW_CODE: allow_code})
    except ValidationError as e:
        raise SpecError(_format_errors(e), source) from None


def parse_section(
    cls: type[BaseModel], section: str, data: Any, source: str, *, allow_code: bool = False
) -> Any:
    """Validate one section of a spec on its own (a warm session's model and execution), its
    problems named as in a whole spec (``model.path: ...``)."""
    try:
        return cls.model_validate(data, context={ALLOW_CODE: allow_code})
    except ValidationError as e:
        raise SpecError(_format_errors(e, (section,)), source) from None


def load_spec(
    path: str | Path, overrides: list[str] | None = None, *, allow_code: bool = False
) -> Spec:
    """Load and validate a YAML or JSON spec file (``allow_code``: see :func:`parse_spec`)."""
    path = Path(path)
    return parse_spec(_read(path), overrides, str(path), allow_code=allow_code)


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """The spec as plain JSON data, with YAML key names (``as``, ``with``, ``from``)."""
    return spec.model_dump(mode="json", by_alias=True, exclude_none=True)


def dump_spec(spec: Spec, fmt: str = "yaml", full: bool = False) -> str:
    """YAML or JSON text; ``full`` writes every default too (the resolved spec)."""
    data = (
        spec_to_dict(spec)
        if full
        else spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
    )
    if fmt == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def spec_hash(spec: Spec) -> str:
    """Hash of what determines the output. Execution details are left out (results do not depend
    on them), except shard_rows: it fixes which input rows each shard file holds."""
    return spec_data_hash(spec_to_dict(spec))


def spec_data_hash(data: dict[str, Any]) -> str:
    """:func:`spec_hash` of a spec already turned into data (as a manifest records it)."""
    data = json.loads(json.dumps(data))  # a deep copy: the caller's dict stays as it was
    data["shard_rows"] = (data.pop("execution", None) or {}).get("shard_rows")
    if isinstance(data.get("output"), dict):
        data["output"].pop("path", None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
