"""Progress while a run goes: input rows done, tokens/s, ETA, updated as each batch is written
(an actor reports its batches; a shard's own record replaces them when it finishes).

Rates are steady-state: they count from the first batch any replica finished, so the model's
load and a local Ray's start are not averaged in. On a terminal a tqdm bar is redrawn in place;
elsewhere (CI, a Ray job's log) each finished shard is a log line, and a line every
``every`` seconds says where a long shard is.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


class Progress:
    def __init__(
        self,
        shard_rows: dict[int, int],
        log: Callable[[str], None],
        tty: bool = False,
        generating: bool = False,
        every: float = 30.0,
        clock: Callable[[], float] = time.perf_counter,
        warn: Callable[[str], None] | None = None,
    ):
        self.shard_rows = shard_rows  # shard -> its input rows, for the shards to run
        self.total_rows, self.total_shards = sum(shard_rows.values()), len(shard_rows)
        self.log, self.tty, self.generating, self.every = log, tty, generating, every
        self.warn = warn or log  # failures: shown under -q too
        self.clock = clock
        self.t0 = self.last_line = clock()
        self.done_rows = self.done_tokens = self.done_generated = 0
        self.shards = self.failed = 0
        self.lost = 0  # input rows of failed shards: no longer to come
        self.partial: dict[int, tuple[float, int, int]] = {}  # shard -> rows, tokens, generated
        self.finished: set[int] = set()
        self.steady: tuple[float, float, int] | None = None  # time, rows, tokens at 1st batch
        self.status = "starting"  # what start-up is doing, shown until the first batch
        self.running: set[int] = set()  # shards a replica has begun
        self.bar: Any = None
        if tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=self.total_rows,
                unit="row",
                file=sys.stderr,
                dynamic_ncols=True,
                bar_format="{percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} rows{postfix}",
            )

    # ------------------------------------------------------------ events
    def stage(self, status: str) -> None:
        """What start-up is doing ("starting Ray", "loading the model in 2 actors"), shown in
        place of the rates until the first batch is written; a log line off a terminal."""
        self.status = status
        if self.bar is not None:
            self._draw()
        else:
            self.log(f"  {status}")

    def batch(self, shard: int, units_done: int, units: int, tokens: int, generated: int) -> None:
        """A replica wrote a batch: ``units_done`` of the shard's ``units`` so far, and the
        shard's tokens (prompt, and generated) so far. ``units_done == 0``: it began the
        shard (its model is loaded)."""
        if shard in self.finished or shard not in self.shard_rows:
            return  # a late report of a shard already counted whole
        if units_done == 0:
            self.running.add(shard)
            if self.steady is None and self.bar is not None:
                self.status = f"{len(self.running)} shard(s) begun, running the first batch"
                self._draw()
            return
        rows = self.shard_rows[shard] * units_done / max(units, 1)
        self.partial[shard] = (rows, tokens, generated)
        self._started()
        self._show()

    def shard_done(
        self, shard: int, rows: int, tokens: int, errors: int, generated: int = 0
    ) -> None:
        self.finished.add(shard)
        self.partial.pop(shard, None)
        self.shards += 1
        self.done_rows += rows + errors
        self.done_tokens += tokens
        self.done_generated += generated
        self._started()
        self._emit(f"shard {shard} done ({rows} rows, {errors} row errors)")

    def shard_failed(self, shard: int, reason: str) -> None:
        self.finished.add(shard)
        self.partial.pop(shard, None)
        self.failed += 1
        self.lost += self.shard_rows.get(shard, 0)
        self._emit(f"shard {shard} FAILED: {reason}", warn=True)

    def tick(self) -> None:
        """Called while waiting: off a terminal, a line every ``every`` seconds."""
        if not self.tty and self.clock() - self.last_line >= self.every and self.rows:
            self._emit("running")

    # ------------------------------------------------------------ figures
    @property
    def rows(self) -> float:
        return self.done_rows + sum(r for r, _, _ in self.partial.values())

    @property
    def tokens(self) -> int:
        return self.done_tokens + sum(t for _, t, _ in self.partial.values())

    @property
    def generated(self) -> int:
        return self.done_generated + sum(g for _, _, g in self.partial.values())

    def _started(self) -> None:
        if self.steady is None:
            self.steady = (self.clock(), self.rows, self.tokens)

    def rates(self) -> tuple[float | None, float | None]:
        """(rows/s, tokens/s) since the first batch; None before there are two reports."""
        if self.steady is None:
            return None, None
        t, rows, tokens = self.steady
        dt = self.clock() - t
        if dt <= 0 or self.rows <= rows:
            return None, None
        return (self.rows - rows) / dt, (self.tokens - tokens) / dt

    def _parts(self, short: bool) -> tuple[str, str, str]:
        """(shards, speed, ETA) as the log line (long) or the bar (short) words them."""
        row_rate, tok_rate = self.rates()
        left = self.total_rows - self.lost - self.rows
        eta = _clock(left / row_rate) if row_rate and left > 0 else "-"
        unit = "tok/s" if short else "tokens/s"
        speed = f"{tok_rate:,.0f} {unit}" if tok_rate is not None else f"- {unit}"
        if self.generating:
            speed += f", {self.generated:,} {'gen' if short else 'generated'}"
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.shards}/{self.total_shards} shards{failed}", speed, eta

    def line(self) -> str:
        shards, speed, eta = self._parts(short=False)
        elapsed = _clock(self.clock() - self.t0)
        return (
            f"[{shards}] {self.rows:,.0f}/{self.total_rows:,} rows, {speed}, "
            f"elapsed {elapsed}, ETA {eta}"
        )

    # ------------------------------------------------------------ output
    def _show(self) -> None:
        if self.bar is not None:
            self._draw()
        else:
            self.tick()

    def _draw(self) -> None:
        shards, speed, eta = self._parts(short=True)
        self.bar.n = self.rows
        now = f"{speed}, ETA {eta}" if self.steady is not None else f"{self.status}…"
        self.bar.set_postfix_str(f"{shards}, {now}", refresh=False)  # after ", "
        self.bar.refresh()

    def _emit(self, event: str, warn: bool = False) -> None:
        if self.bar is not None and not warn:
            self._draw()
            return
        self.last_line = self.clock()
        if self.bar is not None:
            self.bar.clear()
        (self.warn if warn else self.log)(f"  {event} {self.line()}")
        if self.bar is not None:
            self._draw()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
