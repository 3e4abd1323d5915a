"""Reader peak memory: ``to_torch`` of one float32 column of --rows x 4096 values, and a pass of
``iter_torch`` over it, each in a fresh process, as the peak RSS above what the process held
just before (Linux's VmHWM, reset through /proc/self/clear_refs) divided by the result's size.

``--old-src DIR`` also measures another raysight checkout's ``to_torch`` (e.g. a git worktree
of an earlier commit) on the same dataset, for a before/after table.

    python benchmarks/reader_memory.py [--rows 24576] [--old-src /tmp/old/src]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent


CHILD = """
import gc, sys, time
import raysight
def vm(key):
    line = next(x for x in open('/proc/self/status') if x.startswith(key))
    return int(line.split()[1]) * 1024
ds = raysight.open(sys.argv[1])
mode = sys.argv[2]
if mode != "old":
    ds.to_torch("y", rows=range(0, 1))  # one-time costs of pyarrow's dataset machinery
else:
    ds.to_torch("y")  # the same warm-up for the old reader (it has no rows=)
gc.collect()
open("/proc/self/clear_refs", "w").write("5")
before, t0 = vm("VmRSS"), time.perf_counter()
if mode == "iter_torch":
    size = sum(b["y"].nbytes for b in ds.iter_torch(["y"], batch_rows=1024))
else:
    size = ds.to_torch("y").nbytes
print(mode, (vm("VmHWM") - before) / size, size / 2**20, time.perf_counter() - t0)
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=24576)
    ap.add_argument("--old-src", help="src/ of another raysight checkout to compare")
    args = ap.parse_args()
    import raysight

    out = Path(tempfile.mkdtemp(prefix="rs-reader-")) / "o"
    spec = {
        "model": {"factory": "tiny:wide"},  # tests/tiny.py: y[:, j] = 2 * x[:, 0] + 1
        "data": {"prompts": [{"x": [float(i)] + [0.0] * 7} for i in range(args.rows)]},
        "ops": [{"save": "lin.output", "as": "y"}],
        "output": {"path": str(out)},
        "execution": {"runner": "local", "self_check": 0},
    }
    spec["data"]["input_field"] = "x"
    sys.path.insert(0, str(HERE.parent / "tests"))
    raysight.run(spec, log=lambda _: None, allow_code=True)
    print("| reader | peak RSS above the start / result | result MiB | seconds |")
    print("|---|---|---|---|")
    runs = [("to_torch", None), ("iter_torch", None)]
    if args.old_src:
        runs.append(("old", args.old_src))
    for mode, src in runs:
        env = {**os.environ, "PYTHONPATH": src or os.environ.get("PYTHONPATH", "")}
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(out), mode],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        _, ratio, mib, secs = proc.stdout.split()
        label = {"old": "to_torch before (one table, combined, copied)"}.get(mode, mode)
        print(f"| {label} | {float(ratio):.2f}x | {float(mib):.0f} | {float(secs):.2f} |")


if __name__ == "__main__":
    main()
