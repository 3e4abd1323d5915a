"""The ``raysight`` command: run, validate, plan, submit, verify, inspect, plot, export, modules,
examples, schema.

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
    ap = argparse.ArgumentParser(prog="raysight", description=__doc__.split("\n\n")[0])
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
    p.add_argument(
        "--session",
        metavar="NAME",
        help="run on the warm actors of the running session NAME (see `raysight session`)",
    )
    p = command(
        "session",
        help="start a named warm session: Ray actors that keep the model loaded between runs "
        "(`raysight run SPEC --session NAME`), until Ctrl-C or SIGTERM",
    )
    p.add_argument("name", help="the session's name: letters, digits, - and _")
    p.add_argument(
        "--model", required=True, help="model.path: a directory, bundled:NAME, or a hub id"
    )
    p.add_argument("--actors", type=int, default=1, help="model replicas (default 1)")
    p.add_argument("--cpus-per-actor", type=int, default=1, help="CPU cores each (default 1)")
    p.add_argument("--gpus-per-actor", type=float, default=0, help="GPUs each (default 0)")
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
    p = command("export", help="write a dataset's column in another tool's layout (SAELens)")
    p.add_argument("format", choices=["saelens"], help="saelens: its cached-activations layout")
    p.add_argument("path", help="output directory (or s3:// URI) of a run")
    p.add_argument("dest", help="new directory to write (SAELens' cached_activations_path)")
    p.add_argument("--column", required=True, help="the saved column of per-token activations")
    p.add_argument(
        "--hook-name",
        help="the column's name there (SAELens' hook_name; default: the column's name)",
    )
    p.add_argument(
        "--context-size",
        type=int,
        help="tokens per context (default: the window size of a data.chunk run with "
        "last: drop; needed for per-token and other variable-length columns)",
    )
    p.add_argument(
        "--no-token-ids",
        action="store_true",
        help="leave out token_ids (needed when the column saved only some positions)",
    )
    p = command("modules", help="print a model's module tree, standardized names and shapes")
    p.add_argument("model", help="model.path: a directory, bundled:NAME, or a hub id in the cache")
    p.add_argument("--tokens", type=int, default=8, help="prompt length for the shapes (default 8)")
    p = command("examples", help="list the example specs, print one, or copy them to run")
    p.add_argument("names", nargs="*", metavar="NAME", help="examples to print (or to copy)")
    p.add_argument(
        "--copy",
        metavar="DIR",
        help="copy the examples (default: all) and their data files to DIR/specs; then, in "
        "DIR: raysight run specs/NAME.yaml",
    )
    p.add_argument("--force", action="store_true", help="with --copy: overwrite changed files")
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
    if args.command in ("verify", "inspect", "plot", "export"):
        return _dataset_command(args)
    if args.command == "examples":
        return _examples(args)
    if args.command == "modules":
        return _modules(args)
    if args.command == "session":
        return _serve(args)
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

    if args.command in ("inspect", "plot", "export"):
        show = {"inspect": lambda a: inspect(a.path), "plot": _plot, "export": _export}
        try:
            print(show[args.command](args))
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


def _serve(args: argparse.Namespace) -> int:
    from .engine.session import serve

    try:
        serve(
            args.name,
            args.model,
            args.actors,
            args.cpus_per_actor,
            args.gpus_per_actor,
            args.address,
            say=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except RaysightError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _modules(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .spec.models import ModelSpec

    try:
        model = ModelSpec(path=args.model)
    except ValidationError as e:
        print(f"error: model {args.model!r}: {e.errors()[0]['msg']}", file=sys.stderr)
        return 2
    try:
        from .interleave.describe import describe_modules
        from .models.loading import load_model, quiet_hf

        if args.verbosity < 1:
            quiet_hf()
        print(describe_modules(load_model(model, meta=True), max(1, args.tokens)))
    except (OSError, RaysightError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _examples(args: argparse.Namespace) -> int:
    from .spec.examples import copy_examples, examples

    try:
        if args.copy:
            written = copy_examples(args.copy, args.names, force=args.force)
            print(f"{len(written)} file(s) written to {args.copy}/specs (unchanged ones skipped)")
            first = (args.names or ["quickstart"])[0].removesuffix(".yaml")
            print(f"then: cd {args.copy} && raysight run specs/{first}.yaml")
            return 0
        known = {e.name: e for e in examples()}
        if not args.names:
            for e in known.values():
                print(f"{e.name:<24} {e.summary}")
            print("\nraysight examples NAME prints one; --copy DIR copies them to run")
            return 0
        wanted = [n.removesuffix(".yaml") for n in args.names]
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise RaysightError(
                f"no example {', '.join(map(repr, unknown))}; the examples are {', '.join(known)}"
            )
        for name in wanted:
            print(known[name].text, end="")
        return 0
    except (OSError, RaysightError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _export(args: argparse.Namespace) -> str:
    from .dataset.export import export_saelens

    return str(
        export_saelens(
            args.path,
            args.dest,
            args.column,
            hook_name=args.hook_name,
            context_size=args.context_size,
            token_ids=not args.no_token_ids,
        )
    )


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
        if info.skipped:
            print(f"left out ({len(info.skipped)}):")
            for line in info.skipped:
                print(f"  {line}")
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
    if args.session:
        if args.local:
            raise RaysightError("--session runs on the session's Ray actors: drop --local")
        from .engine.session import session

        with session(name=args.session, address=args.address) as s:
            s.run(spec, overwrite=args.overwrite)
        return 0
    if args.local:
        spec = spec.model_copy(
            update={"execution": spec.execution.model_copy(update={"runner": "local"})}
        )
    from .engine.connect import start_early

    start_early(spec, args.address, args.overwrite)  # Ray starts while the engine imports
    from .engine.run import run

    run(spec, overwrite=args.overwrite, address=args.address)  # logs progress to stderr
    return 0


if __name__ == "__main__":
    sys.exit(main())
