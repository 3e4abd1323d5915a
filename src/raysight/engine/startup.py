"""Start-up in parallel. A fresh run on Ray plans in a thread (the meta model, its trace, the
shape forwards: seconds of imports and CPU) while the main thread starts Ray and the actors,
which import torch and load the model meanwhile; the plan reaches them with their first job.
Before, each waited for the other: planning, then Ray, then the actors' imports and load.

Only a fresh run starts early (a resumed one must first compare its fingerprint with the
dataset's, and may have nothing left to run), and not one that must first convert a bundled
model. Errors keep their order: a planning error is
reported before a cluster error, as when planning came first.
"""

from __future__ import annotations

import contextvars
import threading
from pathlib import Path
from typing import Any

from ..data.readers import input_source, total_rows
from ..spec.models import Spec
from .connect import converts, pool_size
from .planning import Prepared, prepare
from .pool import session_pool

__all__ = ["prepare_and_start"]


class _Background:
    """A call run in a daemon thread (an interrupted run does not wait for it at exit), in a
    copy of the caller's context (a session's kept models are a context variable)."""

    def __init__(self, fn: Any, *args: Any, **kwargs: Any):
        self._value: Any = None
        self._error: BaseException | None = None
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(
            target=ctx.run, args=(self._call, fn, args, kwargs), daemon=True, name="planning"
        )
        self._thread.start()

    def _call(self, fn: Any, args: tuple, kwargs: dict) -> None:
        try:
            self._value = fn(*args, **kwargs)
        except BaseException as e:  # handed to result(), in the caller's thread
            self._error = e

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def prepare_and_start(
    spec: Spec, spec_data: dict, base_dir: str | Path, address: str | None, fresh: bool
) -> tuple[Prepared, Any]:
    """The run's planning, and a started ``RayPool`` (engine/pool.py) where the run
    goes to Ray and is fresh, else None (the runner connects after planning, if at all). In
    a warm session, the session's pool, its actors already started."""
    kept = session_pool() if spec.execution.runner == "ray" else None
    if kept is not None:
        prepared = prepare(spec, base_dir)
        kept.bind(spec, spec_data)
        return prepared, kept
    if spec.execution.runner != "ray" or not fresh or converts(spec):
        return prepare(spec, base_dir), None
    from .pool import RayPool

    source = input_source(spec.data, base_dir)  # the shard count sizes the pool
    total = total_rows(spec.data, source)
    planning = _Background(prepare, spec, base_dir, listed=(source, total))
    try:
        pool = RayPool.for_run(spec, spec_data, pool_size(spec, total), address)
    except BaseException:
        planning.result()  # its error, where it has one, is the one to report
        raise
    try:
        return planning.result(), pool
    except BaseException:
        pool.close()
        raise
