"""A warm session: runs in this process that keep the loaded model between them, as a notebook
user keeps an nnsight model.

    with raysight.session() as s:
        s.run(spec_a)          # loads the model (and its meta twin, for planning)
        s.run(spec_b)          # same model: reused; another model: loaded, the old one freed

Every run is a whole run (its own output directory, manifest, resume and checks); only the
loading is skipped. A session runs in this process (``execution.runner: local``, which the
resolved spec records); keeping Ray actors warm across runs is not built yet.
"""

from __future__ import annotations

import json
from typing import Any

from ..models.loading import kept_models

__all__ = ["Session", "session"]


class Session:
    def __init__(self) -> None:
        self._models: dict | None = {}
        self.runs = 0

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def run(self, spec: Any, **kwargs: Any) -> Any:
        """``raysight.run`` in this process, with the session's models kept; the same
        arguments, and the same RunSummary back."""
        import raysight

        if self._models is None:
            raise RuntimeError("this raysight session is closed")
        as_spec = raysight._as_spec(spec, kwargs.pop("allow_code", False))
        # what the user set, not the defaults (a default written out counts as set: an explicit
        # data.max_length past the model's positions is an error, the default is lowered)
        data = as_spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
        data.setdefault("execution", {})["runner"] = "local"
        with kept_models(self._models):
            summary = raysight.run(data, allow_code=as_spec.allow_code, **kwargs)
        self.runs += 1
        return summary

    @property
    def models(self) -> list[str]:
        """The models kept (their specs' path or factory)."""
        specs = [json.loads(k[0]) for k in self._models or {}]
        return sorted({m.get("path") or m.get("factory") for m in specs})

    def close(self) -> None:
        """Free the kept models."""
        if self._models is not None:
            self._models.clear()
        self._models = None

    def __repr__(self) -> str:
        state = "closed" if self._models is None else f"{len(self.models)} model(s) kept"
        return f"<raysight.Session: {self.runs} run(s), {state}>"


def session() -> Session:
    """A warm session (see the module docstring)."""
    return Session()
