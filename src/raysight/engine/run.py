"""Run a spec end to end: check the output directory, write the resolved spec, plan, split the
input into shards, run the shards (in this process or on a Ray actor), and keep the manifest.

A rerun of the same spec on the same output skips finished shards; a different spec is refused
unless ``overwrite`` is given; a directory that is not a raysight dataset is never deleted.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from .. import __version__
from ..data.readers import DataError
from ..dataset.manifest import (
    SPEC_FILE,
    Manifest,
    ManifestError,
    ShardEntry,
    schema_ipc,
    write_json,
)
from ..dataset.records import (
    ERRORS_FILE,
    adopt_records,
    record_name,
    write_record,
)
from ..dataset.store import Store
from ..dataset.verify import shard_keys
from ..errors import RaysightError
from ..interleave.runs import check_earlier_runs
from ..log import logger
from ..models.bundled import resolve_bundled
from ..spec.load import spec_hash, spec_to_dict
from ..spec.models import Spec
from .budget import TokenBudget
from .connect import forget_early_start
from .fingerprint import changes, fingerprint
from .ids import duplicate_ids, ids_file, write_keys
from .lock import LockHeld, OutputLock
from .outputs import ManifestSaver, OutputError, prepare_output
from .planning import Prepared
from .progress import Progress
from .runners import Shards, runner_for
from .signals import Interrupted, interruptible
from .startup import prepare_and_start
from .worker import ShardJob, ShardResult

__all__ = ["OutputError", "RunFailed", "RunSummary", "run"]


class RunFailed(RaysightError, RuntimeError):
    """Shards failed after every retry; names each shard and its last error."""


@dataclass
class RunSummary:
    path: str
    shards: int
    shards_run: int
    examples: int
    rows: int
    tokens: int
    errors: int
    seconds: float

    def __str__(self) -> str:
        tps = self.tokens / self.seconds if self.seconds else 0.0
        where = f" (listed in {self.path.rstrip('/')}/{ERRORS_FILE})" if self.errors else ""
        return (
            f"{self.path}: {self.examples} examples -> {self.rows} rows in {self.shards} "
            f"shard(s) ({self.shards_run} run now), {self.errors} row error(s){where}, "
            f"{self.tokens} tokens in {self.seconds:.1f} s ({tps:,.0f} tokens/s)"
        )


def _versions() -> dict[str, str]:
    import importlib.metadata

    import torch
    import transformers

    try:  # an in-process run needs no Ray (a GPU machine's image may lack it)
        ray = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        ray = "not installed"
    return {
        "raysight": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pyarrow": pa.__version__,
        "ray": ray,
    }


def _jobs(total: int, size: int) -> list[ShardJob]:
    """One job per range of ``size`` input rows (a shard of an empty input has no rows)."""
    return [
        ShardJob(k, k * size, min(total, (k + 1) * size)) for k in range(max(1, -(-total // size)))
    ]


def run(
    spec: Spec,
    *,
    overwrite: bool = False,
    base_dir: str | Path = ".",
    log: Callable[[str], None] | None = None,
    address: str | None = None,
) -> RunSummary:
    """Run ``spec``; returns a summary. Raises SpecError/PlanError/OutputError/DataError, and
    RunFailed when shards still fail after their retries (finished shards are kept)."""
    # a progress bar only for a person watching, and not under -q
    tty = log is None and sys.stderr.isatty() and logger().isEnabledFor(logging.INFO)
    log = log or logger().info
    try:
        return _run_output(spec, overwrite, Path(base_dir), log, tty, address)
    finally:
        forget_early_start()  # unused when the run failed before it connected


def _run_output(
    spec: Spec,
    overwrite: bool,
    base_dir: Path,
    log: Callable[[str], None],
    tty: bool,
    address: str | None,
) -> RunSummary:
    try:
        out = Store(spec.output.path)
        if out.local and out.dir.exists() and not out.dir.is_dir():
            raise OutputError(f"output.path {out.uri!r} is a file, not a directory")
        out.mkdir()
        lock = OutputLock(out).acquire()
    except OSError as e:  # under a file, in /proc, read-only, no space left, no bucket...
        raise OutputError(f"output.path {spec.output.path!r}: cannot write there ({e})") from None
    except LockHeld as e:
        raise OutputError(str(e)) from None
    try:
        return _run_locked(spec, out, overwrite, base_dir, log, tty, address)
    finally:
        lock.release()


def _run_locked(
    spec: Spec,
    out: Store,
    overwrite: bool,
    base_dir: Path,
    log: Callable[[str], None],
    tty: bool,
    address: str | None,
) -> RunSummary:
    t0 = time.perf_counter()
    digest = spec_hash(spec)
    spec_data = spec_to_dict(spec)
    try:
        previous = prepare_output(out, digest, overwrite)
        write_json(out, SPEC_FILE, {"spec_hash": digest, "spec": spec_data})
    except OSError as e:  # read-only, no space left...
        raise OutputError(f"output.path {out.uri!r}: cannot write there ({e})") from None

    # earlier runs' datasets the ops read: complete, before any model work
    earlier = check_earlier_runs([op for v in spec.variants for op in (*v.edits, *v.ops)])
    # the input from metadata, a sample of rows, the plan; on Ray, the actors start meanwhile
    prepared, pool = prepare_and_start(spec, spec_data, base_dir, address, previous is None)
    try:
        return _run_planned(
            spec, spec_data, out, digest, previous, earlier, prepared, pool, log, tty, address, t0
        )
    finally:
        if pool is not None:  # the runner closes it; this is for an error before the runner
            pool.close()


def _run_planned(
    spec: Spec,
    spec_data: dict,
    out: Store,
    digest: str,
    previous: Manifest | None,
    earlier: dict,
    prepared: Prepared,
    pool: Any,
    log: Callable[[str], None],
    tty: bool,
    address: str | None,
    t0: float,
) -> RunSummary:
    plan, total, ids = prepared.plan, prepared.total, prepared.id_type
    if plan.hooks.skipped:
        log(
            f"raysight: cache '*' left out {len(plan.hooks.skipped)} module(s) that return no "
            "tensor or do not run once (raysight plan lists them)"
        )
    sample = prepared.sample_input
    del prepared  # the sample rows
    model_dir = spec.model.path
    if model_dir and model_dir.startswith("bundled:"):
        model_dir = resolve_bundled(model_dir)
    prints = fingerprint(spec, model_dir, plan.source, earlier)
    if previous is not None:
        changed = changes(previous.fingerprint, prints)
        if not previous.header_intact:
            changed.insert(0, "its manifest's header was edited (raysight verify says more)")
        if changed:
            raise OutputError(
                f"output.path {out.uri!r} holds a partial run that this one cannot resume: "
                f"{'; '.join(changed)}. Restore what changed, or start over with --overwrite"
            )
        try:  # shards recorded, not yet listed
            adopt_records(out, previous)
        except ManifestError as e:
            raise OutputError(f"output.path {out.uri!r}: {e}; nothing was deleted") from None
    manifest = previous or Manifest(
        spec_hash=digest,
        spec=spec_data,
        versions=_versions(),
        model={"kind": plan.model_kind, "architecture": plan.architecture},
        layout=spec.output.layout,
        format_files=spec.output.format,
        columns=[asdict(c) for c in plan.columns],
        schema=plan.schema.to_string(show_schema_metadata=False),
        schema_ipc=schema_ipc(plan.schema),
        input_rows=total,
        fingerprint=prints,
    )
    manifest.seal()  # the header checksum is fixed by the first run
    save = ManifestSaver(out, manifest)
    save()

    budget = TokenBudget(spec.data.max_tokens, manifest.shards)
    todo = []
    for job in _jobs(total, spec.execution.shard_rows):
        if manifest.expected_shards <= job.shard:  # data.max_tokens was reached before it
            break
        entry = manifest.shards.get(job.shard)
        if entry and entry.done and out.is_file(entry.file):
            continue
        todo.append(job)
    log(
        f"raysight: {total} input rows, {manifest.n_shards} shard(s), {len(todo)} to run "
        f"-> {out.uri}"
    )
    warn = logger().warning if log == logger().info else log
    generating = spec.generate is not None
    progress = Progress({j.shard: j.rows for j in todo}, log, tty, generating, warn=warn)

    def done(res: ShardResult) -> None:
        errors = res.errors
        if res.id_keys is not None:  # before the manifest lists the shard done
            write_keys(out, res.shard, res.id_keys)
        entry = ShardEntry(
            "done",
            file=res.file,
            bytes=res.bytes,
            sha256=res.sha256,
            rows=res.rows,
            examples=res.examples,
            tokens=res.tokens,
            padded_tokens=res.padded_tokens,
            truncated=res.truncated,
            errors=len(errors),
            seconds=round(res.seconds, 3),
            stages={k: round(v, 4) for k, v in res.stages.items()},
            self_check=res.self_check,
        )

        def write() -> None:  # the completion record first: a shard listed done has one
            write_record(out, res.shard, entry, errors)
            manifest.shards[res.shard] = entry

        save(write, force=False)
        progress.shard_done(res.shard, res.examples, res.tokens, len(errors), res.generated)
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in res.stages.items() if v)
        logger().debug(f"  shard {res.shard}: {res.seconds:.2f}s ({stages})")

    def failed(shard: int, reason: str, attempts: int) -> None:
        manifest.shards[shard] = ShardEntry.failed(reason, attempts)
        save(force=False)
        progress.shard_failed(shard, reason)

    failure: BaseException | None = None
    try:
        with interruptible():
            if todo:
                shards = Shards(
                    spec, spec_data, plan, ids, sample, done, failed, budget.more, progress
                )
                runner_for(shards, address, pool).run(todo)
            if not budget.more():  # data.max_tokens reached
                _cut(out, manifest, budget)
            _check_ids(spec, out, manifest)
    except Interrupted as e:
        failure = e
        progress.close()
        warn(
            f"raysight: {e}; {len(manifest.done())} finished shard(s) kept in {out.uri}, no "
            "partial files left; rerun the same command to resume"
        )
        raise
    except BaseException as e:
        failure = e
        raise
    finally:
        progress.close()
        try:
            save.report()
        except OutputError as e:
            if failure is None:
                raise
            warn(f"raysight: {e}")  # the run's own error is the one to raise
    totals = manifest.totals()
    summary = RunSummary(
        out.uri,
        manifest.expected_shards,
        len(todo),
        totals["examples"],
        totals["rows"],
        totals["tokens"],
        totals["errors"],
        time.perf_counter() - t0,
    )
    bad_shards = manifest.failed()
    if bad_shards:
        detail = "; ".join(f"shard {k}: {s.error}" for k, s in bad_shards.items())
        raise RunFailed(
            f"{len(bad_shards)} shard(s) failed after {spec.execution.max_retries + 1} "
            f"attempt(s) each ({detail}). The {len(manifest.done())} finished shard(s) are "
            "kept; rerun the same command to retry only the failed ones."
        )
    log(f"raysight: done. {summary}")
    return summary


def _cut(out: Store, manifest: Manifest, budget: TokenBudget) -> None:
    """data.max_tokens was reached at shard ``budget.last``: drop the later shards that finished
    meanwhile (their files, records and ids, so their row errors too), and record where the
    run stopped."""
    manifest.budget = {"max_tokens": budget.max_tokens, "last_shard": budget.last}
    for k in budget.extra():
        entry = manifest.shards.pop(k)
        for name in (entry.file, record_name(k), ids_file(k)):
            if name:
                out.delete(name)


def _check_ids(spec: Spec, out: Store, manifest: Manifest) -> None:
    """Refuse a dataset in which two shards wrote the same id (see engine/ids.py)."""
    shards = manifest.shards
    if spec.data.id_field is None or manifest.failed() or not shards:
        return

    def read_ids(k: int) -> list:
        return [key[0] for key in shard_keys(out, shards[k].file, per_token=False)[1]]

    n, some = duplicate_ids(out, sorted(shards), read_ids)
    if n:
        where = "; ".join(f"{eid!r} in shards {', '.join(map(str, ks))}" for eid, ks in some)
        raise DataError(
            f"data.id_field {spec.data.id_field!r}: {n} id(s) appear in more than one shard "
            f"({where}). Every shard is kept and written; make the ids unique, or drop "
            "data.id_field to number rows by their position"
        )
