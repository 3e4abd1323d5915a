"""What the self-check costs: the same extraction with ``execution.self_check`` at its default (2
units per shard rerun alone) and off (0), each run in its own fresh Python process, alternating.

SmolLM2-135M on the CPU, one layer per token of --prompts prompts of mixed lengths (the
end-to-end benchmark's prompts), in-process runner, default shard size. Reported per setting:
the median wall time of the whole ``raysight.run`` call (model loading and planning included),
and, for the checked runs, the self_check stage's share of the shards' time from the manifest.

    python benchmarks/self_check.py [--prompts 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from end_to_end import make_prompts

CHILD = """
import json, sys, time, raysight
spec = json.loads(open(sys.argv[1]).read())
t = time.perf_counter()
raysight.run(spec, log=lambda _: None)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def one(source: Path, check: int, out: Path, threads: int) -> dict:
    spec = {
        "model": {"path": "bundled:smollm2-135m-instruct"},
        "data": {"source": str(source)},
        "ops": [{"save": "layers.15.output", "as": "h", "dtype": "float16"}],
        "output": {"path": str(out), "layout": "per_token"},
        "execution": {"runner": "local", "self_check": check, "cpus_per_actor": threads},
    }
    code = f"import torch; torch.set_num_threads({threads})\n" + CHILD
    spec_file = out.with_suffix(".json")
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(spec_file)], capture_output=True, text=True, check=True
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    shards = json.loads((out / "_manifest.json").read_text())["shards"].values()
    total = sum(sum(s["stages"].values()) for s in shards)
    result["check_share"] = sum(s["stages"].get("self_check", 0.0) for s in shards) / total
    result["samples"] = sum(s.get("self_check", {}).get("samples", 0) for s in shards)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--words", default="4:64")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    lo, hi = map(int, args.words.split(":"))
    prompts = make_prompts(args.prompts, lo, hi)
    runs: dict[int, list[dict]] = {2: [], 0: []}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "prompts.jsonl"
        source.write_text("".join(json.dumps({"text": p}) + "\n" for p in prompts))
        for r in range(args.repeat):
            for check in (2, 0) if r % 2 == 0 else (0, 2):
                runs[check].append(one(source, check, Path(tmp) / f"c{check}r{r}", args.threads))
    on = statistics.median(x["seconds"] for x in runs[2])
    off = statistics.median(x["seconds"] for x in runs[0])
    share = statistics.median(x["check_share"] for x in runs[2])
    print(f"prompts {args.prompts}, repeat {args.repeat}, threads {args.threads}")
    print(f"self_check 2: {on:.2f} s (samples rerun alone: {runs[2][0]['samples']})")
    print(f"self_check 0: {off:.2f} s")
    print(f"wall-time ratio on/off: {on / off:.3f}; self_check share of shard time: {share:.2%}")


if __name__ == "__main__":
    main()
