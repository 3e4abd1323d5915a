"""What planning a large input costs the driver: peak RSS and wall time of ``raysight plan`` on a
directory of Parquet files (and one JSONL file) of --rows rows of ~250-byte texts, each in its
own fresh Python process. The goal: flat in the row count (the driver reads footers and a
sample, never the rows).

SmolLM2-135M (bundled) is the model: plan builds it on the meta device, as a run does. The
inputs are written once under --dir and reused.

    python benchmarks/driver_memory.py [--rows 1000000 10000000] [--files 20] [--dir /tmp/rs-bench]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WORDS = "the of and to in is was for on that with as by at from his her an were are which".split()
CHILD = """
import io, json, sys, time
from contextlib import redirect_stdout
t = time.perf_counter()
from raysight.cli import main
buf = io.StringIO()
with redirect_stdout(buf):
    rc = main(["plan", sys.argv[1]])
seconds = time.perf_counter() - t
rows = [l for l in buf.getvalue().splitlines() if l.startswith("input rows")]
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec (a child would report its parent's peak)
peak = int(next(x for x in open("/proc/self/status") if x.startswith("VmHWM")).split()[1]) / 1024
line = rows[0] if rows else buf.getvalue()
print(json.dumps({"rc": rc, "seconds": seconds, "peak_mb": peak, "line": line}))
"""


def _texts(n: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(n):
        words = []
        while sum(len(w) + 1 for w in words) < 250:
            words.append(rng.choice(WORDS))
        out.append(" ".join(words)[:250])
    return out


def write_inputs(root: Path, rows: int, files: int) -> tuple[Path, Path]:
    """A directory of ``files`` Parquet files and one JSONL file, ``rows`` rows in all."""
    pq_dir, jsonl = root / f"parquet-{rows}", root / f"rows-{rows}.jsonl"
    if (pq_dir / "_done").exists() and jsonl.exists():
        return pq_dir, jsonl
    pq_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    pool = _texts(10_000, rng)  # texts repeat: writing 10M distinct ones adds nothing here
    per_file = rows // files
    with open(jsonl, "w") as jf:
        for k in range(files):
            n = per_file if k < files - 1 else rows - per_file * (files - 1)
            with pq.ParquetWriter(pq_dir / f"part-{k:03d}.parquet", _SCHEMA) as w:
                for lo in range(0, n, 100_000):
                    ids = range(k * per_file + lo, k * per_file + min(n, lo + 100_000))
                    texts = [pool[i % len(pool)] for i in ids]
                    w.write_table(pa.table({"id": list(ids), "text": texts}, schema=_SCHEMA))
                    recs = ({"id": i, "text": t} for i, t in zip(ids, texts))
                    jf.writelines(json.dumps(r) + "\n" for r in recs)
    (pq_dir / "_done").write_text("")
    return pq_dir, jsonl


_SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string())])


def measure(source: Path, root: Path) -> dict:
    spec = {
        "model": {"path": "bundled:smollm2-135m-instruct"},
        "data": {"source": str(source), "id_field": "id"},
        "ops": [{"save": "layers.15.output", "positions": [-1], "as": "h"}],
        "output": {"path": str(root / "unused-out")},
    }
    spec_file = root / "spec.json"
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(spec_file)], capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--dir", default="/tmp/rs-bench")
    args = ap.parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    print("| input | rows | plan wall s | driver peak RSS MB | what plan printed |")
    print("|---|---|---|---|---|")
    for rows in args.rows:
        pq_dir, jsonl = write_inputs(root, rows, args.files)
        for label, src in ((f"{args.files} Parquet files", pq_dir), ("one JSONL file", jsonl)):
            r = measure(src, root)
            print(
                f"| {label} | {rows:,} | {r['seconds']:.1f} | {r['peak_mb']:.0f} | {r['line']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
