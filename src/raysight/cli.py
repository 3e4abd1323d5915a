"""The ``raysight`` command: run, validate, plan, schema.

Precedence: defaults < spec file < ``--set a.b=value``. Expected failures (a bad spec, a bad
output path, a model that cannot load) print a clear message and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .spec.load import SpecError, load_spec
from .spec.models import Spec

__all__ = ["main"]


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="spec file (.yaml / .yml / .json)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, e.g. --set output.path=out/x (repeatable)",
    )
    p.add_argument(
        "--allow-code",
        action="store_true",
        help="let the spec import and run code: model.factory and model.trust_remote_code "
        "(refused without this flag; see docs/security.md)",
    )


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="raysight", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run a spec and write its dataset")
    _add_spec_args(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a dataset of a different spec at output.path",
    )
    p.add_argument(
        "--local",
        action="store_true",
        help="run in this process instead of a Ray actor (execution.runner=local)",
    )
    p.add_argument("--address", help="Ray address to join (default: RAY_ADDRESS, else local Ray)")
    p = sub.add_parser("validate", help="check a spec (and, unless --no-model, its sites)")
    _add_spec_args(p)
    p.add_argument(
        "--no-model", action="store_true", help="check the spec alone: instant, no torch import"
    )
    p = sub.add_parser("plan", help="resolve sites on the meta model; print schema and sizes")
    _add_spec_args(p)
    p = sub.add_parser("submit", help="run a spec as a Ray job on a cluster and follow its logs")
    _add_spec_args(p)
    p.add_argument("--address", required=True, help="the cluster's dashboard, http://HEAD:8265")
    p.add_argument("--working-dir", default=".", help="directory uploaded with the job")
    p.add_argument("--runtime-env", help="YAML with extra runtime_env fields (env_vars, pip...)")
    p.add_argument("--no-wait", action="store_true", help="submit and return")
    p = sub.add_parser("verify", help="check a dataset against its manifest (exit 1 if not whole)")
    p.add_argument("path", help="output directory")
    p = sub.add_parser("inspect", help="summarise a dataset")
    p.add_argument("path", help="output directory")
    p = sub.add_parser("schema", help="print the spec's JSON Schema")
    p.add_argument("--indent", type=int, default=2)
    return ap


def _expected_errors() -> tuple[type[BaseException], ...]:
    from .data.readers import DataError
    from .engine.ray_runner import ClusterError
    from .engine.run import OutputError, RunFailed
    from .interleave.interleaver import OpError
    from .interleave.resolve import PlanError
    from .interleave.values import ValueError_
    from .models.bundled import BundledError
    from .models.loading import ModelLoadError

    return (
        DataError,
        ClusterError,
        OutputError,
        OpError,
        PlanError,
        ValueError_,
        ModelLoadError,
        BundledError,
        RunFailed,
    )


#: rows `raysight validate` tokenizes: a sample, so validating a large input stays quick
VALIDATE_SAMPLE = 1000


def _plan(spec: Spec, sample_rows: int | None = None) -> dict[str, Any]:
    """Plan on the meta model; tokenize every row, or the first ``sample_rows``."""
    import pyarrow as pa

    from .data.batching import encode
    from .data.readers import id_type, read_rows, tensor_sample
    from .engine.plan import make_plan
    from .models.loading import load_model
    from .spec.sweep import axis_values
    from .spec.variants import token_fields

    rows, bad, total = read_rows(spec.data, keep=token_fields(spec))
    meta = load_model(spec.model, meta=True)
    sample = tensor_sample(spec.data, rows)
    plan = make_plan(spec, sample, pa.type_for_alias(id_type(rows)), loaded=meta)
    rows = rows[:sample_rows] if sample_rows is not None else rows
    if meta.tokenizer is not None and rows:
        lengths = [
            len(e.ids)
            for e in encode(meta.tokenizer, rows, plan.max_length, spec.data.add_special_tokens)
        ]
    else:
        lengths = [1] * len(rows)
    n_var = len(spec.variants)  # every row runs once per sweep variant
    tokens = sum(lengths) * n_var
    per_token = spec.output.layout == "per_token"
    out_rows = tokens if per_token else len(lengths) * n_var
    total_bytes = sum(plan.row_bytes(n) for n in lengths) * n_var
    members = spec.data.pair.fields if spec.data.pair else []
    stacked = plan.stacked_steps()
    return {
        "model": {"kind": plan.model_kind, "architecture": plan.architecture},
        "stop_after": plan.hooks.stop_event[1] if plan.hooks.stop_event else None,
        "columns": [
            {
                "name": c.name,
                "site": c.site,
                "dtype": c.dtype,
                "shape": [
                    ("steps" if c.name in stacked else "tokens") if d is None else d
                    for d in c.shape
                ],
            }
            for c in plan.columns
        ],
        "input_rows": total,
        "tokenized_rows": len(rows),
        "variants": n_var,
        "sweep": {axis: len(axis_values(v)) for axis, v in (spec.sweep or {}).items()},
        "pair": members,
        "rows_per_example": n_var * max(1, len(members)),
        "rows_with_errors": len(bad),
        "tokens": tokens,
        "output_rows": out_rows,
        "bytes_per_row": round(total_bytes / max(out_rows, 1)),
        "estimated_bytes": round(total_bytes),
        "schema": plan.schema.to_string(show_schema_metadata=False, show_field_metadata=False),
    }


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "schema":
        print(json.dumps(Spec.model_json_schema(by_alias=True), indent=args.indent))
        return 0
    if args.command in ("verify", "inspect"):
        return _dataset_command(args)
    from .engine.signals import Interrupted

    try:
        spec = load_spec(args.spec, args.overrides, allow_code=args.allow_code)
        if args.command == "validate" and args.no_model:
            print(f"{args.spec}: spec OK (sites not checked against the model)")
            return 0
        return _dispatch(args, spec)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # the run said how to resume
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C before a run started: nothing to clean up
        print("raysight: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if isinstance(e, _expected_errors()):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


def _dataset_command(args: argparse.Namespace) -> int:
    from .engine.verify import inspect, verify
    from .writers.manifest import ManifestError

    if args.command == "inspect":
        try:
            print(inspect(args.path))
        except (FileNotFoundError, ManifestError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    problems = verify(args.path)
    for p in problems:
        print(f"MISMATCH: {p}")
    if problems:
        print(f"{args.path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.path}: OK — every shard done, rows match the manifest, no duplicates or orphans")
    return 0


def _dispatch(args: argparse.Namespace, spec: Spec) -> int:
    if args.command == "validate":
        info = _plan(spec, VALIDATE_SAMPLE)
        sampled = ""
        if info["tokenized_rows"] < info["input_rows"] - info["rows_with_errors"]:
            sampled = (
                f"; tokenized the first {info['tokenized_rows']:,} of {info['input_rows']:,} "
                "rows (the run checks every row)"
            )
        print(
            f"{args.spec}: OK — {len(info['columns'])} column(s) on a "
            f"{info['model']['architecture'] or info['model']['kind']} model{sampled}"
        )
        return 0
    if args.command == "plan":
        info = _plan(spec)
        print(
            f"model: {info['model']['architecture'] or info['model']['kind']}; forward stops "
            f"after: {info['stop_after'] or '(runs to the end)'}"
        )
        print("columns:")
        for c in info["columns"]:
            print(f"  {c['name']:<28} {c['dtype']:<9} {c['shape']}  <- {c['site']}")
        if info["variants"] > 1 or info["pair"]:
            axes = " x ".join(f"{a} {n}" for a, n in info["sweep"].items()) or "none"
            pair = f"; pair rows: {', '.join(info['pair'])}" if info["pair"] else ""
            print(
                f"sweep: {axes} = {info['variants']} variant(s){pair}; "
                f"{info['rows_per_example']} rows per input row, run in the same batches"
            )
        print(
            f"input rows: {info['input_rows']} ({info['rows_with_errors']} unusable), "
            f"tokens: {info['tokens']}, output rows: {info['output_rows']}"
        )
        print(
            f"size: ~{_human(info['bytes_per_row'])} per row, "
            f"~{_human(info['estimated_bytes'])} in all"
        )
        print("schema:\n  " + info["schema"].replace("\n", "\n  "))
        return 0
    if args.command == "submit":
        from .engine.submit import submit

        return submit(
            args.spec,
            args.address,
            args.overrides,
            args.working_dir,
            args.runtime_env,
            wait=not args.no_wait,
            allow_code=args.allow_code,
        )
    from .engine.run import run

    if args.local:
        spec = spec.model_copy(
            update={"execution": spec.execution.model_copy(update={"runner": "local"})}
        )
    run(spec, overwrite=args.overwrite, address=args.address)  # logs progress to stderr
    return 0


if __name__ == "__main__":
    sys.exit(main())
