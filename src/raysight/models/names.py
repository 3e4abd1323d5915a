"""Standardized module names (``embed``, ``layers.N``, ``layers.N.attn``, ``layers.N.mlp``,
``final_norm``, ``lm_head``, ``logits``) resolved per architecture from ``names.json``.

A standardized ``….output`` means the module's primary value (the hidden state), whether the
module returns a tensor or a tuple in the installed transformers version. Raw paths always work
and give the raw value.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

__all__ = ["STANDARD_NAMES", "NameTable"]

STANDARD_NAMES = ("embed", "layers", "final_norm", "lm_head", "logits")


@cache
def _table() -> dict:
    return json.loads(resources.files("raysight.models").joinpath("names.json").read_text())


class NameTable:
    """Maps standardized paths to raw module paths for one loaded model."""

    def __init__(self, model_type: str | None, module_names: set[str]):
        data = _table()
        arch = data["aliases"].get(model_type or "", model_type)
        self.architecture = arch if arch in data["architectures"] else None
        entry = data["architectures"].get(self.architecture or "", {})
        self._paths: dict[str, str | None] = {}
        for name, candidates in entry.items():
            if name in ("attn", "mlp"):
                self._paths[name] = candidates[0] if candidates else None
            else:
                self._paths[name] = next((c for c in candidates if c in module_names), None)
        if "lm_head" in self._paths:
            self._paths["logits"] = self._paths["lm_head"]

    def translate(self, path: str) -> tuple[str, bool]:
        """(raw path, whether it was standardized). Unknown heads pass through as raw paths."""
        parts = path.split(".")
        head = parts[0]
        if self.architecture is None or head not in STANDARD_NAMES:
            return path, False
        if head == "layers":
            base = self._need("layers", path)
            rest = parts[1:]
            if len(rest) >= 2 and rest[1] in ("attn", "mlp"):
                rest = [rest[0], self._need(rest[1], path), *rest[2:]]
            return ".".join([base, *rest]), True
        return ".".join([self._need(head, path), *parts[1:]]), True

    def _need(self, name: str, path: str) -> str:
        raw = self._paths.get(name)
        if raw is None:
            raise KeyError(
                f"'{path}': the {self.architecture} architecture has no standard '{name}' "
                "module; use a raw module path"
            )
        return raw
