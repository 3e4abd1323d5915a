"""Expressions: what directional ablation at every layer costs, as an expression, against the
plain-hook script a user writes for it and a bare forward.

Each method runs in its own fresh Python process (sharing one skewed a ratio 6x, FACTS.md), on
SmolLM2-135M (bundled), the same mixed-length prompts as benchmark 4, batches of --batch rows:

(a) bare forward: the prompts, left-padded, through the model; nothing hooked or saved.
(b) plain hooks: a forward hook on each of the 30 layers computing ``h - (h @ u) u`` on the
    whole padded batch (what a hand-written script does), and the last token's logits kept.
(c) raysight, in-process: ``set: layers.*.output, value: {expr: "ablate(x, d)"}`` (evaluated
    per row, on the row's own tokens) and a save of the last token's logits.
(d) raysight with the same ops but ``value: {file: d.npy}, mode: add`` (a built-in set, batched
    at once): what the per-row evaluation of an expression adds over a built-in value.

Only the batches are timed for (a)/(b); for (c)/(d) the shard's own seconds from the manifest
(reading, tokenizing, forward, writing), with self_check 0.

    python benchmarks/expressions.py [--prompts 64] [--batch 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from end_to_end import MODEL, make_prompts  # the same mixed-length prompts as benchmark 4


def _direction(path: Path) -> Path:
    import numpy as np

    d = np.random.default_rng(0).standard_normal(576).astype(np.float32)
    np.save(path / "d.npy", d / np.linalg.norm(d))
    return path / "d.npy"


def plain(prompts: list[str], args, hooked: bool) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysight.models.bundled import resolve_bundled

    path = str(resolve_bundled(MODEL))
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    u = torch.from_numpy(np.load(_direction(Path(tempfile.mkdtemp()))))

    def ablate(mod, inp, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h - (h @ u)[..., None] * u
        return (h, *out[1:]) if isinstance(out, tuple) else h

    if hooked:
        for layer in model.model.layers:
            layer.register_forward_hook(ablate)
    kept = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(prompts), args.batch):
            enc = tok(prompts[s : s + args.batch], padding=True, return_tensors="pt")
            kept.append(model(**enc).logits[:, -1])
    return {"loop_s": time.perf_counter() - t0}


def raysight_run(prompts: list[str], args, expr: bool) -> dict:
    import raysight

    tmp = Path(tempfile.mkdtemp())
    d = str(_direction(tmp))
    value = {"expr": "ablate(x, d)", "let": {"d": {"file": d}}} if expr else {"file": d}
    set_op = {"set": "layers.*.output", "value": value}
    if not expr:
        set_op["mode"] = "add"
    spec = {
        "model": {"path": MODEL},
        "data": {"prompts": prompts},
        "ops": [set_op, {"save": "logits[:, -1]", "as": "last"}],
        "output": {"path": str(tmp / "out")},
        "execution": {"runner": "local", "max_batch_rows": args.batch, "self_check": 0},
    }
    raysight.run(spec, log=lambda _: None)
    manifest = json.loads((tmp / "out" / "_manifest.json").read_text())
    return {"loop_s": sum(s["seconds"] for s in manifest["shards"].values())}


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--words", default="4:64", help="prompt length range in words, lo:hi")
    ap.add_argument("--batch", type=int, default=16, help="rows per batch at most")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each method, best kept")
    ap.add_argument("--method", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


METHODS = {
    "bare": ("(a) bare forward", lambda p, a: plain(p, a, hooked=False)),
    "hooks": ("(b) plain hooks, batched", lambda p, a: plain(p, a, hooked=True)),
    "expr": ("(c) raysight, expression ablate(x, d)", lambda p, a: raysight_run(p, a, True)),
    "file": ("(d) raysight, built-in file value (add)", lambda p, a: raysight_run(p, a, False)),
}


def main() -> None:
    args = parse(sys.argv[1:])
    prompts = make_prompts(args.prompts, *(int(x) for x in args.words.split(":")))
    if args.method:
        print("RESULT " + json.dumps(METHODS[args.method][1](prompts, args)))
        return
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for m in METHODS:  # each in its own process
            proc = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--method", m],
                capture_output=True,
                text=True,
                env=os.environ,
            )
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                raise SystemExit(f"{m} failed:\n{proc.stderr[-3000:]}")
            s = json.loads(line[0][7:])["loop_s"]
            best[m] = min(best.get(m, s), s)
    print(
        f"SmolLM2-135M, {args.prompts} prompts of {args.words} words, batches of at most "
        f"{args.batch}, all 30 layers ablated, {os.cpu_count()} cores, best of {args.repeat}"
    )
    print("| method | s | x bare forward | x plain hooks |")
    print("|---|---|---|---|")
    for m, (label, _) in METHODS.items():
        print(
            f"| {label} | {best[m]:.2f} | {best[m] / best['bare']:.2f} | "
            f"{best[m] / best['hooks']:.2f} |"
        )


if __name__ == "__main__":
    main()
