"""What a Ray actor runs: one model replica that outlives the run it was started for. It loads
its model as it starts (so the load overlaps with the driver's planning), and each job brings
the run it belongs to; on a new run the actor builds a ShardRunner for that run's spec on the
model it holds, and loads another only when the spec names another model. A single run uses it
as it is; a warm session (engine/session.py) keeps the actors between runs.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.loading import kept_models, load_model, quiet_hf
from ..spec.models import ALLOW_CODE, ModelSpec
from .worker import ShardJob, ShardResult, ShardRunner

__all__ = ["ShardActor"]


class ShardActor:
    """``model``: the model spec's data, loaded now (again if Ray restarts the actor)."""

    def __init__(
        self, model: dict, threads: int, allow_code: bool = False, quiet_libraries: bool = False
    ):
        if threads:
            torch.set_num_threads(threads)
        if quiet_libraries:  # an actor's output reaches the driver's terminal: no load bars
            quiet_hf()
        self._threads, self._quiet = threads, quiet_libraries
        self._models: dict = {}  # models.loading.kept_models: one model (the latest) at a time
        self._run: str | None = None
        self._runner: ShardRunner | None = None
        self.loads = 0
        self._load(ModelSpec.model_validate(model, context={ALLOW_CODE: allow_code}))

    def _load(self, model: ModelSpec) -> None:
        before = set(self._models)
        with kept_models(self._models):
            load_model(model)
        self.loads += bool(set(self._models) - before)

    def run_job(
        self, job: ShardJob, plan: Any, board: Any, run: tuple[str, dict, bool]
    ) -> ShardResult:
        """``run``: (the run's id, its spec's data, its allow_code opt-in). Each run gets a
        runner of its own, even for the same spec: its input files may have changed."""
        run_id, spec_data, allow_code = run
        with kept_models(self._models):
            if run_id != self._run:
                self._runner = None  # the last run's runner goes before a new model loads
                before = set(self._models)
                self._runner = ShardRunner(
                    spec_data,
                    None,
                    None,
                    self._threads,
                    allow_code=allow_code,
                    quiet_libraries=self._quiet,
                    plan_later=True,
                )
                self.loads += bool(set(self._models) - before)
                self._run = run_id
            return self._runner.run_job(job, plan, board)

    def stats(self) -> dict[str, Any]:
        """How many models this actor loaded since it (last) started, and its latest run."""
        return {"loads": self.loads, "run": self._run}
