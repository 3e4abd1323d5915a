"""The one planning entry that ``raysight run``, ``raysight plan`` / ``validate`` and the public
``raysight.plan()`` share: list the input from metadata, read a sample of rows (the id type, a
tensor model's sample input, token counts for the size estimate), and plan on the meta model.

Nothing here reads more than the sample: the driver's memory and time do not grow with the
input (FACTS: 1,000,000 JSONL rows read into row objects took 870 MB).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..data.batching import tokenize
from ..data.readers import id_type, input_source, read_range, tensor_sample, total_rows
from ..data.sources import Source
from ..interleave.resolve import PlanError
from ..models.loading import LoadedModel, load_model
from ..spec.models import Spec
from ..spec.reduce import strings_name
from ..spec.sweep import axis_values
from ..spec.variants import row_fields
from .plan import RunPlan, make_plan

__all__ = ["PLAN_SAMPLE", "PlanReport", "Prepared", "plan", "prepare"]

#: rows ``raysight plan`` tokenizes to estimate tokens and bytes (validate takes fewer)
PLAN_SAMPLE = 10_000
#: rows the driver reads before a run: the id type and a tensor model's sample input
RUN_SAMPLE = 1000


@dataclass
class Prepared:
    """What planning found: the plan (with the input's files), the input row count, the id
    column's type, and the sample rows that were read."""

    plan: RunPlan
    source: Source | None
    total: int
    id_type: str
    sample_input: Any
    rows: list = field(repr=False)
    errors: list = field(repr=False)


def prepare(
    spec: Spec,
    base_dir: str | Path = ".",
    sample_rows: int = RUN_SAMPLE,
    loaded: LoadedModel | None = None,
    listed: tuple[Source | None, int] | None = None,
) -> Prepared:
    """``listed``: the input's source and row count, where the caller has listed them."""
    if listed is None:  # metadata only: the workers read the rows
        source = input_source(spec.data, base_dir)
        listed = source, total_rows(spec.data, source)
    source, total = listed
    rows, errors = read_range(spec.data, source, 0, min(total, sample_rows), row_fields(spec))
    ids = id_type(rows)
    sample = tensor_sample(spec.data, rows)
    kept = keep_types(spec, rows)
    plan_ = make_plan(
        spec, sample, pa.type_for_alias(ids), loaded=loaded, source=source, keep_types=kept
    )
    return Prepared(plan_, source, total, ids, sample, rows, errors)


def keep_types(spec: Spec, rows: list) -> dict[str, pa.DataType]:
    """The Arrow type of each data.keep column, from the sampled rows' values (strings as
    large_string; a column with no value among them as large_string too)."""
    out: dict[str, pa.DataType] = {}
    for name in spec.data.keep:
        values = [r.fields[name] for r in rows if r.fields and name in r.fields]
        try:
            typ = pa.array(values).type
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise PlanError(
                [
                    f"data.keep: column {name!r} has values of different types in the first "
                    f"{len(rows):,} rows ({e})"
                ]
            ) from None
        if pa.types.is_null(typ) or pa.types.is_string(typ):
            typ = pa.large_string()
        out[name] = typ
    return out


@dataclass
class PlanReport:
    """What ``raysight plan`` prints: columns, sizes and counts, estimated from a sample of
    ``sampled_rows`` rows when the input has more."""

    architecture: str
    stop_after: str | None
    columns: list[dict[str, Any]]
    input_rows: int
    input_files: int
    sampled_rows: int  # input rows read (usable or not)
    tokenized_rows: int  # usable rows among them, tokenized
    rows_with_errors: int  # unusable rows among the sampled ones
    variants: int
    sweep: dict[str, int]
    pair: list[str]
    rows_per_example: int
    tokens: int  # estimated for the whole input when sampled
    output_rows: int
    bytes_per_row: int
    estimated_bytes: int
    schema: str
    skipped: list[str] = field(default_factory=list)  # modules `cache: "*"` left out, and why

    @property
    def estimated(self) -> bool:
        return self.sampled_rows < self.input_rows


def plan(spec: Spec, sample_rows: int = PLAN_SAMPLE, base_dir: str | Path = ".") -> PlanReport:
    """Plan ``spec`` without loading weights; sizes are estimated from the first
    ``sample_rows`` rows. Raises SpecError, PlanError, DataError, ModelLoadError."""
    meta = load_model(spec.model, meta=True)
    p = prepare(spec, base_dir, sample_rows, loaded=meta)
    rows = p.rows
    if meta.tokenizer is not None and rows:  # one length per model row (window when chunked)
        enc = tokenize(meta.tokenizer, rows, spec.data, p.plan.max_length, [])
        lengths = [len(e.ids) for e in enc]
    else:
        lengths = [1] * len(rows)
    sampled = min(p.total, sample_rows)
    scale = p.total / sampled if sampled else 0.0  # sample -> whole input
    n_var = len(spec.variants)  # every row runs once per sweep variant
    tokens = sum(lengths) * n_var * scale
    per_token = spec.output.layout == "per_token"
    out_rows = tokens if per_token else len(lengths) * n_var * scale
    total_bytes = sum(p.plan.row_bytes(n) for n in lengths) * n_var * scale
    members = spec.data.pair.fields if spec.data.pair else []
    stacked = p.plan.stacked_steps()
    hooks = p.plan.hooks
    return PlanReport(
        architecture=p.plan.architecture or p.plan.model_kind,
        stop_after=hooks.stop_event[1] if hooks.stop_event else None,
        columns=_column_rows(p.plan, stacked),
        input_rows=p.total,
        input_files=len(p.source.files) if p.source is not None else 0,
        sampled_rows=sampled,
        tokenized_rows=len(rows),
        rows_with_errors=len(p.errors),
        variants=n_var,
        sweep={axis: len(axis_values(v)) for axis, v in (spec.sweep or {}).items()},
        pair=members,
        rows_per_example=n_var * max(1, len(members)),
        tokens=round(tokens),
        output_rows=round(out_rows),
        bytes_per_row=round(total_bytes / max(out_rows, 1)),
        estimated_bytes=round(total_bytes),
        schema=p.plan.schema.to_string(show_schema_metadata=False, show_field_metadata=False),
        skipped=list(hooks.skipped),
    )


def _column_rows(plan: Any, stacked: dict[str, int]) -> list[dict[str, Any]]:
    """The saved columns, each column of vocabulary ids followed by its decoded strings."""
    out = []
    for c in plan.columns:
        shape = [("steps" if c.name in stacked else "tokens") if d is None else d for d in c.shape]
        out.append({"name": c.name, "site": c.site, "dtype": c.dtype, "shape": shape})
        if c.vocab and plan.spec.output.decode_tokens:
            row = {"name": strings_name(c.name), "site": f"{c.name}, decoded", "dtype": "string"}
            out.append({**row, "shape": shape})
    return out
