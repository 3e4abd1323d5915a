"""Writer throughput: MB/s of raysight's shard writer vs pyarrow defaults and a raw file write.

The FACTS.md setting: 20,000 rows x 768 values, one column. Each number is the best of
--repeat runs, from a tensor in memory to a committed file (raysight: fsynced and renamed;
the pyarrow and raw rows: written, not fsynced, so they are the flattering side).

    python benchmarks/writer_throughput.py [--rows 20000] [--width 768] [--repeat 3]
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="raysight-bench-"))
    print(f"{args.rows} rows x {args.width} values, best of {args.repeat}")
    print(f"{'how':<58} {'dtype':<9} {'MB/s':>8}")
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x = torch.randn(args.rows, args.width).to(dtype)
        mb = x.numel() * x.element_size() / 1e6
        name = str(dtype).removeprefix("torch.")
        col = ColumnInfo("act", name, (args.width,))
        schema = pa.schema([arrow_field(col)])
        for fmt in ("parquet", "arrow"):

            def ours(fmt=fmt, x=x, col=col, schema=schema):
                w = ShardWriter(tmp, 0, schema, fmt).start()
                for chunk in x.split(1024):
                    w.write(pa.RecordBatch.from_arrays([encode_column(col, chunk)], schema=schema))
                w.commit()

            secs = best(ours, args.repeat)
            print(f"{'raysight ShardWriter, ' + fmt:<58} {name:<9} {mb / secs:>8.0f}")
        if dtype != torch.bfloat16:  # pyarrow has no bfloat16 type to compare against
            table = pa.table([encode_column(col, x)], schema=schema)
            secs = best(lambda t=table: pq.write_table(t, tmp / "default.parquet"), args.repeat)
            print(
                f"{'pyarrow write_table, defaults (same tensor column)':<58} {name:<9} "
                f"{mb / secs:>8.0f}"
            )
        raw = x.contiguous().view(torch.uint8).numpy().tobytes()
        secs = best(lambda raw=raw: (tmp / "raw.bin").write_bytes(raw), args.repeat)
        print(f"{'raw file write (page cache)':<58} {name:<9} {mb / secs:>8.0f}")


if __name__ == "__main__":
    main()
