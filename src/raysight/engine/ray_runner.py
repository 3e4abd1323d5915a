"""Run shards on a Ray actor that holds the model replica.

With no ``--address`` / ``RAY_ADDRESS``, a local Ray instance is started (``address="local"``, so a
stray cluster is never joined by accident). GPUs are checked against the cluster before they are
requested: asking for GPUs that are not there is an immediate error, never a hang.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..spec.models import Spec

__all__ = ["ClusterError", "init_ray", "run_on_ray"]


class ClusterError(RuntimeError):
    """Ray cannot be reached or lacks what the spec asks for."""


def init_ray(address: str | None, num_cpus: int) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(
                address="local",
                num_cpus=max(num_cpus, os.cpu_count() or 1),
                include_dashboard=False,
                log_to_driver=True,
            )
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(
            f"cannot connect to Ray at {address or 'a new local instance'}: {e}"
        ) from None


def run_on_ray(
    spec: Spec,
    spec_data: dict,
    id_type: str,
    sample: Any,
    todo: list[tuple],
    done: Callable,
    address: str | None = None,
) -> None:
    import ray

    from .worker import ShardRunner

    ex = spec.execution
    init_ray(address, ex.cpus_per_actor)
    gpus = ray.cluster_resources().get("GPU", 0)
    if ex.gpus_per_actor > gpus:
        raise ClusterError(
            f"execution.gpus_per_actor is {ex.gpus_per_actor} but the Ray "
            f"cluster has {gpus:g} GPU(s)"
        )
    actor_cls = ray.remote(ShardRunner).options(
        num_cpus=ex.cpus_per_actor,
        num_gpus=ex.gpus_per_actor,
        max_restarts=2,
        max_task_retries=2,
    )
    actor = actor_cls.remote(spec_data, id_type, sample, ex.cpus_per_actor)
    try:
        pending = {actor.run_shard.remote(k, rows): errs for k, rows, errs in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            errs = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:
                raise e.as_instanceof_cause() from None
            done(result, errs)
    finally:
        ray.kill(actor)
