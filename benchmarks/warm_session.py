"""Warm sessions (issue 15): what a one-prompt run costs once the model is loaded, against the
bare forward of that prompt, each measured in its own fresh process.

(a) bare: SmolLM2-135M (bundled) loaded with transformers, the prompt's forward timed --repeat
    times after one warm-up (the median), as an nnsight user's trace after the model is loaded.
(b) ``raysight.session()``: the first run (which loads the model), then --repeat more runs of
    the same one-prompt spec, each to a new output directory (median). Every run is a whole run:
    output directory, lock, resolved spec, plan, shard file, manifest, error report.
(c) ``raysight.session(model=..., actors=1)``: the same runs on one Ray actor that keeps the
    model (a local Ray the session starts; creating the session, its actor loading the model, is
    timed apart from the runs).
(d) ``raysight session NAME`` served in another process, and ``raysight run SPEC --session
    NAME`` run --repeat times, each a fresh process (its wall time: Python, imports, planning,
    the run on the warm actor).

    python benchmarks/warm_session.py [--repeat 5] [--self-check 0]
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

MODEL = "bundled:smollm2-135m-instruct"
PROMPT = "The Eiffel Tower is in the city of"


def bare(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysight.models.bundled import resolve_bundled

    path = str(resolve_bundled(MODEL))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = tok(PROMPT, return_tensors="pt")
    times = []
    with torch.inference_mode():
        for _ in range(args.repeat + 1):
            t0 = time.perf_counter()
            model(**ids)
            times.append(time.perf_counter() - t0)
    return {"forward_s": statistics.median(times[1:])}


def warm(args) -> dict:
    import raysight

    root = Path(tempfile.mkdtemp(prefix="rs-warm-"))

    def spec(i: int) -> dict:
        return {
            "model": {"path": MODEL},
            "data": {"prompts": [PROMPT]},
            # the logits: the whole forward runs, as in (a) (a middle layer would stop early)
            "ops": [{"save": "logits", "positions": [-1], "as": "h"}],
            "output": {"path": str(root / f"o{i}")},
            "execution": {"self_check": args.self_check},
        }

    times = []
    t0 = time.perf_counter()
    on_ray = {"model": MODEL, "actors": 1, "cpus_per_actor": os.cpu_count() or 1}
    with raysight.session(**(on_ray if args.method == "ray" else {})) as s:
        start = time.perf_counter() - t0
        for i in range(args.repeat + 1):
            t0 = time.perf_counter()
            s.run(spec(i), log=lambda _: None)
            times.append(time.perf_counter() - t0)
    return {
        "start_s": start,
        "first_s": times[0],
        "next_s": statistics.median(times[1:]),
        "all": times,
    }


def attached(args) -> dict:
    """(d): a served session, and the CLI attaching to it from fresh processes."""
    from raysight.engine.session import session_file

    root = Path(tempfile.mkdtemp(prefix="rs-attach-"))
    name = f"bench{os.getpid()}"
    record = session_file(name)
    cli = [sys.executable, "-m", "raysight.cli"]
    cores = str(os.cpu_count() or 1)
    serve = subprocess.Popen(
        [*cli, "session", name, "--model", MODEL, "--cpus-per-actor", cores],
        stderr=subprocess.DEVNULL,
    )
    try:
        t0 = time.perf_counter()
        while not record.exists():
            if serve.poll() is not None or time.perf_counter() - t0 > 300:
                raise SystemExit("the session did not start")
            time.sleep(0.2)
        spec = {
            "model": {"path": MODEL},
            "data": {"prompts": [PROMPT]},
            "ops": [{"save": "logits", "positions": [-1], "as": "h"}],
            "output": {"path": ""},
            "execution": {"self_check": args.self_check},
        }
        times = []
        for i in range(args.repeat):
            spec["output"]["path"] = str(root / f"o{i}")
            (root / "spec.json").write_text(json.dumps(spec))
            t0 = time.perf_counter()
            proc = subprocess.run(
                [*cli, "run", "-q", str(root / "spec.json"), "--session", name],
                capture_output=True,
                text=True,
            )
            times.append(time.perf_counter() - t0)
            if proc.returncode:
                raise SystemExit(f"attached run failed:\n{proc.stderr[-3000:]}")
    finally:
        serve.terminate()
        serve.wait(60)
    return {"next_s": statistics.median(times), "all": times}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--self-check", type=int, default=0)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method:
        run = {"bare": bare, "warm": warm, "ray": warm, "attach": attached}[args.method]
        print("RESULT " + json.dumps(run(args)))
        return
    res = {}
    for m in ("bare", "warm", "ray", "attach"):  # each in its own process
        proc = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--method", m], capture_output=True, text=True
        )
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            raise SystemExit(f"{m} failed:\n{proc.stderr[-3000:]}")
        res[m] = json.loads(line[0][7:])
    f, w = res["bare"]["forward_s"], res["warm"]
    goal = f + 0.05  # issue 15: a second run within 1.3x (bare forward + 50 ms)
    print(f"SmolLM2-135M, one prompt, self_check {args.self_check}, median of {args.repeat}")
    print("| what | seconds | x (bare + 50 ms) |")
    print("|---|---|---|")
    print(f"| (a) bare forward, model loaded | {f:.3f} | - |")
    first = w["first_s"]
    print(f"| (b) session, first run (loads the model) | {first:.2f} | {first / goal:.1f} |")
    print(f"| (b) session, next runs | {w['next_s']:.3f} | {w['next_s'] / goal:.2f} |")
    r, a = res["ray"], res["attach"]
    print(f"| (c) Ray session: Ray, the actor, its model | {r['start_s']:.2f} | - |")
    print(f"| (c) Ray session, first run | {r['first_s']:.2f} | {r['first_s'] / goal:.1f} |")
    print(f"| (c) Ray session, next runs | {r['next_s']:.3f} | {r['next_s'] / goal:.2f} |")
    print(f"| (d) `raysight run --session`, a process each | {a['next_s']:.2f} | - |")


if __name__ == "__main__":
    main()
