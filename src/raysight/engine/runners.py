"""The runners: how shard jobs reach a model replica. Both take the same jobs and report each
shard through the same two callbacks, and both count attempts with one :class:`Retries`:

- :class:`LocalRunner` runs the shards one after another in this process (``runner: local``);
- ``RayRunner`` (engine/ray_runner.py) runs them on a pool of Ray actors (``runner: ray``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..spec.models import Spec
from .worker import ShardJob, ShardResult, ShardRunner

__all__ = ["LocalRunner", "Retries", "Runner", "Shards", "runner_for"]


@dataclass
class Shards:
    """What a runner is handed: the spec (and its data form for workers), the driver's plan,
    the id column's type, a tensor model's sample input, and where each shard's end goes."""

    spec: Spec
    spec_data: dict
    plan: Any
    id_type: str
    sample: Any
    done: Callable[[ShardResult], None]
    failed: Callable[[int, str, int], None]  # shard, last error, attempts
    more: Callable[[], bool] = lambda: True  # asked before a shard starts (data.max_tokens)
    progress: Any = None  # engine/progress.Progress: batch(...) per written batch, tick()


@dataclass
class Retries:
    """execution.max_retries per shard: ``again(job, reason)`` says whether to run it again,
    and reports it as failed once its attempts are used up."""

    max_retries: int
    failed: Callable[[int, str, int], None]
    attempts: dict[int, int] = field(default_factory=dict)

    def again(self, job: ShardJob, reason: str) -> bool:
        n = self.attempts[job.shard] = self.attempts.get(job.shard, 0) + 1
        if n > self.max_retries:
            self.failed(job.shard, reason, n)
            return False
        return True


class Runner(Protocol):
    def run(self, jobs: list[ShardJob]) -> None: ...


class LocalRunner:
    def __init__(self, shards: Shards):
        self.shards = shards

    def run(self, jobs: list[ShardJob]) -> None:
        s = self.shards
        if s.progress is not None:
            s.progress.stage("loading the model")
        replica = ShardRunner(
            s.spec_data,
            s.id_type,
            s.sample,
            None,
            plan=s.plan,
            allow_code=s.spec.allow_code,
            board=s.progress.batch if s.progress is not None else None,
        )
        retries = Retries(s.spec.execution.max_retries, s.failed)
        for job in jobs:
            if not s.more():
                return
            while True:
                try:
                    result = replica.run_job(job)
                except Exception as e:  # any shard failure is retried, then reported
                    if retries.again(job, f"{type(e).__name__}: {e}"):
                        continue
                    break
                s.done(result)
                break


def runner_for(shards: Shards, address: str | None = None, pool: Any = None) -> Runner:
    """``pool``: Ray actors started before planning (engine/startup.py), for ``runner: ray``."""
    if shards.spec.execution.runner == "ray":
        from .ray_runner import RayRunner

        return RayRunner(shards, address, pool)
    return LocalRunner(shards)
