"""Start-up (issue 15): the fixed cost of a quickstart, each method in its own fresh process,
interleaved over --repeat rounds (best and median reported). The model files are converted and
cached before the first round, so no method pays the one-time conversion.

(a) script: a Python process that imports torch and transformers, loads SmolLM2-135M and runs
    the quickstart's eight prompts in one padded forward: the floor for doing the job at all.
(b) ``raysight run specs/quickstart.yaml`` on a fresh local Ray (the README's quickstart).
(c) the same with ``--local`` (in this process, no Ray).
(d) ``raysight.run(spec)`` in a Python process, in-process: the call alone (after
    ``import raysight``), which is what a notebook waits for the first time.

"fixed" is the wall time less the shard's own seconds (the manifest's: reading, tokenizing,
the forwards, writing), so it is what start-up costs beyond the work. ``--old-src DIR`` adds
(b)-(d) run from another checkout's src/ (a worktree of an earlier commit).

    python benchmarks/startup.py [--repeat 3] [--old-src /tmp/old/src]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "quickstart.yaml"
BIN = Path(sys.executable).parent


def _script() -> None:
    t0 = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysight.models.bundled import resolve_bundled

    path = str(resolve_bundled("bundled:smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    rows = [json.loads(x) for x in (ROOT / "specs/data/prompts.jsonl").read_text().splitlines()]
    batch = tok([r["text"] for r in rows], return_tensors="pt", padding=True)
    with torch.inference_mode():
        model(**batch, output_hidden_states=True)
    print(f"RESULT {time.perf_counter() - t0}")


def _api(out: str) -> None:
    import raysight

    spec = raysight.load_spec(str(SPEC), [f"output.path={out}", "execution.runner=local"])
    t0 = time.perf_counter()
    raysight.run(spec, log=lambda _: None)
    print(f"RESULT {time.perf_counter() - t0}")


def _shard_seconds(out: Path) -> float:
    manifest = json.loads((out / "_manifest.json").read_text())
    return sum(s["seconds"] for s in manifest["shards"].values())


def _one(method: str, src: Path, tmp: Path) -> tuple[float, float]:
    """(wall seconds, the shard's own seconds) of one fresh process."""
    out = tmp / f"{method}-{time.monotonic_ns()}"
    env = {**os.environ, "PYTHONPATH": str(src)}
    if method == "script":
        cmd = [sys.executable, __file__, "--method", "script"]
    elif method == "api":
        cmd = [sys.executable, __file__, "--method", "api", "--out", str(out)]
    else:
        cmd = [sys.executable, "-m", "raysight.cli", "run", str(SPEC)]
        cmd += ["--set", f"output.path={out}", *(["--local"] if method == "local" else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{method} ({src}) failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if line:  # the timed part of the process, not its interpreter start and exit
        wall = float(line[0].split()[1])
    return wall, (0.0 if method == "script" else _shard_seconds(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--old-src", type=Path)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method == "script":
        return _script()
    if args.method == "api":
        return _api(args.out)
    from raysight.models.bundled import resolve_bundled

    resolve_bundled("bundled:smollm2-135m-instruct")  # converted once, before any timing
    srcs = {"now": ROOT / "src"}
    if args.old_src:
        srcs["before"] = args.old_src.resolve()
    runs = [("script", "now")] + [(m, s) for s in srcs for m in ("ray", "local", "api")]
    times: dict[tuple[str, str], list[tuple[float, float]]] = {r: [] for r in runs}
    with tempfile.TemporaryDirectory(prefix="rs-startup-") as tmp:
        for _ in range(args.repeat):
            for method, src in runs:
                times[method, src].append(_one(method, srcs[src], Path(tmp)))
    names = {
        "script": "(a) script: import, load, one forward",
        "ray": "(b) `raysight run`, fresh local Ray",
        "local": "(c) `raysight run --local`",
        "api": "(d) `raysight.run(spec)` in-process, the call",
    }
    print(f"quickstart (8 prompts, SmolLM2-135M), {args.repeat} rounds, {os.cpu_count()} cores")
    print("| method | code | wall s (best) | wall s (median) | shard s | fixed s (best) |")
    print("|---|---|---|---|---|---|")
    for method, src in runs:
        t = times[method, src]
        best = min(t)
        med = statistics.median(w for w, _ in t)
        code = "-" if method == "script" else src
        print(
            f"| {names[method]} | {code} | {best[0]:.2f} | {med:.2f} | {best[1]:.2f} | "
            f"{best[0] - best[1]:.2f} |"
        )


if __name__ == "__main__":
    main()
