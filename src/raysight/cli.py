"""The ``raysight`` command: run, validate, plan, submit, verify, inspect, plot, schema.

Precedence: defaults < spec file < ``--set a.b=value``. Expected failures (a bad spec, a bad
output path, a model that cannot load) print a clear message and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import __version__
from .errors import RaysightError
from .log import set_verbosity
from .spec.load import load_spec
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
    ap.add_argument(
        "--version",
        action="version",
        version=f"raysight {__version__} (Python {sys.version.split()[0]})",
    )
    talk = argparse.ArgumentParser(add_help=False)  # on every command, after its name
    loud = talk.add_mutually_exclusive_group()
    loud.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const=-1,
        default=0,
        help="print only warnings and errors (no progress)",
    )
    loud.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const=1,
        help="print debug lines too (each shard's stage times) and leave Ray's and HF's own "
        "logs and progress bars on",
    )
    sub = ap.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[talk])

    p = command("run", help="run a spec and write its dataset")
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
    p = command("validate", help="check a spec (and, unless --no-model, its sites)")
    _add_spec_args(p)
    p.add_argument(
        "--no-model", action="store_true", help="check the spec alone: instant, no torch import"
    )
    p = command("plan", help="resolve sites on the meta model; print schema and sizes")
    _add_spec_args(p)
    p = command("submit", help="run a spec as a Ray job on a cluster and follow its logs")
    _add_spec_args(p)
    p.add_argument("--address", required=True, help="the cluster's dashboard, http://HEAD:8265")
    p.add_argument("--working-dir", default=".", help="directory uploaded with the job")
    p.add_argument("--runtime-env", help="YAML with extra runtime_env fields (env_vars, pip...)")
    p.add_argument("--no-wait", action="store_true", help="submit and return")
    p = command("verify", help="check a dataset against its manifest (exit 1 if not whole)")
    p.add_argument("path", help="output directory")
    p = command("inspect", help="summarise a dataset")
    p.add_argument("path", help="output directory")
    p = command("plot", help="draw a dataset's first plot (logit lens, sweep grid, norms...)")
    p.add_argument("path", help="output directory (or s3:// URI) of a run")
    p.add_argument("-o", "--out", help="image file: .png, .svg, .pdf or .html (default: NAME.png)")
    p.add_argument(
        "--kind",
        default="auto",
        choices=["auto", "grid", "lens", "top", "norms", "text"],
        help="what to draw (auto: chosen from the dataset's manifest)",
    )
    p.add_argument("--row", help="the example_id a per-position plot shows (default: the first)")
    p.add_argument("--rows", type=int, default=8, help="prompts shown side by side (default 8)")
    p = command("schema", help="print the spec's JSON Schema")
    p.add_argument("--indent", type=int, default=2)
    return ap


#: rows `raysight validate` tokenizes: a sample, so validating a large input stays quick
VALIDATE_SAMPLE = 1000


def _plan(spec: Spec, sample_rows: int | None = None) -> Any:
    """The plan report (engine/planning.py), sizes estimated from the first ``sample_rows``."""
    from .engine.planning import PLAN_SAMPLE, plan

    return plan(spec, PLAN_SAMPLE if sample_rows is None else sample_rows)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    set_verbosity(args.verbosity)
    if args.command == "schema":
        print(json.dumps(Spec.model_json_schema(by_alias=True), indent=args.indent))
        return 0
    if args.command in ("verify", "inspect", "plot"):
        return _dataset_command(args)
    from .engine.signals import Interrupted

    try:
        spec = load_spec(args.spec, args.overrides, allow_code=args.allow_code)
        if args.command == "validate" and args.no_model:
            print(f"{args.spec}: spec OK (sites not checked against the model)")
            return 0
        return _dispatch(args, spec)
    except Interrupted as e:  # the run said how to resume
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C before a run started: nothing to clean up
        print("raysight: interrupted", file=sys.stderr)
        return 130
    except RaysightError as e:  # every expected error; anything else is a bug: a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def _dataset_command(args: argparse.Namespace) -> int:
    from .dataset.verify import inspect, verify

    if args.command in ("inspect", "plot"):
        try:
            print(inspect(args.path) if args.command == "inspect" else _plot(args))
        except (FileNotFoundError, OSError, RaysightError) as e:
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


def _plot(args: argparse.Namespace) -> str:
    from pathlib import PurePosixPath

    from .dataset.reader import open_dataset

    ds = open_dataset(args.path)
    chart = ds.plot(kind=args.kind, row=args.row, rows=args.rows)
    out = args.out or f"{PurePosixPath(str(args.path).rstrip('/')).name or 'plot'}.png"
    chart.save(out)
    return f"{out}: {chart.kind} plot of {args.path}"


def _dispatch(args: argparse.Namespace, spec: Spec) -> int:
    if args.verbosity < 1:  # this process loads models: no HF load bars between our lines
        from .models.loading import quiet_hf

        quiet_hf()
    if args.command == "validate":
        info = _plan(spec, VALIDATE_SAMPLE)
        sampled = ""
        if info.estimated:
            sampled = (
                f"; read the first {info.sampled_rows:,} of {info.input_rows:,} rows "
                "(the run checks every row)"
            )
        print(
            f"{args.spec}: OK — {len(info.columns)} column(s) on a {info.architecture} "
            f"model{sampled}"
        )
        return 0
    if args.command == "plan":
        info = _plan(spec)
        stop = info.stop_after or "(runs to the end)"
        print(f"model: {info.architecture}; forward stops after: {stop}")
        print("columns:")
        for c in info.columns:
            print(f"  {c['name']:<28} {c['dtype']:<9} {c['shape']}  <- {c['site']}")
        if info.variants > 1 or info.pair:
            axes = " x ".join(f"{a} {n}" for a, n in info.sweep.items()) or "none"
            pair = f"; pair rows: {', '.join(info.pair)}" if info.pair else ""
            print(
                f"sweep: {axes} = {info.variants} variant(s){pair}; "
                f"{info.rows_per_example} rows per input row, run in the same batches"
            )
        files = f" in {info.input_files:,} file(s)" if info.input_files else ""
        among = f" among the first {info.sampled_rows:,}" if info.estimated else ""
        print(f"input rows: {info.input_rows:,}{files} ({info.rows_with_errors:,} unusable{among})")
        approx = "~" if info.estimated else ""
        print(f"tokens: {approx}{info.tokens:,}, output rows: {approx}{info.output_rows:,}")
        if info.estimated:
            print(f"(tokens, rows and size estimated from the first {info.sampled_rows:,} rows)")
        print(
            f"size: ~{_human(info.bytes_per_row)} per row, ~{_human(info.estimated_bytes)} in all"
        )
        print("schema:\n  " + info.schema.replace("\n", "\n  "))
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
