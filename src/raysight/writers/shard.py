"""One shard's data file, with a start / write / commit / fail lifecycle.

On a local disk the file is written under a hidden temporary name (readers such as pyarrow
datasets skip names starting with '.') and renamed into place by :meth:`ShardWriter.commit`, so a
crash never leaves a partial file that looks finished. On an object store (no rename) it is one
multipart upload to its final name, hashed as it is sent: a process that dies mid-upload leaves
no object (the upload is never completed), and any object counts only once the driver has
written the shard's completion record (dataset/manifest.py). Batches are buffered until about
``row_group_bytes`` so row groups are sized in bytes, not rows.

``write`` takes a record batch, or a function that makes one from the caller's tensors. With
``background=True`` the work leaves the caller's thread in three stages: ``encoders`` threads
turn those functions into record batches (several at once, handed on in the order written),
one thread writes each full row group into the file (pyarrow releases the GIL while it
serializes and writes), and on a local disk a third hashes and syncs the file behind it
(writers/flush.py). Every stage is bounded and blocks the one before it when full, down to the
caller: nothing is dropped, and memory stays near 2 x ``row_group_bytes`` plus ``2 x encoders``
batches. An error in any of them is raised by the next ``write`` or ``commit``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ..dataset.store import Store
from .flush import Flusher

__all__ = ["OWN_FILE", "ShardWriter", "part_name"]

#: the names raysight gives shard files and their temporaries (nothing else is ever deleted)
OWN_FILE = re.compile(r"^\.?part-\d{5,}\.(parquet|arrow)(\.\d+\.tmp)?$")


def part_name(shard: int, fmt: str) -> str:
    return f"part-{shard:05d}.{'parquet' if fmt == 'parquet' else 'arrow'}"


class _HashingSink:
    """A write-only file for pyarrow's writers that hashes and counts what it passes on."""

    def __init__(self, raw: Any):
        self.raw, self.digest, self.size, self.closed = raw, hashlib.sha256(), 0, False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.raw.write(view)
        self.size += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.raw.close()  # completes the upload


