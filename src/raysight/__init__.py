"""raysight: declarative, config-driven interpretability batch engine on Ray.

The spec layer (``raysight.spec``) imports no torch or Ray; ``run`` and ``open`` import them on
first use, so ``import raysight`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from .errors import RaysightError
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
    "RaysightError",
    "Spec",
    "SpecBuilder",
    "SpecError",
    "__version__",
    "file",
    "load_spec",
    "noise",
    "open",
    "parse_spec",
    "plan",
    "run",
    "session",
    "topk",
    "validate",
    "zeros",
]


def run(
    spec: Any,
    *,
    overwrite: bool = False,
    allow_code: bool = False,
    source: Any = None,
    **kwargs: Any,
):
    """Run a Spec (or a SpecBuilder, a dict, or a path to a YAML/JSON spec).

    ``allow_code=True`` is the opt-in to ``model.factory`` / ``model.trust_remote_code`` in a
    dict or file (a spec cannot opt in by itself; a builder holding a factory callable has).
    ``source``: a ``pyarrow.dataset.FileSystemDataset``, used as data.source (its files; the
    spec records them)."""
    spec = _as_spec(spec, allow_code)
    if source is not None:
        from .data.adapters import source_of

        files, fmt = source_of(source)
        # what the user set, not the defaults: a default is still a default once re-parsed
        data = spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
        data["data"] = {**data["data"], "source": files, "format": fmt}
        data["data"].pop("prompts", None)
        spec = parse_spec(data, allow_code=spec.allow_code)  # validated again, as any spec
    from .engine.connect import start_early

    start_early(spec, kwargs.get("address"), overwrite)  # Ray starts while the engine imports
    from .engine.run import run as _run

    return _run(spec, overwrite=overwrite, **kwargs)


def session(model: Any = None, **kwargs: Any):
    """A warm session: ``with raysight.session() as s: s.run(spec)`` keeps the loaded model
    between runs, in this process or (``actors=N``) on Ray actors; ``name=`` lets another
    process attach (see :func:`raysight.engine.session.session` for the arguments)."""
    from .engine.session import session as _session

    return _session(model, **kwargs)


def plan(spec: Any, *, sample_rows: int = 10_000, allow_code: bool = False):
    """Plan a spec (a Spec, SpecBuilder, dict or path) without loading weights: the columns,
    their shapes, the input's row count (from metadata) and the output size, estimated from the
    first ``sample_rows`` rows. Returns a :class:`raysight.engine.planning.PlanReport`."""
    from .engine.planning import plan as _plan

    return _plan(_as_spec(spec, allow_code), sample_rows)


def validate(spec: Any, *, model: bool = True, allow_code: bool = False) -> list[str]:
    """Every problem with a spec (a Spec, SpecBuilder, dict or path), ``[]`` when there is
    none, as ``raysight validate`` reports them: the spec alone, then (``model``) each site
    resolved and each value shaped on the meta-device model, with no weights loaded."""
    from .engine.planning import plan as _plan
    from .interleave.resolve import PlanError
    from .models.loading import ModelLoadError

    try:
        parsed = _as_spec(spec, allow_code)
    except SpecError as e:
        return list(e.problems)
    if not model:
        return []
    try:
        _plan(parsed, 1000)
    except PlanError as e:
        return list(e.problems)
    except (ModelLoadError, RaysightError) as e:  # no such model, an unreadable input...
        return [str(e)]
    return []


def _as_spec(spec: Any, allow_code: bool) -> Spec:
    if isinstance(spec, SpecBuilder):
        return spec.spec()
    if isinstance(spec, dict):
        return parse_spec(spec, allow_code=allow_code)
    if not isinstance(spec, Spec):
        return load_spec(spec, allow_code=allow_code)
    return spec


def open(path: Any):
    """Open a raysight output directory (see :class:`raysight.writers.reader.Dataset`)."""
    from .dataset.reader import open_dataset

    return open_dataset(path)
