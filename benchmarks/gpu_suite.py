"""The GPU suite (issue 15): bare forward vs raysight vs an nnsight 0.8 script, on one device.

Every method runs in its own fresh Python process (FACTS.md: sharing one skewed a ratio 6x), on
a random-weight SmolLM2-135M built from its config (the time of a forward does not depend on the
weights' values, and the weights would not travel to a lent machine), --dtype, batches of
--batch rows of exactly --seq tokens:

- bare: the HF base model's forward (``model.model``: no lm_head, which nothing needs), under
  ``torch.inference_mode``, synchronized at the end. The limit.
- raysight: ``raysight.run`` in-process (``runner: local``) saving one layer (``layers.15``) or
  every layer (``cache: layers.*``) per token, to Parquet. Timed by the shard's own seconds from
  its manifest (reading, tokenizing, forward, device-to-host copy, writing: what raysight adds
  to a forward) and, separately, the whole call (model load and planning). bare and nnsight
  tokenize before their timed loop, so raysight alone is charged for tokenizing.
- nnsight: what a user writes today: ``model.trace`` per batch saving the same layers under
  ``torch.no_grad``, the values moved to the host and written with ``pyarrow.parquet`` per
  batch (bf16 as its raw 16 bits).
- early stop: raysight saving ``layers.5`` only, which stops the forward after layer 5.

All layers per token write 30 x the bytes of one, so they run over --batches-all batches.

    python benchmarks/gpu_suite.py --device cuda --dtype bfloat16 --batch 32 --seq 512
    python benchmarks/gpu_suite.py --device cpu --dtype float32 --batch 2 --seq 32 \\
        --batches 2 --batches-all 1                                      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORDS = (
    "interpretability researchers extract activations from every token of a large dataset and "
    "write them to disk so that sparse autoencoders probes and attribution graphs can be "
    "trained later on the residual stream of a language model"
).split()
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def texts(n: int, seq: int) -> list[str]:
    """``n`` texts, each longer than ``seq`` tokens (cut to ``seq`` by every method)."""
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(2 * seq)) for i in range(n)]


def build_model(config_dir: Path, dest: Path, dtype: str) -> None:
    """A random-weight checkpoint (seeded) of the config in ``config_dir``, with its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(config_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(dest)
    for f in TOKENIZER_FILES:
        if (config_dir / f).exists():
            shutil.copy(config_dir / f, dest / f)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _batches(tok, args, n_batches: int) -> list[dict]:
    rows = texts(args.batch * n_batches, args.seq)
    out = []
    for s in range(0, len(rows), args.batch):
        enc = tok(
            rows[s : s + args.batch],
            truncation=True,
            max_length=args.seq,
            padding=True,
            return_tensors="pt",
        )
        out.append(dict(enc))
    return out


def bare(args, n_batches: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    model = model.to(args.device).eval()
    batches = [{k: v.to(args.device) for k, v in b.items()} for b in _batches(tok, args, n_batches)]
    _sync(args.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model.model(**b)
    _sync(args.device)
    return {
        "seconds": time.perf_counter() - t0,
        "tokens": sum(b["attention_mask"].sum().item() for b in batches),
    }


def ops_for(layers: str) -> list[dict]:
    if layers == "all":
        return [{"cache": "layers.*"}]
    if layers == "early":
        return [{"save": "layers.5.output", "as": "h"}]
    return [{"save": "layers.15.output", "as": "h"}]


def raysight_run(args, n_batches: int, layers: str) -> dict:
    import raysight

    out = Path(tempfile.mkdtemp(prefix="rs-gpu-", dir=args.scratch)) / "o"
    rows = texts(args.batch * n_batches, args.seq)
    spec = {
        "model": {"path": str(args.model), "dtype": args.dtype, "device": args.device},
        "data": {"prompts": rows, "max_length": args.seq},
        "ops": ops_for(layers),
        "output": {"path": str(out), "layout": "per_token"},
        "execution": {
            "runner": "local",
            "batch_tokens": args.batch * args.seq,
            "max_batch_rows": args.batch,
            "shard_rows": len(rows),
            "self_check": args.self_check,
        },
    }
    t0 = time.perf_counter()
    summary = raysight.run(spec, log=lambda _: None)
    wall = time.perf_counter() - t0
    shards = json.loads((out / "_manifest.json").read_text())["shards"].values()
    stages: dict[str, float] = {}
    for s in shards:
        for k, v in s["stages"].items():
            stages[k] = stages.get(k, 0.0) + v
    written = sum(s["bytes"] for s in shards)
    shutil.rmtree(out.parent, ignore_errors=True)
    return {
        "seconds": sum(s["seconds"] for s in shards),
        "wall": wall,
        "tokens": summary.tokens,
        "bytes": written,
        "stages": stages,
    }


def nnsight_script(args, n_batches: int, layers: str) -> dict:
    import nnsight
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    lm = nnsight.LanguageModel(
        str(args.model), device_map=args.device, dtype=getattr(torch, args.dtype), dispatch=True
    )
    which = range(len(lm.model.layers)) if layers == "all" else [15]
    out = Path(tempfile.mkdtemp(prefix="nn-gpu-", dir=args.scratch))
    batches = _batches(tok, args, n_batches)
    tokens = written = 0
    _sync(args.device)
    t0 = time.perf_counter()
    for s, enc in enumerate(batches):
        saved: list = []  # appended to inside the trace (a comprehension there sees no locals)
        with torch.no_grad(), lm.trace(enc):
            for i in which:
                saved.append(lm.model.layers[i].output.save())
        mask = enc["attention_mask"].bool()
        cols = {}
        for i, h in zip(which, saved):
            h = h[0] if isinstance(h, tuple) else h
            acts = h[mask.to(h.device)].cpu()
            flat = (acts.view(torch.int16) if acts.dtype == torch.bfloat16 else acts).numpy()
            cols[f"layer_{i}"] = pa.FixedSizeListArray.from_arrays(
                pa.array(flat.reshape(-1)), flat.shape[1]
            )
        pq.write_table(pa.table(cols), out / f"part-{s:06d}.parquet")
        tokens += int(mask.sum())
    _sync(args.device)
    secs = time.perf_counter() - t0
    written = sum(p.stat().st_size for p in out.iterdir())
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": secs, "tokens": tokens, "bytes": written}


def child(args) -> dict:
    kind, _, layers = args.method.partition(":")
    n = args.batches_all if layers == "all" else args.batches
    if kind == "bare":
        return bare(args, n)
    if kind == "raysight":
        return raysight_run(args, n, layers)
    return nnsight_script(args, n, layers)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batches", type=int, default=32, help="batches for bare, one layer, early")
    ap.add_argument("--batches-all", type=int, default=8, help="batches for all layers")
    ap.add_argument("--self-check", type=int, default=2, help="raysight's execution.self_check")
    ap.add_argument(
        "--model-config",
        type=Path,
        help="a directory with SmolLM2's config.json and tokenizer (default: the bundled model's, "
        "as benchmarks/gpu_prepare.sh copies it to .gpu/smollm2-135m for a GPU machine)",
    )
    ap.add_argument("--skip", default="", help="comma-separated methods to leave out: nnsight")
    ap.add_argument("--scratch", default=None, help="where the runs write (default: /tmp)")
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main() -> None:
    args = parse(sys.argv[1:])
    if args.method:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    root = Path(tempfile.mkdtemp(prefix="rs-gpu-model-", dir=args.scratch))
    if args.model_config is None:
        from raysight.models.bundled import resolve_bundled

        args.model_config = Path(resolve_bundled("bundled:smollm2-135m-instruct"))
    build_model(args.model_config, root, args.dtype)
    skip = set(args.skip.split(",")) - {""}
    methods = ["bare", "raysight:one", "raysight:early", "bare:all", "raysight:all"]
    if "nnsight" not in skip:
        methods[2:2] = ["nnsight:one"]
        methods.append("nnsight:all")
    res = {}
    for m in methods:  # each in its own process
        proc = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--model", str(root), "--method", m],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{m}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        res[m] = json.loads(line[0][7:])
        print(f"{m}: {res[m]}", file=sys.stderr, flush=True)
    shutil.rmtree(root, ignore_errors=True)
    report(args, res)


def report(args, res: dict) -> None:
    print(
        f"SmolLM2-135M (random weights), {args.device}, {args.dtype}, batches of {args.batch} x "
        f"{args.seq} tokens ({args.batches} batches; all layers {args.batches_all}), "
        f"raysight self_check {args.self_check}, one process per method"
    )
    print(
        "| method | layers | seconds | tokens/s | GB written | x bare | x nnsight | whole call s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for m, r in res.items():
        kind, _, layers = m.partition(":")
        layers = layers or "none"
        tps = r["tokens"] / r["seconds"]
        base = res.get("bare:all" if layers == "all" else "bare")
        nn = res.get(f"nnsight:{layers}")
        xb = f"{r['seconds'] / base['seconds']:.2f}" if base else "-"
        xn = f"{r['seconds'] / nn['seconds']:.2f}" if nn else "-"
        gb = f"{r['bytes'] / 1e9:.2f}" if "bytes" in r else "-"
        wall = f"{r['wall']:.1f}" if "wall" in r else "-"
        print(
            f"| {kind} | {layers} | {r['seconds']:.2f} | {tps:,.0f} | {gb} | {xb} | {xn} | {wall} |"
        )
    for m, r in res.items():
        if "stages" in r:
            total = sum(r["stages"].values()) or 1.0
            parts = ", ".join(f"{k} {v / total:.0%}" for k, v in r["stages"].items() if v)
            print(f"{m} stages: {parts}")


if __name__ == "__main__":
    main()
