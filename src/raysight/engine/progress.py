"""Progress while a run goes: rows, tokens/s and ETA. On a terminal one status line is rewritten
in place; otherwise (CI, a Ray job's log) each finished shard is a plain log line."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


class Progress:
    def __init__(self, rows: int, shards: int, log: Callable[[str], None], tty: bool = False):
        self.total_rows, self.total_shards = rows, shards
        self.log, self.tty = log, tty
        self.rows = self.tokens = self.shards = self.failed = 0
        self.t0 = time.perf_counter()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = self.tokens / elapsed if elapsed else 0.0
        left = self.total_rows - self.rows
        eta = _clock(elapsed / self.rows * left) if self.rows and left else "-"
        failed = f", {self.failed} failed" if self.failed else ""
        return (
            f"[{self.shards}/{self.total_shards} shards{failed}] {self.rows}/{self.total_rows} "
            f"rows, {rate:,.0f} tokens/s, elapsed {_clock(elapsed)}, ETA {eta}"
        )

    def shard_done(self, shard: int, rows: int, tokens: int, errors: int) -> None:
        self.shards += 1
        self.rows += rows + errors
        self.tokens += tokens
        self._emit(f"shard {shard} done ({rows} rows, {errors} row errors)")

    def shard_failed(self, shard: int, reason: str) -> None:
        self.failed += 1
        self._emit(f"shard {shard} FAILED: {reason}", force_log=True)

    def _emit(self, event: str, force_log: bool = False) -> None:
        if self.tty and not force_log:
            sys.stderr.write("\r\x1b[2K" + self.line())
            sys.stderr.flush()
        else:
            if self.tty:
                sys.stderr.write("\r\x1b[2K")
            self.log(f"  {event} {self.line()}")

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