class ShardWriter:
    def __init__(
        self,
        directory: str | Path | Store,
        shard: int,
        schema: pa.Schema,
        fmt: str = "parquet",
        compression: str = "none",
        row_group_bytes: int = 128 * 2**20,
        background: bool = False,
        encoders: int = 1,
    ):
        self.store = directory if isinstance(directory, Store) else Store(directory)
        self.name = part_name(shard, fmt)
        self.final = self.store.dir / self.name if self.store.local else None
        self.tmp = self.final.with_name(f".{self.name}.{os.getpid()}.tmp") if self.final else None
        self._sink: _HashingSink | None = None
        self.schema = schema
        self.fmt = fmt
        self.compression = compression
        self.row_group_bytes = row_group_bytes
        self.rows = 0
        self.bytes = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_bytes = 0
        self._writer: Any = None
        self._pool = ThreadPoolExecutor(1, "raysight-writer") if background else None
        self._inflight: Future | None = None
        self._encoders = ThreadPoolExecutor(encoders, "raysight-encode") if background else None
        self._queue: deque[Future] = deque()  # encoding, in the order written
        self._queue_max = 2 * encoders
        self._flusher: Flusher | None = None
        self._lock = threading.Lock()
        self.write_seconds = 0.0  # time the caller spent blocked on writing
        self.encode_seconds = 0.0  # time spent making record batches, in any thread
        self.sha256: str | None = None  # of the committed file, for the manifest
        self.size = 0  # its bytes

    def start(self) -> ShardWriter:
        if self.tmp is not None:
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
            # A shard is only retried after its previous attempt died (a killed actor or
            # driver), so that attempt's unfinished file is garbage.
            for stale in self.tmp.parent.glob(f".{self.name}.*.tmp"):
                stale.unlink(missing_ok=True)
            sink: Any = self.tmp
            self.tmp.touch()
            self._flusher = Flusher(self.tmp).start()
        else:
            sink = self._sink = _HashingSink(self.store.open_output(self.name))
        if self.fmt == "parquet":
            # Activations barely compress, and dictionary encoding and statistics cost a lot for
            # float tensors, so both are off (FACTS: 29 -> 86-140 MB/s for float16).
            self._writer = pq.ParquetWriter(
                sink,
                self.schema,
                compression=None if self.compression == "none" else self.compression,
                use_dictionary=False,
                write_statistics=False,
                store_schema=True,
                write_page_checksum=True,  # CRC32 per page: readers can tell a damaged page
            )
        else:
            opts = ipc.IpcWriteOptions(
                compression=None if self.compression == "none" else self.compression
            )
            self._writer = ipc.new_file(
                str(sink) if self.tmp is not None else sink, self.schema, options=opts
            )
        return self

    def write(self, batch: pa.RecordBatch | Callable[[], pa.RecordBatch]) -> None:
        """Add a record batch, or a function that makes one (run by an encoder thread)."""
        if self._writer is None:
            raise RuntimeError("ShardWriter.write before start()")
        if self._encoders is None:
            batch = self._encode(batch)
            t0 = time.perf_counter()
            self._take(batch)
        else:
            t0 = time.perf_counter()
            self._queue.append(self._encoders.submit(self._encode, batch))
            while self._queue and (len(self._queue) > self._queue_max or self._queue[0].done()):
                self._take(self._queue.popleft().result())  # blocks while the queue is full
        self.write_seconds += time.perf_counter() - t0

    def drain(self) -> None:
        """Wait until every batch written so far is encoded (and in a row group or queued)."""
        t0 = time.perf_counter()
        while self._queue:
            self._take(self._queue.popleft().result())
        self.write_seconds += time.perf_counter() - t0

    def _encode(self, batch: pa.RecordBatch | Callable[[], pa.RecordBatch]) -> pa.RecordBatch:
        if isinstance(batch, pa.RecordBatch):
            return batch
        t0 = time.perf_counter()
        batch = batch()
        with self._lock:
            self.encode_seconds += time.perf_counter() - t0
        return batch

    def _take(self, batch: pa.RecordBatch) -> None:
        self._pending.append(batch)
        self._pending_bytes += batch.nbytes
        self.rows += batch.num_rows
        self.bytes += batch.nbytes
        if self._pending_bytes >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        self._wait()
        if self._pending:
            batches, self._pending, self._pending_bytes = self._pending, [], 0
            if self._pool is None:
                self._write_group(batches)
            else:
                self._inflight = self._pool.submit(self._write_group, batches)

    def _wait(self) -> None:
        if self._inflight is not None:
            done, self._inflight = self._inflight, None
            done.result()  # re-raises the thread's error here, in the caller

    def _write_group(self, batches: list[pa.RecordBatch]) -> None:
        table = pa.Table.from_batches(batches, schema=self.schema)
        if self.fmt == "parquet":
            self._writer.write_table(table, row_group_size=max(1, table.num_rows))
        else:
            for b in table.combine_chunks().to_batches():
                self._writer.write_batch(b)
        if self._flusher is not None:
            self._flusher.advance()

    def commit(self) -> Path | str:
        """Finish the file and move it into place atomically (or complete its upload); returns
        where it is (a path, or an object-store URL)."""
        self.drain()
        t0 = time.perf_counter()
        self._flush()
        self._wait()
        self._writer.close()
        self._writer = None
        if self._sink is not None:
            self._sink.close()
            self.sha256, self.size = self._sink.digest.hexdigest(), self._sink.size
            self._shutdown()
            self.write_seconds += time.perf_counter() - t0
            return self.store.url(self.name)
        self.sha256, self.size = self._flusher.finish()
        self._flusher = None
        os.replace(self.tmp, self.final)
        self._shutdown()
        self.write_seconds += time.perf_counter() - t0
        return self.final

    def _shutdown(self) -> None:
        if self._encoders is not None:
            for f in self._queue:
                f.cancel()
            self._queue.clear()
            self._encoders.shutdown(wait=True)
            self._encoders = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def fail(self) -> None:
        """Drop the partial file; nothing already committed is touched."""
        with contextlib.suppress(Exception):  # the error that made us fail is the one to report
            self._wait()
        self._shutdown()
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:
            pass
        self._writer = None
        if self._flusher is not None:
            self._flusher.abandon()
            self._flusher = None
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
        # An upload cannot be aborted through pyarrow: closing it completes it. Its object is
        # left (not deleted: another attempt may own that name by now) and never counted, as
        # it has no completion record; the shard's next attempt overwrites it.
        if self._sink is not None:
            with contextlib.suppress(Exception):
                self._sink.close()
