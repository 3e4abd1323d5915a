"""A pool of Ray actors (engine/actor.py), one model replica each, and the checks made before
they start: resources the cluster has, an output path every node sees.

A run's pool is made before it plans (engine/startup.py), so Ray's start, the actors' imports
and the model load overlap with planning, and it goes with the run. A warm session's pool
(engine/session.py) is ``kept``: runs ``rebind`` it and their ends leave it standing; with a
``name`` its actors can be found by another process (``raysight run --session NAME``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from ..dataset.store import is_uri
from ..log import verbose
from ..spec.models import ALLOW_CODE, ModelSpec, Spec
from .connect import ClusterError, init_ray, worker_modules

__all__ = [
    "NAMESPACE",
    "RayPool",
    "actor_name",
    "check_shared_output",
    "session_pool",
    "unseen_by",
    "using_pool",
]

#: the Ray namespace of named sessions' actors
NAMESPACE = "raysight"
#: the kept pool of the warm session whose run this is (engine/session.py)
_SESSION: ContextVar[RayPool | None] = ContextVar("raysight_session_pool", default=None)


@contextmanager
def using_pool(pool: RayPool) -> Iterator[RayPool]:
    """Inside, a run bound for Ray uses ``pool`` (a session's) instead of starting its own."""
    token = _SESSION.set(pool)
    try:
        yield pool
    finally:
        _SESSION.reset(token)


def session_pool() -> RayPool | None:
    return _SESSION.get()


def actor_name(session: str, i: int) -> str:
    return f"session-{session}-{i}"


def _check_resources(actors: int, cpus: int, gpus: float) -> None:
    import ray

    have = ray.cluster_resources()
    problems = []
    if gpus and actors * gpus > have.get("GPU", 0):
        problems.append(
            f"{actors} actor(s) x execution.gpus_per_actor {gpus:g} = "
            f"{actors * gpus:g} GPU(s), but the Ray cluster has {have.get('GPU', 0):g}"
        )
    if actors * cpus > have.get("CPU", 0):
        problems.append(
            f"{actors} actor(s) x execution.cpus_per_actor {cpus} = {actors * cpus} "
            f"CPU(s), but the Ray cluster has {have.get('CPU', 0):g}"
        )
    if problems:
        raise ClusterError("; ".join(problems) + " (lower execution.actors or add nodes)")


def unseen_by(reports: dict[str, bool]) -> list[str]:
    """The nodes (of ``reports``: node -> whether it read the probe) that do not see the path."""
    return sorted(node for node, seen in reports.items() if not seen)


def check_shared_output(path: Path) -> None:
    """On a cluster of several nodes, a local output.path must be one that every node sees
    (NFS, a parallel filesystem): each node reads a probe file the driver wrote there. A
    node-local path is refused, rather than scattering shard files over the nodes' disks."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    token = uuid.uuid4().hex
    probe = path / f"_probe-{token}"
    probe.write_text(token)

    @ray.remote(num_cpus=0, max_retries=0)
    def sees(where: str, expected: str) -> bool:
        try:
            return Path(where).read_text() == expected
        except OSError:
            return False

    try:
        refs = {
            f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})": sees.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(probe), token)
            for n in nodes
        }
        reports = dict(zip(refs, ray.get(list(refs.values()), timeout=120)))
    finally:
        probe.unlink(missing_ok=True)
    blind = unseen_by(reports)
    if blind:
        raise ClusterError(
            f"output.path {str(path)!r} is not shared by the cluster's nodes: {len(blind)} of "
            f"{len(nodes)} do not see it (e.g. node {blind[0]}); on several nodes write to a "
            "filesystem that every node mounts, or to an object store (s3://...)"
        )


class RayPool:
    """Ray connected, the cluster checked, ``n`` actors created, each loading ``model`` (the
    model spec's data) as it starts. ``attach``: the actors of the running session ``name``,
    found by name, instead of new ones."""

    def __init__(
        self,
        model: dict,
        n: int,
        cpus: int,
        gpus: float,
        address: str | None = None,
        *,
        allow_code: bool = False,
        name: str | None = None,
        keep: bool = False,
        attach: bool = False,
    ):
        import ray

        from .actor import ShardActor

        self.model, self.n, self.cpus, self.name, self.keep = model, n, cpus, name, keep
        self.allow_code = allow_code
        spec = ModelSpec.model_validate(model, context={ALLOW_CODE: allow_code})
        self.started = init_ray(address, n * cpus, preload=worker_modules(spec))
        if not attach:
            _check_resources(n, cpus, gpus)
        self.actor_cls = ray.remote(ShardActor)
        self.options: dict[str, Any] = {
            "num_cpus": cpus,
            "num_gpus": gpus,
            "max_restarts": 2,
            "max_task_retries": 2,  # process death: restart, rerun the shard
        }
        self.board = _board_class().remote()
        self.binding: Any = None
        found = [self._find(i) for i in range(n)] if name is not None else []
        if attach:  # one that an interrupted run stopped is started again by bind
            self.actors = found
            return
        if any(found):
            ray.kill(self.board)
            raise ClusterError(
                f"this Ray cluster already runs the actors of a raysight session named {name!r} "
                "(served from another machine, or left behind by an owner that was killed): "
                f"choose another name, or stop them with ray.kill(ray.get_actor("
                f"'{actor_name(name, 0)}', namespace='{NAMESPACE}'))"
            )
        self.actors = [self.new_actor(i) for i in range(n)]

    @classmethod
    def for_run(cls, spec: Spec, spec_data: dict, n: int, address: str | None = None) -> RayPool:
        """A pool of ``n`` actors for one run of ``spec``, closed when the run ends."""
        ex = spec.execution
        pool = cls(
            spec_data["model"],
            n,
            ex.cpus_per_actor,
            ex.gpus_per_actor,
            address,
            allow_code=spec.allow_code,
        )
        try:
            pool.bind(spec, spec_data)
        except BaseException:
            pool.close()
            raise
        return pool

    def bind(self, spec: Spec, spec_data: dict) -> None:
        """The run the pool's next jobs belong to: each job carries it (``submit``), so an
        actor restarted by Ray, or replaced, knows its run from its first job."""
        import ray

        if not is_uri(spec.output.path):
            check_shared_output(Path(spec.output.path))
        if self.keep:  # a kept pool: what an earlier run left
            ray.get(self.board.drain.remote())
            self.actors = [a or self.new_actor(i) for i, a in enumerate(self.actors)]
        self.binding = ray.put((uuid.uuid4().hex, spec_data, spec.allow_code))

    def ready(self) -> None:
        """Wait until every actor has loaded its model (a session's start); a model that does
        not load is a ClusterError with the actor's reason."""
        import ray
        from ray.exceptions import RayActorError

        try:
            ray.get([a.stats.remote() for a in self.actors if a is not None])
        except RayActorError as e:  # its last line: the error its __init__ raised
            reason = str(e).strip().splitlines()[-1]
            raise ClusterError(f"the session's actors could not load the model: {reason}") from None

    def submit(self, actor: Any, job: Any, plan_ref: Any, board: Any) -> Any:
        return actor.run_job.remote(job, plan_ref, board, self.binding)

    def new_actor(self, i: int) -> Any:
        options = dict(self.options)
        if self.name is not None:  # found by name; lives until the session ends
            options.update(name=actor_name(self.name, i), namespace=NAMESPACE)
            options["lifetime"] = "detached"
        args = (self.model, self.cpus, self.allow_code, not verbose())
        deadline = time.monotonic() + 30
        while True:
            try:
                return self.actor_cls.options(**options).remote(*args)
            except ValueError:  # the name of an actor just killed, not yet released
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def replace(self, actor: Any) -> Any:
        """A new actor in place of ``actor`` (dead for good)."""
        import ray

        i = self.actors.index(actor)
        ray.kill(actor, no_restart=True)
        self.actors[i] = self.new_actor(i)
        return self.actors[i]

    def _find(self, i: int) -> Any:
        """The session's actor ``i``, or None."""
        import ray

        try:
            return ray.get_actor(actor_name(self.name, i), namespace=NAMESPACE)
        except ValueError:
            return None

    def discard(self) -> None:
        """Stop the actors now (an interrupted run): a kept pool starts new ones for its next
        run."""
        import ray

        for actor in self.actors:
            if actor is not None:
                ray.kill(actor, no_restart=True)
        self.actors = [None] * self.n

    def detach(self) -> None:
        """Leave an attached session's actors to their owner; stop this pool's board."""
        import ray

        board, self.board, self.actors = self.board, None, []
        if board is not None and ray.is_initialized():
            ray.kill(board)

    def close(self) -> None:
        """The run's end: stop the actors and the board, unless the pool is kept."""
        if not self.keep:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop the actors and the board, once (not a local Ray: the process's exit stops it,
        and a notebook's next run reuses it)."""
        import ray

        gone, self.actors, self.board = [*self.actors, self.board], [], None
        if not ray.is_initialized():  # an interrupted run shut its own Ray down
            return
        if self.name is not None:  # and those an attached run started in place of killed ones
            gone += [self._find(i) for i in range(self.n)]
        for actor in gone:
            if actor is not None:
                ray.kill(actor, no_restart=True)


def _board_class():
    import ray

    @ray.remote(num_cpus=0)
    class Board:
        """Where actors post each batch they wrote (fire and forget: ``add.remote``), and
        the driver collects them."""

        def __init__(self):
            self.events: list[tuple] = []

        def add(self, *event) -> None:
            self.events.append(event)

        def drain(self) -> list[tuple]:
            out, self.events = self.events, []
            return out

    return Board
