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
from ..spec.models import Spec
from ..writers.shard import part_name
from .connect import ClusterError
from .pool import RayPool
from .signals import as_interrupted

__all__ = ["ClusterError", "RayRunner"]


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
            n = min(ex.actors, len(jobs))
            self.pool = RayPool.for_run(spec, s.spec_data, n, self.address)
        pool = self.pool
        started = pool.started and not pool.keep  # a session's Ray stays up for its next run
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
            warm = f"on the session's {pool.n} warm actor(s)"
            s.progress.stage(warm if pool.keep else f"loading the model in {pool.n} actor(s)")
        queue = deque(jobs)
        retries = Retries(ex.max_retries, s.failed)
        inflight: dict[Any, tuple[Any, Any]] = {}  # task -> (actor, ShardJob)

        def dispatch(actor) -> None:
            if queue and s.more():
                job = queue.popleft()
                inflight[pool.submit(actor, job, plan_ref, board)] = (actor, job)

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
                        actor = pool.replace(actor)
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
            _abandon(pool, inflight, spec)
            if started:  # a local Ray this run started goes with it
                ray.shutdown()
            raise stop from None
        finally:
            pool.close()


#: how often the driver collects the actors' batch reports while it waits for a shard
REPORT_SECONDS = 0.5


def _abandon(pool: RayPool, inflight: dict, spec: Spec) -> None:
    """Stop the actors and drop the unfinished files of the shards they were writing."""
    import ray

    pool.discard()
    if inflight:  # wait until the actors are gone, so no file is written after we clean up
        ray.wait(list(inflight), num_returns=len(inflight), timeout=30)
    if is_uri(spec.output.path):  # an unfinished upload leaves no object to drop
        return
    out = Path(spec.output.path)
    for _actor, job in inflight.values():
        for tmp in out.glob(f".{part_name(job.shard, spec.output.format)}.*.tmp"):
            tmp.unlink(missing_ok=True)
