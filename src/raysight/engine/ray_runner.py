"""Run shards on a pool of Ray actors, one model replica each.

- No ``--address`` / ``RAY_ADDRESS``: a local Ray instance is started (``address="local"``, so a
  stray cluster is never joined by accident).
- Resources are checked before they are requested: asking for GPUs or CPUs the cluster does not
  have is an immediate error, never a hang; an address nobody answers on fails in seconds.
- Shards go to whichever actor is free. An actor process that dies is restarted by Ray and its
  shard retried; if it keeps dying it is replaced. A shard whose code raises is run again up to
  ``execution.max_retries`` times, then reported. Each shard's file is renamed into place by the
  actor, once, so a retried shard never leaves two files.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from ..dataset.store import is_uri
from ..log import verbose
from ..spec.models import Spec
from ..writers.shard import part_name
from .connect import ClusterError, init_ray, worker_modules
from .signals import as_interrupted

__all__ = [
    "ClusterError",
    "RayPool",
    "RayRunner",
    "check_shared_output",
    "init_ray",
    "unseen_by",
    "worker_modules",
]


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
    import uuid

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
    """Ray connected, the cluster checked, and ``n`` actors created, each loading the model as
    it starts: the driver makes the pool before it plans (engine/startup.py), so Ray's start,
    the actors' imports and the model load overlap with planning. The plan follows with each
    job (ShardRunner.run_job says why)."""

    def __init__(self, spec: Spec, spec_data: dict, n: int, address: str | None = None):
        import ray

        from .worker import ShardRunner

        ex = spec.execution
        self.spec, self.spec_data, self.n = spec, spec_data, n
        self.started = init_ray(address, n * ex.cpus_per_actor, preload=worker_modules(spec))
        _check_resources(n, ex.cpus_per_actor, ex.gpus_per_actor)
        if not is_uri(spec.output.path):
            check_shared_output(Path(spec.output.path))
        self.actor_cls = ray.remote(ShardRunner).options(
            num_cpus=ex.cpus_per_actor,
            num_gpus=ex.gpus_per_actor,
            max_restarts=2,
            max_task_retries=2,  # process death: restart, rerun the shard
        )
        self.board = _board_class().remote()
        self.actors = [self.new_actor() for _ in range(n)]

    def new_actor(self) -> Any:
        # no plan, id type or sample input: the plan comes with each job
        return self.actor_cls.remote(
            self.spec_data,
            None,
            None,
            self.spec.execution.cpus_per_actor,
            allow_code=self.spec.allow_code,
            plan_later=True,
            quiet_libraries=not verbose(),
        )

    def close(self) -> None:
        """Stop the actors and the board, once (not a local Ray: the process's exit stops
        it, and a notebook's next run reuses it)."""
        import ray

        gone, self.actors, self.board = [*self.actors, self.board], [], None
        if ray.is_initialized():  # not after an interrupted run shut its own Ray down
            for actor in gone:
                if actor is not None:
                    ray.kill(actor, no_restart=True)


class RayRunner:
    """Shards on a pool of ``execution.actors`` Ray actors, each job to whichever is free;
    ``pool``: one started before planning, else the runner starts its own."""

    def __init__(self, shards: Any, address: str | None = None, pool: RayPool | None = None):
        self.shards, self.address, self.pool = shards, address, pool

    def run(self, jobs: list[Any]) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        from .runners import Retries

        s = self.shards
        spec, ex = s.spec, s.spec.execution
        if self.pool is None:
            if s.progress is not None:
                s.progress.stage("connecting to Ray")
            self.pool = RayPool(spec, s.spec_data, min(ex.actors, len(jobs)), self.address)
        pool, started = self.pool, self.pool.started
        board = pool.board if s.progress is not None else None
        # The actors get the driver's plan instead of planning again: that saves each one the
        # meta model and its planning forwards, and every file gets one schema.
        plan_ref = ray.put(s.plan)

        def report() -> None:  # the batches the actors wrote since the last look
            if board is not None:
                for event in ray.get(board.drain.remote()):
                    s.progress.batch(*event)
                s.progress.tick()

        if s.progress is not None:
            s.progress.stage(f"loading the model in {pool.n} actor(s)")
        queue = deque(jobs)
        retries = Retries(ex.max_retries, s.failed)
        inflight: dict[Any, tuple[Any, Any]] = {}  # task -> (actor, ShardJob)

        def dispatch(actor) -> None:
            if queue and s.more():
                job = queue.popleft()
                inflight[actor.run_job.remote(job, plan_ref, board)] = (actor, job)

        try:
            for actor in pool.actors:
                dispatch(actor)
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=REPORT_SECONDS)
                report()
                if not ready:
                    continue
                actor, job = inflight.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except (RayTaskError, RayActorError) as e:
                    if isinstance(e, RayActorError):  # restarts used up: replace the actor
                        ray.kill(actor, no_restart=True)
                        replacement = pool.new_actor()
                        pool.actors[pool.actors.index(actor)] = replacement
                        actor = replacement
                        reason = f"actor died: {e}"
                    else:
                        cause = e.as_instanceof_cause()
                        reason = f"{type(cause).__name__}: {cause}"
                    if retries.again(job, reason):
                        queue.append(job)
                else:
                    s.done(result)
                dispatch(actor)
        except KeyboardInterrupt as e:
            stop = as_interrupted(e)
            _abandon(pool.actors, inflight, spec)
            if started:  # a local Ray this run started goes with it
                ray.shutdown()
            raise stop from None
        finally:
            pool.close()


#: how often the driver collects the actors' batch reports while it waits for a shard
REPORT_SECONDS = 0.5


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


def _abandon(pool: list, inflight: dict, spec: Spec) -> None:
    """Stop the actors and drop the unfinished files of the shards they were writing."""
    import ray

    for actor in pool:
        ray.kill(actor, no_restart=True)
    if inflight:  # wait until the actors are gone, so no file is written after we clean up
        ray.wait(list(inflight), num_returns=len(inflight), timeout=30)
    if is_uri(spec.output.path):  # an unfinished upload leaves no object to drop
        return
    out = Path(spec.output.path)
    for _actor, job in inflight.values():
        for tmp in out.glob(f".{part_name(job.shard, spec.output.format)}.*.tmp"):
            tmp.unlink(missing_ok=True)
