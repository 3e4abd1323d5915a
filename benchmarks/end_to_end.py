"""End to end: extract one layer per token from --prompts prompts of mixed lengths.

Four ways, measured in one run, on the same prompts and the same torch threads:

(a) bare: raysight's own batches (tokenized and packed the same way) through the HF base model
    (``model.model``: no lm_head, which nothing needs), nothing saved. The limit.
(b) nnsight script: what a user writes today. Fixed batches of --script-batch prompts in input
    order, ``tokenizer(padding=True)``, ``model.trace`` saving the layer under ``torch.no_grad``,
    padding cut with the mask, float16, one ``pyarrow.parquet.write_table`` (defaults) per batch.
(c) ``raysight.run`` in this process (``execution.runner: local``): the whole command, from the
    spec to committed, fsynced files, model loading and planning included.
(d) ``raysight.run`` on a local Ray actor (the default runner), Ray start-up included.

(a) and (b) time their loop only (model already loaded, as a user would time them); (c) and (d)
are wall clock for the whole call, and also reported by the sum of their shards' stage times.

    python benchmarks/end_to_end.py [--prompts 2000] [--layer 29] [--words 4:64]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

WORDS = (
    "interpretability researchers extract activations from every token of a large dataset and "
    "write them to disk so that sparse autoencoders probes and attribution graphs can be "
    "trained later on the residual stream of a language model"
).split()
MODEL = "bundled:smollm2-135m-instruct"


def make_prompts(n: int, lo: int, hi: int) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def spec_for(prompts: list[str], layer: int, out: Path, runner: str, args) -> dict:
    return {
        "model": {"path": MODEL},
        "data": {"prompts": prompts},
        "ops": [{"save": f"layers.{layer}.output", "as": "h", "dtype": "float16"}],
        "output": {"path": str(out), "layout": "per_token", "format": args.format},
        "execution": {
            "runner": runner,
            "cpus_per_actor": torch.get_num_threads(),
            "batch_tokens": args.batch_tokens,
            "shard_rows": args.shard_rows,
            "max_padding": args.max_padding,
        },
    }


def bare(path: str, prompts: list[str], args) -> tuple[float, int, int]:
    """(a): raysight's batches through the base model, nothing saved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysight.data.batching import collate, encode, pack
    from raysight.data.readers import Row

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    batches = []
    for s in range(0, len(prompts), args.shard_rows):
        rows = [Row(i, i, p) for i, p in enumerate(prompts[s : s + args.shard_rows], s)]
        items = encode(tok, rows, 2**31, True)
        for group in pack([len(e.ids) for e in items], args.batch_tokens, 256, args.max_padding):
            batches.append(collate([items[i] for i in group], tok.pad_token_id, "right", True))
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model.model(**b.inputs)
    secs = time.perf_counter() - t0
    return (
        secs,
        sum(sum(b.lengths) for b in batches),
        sum(b.size * b.padded_length for b in batches),
    )


def nnsight_script(path: str, prompts: list[str], layer: int, out: Path, args):
    """(b): the loop a user writes with nnsight 0.8 and pyarrow defaults."""
    import nnsight
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    lm = nnsight.LanguageModel(path, device_map="cpu", dispatch=True)
    out.mkdir(parents=True)
    tokens = padded = 0
    t0 = time.perf_counter()
    for s in range(0, len(prompts), args.script_batch):
        enc = tok(prompts[s : s + args.script_batch], padding=True, return_tensors="pt")
        with torch.no_grad(), lm.trace(dict(enc)):  # no autograd: the generous version
            h = lm.model.layers[layer].output.save()
        mask = enc["attention_mask"].bool()
        acts = h[mask].to(torch.float16).numpy()  # [real tokens, d]
        rows, pos = mask.nonzero(as_tuple=True)
        table = pa.table(
            {
                "example_id": (rows + s).numpy(),
                "position": pos.numpy(),
                "act": pa.FixedSizeListArray.from_arrays(pa.array(acts.reshape(-1)), acts.shape[1]),
            }
        )
        pq.write_table(table, out / f"part-{s:06d}.parquet")
        tokens += int(mask.sum())
        padded += mask.numel()
    return time.perf_counter() - t0, tokens, padded


def raysight_run(prompts: list[str], layer: int, out: Path, runner: str, args):
    import raysight
    from raysight.dataset.manifest import Manifest
    from raysight.dataset.verify import stage_seconds

    t0 = time.perf_counter()
    summary = raysight.run(spec_for(prompts, layer, out, runner, args), log=lambda m: None)
    secs = time.perf_counter() - t0
    manifest = Manifest.read(out)
    stages = stage_seconds(manifest.done().values())
    padded = manifest.totals()["padded_tokens"]
    return secs, summary.tokens, padded, stages


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--words", default="4:64", help="prompt length range in words, lo:hi")
    ap.add_argument("--layer", type=int, default=29, help="29 is SmolLM2's last layer")
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--shard-rows", type=int, default=4096)
    ap.add_argument("--max-padding", type=float, default=0.05)
    ap.add_argument("--script-batch", type=int, default=32)
    ap.add_argument("--format", default="parquet", choices=["parquet", "arrow"])
    ap.add_argument("--skip", default="", help="comma-separated: bare,nnsight,local,ray")
    args = ap.parse_args()
    from raysight.models.bundled import resolve_bundled

    lo, hi = (int(x) for x in args.words.split(":"))
    prompts = make_prompts(args.prompts, lo, hi)
    path = str(resolve_bundled(MODEL))
    root = Path(tempfile.mkdtemp(prefix="raysight-e2e-"))
    skip = set(args.skip.split(",")) - {""}
    print(
        f"SmolLM2-135M, layer {args.layer} per token as float16, {args.prompts} prompts of "
        f"{args.words} words, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    )
    res: dict[str, tuple] = {}
    if "bare" not in skip:
        res["(a) bare forward, same batches, no saving"] = bare(path, prompts, args)
    if "nnsight" not in skip:
        res["(b) nnsight 0.8 script + pyarrow defaults"] = nnsight_script(
            path, prompts, args.layer, root / "nnsight", args
        )
    stages = {}
    for runner, label in (
        ("local", "(c) raysight run, in-process"),
        ("ray", "(d) raysight run, Ray"),
    ):
        if runner not in skip:
            secs, tokens, padded, st = raysight_run(
                prompts, args.layer, root / runner, runner, args
            )
            res[label], stages[label] = (secs, tokens, padded), st
    a = res.get("(a) bare forward, same batches, no saving")
    b = res.get("(b) nnsight 0.8 script + pyarrow defaults")
    print(f"{'how':<44} {'s':>8} {'tokens/s':>9} {'padding':>8} {'x (a)':>7} {'x (b)':>7}")
    for name, (secs, tokens, padded) in res.items():
        tps = tokens / secs
        ra = f"{tps / (a[1] / a[0]):.2f}" if a else "-"
        rb = f"{tps / (b[1] / b[0]):.2f}" if b else "-"
        pad = 1 - tokens / padded
        print(f"{name:<44} {secs:>8.1f} {tps:>9,.0f} {pad:>8.1%} {ra:>7} {rb:>7}")
    for name, st in stages.items():
        total = sum(st.values())
        parts = ", ".join(f"{k} {v:.1f} s ({v / total:.0%})" for k, v in st.items())
        print(f"{name}, summed shard stages {total:.1f} s: {parts}")
        secs, tokens, _ = res[name]
        print(f"{name}, outside the shards (start-up, planning, manifest): {secs - total:.1f} s")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
