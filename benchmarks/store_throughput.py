"""Shard-writer throughput to a local disk vs to a local S3-compatible server (moto's server
mode, started here on 127.0.0.1 in a process of its own): MB/s from torch tensors in memory to a
committed shard (local: fsynced and renamed; S3: a completed multipart upload, hashed as sent).

moto keeps objects in Python memory, so the S3 figure is a floor set by the test server, not by
raysight or by S3; what it shows is the cost of the object-store path on the same machine.

    python benchmarks/store_throughput.py [--rows 100000] [--width 768] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import torch

from raysight.dataset.store import Store
from raysight.writers.encode import ColumnInfo, arrow_field, encode_column
from raysight.writers.shard import ShardWriter


def _server() -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(150):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.2)
    raise SystemExit("moto did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    proc, port = _server()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
    )
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    stores = {
        "local disk": Store(tempfile.mkdtemp(prefix="rs-store-")),
        "local S3 (moto)": Store("s3://bench/run"),
    }
    print(f"{args.rows} token rows x {args.width}, best of {args.repeat}")
    print("| store | format, dtype, storage | MB | MB/s |")
    print("|---|---|---|---|")
    try:
        for dtype, storage in ((torch.bfloat16, "bytes"), (torch.float16, "typed")):
            x = torch.randn(args.rows, args.width).to(dtype)
            name = str(dtype).removeprefix("torch.")
            col = ColumnInfo("act", name, (args.width,), storage=storage)
            schema = pa.schema([arrow_field(col)])
            batches = [
                pa.RecordBatch.from_arrays([encode_column(col, c)], schema=schema)
                for c in x.split(1024)
            ]
            mb = sum(b.nbytes for b in batches) / 1e6
            for label, store in stores.items():
                times = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    w = ShardWriter(store, 0, schema, "parquet", background=True).start()
                    for b in batches:
                        w.write(b)
                    w.commit()
                    times.append(time.perf_counter() - t0)
                print(
                    f"| {label} | parquet, {name}, {storage} | {mb:.0f} | {mb / min(times):.0f} |",
                    flush=True,
                )
        data = os.urandom(int(mb * 1e6))  # the server's own ceiling: a plain pyarrow upload
        fs, path = stores["local S3 (moto)"].fs, "bench/run/raw.bin"
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            with fs.open_output_stream(path) as f:
                for i in range(0, len(data), 8 << 20):
                    f.write(data[i : i + (8 << 20)])
            times.append(time.perf_counter() - t0)
        rate = mb / min(times)
        print(f"| local S3 (moto) | plain pyarrow upload, 8 MiB writes | {mb:.0f} | {rate:.0f} |")
    finally:
        proc.terminate()


if __name__ == "__main__":
    main()
