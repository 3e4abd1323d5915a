"""``output.shuffle``: a shard's record batches held in a buffer and written in a seeded random
order (spec/output.py ShuffleSpec says why the scope is a buffer)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

__all__ = ["ShuffleBuffer"]


class ShuffleBuffer:
    """``write(batch)`` holds batches; once ``buffer_rows`` rows are held they are permuted and
    passed to ``out`` (the shard writer's write); ``flush()`` passes on the rest. The generator
    is seeded by (seed, shard), so a shard's order does not depend on who runs it."""

    def __init__(
        self, out: Callable[[pa.RecordBatch], None], buffer_rows: int, seed: int, shard: int
    ):
        self.out, self.buffer_rows = out, buffer_rows
        self.rng = np.random.default_rng([seed, shard])
        self.held: list[pa.RecordBatch] = []
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self.held.append(batch)
        self.rows += batch.num_rows
        if self.rows >= self.buffer_rows:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_batches(self.held)
        self.held, self.rows = [], 0
        for batch in table.take(self.rng.permutation(table.num_rows)).to_batches():
            self.out(batch)
