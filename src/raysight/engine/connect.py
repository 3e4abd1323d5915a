"""Connecting to Ray, light enough to import before torch: the CLI and ``raysight.run`` start
Ray here first (``start_early``) while a thread imports the engine, instead of importing torch
(2 s on these machines) and only then starting Ray (3 s). ``init_ray`` must run in the main
thread: ray.init installs a SIGTERM handler, which Python allows nowhere else.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from ..errors import RaysightError
from ..log import logger, verbose
from ..spec.models import ModelSpec, Spec
from .signals import rearm

__all__ = [
    "ClusterError",
    "converts",
    "forget_early_start",
    "init_ray",
    "pool_size",
    "probe",
    "start_early",
    "worker_modules",
]

#: whether the Ray that start_early connected to was started by it, for the run's own init_ray
_early: list[bool] = []
#: dataset/manifest.MANIFEST_FILE, whose module imports pyarrow (0.2 s before Ray could start)
_MANIFEST = "_manifest.json"


class ClusterError(RaysightError, RuntimeError):
    """Ray cannot be reached or lacks what the spec asks for."""


def probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at host:port (ray.init would retry for a minute)."""
    if address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname or not parsed.port:
        return
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"cannot reach a Ray cluster at {address}: {e}") from None


def init_ray(address: str | None, num_cpus: int, preload: list[str] | None = None) -> bool:
    """Connect to Ray (or start a local instance); True when this call started one. A local
    instance's workers import ``preload`` as they start, before any actor is placed on them."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address and address not in ("auto", current) and not address.startswith("ray://"):
            probe(address)
            raise ClusterError(
                f"this process is already connected to Ray at {current}; it cannot also join "
                f"{address} (run raysight in a fresh process, or drop --address)"
            )
        return _early.pop() if _early else False
    try:
        level = logging.INFO if verbose() else logging.WARNING  # not "Started a local Ray"
        if address:
            probe(address)
            ray.init(address=address, log_to_driver=True, logging_level=level)
        else:
            # A local instance: as many logical CPUs as the actors reserve, at least the cores.
            # Ray starts a worker per CPU as the driver connects; preloading has them import
            # torch and transformers while the driver plans, instead of after an actor lands
            system = {"preload_python_modules": preload} if preload else None
            with _quiet_auth_notice():
                ray.init(
                    address="local",
                    num_cpus=max(num_cpus, os.cpu_count() or 1),
                    include_dashboard=False,
                    log_to_driver=True,
                    logging_level=level,
                    _system_config=system,
                )
    except (OSError, RuntimeError, ValueError) as e:  # OSError: refused, socket path too long...
        raise ClusterError(
            f"cannot connect to Ray at {address or 'a new local instance'}: {e}"
        ) from None
    finally:
        rearm()  # ray.init installs a SIGTERM handler of its own
    return not address


@contextmanager
def _quiet_auth_notice() -> Iterator[None]:
    """Ray warns, on every new local instance, that it turned token auth on (its default,
    which stays on); under -v the notice is shown. Setting RAY_AUTH_MODE=token ourselves does
    not work: Ray has read its config by then, and the instance fails to start."""
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    before = notice.level
    if not verbose():
        notice.setLevel(logging.ERROR)
    try:
        yield
    finally:
        notice.setLevel(before)


def worker_modules(model: ModelSpec) -> list[str]:
    """What an actor imports before it can load ``model``: raysight's actor (torch, pyarrow)
    and, for a local model directory, the transformers module of its architecture. Only
    modules that exist: a failed preload logs a traceback from every worker."""
    import importlib.util
    import json

    mods = ["raysight.engine.actor"]
    if model.factory or not model.path:
        return mods
    path = model.path
    try:
        if path.startswith("bundled:"):  # converted by now (engine/startup.py)
            from ..models.bundled import converted

            path = converted(path) or ""
        model_type = json.loads((Path(path) / "config.json").read_text())["model_type"]
        found = importlib.util.find_spec("transformers")  # the package's path, not an import
    except (OSError, ValueError, KeyError, TypeError, RaysightError):
        return mods  # a hub id, or no readable config: the load says what is wrong
    if not isinstance(model_type, str) or found is None or not found.submodule_search_locations:
        return mods
    name = model_type.replace("-", "_")
    root = Path(next(iter(found.submodule_search_locations)))
    if (root / "models" / name / f"modeling_{name}.py").is_file():
        mods.append(f"transformers.models.{name}.modeling_{name}")
    return mods


def converts(spec: Spec) -> bool:
    """Whether loading the model first converts a bundled one (about 30 s, once): planning
    converts it alone, before Ray and the actors start, or each actor would convert it too."""
    from ..models.bundled import converted

    path = spec.model.path or ""
    return not spec.model.factory and path.startswith("bundled:") and converted(path) is None


def pool_size(spec: Spec, rows: int) -> int:
    """The actors a run of ``rows`` input rows uses: no more than its shards."""
    ex = spec.execution
    return min(ex.actors, max(1, -(-rows // ex.shard_rows)))


def _resumes(spec: Spec, overwrite: bool) -> bool:
    """A local output that holds a manifest: the run may have nothing left to do (a URI is
    not looked at here; a fresh run is the common case there)."""
    out = spec.output.path  # "://": dataset/store.is_uri, whose module imports pyarrow
    return not overwrite and "://" not in out and (Path(out) / _MANIFEST).is_file()


def _import(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # the main thread imports it again, and reports what is wrong
            return


def forget_early_start() -> None:
    """Drop what start_early left for a run that ended before it connected (a planning error),
    so a later run in this process does not take the Ray it finds for one it started."""
    _early.clear()


def start_early(spec: Spec, address: str | None = None, overwrite: bool = False) -> None:
    """Start (or join) Ray for a run bound for it, while a thread imports the engine and the
    model's transformers module. Not for an in-process run, a run that may be resumed, or one
    whose bundled model must first be converted. A failure here is left to the run, which
    connects again after planning and reports it there (a planning error comes first)."""
    if spec.execution.runner != "ray" or _resumes(spec, overwrite) or converts(spec):
        return
    ex = spec.execution
    actors = ex.actors  # a file's row count would need pyarrow: at most execution.actors
    if spec.data.prompts is not None:
        actors = pool_size(spec, len(spec.data.prompts))
    preload = worker_modules(spec.model)
    imports = threading.Thread(
        target=_import, args=(["raysight.engine.run", *preload[1:]],), daemon=True
    )
    imports.start()
    try:
        _early[:] = [init_ray(address, actors * ex.cpus_per_actor, preload=preload)]
    except ClusterError as e:
        logger().debug("Ray did not start early (%s); the run connects after planning", e)
    finally:
        # The caller imports the same modules next. Two threads importing transformers at
        # once can fail ("cannot import name 'AutoConfig'"), seen where Ray was already up
        # and init_ray returned at once; after ray.init's seconds the wait is short.
        imports.join()
