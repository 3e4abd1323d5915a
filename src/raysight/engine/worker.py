"""Run shards: tokenize, batch by token budget, interleave, write one file per shard.

:class:`ShardRunner` holds one model replica. The same class runs in the driver process
(``execution.runner: local``) and inside a Ray actor (``runner: ray``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import pyarrow as pa
import torch

from ..data.batching import (
    Batch,
    Encoded,
    check_position,
    collate,
    pack,
    row_numbers,
    token_targets,
    tokenize,
    with_units,
)
from ..data.readers import Row, input_source, read_range
from ..dataset.store import Store
from ..interleave.actions import SetAction
from ..interleave.interleaver import Interleaver, OpError
from ..models.loading import load_model, quiet_hf
from ..spec.load import parse_spec
from ..spec.variants import number_columns, position_columns, row_fields, token_fields
from ..writers.shard import ShardWriter
from ..writers.shuffle import ShuffleBuffer
from .ids import id_keys
from .output_rows import ShardError, record_batch, special_ids
from .plan import RunPlan, make_plan, min_tokens
from .selfcheck import SelfCheck, SelfCheckError, pick

__all__ = ["STAGES", "ShardError", "ShardJob", "ShardResult", "ShardRunner"]


@dataclass(frozen=True)
class ShardJob:
    """What a worker is sent for one shard: its number and its range of global input rows. The
    worker reads those rows itself (the plan it holds says from which files)."""

    shard: int
    lo: int
    hi: int

    @property
    def rows(self) -> int:
        return self.hi - self.lo


@dataclass
class ShardResult:
    shard: int
    file: str | None
    rows: int  # output rows written (tokens in per_token layout)
    examples: int
    tokens: int
    padded_tokens: int
    truncated: int
    seconds: float
    errors: list[tuple] = field(default_factory=list)  # (example_id, reason[, {variant, offset}])
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (STAGES)
    sha256: str | None = None  # of the committed file
    bytes: int = 0  # its size
    self_check: dict[str, Any] = field(default_factory=dict)  # rows rerun alone, max |diff|
    id_keys: Any = None  # with data.id_field: the sorted uint64 keys of its ids (engine/ids.py)
    generated: int = 0  # tokens generated (under `generate:`)


# Where a shard's time goes. read is reading and checking its input rows; forward includes
# the ops; to_host is the copy of the saves off the device (on a GPU it also waits for the
# forward's queued kernels); encode is the writer's encoder threads making record batches
# (beside the forward, not in its way unless write grows); write is the time the worker was
# blocked on the writer's queue, including the final flush, fsync and rename. self_check is the
# time spent running the rows picked again alone.
STAGES = ("read", "tokenize", "collate", "forward", "to_host", "encode", "write", "self_check")


class ShardRunner:
    """One model replica. ``plan`` is the driver's plan, handed over in-process or shipped to an
    actor; without one the runner plans for itself (planning is deterministic)."""

    def __init__(
        self,
        spec_data: dict[str, Any],
        id_type: str,
        sample: Any,
        threads: int | None,
        plan: RunPlan | None = None,
        allow_code: bool = False,
        board: Any = None,
        quiet_libraries: bool = False,
        plan_later: bool = False,
    ):
        if threads:
            torch.set_num_threads(threads)
        if quiet_libraries:  # an actor's output reaches the driver's terminal: no load bars
            quiet_hf()
        # each written batch is reported (shard, units done, units, tokens, generated)
        self.on_batch: Any = board
        # allow_code is the driver's opt-in, handed on: the spec data alone cannot carry it
        self.spec = parse_spec(spec_data, allow_code=allow_code)
        self.loaded = load_model(self.spec.model)
        self.plan: RunPlan | None = None
        self._special: Any = None  # the tokenizer's special ids, for special_tokens: drop
        if plan_later:  # each run_job brings the driver's plan (engine/ray_runner.py)
            return
        if plan is None:
            meta = load_model(self.spec.model, meta=True)
            source = input_source(self.spec.data)
            plan = make_plan(
                self.spec, sample, pa.type_for_alias(id_type), loaded=meta, source=source
            )
        self._use(plan)

    def _use(self, plan: RunPlan) -> None:
        self.plan = plan
        self.interleaver = Interleaver(self.loaded, self.plan.hooks)
        # each variant has its own positions: a row too short for one variant is an error for
        # that variant only, and runs in the others
        self.min_tokens = [min_tokens(self.spec, v) for v in range(len(self.spec.variants))]
        self.position_columns = position_columns(self.spec)
        self.out = Store(self.spec.output.path)
        pair = self.spec.data.pair
        # a whole-value copy between pair rows aligns them token by token
        self.same_length = (
            pair is not None
            and pair.position_map is None
            and [
                a.where
                for acts in self.plan.hooks.actions.values()
                for a in acts
                if isinstance(a, SetAction) and a.from_row is not None and a.positions is None
            ]
        )

    # -------------------------------------------------------------- inputs
    def _encode(self, rows: list[Row], errors: list) -> list[Encoded]:
        if self.loaded.kind == "tensor":
            return [Encoded(r.example_id, [0]) for r in rows]
        text = self.spec.output.include_text
        return tokenize(
            self.loaded.tokenizer, rows, self.spec.data, self.plan.max_length, errors, text
        )

    def _collate(self, items: list[Encoded], rows: dict[Any, Row]) -> Batch:
        if self.loaded.kind == "tensor":
            xs = [torch.as_tensor(rows[e.example_id].payload, dtype=torch.float32) for e in items]
            n = len(items)
            batch = Batch(
                [e.example_id for e in items],
                {"input": torch.stack(xs)},
                [0] * n,
                [1] * n,
                None,
                [None] * n,
            )
            return with_units(batch, items)
        tok = self.loaded.tokenizer
        return collate(
            items, tok.pad_token_id, self.loaded.padding_side, self.loaded.kind == "causal"
        )

    # -------------------------------------------------------------- output
    def _record_batch(self, batch: Batch, values: dict[str, Any]) -> pa.RecordBatch:
        tok, kind = self.loaded.tokenizer, self.loaded.kind
        if self._special is None and self.spec.output.special_tokens == "drop":
            self._special = special_ids(tok)
        return record_batch(
            self.spec, self.plan, tok, kind, self._rows, batch, values, self._special
        )

    # -------------------------------------------------------------- run
    def run_job(self, job: ShardJob, plan: RunPlan | None = None, board: Any = None) -> ShardResult:
        """Read the shard's input rows (only the columns the spec needs), then run it.
        ``plan``: the driver's, for a runner made with ``plan_later`` (used from the first);
        ``board``: the Ray actor its batches are reported to (engine/ray_runner.py). Both come
        with the job: an actor given an object or actor reference at construction makes Ray
        log an error-level line about restarts on every run."""
        if self.plan is None:
            self._use(plan)
        if board is not None and self.on_batch is None:
            self.on_batch = board.add.remote
        t0 = time.perf_counter()
        id_kind = "string" if pa.types.is_string(self.plan.schema.field(0).type) else "int64"
        rows, bad = read_range(
            self.spec.data, self.plan.source, job.lo, job.hi, row_fields(self.spec), id_kind
        )
        read_errors = [(e.example_id, e.reason) for e in bad]
        result = self.run_shard(job.shard, rows, read_errors, time.perf_counter() - t0)
        if self.spec.data.id_field is not None:
            result.id_keys = id_keys(r.example_id for r in rows)
        return result

    def run_shard(
        self, shard: int, rows: list[Row], read_errors: list[tuple] = (), read_seconds: float = 0
    ) -> ShardResult:
        t0 = time.perf_counter() - read_seconds
        ex = self.spec.execution
        by_id = {r.example_id: r for r in rows}
        self._rows = by_id  # data.keep values, for the record batches
        errors: list[tuple] = list(read_errors)
        self._stages = dict.fromkeys(STAGES, 0.0)
        self._stages["read"] = read_seconds
        t = time.perf_counter()
        encoded = self._encode(rows, errors)
        self._stages["tokenize"] = time.perf_counter() - t
        units = self._units(encoded, by_id, errors)
        writer = ShardWriter(
            self.out,
            shard,
            self.plan.schema,
            self.spec.output.format,
            self.spec.output.compression,
            self.spec.output.row_group_bytes,
            background=True,
            encoders=self.spec.output.encoders,
        )
        tokens = padded = generated = units_done = 0
        examples: set = set()
        self._model_failures: list[str] = []  # rows that raised inside the model, not in an op
        k = len(units[0]) if units else 1  # rows per unit: the pair's fields
        try:
            # inside the try: a signal that lands while the file is being opened still drops it
            writer.start()
            if self.on_batch is not None:  # begun: the bar stops saying "loading the model"
                self.on_batch(shard, 0, len(units), 0, 0)
            check = self._reruns(units, by_id)
            shuffle = self.spec.output.shuffle
            sink: Any = writer
            if shuffle is not None:  # rows in a seeded order, a buffer at a time
                sink = ShuffleBuffer(writer.write, shuffle.buffer_rows, shuffle.seed, shard)
            for group in pack(
                [max(len(e.ids) for e in u) for u in units],
                ex.batch_tokens,
                ex.max_batch_rows,
                ex.max_padding,
                rows_per_item=k,
                new_tokens=self.spec.generate.max_new_tokens if self.spec.generate else 0,
            ):
                for batch, values in self._run_group([units[i] for i in group], by_id, errors):
                    if shuffle is None:  # encoded by the writer's threads, in order
                        sink.write(partial(self._encode_kept, batch, values, check))
                    else:
                        sink.write(self._encode_kept(batch, values, check))
                    examples.update(batch.example_ids)
                    tokens += sum(batch.lengths)
                    padded += batch.size * batch.padded_length
                    if "generated_ids" in values:
                        generated += sum(len(t) for t in values["generated_ids"])
                units_done += len(group)
                if self.on_batch is not None:
                    self.on_batch(shard, units_done, len(units), tokens, generated)
            if not examples and self._model_failures:
                # Every row failed inside the model: systematic, not a bad row. Fail the shard
                # so it is retried, and reported if it keeps failing.
                raise ShardError(
                    f"shard {shard}: every row failed in the model; the first: "
                    f"{self._model_failures[0]}"
                )
            writer.drain()  # every batch encoded: the self-check has kept its rows
            try:
                check.check()
            except SelfCheckError as e:  # the batch changed a row: fail, never write it
                raise ShardError(f"shard {shard}: {e}") from None
            if shuffle is not None:
                sink.flush()
            writer.commit()
        except BaseException:
            writer.fail()
            raise
        truncated = sum(e.truncated for e in encoded)
        self._stages["write"] = writer.write_seconds
        self._stages["encode"] = writer.encode_seconds
        return ShardResult(
            shard,
            writer.name,
            writer.rows,
            len(examples),
            tokens,
            padded,
            truncated,
            time.perf_counter() - t0,
            errors,
            self._stages,
            writer.sha256,
            writer.size,
            check.summary(),
            generated=generated,
        )

    def _encode_kept(self, batch: Batch, values: dict, check: SelfCheck) -> pa.RecordBatch:
        """The batch's record batch; the self-check keeps the rows it will compare."""
        record = self._record_batch(batch, values)
        check.keep(record)
        return record

    def _reruns(self, units: list[list[Encoded]], rows: dict[Any, Row]) -> SelfCheck:
        """Run the units the self-check picks alone (before the batches, so only their batched
        rows need keeping while the shard is written)."""
        check = SelfCheck(self.plan.columns)
        before = dict(self._stages)
        t = time.perf_counter()
        lengths = [max(len(e.ids) for e in u) for u in units]
        for i in pick(lengths, self.spec.execution.self_check):
            first = units[i][0]
            label = f"row {first.example_id!r}"
            if first.offset is not None:
                label += f" window at token {first.offset}"
            if self.spec.sweep:
                label += f" [{self.spec.variants[first.variant].label}]"
            # a unit that fails alone fails in its batch too, and is reported there
            for batch, values in self._run_group([units[i]], rows, []):
                check.expect(label, self._record_batch(batch, values))
        self._stages = before  # the reruns' time is the self-check's, not the batches'
        self._stages["self_check"] = time.perf_counter() - t
        self._model_failures = []
        return check

    def _units(self, encoded: list[Encoded], rows: dict[Any, Row], errors: list) -> list[list]:
        """Check each example's rows and replicate them per sweep variant: a unit is one
        example's pair of rows (or its one row) under one variant, and shares a batch."""
        need = self.min_tokens
        columns = sorted({col for col, _ in token_fields(self.spec)})
        numbers = number_columns(self.spec)
        per_unit: dict[tuple, list[Encoded]] = {}  # (example, data.chunk window) -> its rows
        for e in encoded:
            per_unit.setdefault((e.example_id, e.offset), []).append(e)
        units: list[list[Encoded]] = []
        failed: set = set()  # examples reported as a whole
        for (eid, offset), members in per_unit.items():
            if eid in failed:
                continue
            problem = None
            if columns:
                try:
                    targets = token_targets(self.loaded.tokenizer, rows[eid].fields, columns)
                    members = [replace(e, targets=targets) for e in members]
                except ValueError as err:
                    problem = f"token from the data: {err}"
            if numbers and problem is None:
                try:
                    values = row_numbers(rows[eid].fields, numbers)
                    members = [replace(e, numbers=values) for e in members]
                    for col in self.position_columns:
                        check_position(values[col], col, min(len(e.ids) for e in members))
                except ValueError as err:
                    problem = f"number from the data: {err}"
            lengths = [len(e.ids) for e in members]
            fields = self.spec.data.pair.fields if self.spec.data.pair else ["text"]
            if problem is None and min(lengths) == 0:
                problem = "the text tokenizes to no tokens"
            elif problem is None and self.same_length and len(set(lengths)) > 1:
                sizes = ", ".join(f"{f} {n} tokens" for f, n in zip(fields, lengths))
                problem = (
                    f"pair rows of different lengths ({sizes}): {self.same_length[0]} copies "
                    "whole values between them token by token; give data.pair.position_map, "
                    "or positions on the op"
                )
            if problem is not None:
                errors.append((eid, problem))
                failed.add(eid)
                continue
            for v in range(len(self.spec.variants)):
                if self.loaded.kind != "tensor" and min(lengths) < need[v]:
                    short = f"{min(lengths)} tokens, but the ops' positions need at least {need[v]}"
                    errors.append(self._row_error(eid, short, v, offset))
                    continue
                u = len(units)
                units.append([replace(e, variant=v, unit=u) for e in members])
        return units

    def _row_error(
        self, example_id: Any, reason: str, variant: int, offset: int | None = None
    ) -> tuple:
        """An error report entry: (example_id, reason), with a dict of what it is narrowed to:
        one sweep variant (the reason labelled with its sweep point), one data.chunk window
        after a document's first (a document's first window stands for the whole document,
        which has no other window when the first fails)."""
        extra: dict[str, Any] = {}
        if self.spec.sweep:
            v = self.spec.variants[variant]
            reason, extra["variant"] = f"[{v.label}] {reason}", v.index
        if offset:
            reason, extra["offset"] = f"window at token {offset}: {reason}", offset
        return (example_id, reason, extra) if extra else (example_id, reason)

    def _run_group(self, units: list[list[Encoded]], rows: dict[Any, Row], errors: list) -> Any:
        """Run one batch; if it fails, run its units (an example's pair under one variant) alone
        so only the bad ones are lost (this also recovers a batch that ran out of memory)."""
        t = time.perf_counter()
        batch = self._collate([e for u in units for e in u], rows)
        t_run, host = time.perf_counter(), self.interleaver.host_seconds
        self._stages["collate"] += t_run - t
        try:
            values, failure = self.interleaver.run(batch), None
        except Exception as e:  # any failure is narrowed down to units first
            values, failure = None, e
        to_host = self.interleaver.host_seconds - host
        self._stages["to_host"] += to_host
        self._stages["forward"] += time.perf_counter() - t_run - to_host
        if failure is not None:
            if len(units) == 1:
                e, first = failure, units[0][0]
                reason = str(e) if isinstance(e, OpError) else f"{type(e).__name__}: {e}"
                errors.append(
                    self._row_error(first.example_id, reason, first.variant, first.offset)
                )
                if not isinstance(e, OpError):
                    self._model_failures.append(f"row {first.example_id!r}: {reason}")
                return
            for unit in units:
                yield from self._run_group([unit], rows, errors)
            return
        yield batch, values
