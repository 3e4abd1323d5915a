"""raysight: declarative, config-driven interpretability batch engine on Ray.

The spec layer (``raysight.spec``) imports no torch or Ray; ``run`` and ``open`` import them on
first use, so ``import raysight`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from .spec import (
    Spec,
    SpecBuilder,
    SpecError,
    file,
    load_spec,
    noise,
    parse_spec,
    topk,
    zeros,
)

__all__ = [
    "Spec",
    "SpecBuilder",
    "SpecError",
    "__version__",
    "file",
    "load_spec",
    "noise",
    "open",
    "parse_spec",
    "run",
    "topk",
    "zeros",
]


def run(spec: Any, *, overwrite: bool = False, allow_code: bool = False, **kwargs: Any):
    """Run a Spec (or a SpecBuilder, a dict, or a path to a YAML/JSON spec).

    ``allow_code=True`` is the opt-in to ``model.factory`` / ``model.trust_remote_code`` in a
    dict or file (a spec cannot opt in by itself; a builder holding a factory callable has)."""
    from .engine.run import run as _run

    if isinstance(spec, SpecBuilder):
        spec = spec.spec()
    elif isinstance(spec, dict):
        spec = parse_spec(spec, allow_code=allow_code)
    elif not isinstance(spec, Spec):
        spec = load_spec(spec, allow_code=allow_code)
    return _run(spec, overwrite=overwrite, **kwargs)


def open(path: Any):
    """Open a raysight output directory (see :class:`raysight.writers.reader.Dataset`)."""
    from .writers.reader import open_dataset

    return open_dataset(path)
