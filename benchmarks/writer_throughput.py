"""Writer throughput: MB/s of raysight's shard writer vs pyarrow defaults and a raw file write.

The FACTS.md setting: 20,000 token rows x 768 values. Each format, layout and tensor storage:

- per_token: one row per token, a fixed-shape ``[768]`` tensor per row;
- per_sequence: one row per sequence of 5-120 tokens (``large_list<fixed_size_list>``);
- typed storage (Arrow number lists, any reader) or bytes (one binary value per row).

Each number is the best of --repeat runs, from torch tensors in memory (batches of ~1,024 tokens,
as the worker hands them over) to a committed file: encoded, written, fsynced and renamed. The
pyarrow and raw rows are written and not fsynced, so they are the flattering side.

    python benchmarks/writer_throughput.py [--rows 20000] [--width 768] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raysight.writers.encode import ColumnInfo, arrow_field, encode_column
from raysight.writers.shard import ShardWriter


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def batches(x: torch.Tensor, layout: str) -> list:
    """The tensor cut the way the worker hands it over: ~1,024 tokens a batch."""
    if layout == "per_token":
        return list(x.split(1024))
    rng = random.Random(0)
    lengths, total = [], 0
    while total < len(x):
        n = min(rng.randint(5, 120), len(x) - total)
        lengths.append(n)
        total += n
    rows = list(x.split(lengths))
    out, cur, size = [], [], 0
    for r in rows:
        cur.append(r)
        size += len(r)
        if size >= 1024:
            out.append(cur)
            cur, size = [], 0
    return [*out, cur] if cur else out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="raysight-bench-"))
    print(f"{args.rows} token rows x {args.width} values, best of {args.repeat}")
    print(f"{'how':<62} {'dtype':<9} {'MB/s':>8}")
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x = torch.randn(args.rows, args.width).to(dtype)
        mb = x.numel() * x.element_size() / 1e6
        name = str(dtype).removeprefix("torch.")
        for layout in ("per_token", "per_sequence"):
            chunks = batches(x, layout)
            shape = (args.width,) if layout == "per_token" else (None, args.width)
            for storage in ("typed", "bytes") if dtype != torch.bfloat16 else ("bytes",):
                col = ColumnInfo("act", name, shape, storage=storage)
                schema = pa.schema([arrow_field(col)])
                for fmt in ("parquet", "arrow"):

                    def ours(fmt=fmt, col=col, schema=schema, chunks=chunks):
                        w = ShardWriter(tmp, 0, schema, fmt, background=True).start()
                        for chunk in chunks:
                            arr = encode_column(col, chunk)
                            w.write(pa.RecordBatch.from_arrays([arr], schema=schema))
                        w.commit()

                    secs = best(ours, args.repeat)
                    label = f"raysight, {fmt}, {layout}, {storage}"
                    print(f"{label:<62} {name:<9} {mb / secs:>8.0f}", flush=True)
        if dtype != torch.bfloat16:  # pyarrow has no bfloat16 type to compare against
            col = ColumnInfo("act", name, (args.width,))
            table = pa.table([encode_column(col, x)], schema=pa.schema([arrow_field(col)]))
            secs = best(lambda t=table: pq.write_table(t, tmp / "default.parquet"), args.repeat)
            label = "pyarrow write_table, defaults, per_token tensor column"
            print(f"{label:<62} {name:<9} {mb / secs:>8.0f}")
        raw = x.contiguous().view(torch.uint8).numpy().tobytes()
        secs = best(lambda raw=raw: (tmp / "raw.bin").write_bytes(raw), args.repeat)
        print(f"{'raw file write (page cache)':<62} {name:<9} {mb / secs:>8.0f}")


if __name__ == "__main__":
    main()
