"""Warm sessions: runs that keep the loaded model between them, as a notebook user keeps an
nnsight model.

    with raysight.session() as s:                       # in this process
        s.run(spec_a)          # loads the model (and its meta twin, for planning)
        s.run(spec_b)          # same model: reused; another model: loaded, the old one freed

    with raysight.session(model="bundled:smollm2-135m-instruct", actors=2) as s:   # on Ray
        s.run(spec_a)          # the actors loaded the model as the session started

    raysight session lens --model bundled:smollm2-135m-instruct     # a named session, served
    raysight run spec.yaml --session lens                           # from another terminal

Every run is a whole run (its own output directory, manifest, resume and checks); only the
loading is skipped. The session decides where its runs go, and the resolved spec records it:
``execution.runner: local``, or ``ray`` with the session's actors and their resources.

This module imports no torch or Ray until a session needs them (a name taken, or not running, is
said at once). A named session's actors are named Ray actors; a small file in the raysight cache
(``sessions/<name>.json``: the Ray address, the actors, their resources, the owner's pid) lets
another process on this machine attach. The owner writes it once the actors exist and removes
it when the session closes, which stops the actors.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ..errors import RaysightError
from ..models.bundled import raysight_cache
from ..spec.load import parse_section, parse_spec
from ..spec.models import ModelSpec
from ..spec.output import ExecutionSpec

__all__ = ["Session", "SessionError", "serve", "session", "session_file"]


class SessionError(RaysightError, RuntimeError):
    """A named session that is not running, or a name already taken."""


def session_file(name: str) -> Path:
    return raysight_cache() / "sessions" / f"{name}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _record(name: str) -> dict | None:
    """The running session ``name``'s record, or None (no file, or its owner has exited)."""
    path = session_file(name)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not _alive(int(record.get("pid", 0))):
        return None
    return record


