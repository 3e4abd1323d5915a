"""Generation: raysight vs an HF ``generate`` loop with a hook, on the same mixed-length prompts.

Each method runs in its own fresh Python process (sharing one skewed a ratio 6x, FACTS.md), on
SmolLM2-135M (bundled), greedy, --new tokens per prompt, at most --batch rows a batch, saving the
last token's residual stream of --layer at every step:

(a) HF loop: what a user writes. Batches of --batch prompts in input order, left-padded by the
    tokenizer, a forward hook on the layer that keeps the last position each step, and
    ``model.generate``. Only the loop is timed (the model is loaded first).
(b) raysight, in-process (``execution.runner: local``), ``execution.max_batch_rows: --batch``,
    ``execution.self_check: --self-check`` (0: no rows rerun alone; the default, 2, reruns two),
    once per --max-padding value. Timed twice: the shard's own seconds (its manifest entry:
    reading, tokenizing, generating, writing; what batching changes), and the whole call with
    model load and planning (the fixed cost, issue 15's start-up item).

``--old-src DIR`` also runs (b) from another raysight checkout (e.g. a git worktree of an earlier
commit), for a before/after table.

    python benchmarks/generation.py [--prompts 24] [--new 16] [--batch 8] [--max-padding 0.05 1]
                                    [--repeat 3] [--old-src /tmp/old/src]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from end_to_end import MODEL, make_prompts  # the same mixed-length prompts as benchmark 4


def hf_loop(prompts: list[str], args) -> dict:
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysight.models.bundled import resolve_bundled

    path = str(resolve_bundled(MODEL))
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    kept: list = []
    hook = model.model.layers[args.layer].register_forward_hook(
        lambda mod, inp, out: kept.append((out[0] if isinstance(out, tuple) else out)[:, -1])
    )
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(prompts), args.batch):
            enc = tok(prompts[s : s + args.batch], padding=True, return_tensors="pt")
            model.generate(
                **enc,
                max_new_tokens=args.new,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                temperature=None,
                top_k=None,
                top_p=None,
            )
    secs = time.perf_counter() - t0
    hook.remove()
    return {"loop_s": secs, "steps": len(kept)}


def raysight_run(prompts: list[str], args, max_padding: float) -> dict:
    import time

    import torch

    import raysight

    out = Path(tempfile.mkdtemp(prefix="rs-gen-")) / "o"
    spec = {
        "model": {"path": MODEL},
        "data": {"prompts": prompts},
        "generate": {"max_new_tokens": args.new},
        "ops": [{"save": f"layers.{args.layer}.output", "positions": [-1], "steps": "all"}],
        "output": {"path": str(out)},
        "execution": {
            "runner": "local",
            "max_batch_rows": args.batch,
            "max_padding": max_padding,
            "cpus_per_actor": torch.get_num_threads(),
            "self_check": args.self_check,
        },
    }
    t0 = time.perf_counter()
    raysight.run(spec, log=lambda _: None)
    wall = time.perf_counter() - t0
    shards = json.loads((out / "_manifest.json").read_text())["shards"].values()
    return {
        "loop_s": sum(s["seconds"] for s in shards),
        "wall_s": wall,
        "stages": {k: sum(s["stages"].get(k, 0.0) for s in shards) for k in ("forward",)},
    }


def child(argv: list[str]) -> None:
    args = parse(argv)
    prompts = make_prompts(args.prompts, *(int(x) for x in args.words.split(":")))
    if args.method == "hf":
        res = hf_loop(prompts, args)
    else:
        res = raysight_run(prompts, args, float(args.method.removeprefix("old:")))
    print("RESULT " + json.dumps(res))


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--words", default="4:64", help="prompt length range in words, lo:hi")
    ap.add_argument("--new", type=int, default=16, help="new tokens per prompt")
    ap.add_argument("--batch", type=int, default=8, help="rows per batch at most")
    ap.add_argument("--layer", type=int, default=29)
    ap.add_argument("--max-padding", type=float, nargs="+", default=[0.05, 1.0])
    ap.add_argument("--repeat", type=int, default=1, help="runs of each method, best kept")
    ap.add_argument("--self-check", type=int, default=0, help="execution.self_check (default 2)")
    ap.add_argument("--old-src", help="src/ of another raysight checkout to compare")
    ap.add_argument("--method", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main() -> None:
    args = parse(sys.argv[1:])
    if args.method:
        return child(sys.argv[1:])
    methods = ["hf"] + [str(p) for p in args.max_padding]
    if args.old_src:
        methods += [f"old:{p}" for p in args.max_padding]
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for m in methods:  # each in its own process
            src = args.old_src if m.startswith("old:") else os.environ.get("PYTHONPATH", "")
            proc = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--method", m],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": src or ""},
            )
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                raise SystemExit(f"{m} failed:\n{proc.stderr[-3000:]}")
            res = json.loads(line[0][7:])
            if m not in best or res["loop_s"] < best[m]["loop_s"]:
                best[m] = res
    print(
        f"SmolLM2-135M, {args.prompts} prompts of {args.words} words, {args.new} new tokens, "
        f"batches of at most {args.batch}, self_check {args.self_check}, {os.cpu_count()} cores, "
        f"best of {args.repeat}"
    )
    print("| method | generation s | x HF loop | whole call s |")
    print("|---|---|---|---|")
    hf = best["hf"]["loop_s"]
    print(f"| (a) HF generate loop + hook | {hf:.2f} | 1.00 | - |")
    for key, label in [(str(p), f"(b) raysight, max_padding {p:g}") for p in args.max_padding] + [
        (f"old:{p}", f"(b) before ({args.old_src}), max_padding {p:g}") for p in args.max_padding
    ]:
        if key in best:
            r = best[key]
            print(f"| {label} | {r['loop_s']:.2f} | {r['loop_s'] / hf:.2f} | {r['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
