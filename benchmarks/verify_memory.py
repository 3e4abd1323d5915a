"""What ``raysight verify`` holds: its peak RSS and wall time on a dataset of --rows rows (one
row per input row, a tiny nn.Sequential's 8-value output), each run in its own fresh Python
process. The goal: flat in the row count (verify holds one shard and a pass of row keys, not a
key per row of the dataset).

``--old-src DIR`` also runs another raysight checkout's verify (e.g. a git worktree of an
earlier commit) on the same datasets, for a before/after table. The datasets are written once
under --dir and reused.

    python benchmarks/verify_memory.py [--rows 100000 1000000] [--old-src /tmp/old/src]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child of a parent that loaded
# torch would report the parent's peak
CHILD = """
import json, sys, time
t = time.perf_counter()
from raysight.dataset.verify import verify
problems = verify(sys.argv[1])
seconds = time.perf_counter() - t
line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM"))
peak = int(line.split()[1]) / 1024
print(json.dumps({"problems": len(problems), "seconds": seconds, "peak_mb": peak}))
"""


def write_dataset(root: Path, rows: int, shard_rows: int) -> Path:
    """A finished dataset of ``rows`` rows from a JSONL input (written once)."""
    out = root / f"verify-{rows}"
    if (out / "_manifest.json").exists():
        return out
    import raysight

    root.mkdir(parents=True, exist_ok=True)
    src = root / f"vectors-{rows}.jsonl"
    with open(src, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": i, "x": [float(i % 97)] * 8}) + "\n")
    spec = {
        "model": {"factory": "tiny:sequential"},  # tests/tiny.py
        "data": {"source": str(src), "input_field": "x", "id_field": "id"},
        "ops": [{"save": "0.output", "as": "h"}],
        "output": {"path": str(out)},
        "execution": {"runner": "local", "self_check": 0, "shard_rows": shard_rows},
    }
    sys.path.insert(0, str(HERE.parent / "tests"))
    raysight.run(spec, log=lambda _: None, allow_code=True)
    return out


def measure(out: Path, src: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": src or os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(out)], capture_output=True, text=True, env=env
    )
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--shard-rows", type=int, default=16384)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/rs-bench"))
    ap.add_argument("--old-src", help="src/ of another raysight checkout to compare")
    args = ap.parse_args()
    print("| verify | rows | shards | findings | peak RSS MB | seconds |")
    print("|---|---|---|---|---|---|")
    for rows in args.rows:
        out = write_dataset(args.dir, rows, args.shard_rows)
        shards = -(-rows // args.shard_rows)
        for label, src in [("now", None), ("before", args.old_src)]:
            if label == "before" and not src:
                continue
            r = measure(out, src)
            print(
                f"| {label} | {rows:,} | {shards} | {r['problems']} | {r['peak_mb']:.0f} "
                f"| {r['seconds']:.1f} |"
            )


if __name__ == "__main__":
    main()