class Session:
    """See the module docstring and :func:`session` for the arguments."""

    def __init__(
        self,
        model: Any = None,
        actors: int | None = None,
        name: str | None = None,
        address: str | None = None,
        cpus_per_actor: int = 1,
        gpus_per_actor: float = 0,
        allow_code: bool = False,
    ):
        where = "raysight.session()"
        if name is not None and (not name or not name.replace("-", "").replace("_", "").isalnum()):
            raise SessionError(f"{where}: name {name!r} must be letters, digits, - and _")
        if actors is None and (cpus_per_actor != 1 or gpus_per_actor):
            raise SessionError(f"{where}: cpus_per_actor and gpus_per_actor need actors=N")
        if actors is None and name is None and address is not None:
            raise SessionError(f"{where}: address= is for a session on Ray: give actors=N")
        self._models: dict | None = {}
        self._pool: Any = None
        self.runs, self.name, self._address, self._owner = 0, name, address, True
        self._execution: dict = {"runner": "local"}
        if isinstance(model, str | os.PathLike):
            model = {"path": os.fspath(model)}
        if model is not None:
            spec = parse_section(ModelSpec, "model", model, where, allow_code=allow_code)
        if actors is None and name is not None:
            self._attach(name)
            return
        if actors is None:
            if model is not None:  # an in-process session loads its model now
                self._load_here(spec)
            return
        ex = {"runner": "ray", "actors": actors, "cpus_per_actor": cpus_per_actor}
        ex["gpus_per_actor"] = gpus_per_actor
        parse_section(ExecutionSpec, "execution", ex, where)
        self._execution = ex
        if name is not None and _record(name) is not None:
            raise SessionError(
                f"a raysight session named {name!r} is already running "
                f"(see {session_file(name)}); stop it, or choose another name"
            )
        if model is not None:
            self._start(spec)

    def _load_here(self, model: ModelSpec, weights: bool = True) -> None:
        """The model's meta twin, which planning uses, and (``weights``) the model itself."""
        from ..models.loading import kept_models, load_model

        with kept_models(self._models):
            load_model(model, meta=True)
            if weights:
                load_model(model)

    def _start(self, spec: ModelSpec) -> None:
        """The session's actors, each loading the model ``spec`` names as it starts."""
        from .pool import RayPool

        ex = self._execution
        model = spec.model_dump(mode="json", exclude_unset=True)
        allow_code = spec.factory is not None or spec.trust_remote_code  # validated with it
        self._pool = RayPool(
            model,
            ex["actors"],
            ex["cpus_per_actor"],
            ex["gpus_per_actor"],
            self._address,
            allow_code=allow_code,
            name=self.name,
            keep=True,
        )
        try:
            # while the actors load the model: the driver's imports and the model's meta twin,
            # or the first run would wait for them after the actors are ready
            self._load_here(spec, weights=False)
            self._pool.ready()  # a model that does not load is said here, before any run
        except BaseException:
            self._stop(self._pool)
            self._pool = None
            raise
        if self.name is not None:
            import ray

            record = {"name": self.name, "pid": os.getpid(), "model": model, "execution": ex}
            record["address"] = ray.get_runtime_context().gcs_address
            # a local Ray turns token auth on in its own process only; an attacher must too
            record["auth"] = os.environ.get("RAY_AUTH_MODE", "")
            path = session_file(self.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(record, indent=2))
            tmp.replace(path)  # an attacher never reads half a record

    def _attach(self, name: str) -> None:
        from .pool import RayPool

        record = _record(name)
        if record is None:
            raise SessionError(
                f"no raysight session named {name!r} is running on this machine (start one "
                f"with `raysight session {name} --model ...`)"
            )
        self._owner, self._execution = False, record["execution"]
        if record.get("auth") and "RAY_AUTH_MODE" not in os.environ:  # read as Ray connects
            os.environ["RAY_AUTH_MODE"] = record["auth"]
        ex = self._execution
        self._pool = RayPool(
            record["model"],
            ex["actors"],
            ex["cpus_per_actor"],
            ex["gpus_per_actor"],
            self._address or record["address"],
            name=name,
            keep=True,
            attach=True,
        )

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def run(self, spec: Any, **kwargs: Any) -> Any:
        """``raysight.run`` with the session's models (or actors) kept; the same arguments,
        and the same RunSummary back."""
        import raysight

        from ..models.loading import kept_models
        from .pool import using_pool

        if self._models is None:
            raise SessionError("this raysight session is closed")
        allow_code = kwargs.pop("allow_code", False)
        as_spec = raysight._as_spec(spec, allow_code)
        # what the user set, not the defaults (a default written out counts as set: an explicit
        # data.max_length past the model's positions is an error, the default is lowered)
        data = as_spec.model_dump(mode="json", by_alias=True, exclude_unset=True)
        data["execution"] = {**data.get("execution", {}), **self._execution}
        parsed = parse_spec(data, allow_code=as_spec.allow_code)
        if self._execution["runner"] == "ray" and self._pool is None:  # no model given before
            self._start(parsed.model)
        pool = using_pool(self._pool) if self._pool is not None else nullcontext()
        with kept_models(self._models), pool:
            summary = raysight.run(parsed, **kwargs)
        self.runs += 1
        return summary

    @property
    def models(self) -> list[str]:
        """The models kept in this process (their specs' path or factory)."""
        specs = [json.loads(k[0]) for k in self._models or {}]
        return sorted({m.get("path") or m.get("factory") for m in specs})

    def close(self) -> None:
        """Free the kept models; stop the session's actors (not an attached session's: its
        owner stops them), and a local Ray the session started."""
        if self._models is not None:
            self._models.clear()
        self._models = None
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if not self._owner:  # the owner stops the actors; this process's progress board goes
            pool.detach()
            return
        if self.name is not None:
            record = _record(self.name)
            if record is not None and record.get("pid") == os.getpid():
                session_file(self.name).unlink(missing_ok=True)
        self._stop(pool)

    @staticmethod
    def _stop(pool: Any) -> None:
        pool.shutdown()
        if pool.started:
            import ray

            ray.shutdown()

    def __repr__(self) -> str:
        where = f"{len(self.models)} model(s) kept"
        if self._execution["runner"] == "ray":
            where = f"on {self._execution['actors']} Ray actor(s)"
        state = "closed" if self._models is None else f"{self.runs} run(s), {where}"
        named = f" {self.name!r}" if self.name else ""
        return f"<raysight.Session{named}: {state}>"


def session(
    model: Any = None,
    *,
    actors: int | None = None,
    name: str | None = None,
    address: str | None = None,
    cpus_per_actor: int = 1,
    gpus_per_actor: float = 0,
    allow_code: bool = False,
) -> Session:
    """A warm session. ``model``: a model path (or a ``model:`` section as a dict) to load now;
    without it the first run's model is loaded. ``actors``: run on that many Ray actors (each
    ``cpus_per_actor`` / ``gpus_per_actor``; ``address``: the cluster, else a local Ray),
    instead of in this process. ``name``: with ``actors``, let other processes attach (the
    ``--session`` of ``raysight run``); alone, attach to the running session of that name."""
    return Session(model, actors, name, address, cpus_per_actor, gpus_per_actor, allow_code)


def serve(
    name: str,
    model: str,
    actors: int = 1,
    cpus_per_actor: int = 1,
    gpus_per_actor: float = 0,
    address: str | None = None,
    say: Any = print,
) -> None:
    """``raysight session NAME``: start the named session, then hold it until SIGINT or
    SIGTERM, when its actors are stopped and its record removed."""
    import time

    from .signals import interruptible

    s = Session(model, actors, name, address, cpus_per_actor, gpus_per_actor)
    try:
        say(
            f"raysight: session {name!r} is ready: {actors} actor(s) holding {model}. Attach "
            f"with `raysight run SPEC --session {name}` (Python: raysight.session(name="
            f"{name!r})); Ctrl-C stops it."
        )
        with interruptible():
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                say(f"raysight: session {name!r} stopped")
    finally:
        s.close()
