"""An activation-patching grid (specs/activation_patching.yaml: 10 layers x 4 positions on IOI
pairs, one logit difference per cell) three ways, in one run on SmolLM2-135M (CPU, float32):

- raysight: one shard through a loaded ShardRunner (tokenize, batched forward of every variant
  and pair row, encode, write the Parquet file); the model load is not timed;
- a plain PyTorch script: per pair, one clean forward that keeps every layer's output, then one
  hooked corrupt forward per cell (41 forwards per pair, no batching, nothing written);
- nnsight 0.8: the same loop as nnsight code (a clean trace saving the layers, a trace per cell).

    python benchmarks/patching_grid.py [--pairs 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LAYERS, POSITIONS = range(0, 30, 3), [1, 3, 9, -1]


def pairs(n: int) -> list[dict]:
    base = [json.loads(x) for x in (ROOT / "specs/data/ioi_pairs.jsonl").read_text().splitlines()]
    return [base[i % len(base)] for i in range(n)]


def raysight_runner(records: list[dict], out: Path):
    import yaml

    from raysight.data.readers import read_rows
    from raysight.engine.worker import ShardRunner
    from raysight.spec.variants import token_fields

    data = yaml.safe_load((ROOT / "specs/activation_patching.yaml").read_text())
    data["data"] = {"prompts": records, "pair": {"fields": ["clean", "corrupt"]}}
    data["output"]["path"] = str(out)
    runner = ShardRunner(data, "int64", None, None)
    rows, _, _ = read_rows(runner.spec.data, ROOT, token_fields(runner.spec))
    state = {"k": 0}

    def run() -> None:
        state["k"] += 1  # a new shard file each time
        res = runner.run_shard(state["k"], rows)
        assert not res.errors, res.errors

    return run


def plain_loop(model, tok, records: list[dict]):
    layers = model.model.layers

    def run() -> list[float]:
        out = []
        with torch.no_grad():
            for r in records:
                a, b = (
                    tok(r[k], add_special_tokens=False)["input_ids"][0] for k in ("answer", "wrong")
                )
                kept = {}
                hooks = [
                    layers[i].register_forward_hook(
                        lambda m, x, o, i=i, k=kept: k.__setitem__(i, o)
                    )
                    for i in LAYERS
                ]
                model(**tok(r["clean"], return_tensors="pt"))
                for h in hooks:
                    h.remove()
                ids = tok(r["corrupt"], return_tensors="pt")
                for i in LAYERS:
                    for p in POSITIONS:

                        def patch(m, x, o, i=i, p=p, k=kept):
                            o = o.clone()
                            o[:, p] = k[i][:, p]
                            return o

                        h = layers[i].register_forward_hook(patch)
                        logits = model(**ids).logits[0, -1]
                        h.remove()
                        out.append(float(logits[a] - logits[b]))
        return out

    return run


def nnsight_loop(lm, tok, records: list[dict]):
    def run() -> list[float]:
        out = []
        for r in records:
            a, b = (
                tok(r[k], add_special_tokens=False)["input_ids"][0] for k in ("answer", "wrong")
            )
            kept = {}
            with lm.trace(r["clean"]):
                for i in LAYERS:
                    kept[i] = lm.model.layers[i].output.save()
            for i in LAYERS:
                for p in POSITIONS:
                    with lm.trace(r["corrupt"]):
                        lm.model.layers[i].output[:, p] = kept[i][:, p]
                        d = (lm.lm_head.output[0, -1, a] - lm.lm_head.output[0, -1, b]).save()
                    out.append(float(d))
        return out

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)

    import nnsight
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysight.models.bundled import resolve_bundled

    path = str(resolve_bundled("bundled:smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    lm = nnsight.LanguageModel(AutoModelForCausalLM.from_pretrained(path).eval(), tokenizer=tok)
    records = pairs(args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        fns = {
            "raysight (sweep x pairs, batched)": raysight_runner(records, Path(tmp) / "o"),
            "plain PyTorch loop": plain_loop(model, tok, records),
            "nnsight 0.8 loop": nnsight_loop(lm, tok, records),
        }
        for fn in fns.values():
            fn()  # warm-up
        times = {name: [] for name in fns}
        for _ in range(args.repeat):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    cells = args.pairs * len(LAYERS) * len(POSITIONS)
    base = statistics.median(times["plain PyTorch loop"])
    print(f"{args.pairs} pairs x {len(LAYERS)} layers x {len(POSITIONS)} positions = {cells} cells")
    print(f"{'':36} {'seconds':>8} {'cells/s':>8} {'vs plain':>9}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:36} {t:8.2f} {cells / t:8.1f} {t / base:8.2f}x")


if __name__ == "__main__":
    main()
