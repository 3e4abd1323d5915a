"""Standardized module names (``embed``, ``layers.N``, ``layers.N.attn``, ``layers.N.mlp``,
``layers.N.attn_norm`` / ``mlp_norm`` (the norms before them), ``layers.N.attn.out_proj``,
``layers.N.mlp.down_proj``, ``final_norm``, ``lm_head``, ``logits``, and where an architecture
has them ``attn_post_norm`` / ``mlp_post_norm`` and ``mlp.router``) resolved per architecture
from ``names.json``.

A standardized ``….output`` means the module's primary value (the hidden state), whether the
module returns a tensor or a tuple in the installed transformers version. Raw paths always work
and give the raw value.
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["DERIVED", "STANDARD_NAMES", "NameTable"]

STANDARD_NAMES = ("embed", "layers", "final_norm", "lm_head", "logits")


@cache
def _table() -> dict:
    return json.loads(resources.files("raysight.models").joinpath("names.json").read_text())


#: names inside one layer, relative to it; and inside its attention or MLP, relative to those
LAYER_PARTS = ("attn", "mlp", "attn_norm", "mlp_norm", "attn_post_norm", "mlp_post_norm")
SUB_PARTS = ("attn.out_proj", "mlp.down_proj", "mlp.router")
#: values inside a layer's forward that no module returns, each named by the standardized value
#: that holds the same tensor (read-only: writing there would not reach the residual stream)
DERIVED = ("resid_mid",)


class NameTable:
    """Maps standardized paths to raw module paths for one loaded model."""

    def __init__(self, model_type: str | None, module_names: set[str], config: Any | None = None):
        data = _table()
        arch = data["aliases"].get(model_type or "", model_type)
        self.architecture = arch if arch in data["architectures"] else None
        entry = dict(data["architectures"].get(self.architecture or "", {}))
        for override in entry.pop("when", []):
            if all(getattr(config, k, None) == v for k, v in override["config"].items()):
                entry.update(override["names"])
        self._paths: dict[str, str | None] = {}
        for name, candidates in entry.items():
            if name in LAYER_PARTS or name in SUB_PARTS or name in DERIVED:  # the first candidate
                self._paths[name] = candidates[0] if candidates else None
            else:  # '' is the root: the model's own output
                self._paths[name] = next((c for c in candidates if c in module_names), None)
        if "lm_head" in self._paths and "logits" not in self._paths:
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
            if len(rest) >= 2 and rest[1] in LAYER_PARTS:
                sub = f"{rest[1]}.{rest[2]}" if len(rest) >= 3 else ""
                if sub in SUB_PARTS:
                    # OPT and BERT have no MLP module: their down_proj is the layer's own child
                    inner, parent = self._need(sub, path), self._paths.get(rest[1])
                    rest = [rest[0], *([parent] if parent else []), inner, *rest[3:]]
                else:
                    rest = [rest[0], self._need(rest[1], path), *rest[2:]]
            return ".".join([base, *rest]), True
        return ".".join(p for p in [self._need(head, path), *parts[1:]] if p), True

    def derived(self, name: str, path: str) -> tuple[str, str]:
        """(layer part, attr) of the standardized value holding ``layers.N.<name>``."""
        site = self._paths.get(name)
        if site is None:
            why = (
                "it has no layers table; save a raw module's value"
                if self.architecture is None
                else "its attention and MLP read the same input (they run in parallel), so no "
                "residual value lies between them"
            )
            whose = self.architecture or "model"
            raise KeyError(f"'{path}': the {whose}'s layers have no {name}: {why}")
        part, attr = site.rsplit(".", 1)
        return part, attr

    def names(self) -> list[str]:
        """The standardized names this model has (``layers.N.attn``... as ``attn``)."""
        return [n for n, raw in self._paths.items() if raw is not None]

    def suggest(self, path: str) -> str | None:
        """'did you mean' for a path whose head or layer part is close to a standardized name
        this model has (``layer.3``, ``layers.3.atn``), else None."""
        if self.architecture is None:
            return None
        parts, have = path.split("."), self.names()
        heads = [n for n in have if n in STANDARD_NAMES]
        if parts[0] not in STANDARD_NAMES:
            close = difflib.get_close_matches(parts[0], heads, n=2, cutoff=0.6)
            at = 0
        elif parts[0] == "layers" and len(parts) >= 3:
            inner = [n for n in have if n in LAYER_PARTS]
            close = difflib.get_close_matches(parts[2], inner, n=2, cutoff=0.6)
            at = 2
        else:
            return None
        if not close:
            return None
        fixed = [".".join([*parts[:at], c, *parts[at + 1 :]]) for c in close]
        return f"no module '{path}'; did you mean {' or '.join(repr(f) for f in fixed)}?"

    def _need(self, name: str, path: str) -> str:
        raw = self._paths.get(name)
        if raw is None:
            raise KeyError(
                f"the {self.architecture} architecture has no standard '{name}' module (in "
                f"'{path}'); use a raw module path"
            )
        return raw
