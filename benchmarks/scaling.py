"""Scaling: the same extraction with 1 and 2 Ray actors on this machine.

Ray is started once, before both runs, so neither pays for it. SmolLM2-135M, the residual stream
after layer 15 at the last token of --prompts prompts of mixed lengths, shards of --shard-rows
rows. Reports the end-to-end time and the steady-state time between shard completions.

    python benchmarks/scaling.py [--prompts 256] [--shard-rows 16]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import raysight

WORDS = (
    "the model reads every token of a long prompt and writes activations to disk while a "
    "second actor works on another shard of the same dataset"
).split()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--shard-rows", type=int, default=16)
    args = ap.parse_args()
    rng = random.Random(0)
    prompts = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 120))) for _ in range(args.prompts)
    ]
    root = Path(tempfile.mkdtemp(prefix="raysight-scaling-"))
    print(f"{args.prompts} prompts, shards of {args.shard_rows}, {os.cpu_count()} cores")
    import ray

    ray.init(
        address="local", num_cpus=os.cpu_count(), include_dashboard=False
    )  # both runs share it
    results = {}
    for actors in (1, 2):
        events: list[float] = []

        def log(msg: str, events=events) -> None:
            if " done (" in msg:
                events.append(time.perf_counter())

        spec = {
            "model": {"path": "bundled:smollm2-135m-instruct"},
            "data": {"prompts": prompts},
            "ops": [{"save": "layers.15.output", "positions": [-1], "as": "h"}],
            "output": {"path": str(root / f"a{actors}")},
            "execution": {
                "runner": "ray",
                "actors": actors,
                "cpus_per_actor": 2 // actors,
                "shard_rows": args.shard_rows,
                "batch_tokens": 4096,
            },
        }
        t0 = time.perf_counter()
        summary = raysight.run(spec, log=log)
        total = time.perf_counter() - t0
        # The first completion marks the end of a first shard on each actor; measure the steady
        # phase from the first completion to the last, per shard after the first.
        steady = (events[-1] - events[0]) / max(len(events) - actors, 1)
        results[actors] = (summary.tokens, total, steady)
        print(
            f"actors={actors}: {summary.tokens} tokens, end to end {total:.1f} s, "
            f"{steady:.2f} s per shard in steady state "
            f"({summary.tokens / len(events) / steady:,.0f} tokens/s)"
        )
    speedup = results[1][2] / results[2][2]
    print(
        f"2 actors vs 1: {speedup:.2f}x steady-state throughput; end to end "
        f"{results[1][1] / results[2][1]:.2f}x"
    )


if __name__ == "__main__":
    main()
