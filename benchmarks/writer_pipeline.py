"""The shard writer at GPU-like rates: a synthetic producer hands all-layer captures as fast as
the writer takes them, and the writer's throughput is set beside the disk's own, measured in the
same run by a plain write of the same bytes: with one fsync at the end ("raw"), and with an
fdatasync after each batch ("raw-synced", which keeps the disk busy while the next is written);
the writer's rate is set beside the faster of the two.

The values are SmolLM2-135M's residual stream at all 30 layers, float16, per token (30 columns of
[576]), in batches of --batch-tokens tokens (8 x 512 by default): what an actor hands its writer
when the forward costs nothing. Each batch is handed over as a function that encodes its tensors
(so the encoder threads do the work the worker's would), to ShardWriter with 1, 2 and 4 encoders,
for Arrow IPC (typed), Parquet with tensor_storage: bytes, and typed Parquet. Every measurement
runs in its own fresh process, the methods interleaved within each repeat; the time is from the
first batch handed over to the committed file (fsynced, renamed, checksummed).

    python benchmarks/writer_pipeline.py [--gb 2] [--repeat 3] [--dir /tmp]
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

LAYERS, WIDTH = 30, 576
METHODS = ["raw", "raw-synced"] + [
    f"{fmt}:{enc}" for fmt in ("arrow-typed", "parquet-bytes", "parquet-typed") for enc in (1, 2, 4)
]


def one(method: str, gb: float, batch_tokens: int, where: str) -> dict:
    import pyarrow as pa
    import torch

    from raysight.writers.encode import ColumnInfo, arrow_field, encode_column
    from raysight.writers.shard import ShardWriter

    g = torch.Generator().manual_seed(0)
    pool = [[torch.randn(batch_tokens, WIDTH, generator=g).half() for _ in range(LAYERS)]]
    pool.append([t.flip(0) for t in pool[0]])  # two distinct batches, reused: made at no cost
    batch_bytes = LAYERS * batch_tokens * WIDTH * 2
    n = max(1, round(gb * 1e9 / batch_bytes))
    out = Path(tempfile.mkdtemp(prefix="raysight-pipe-", dir=where))
    if method.startswith("raw"):
        t0 = time.perf_counter()
        with open(out / "raw.bin", "wb", buffering=0) as f:
            for i in range(n):
                for t in pool[i % 2]:
                    f.write(t.numpy().data)
                if method == "raw-synced":  # keeps the disk busy instead of the page cache
                    os.fdatasync(f.fileno())
            os.fsync(f.fileno())
        seconds = time.perf_counter() - t0
        size = (out / "raw.bin").stat().st_size
    else:
        kind, enc = method.split(":")
        fmt, storage = kind.split("-")
        cols = [
            ColumnInfo(f"layer_{i}", "float16", (WIDTH,), storage=storage) for i in range(LAYERS)
        ]
        schema = pa.schema([arrow_field(c) for c in cols])

        def job(tensors):
            return lambda: pa.RecordBatch.from_arrays(
                [encode_column(c, t) for c, t in zip(cols, tensors)], schema=schema
            )

        t0 = time.perf_counter()
        w = ShardWriter(out, 0, schema, fmt, background=True, encoders=int(enc)).start()
        for i in range(n):
            w.write(job(pool[i % 2]))
        path = w.commit()
        seconds = time.perf_counter() - t0
        size = path.stat().st_size
    for p in out.iterdir():
        p.unlink()
    out.rmdir()
    return {"method": method, "mb_s": n * batch_bytes / 1e6 / seconds, "file_mb": size / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0, help="tensor data per measurement")
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the files go")
    ap.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated, of: " + ", ".join(METHODS)
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or "raw" not in methods:
        raise SystemExit(f"--methods: unknown {unknown}, or no raw (the disk's speed)")
    if args.one:
        print(json.dumps(one(args.one, args.gb, args.batch_tokens, args.dir)))
        return
    rates: dict[str, list[float]] = {m: [] for m in methods}
    ratios: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.repeat):
        for m in methods:  # interleaved: the disk's drift lands on every method alike
            cmd = [
                sys.executable,
                __file__,
                "--one",
                m,
                "--gb",
                str(args.gb),
                "--dir",
                args.dir,
                "--batch-tokens",
                str(args.batch_tokens),
            ]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            rates[m].append(r["mb_s"])
        raw = max(rates[m][-1] for m in ("raw", "raw-synced") if m in rates)  # the disk's best
        for m in methods:
            ratios[m].append(rates[m][-1] / raw)
    print(
        f"{args.gb} GB a measurement: {LAYERS} x [{WIDTH}] float16 per token, "
        f"{args.batch_tokens} tokens a batch; {args.repeat} repeats, each in fresh processes"
    )
    print("x raw: each repeat's rate over the faster of its two plain writes, median")
    print(f"{'method':<20} {'encoders':>8} {'MB/s med':>9} {'MB/s best':>10} {'x raw med':>10}")
    for m in methods:
        kind, _, enc = m.partition(":")
        print(
            f"{kind:<20} {enc or '-':>8} {statistics.median(rates[m]):>9.0f} "
            f"{max(rates[m]):>10.0f} {statistics.median(ratios[m]):>10.2f}"
        )


if __name__ == "__main__":
    main()
