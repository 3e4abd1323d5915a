"""``raysight submit``: run a spec as a Ray job on a cluster, through Ray's JobSubmissionClient.

The spec is validated here first (a bad spec never reaches the cluster). The working directory is
uploaded as the job's ``working_dir`` (.gitignore is respected; virtualenvs, .git and outputs are
excluded), and the job runs ``raysight run <spec>`` with the same ``--set`` overrides, so the
plain ``ray job submit --working-dir . -- raysight run spec.yaml`` does exactly the same.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..spec.load import load_spec
from .connect import ClusterError, probe

__all__ = ["DEFAULT_EXCLUDES", "submit"]

DEFAULT_EXCLUDES = [".venv", "venv", ".git", "out", "__pycache__", "*.parquet", "*.arrow"]
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _runtime_env(working_dir: Path, extra: str | None) -> dict[str, Any]:
    env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": list(DEFAULT_EXCLUDES)}
    if extra:
        loaded = yaml.safe_load(Path(extra).read_text())
        if not isinstance(loaded, dict):
            raise ClusterError(f"--runtime-env {extra}: expected a mapping")
        env["excludes"] += loaded.pop("excludes", [])
        env["env_vars"] = {**loaded.pop("env_vars", {})}
        env.update(loaded)
    return env


def submit(
    spec_path: str,
    address: str,
    overrides: list[str] | None = None,
    working_dir: str = ".",
    runtime_env: str | None = None,
    wait: bool = True,
    log: Callable[[str], None] = print,
    allow_code: bool = False,
) -> int:
    """Submit; with ``wait``, follow the logs and return 0 only if the job succeeded.

    ``allow_code`` is handed on to the job as ``--allow-code``: the opt-in is the submitter's,
    on the command line, never the spec's."""
    from ray.job_submission import JobSubmissionClient

    overrides = overrides or []
    load_spec(spec_path, overrides, allow_code=allow_code)  # raises SpecError with every problem
    wd = Path(working_dir).resolve()
    try:
        rel = Path(spec_path).resolve().relative_to(wd)
    except ValueError:
        raise ClusterError(f"the spec {spec_path} is outside --working-dir {wd}") from None
    probe(address)
    args = ["raysight", "run", rel.as_posix()]
    for item in overrides:
        args += ["--set", item]
    if allow_code:
        args.append("--allow-code")
    env = _runtime_env(wd, runtime_env)
    deadline = time.monotonic() + 60
    while True:
        try:
            client = JobSubmissionClient(address)
            job_id = client.submit_job(entrypoint=shlex.join(args), runtime_env=env)
            break
        except (ConnectionError, RuntimeError, ValueError) as e:
            # A head node that has just started answers before its job agent is up.
            if "No available agent" in str(e) and time.monotonic() < deadline:
                time.sleep(2.0)
                continue
            raise ClusterError(f"cannot submit to {address}: {e}") from None
    log(f"raysight: submitted {job_id} to {address}: {shlex.join(args)}")
    if not wait:
        return 0
    shown = 0
    while True:
        status = str(client.get_job_status(job_id).value)
        text = client.get_job_logs(job_id)
        if len(text) > shown:
            log(text[shown:].rstrip("\n"))
            shown = len(text)
        if status in _TERMINAL:
            break
        time.sleep(1.0)
    log(f"raysight: job {job_id} {status}")
    return 0 if status == "SUCCEEDED" else 2
