"""Hashing and flushing a shard file behind its writer, so commit has little left to do.

A plain write lands in the page cache; the disk sees the bytes only when the kernel writes them
back, which it starts late and then throttles the writer for (dirty-page limits), and the
checksum used to be a second pass over the whole file at commit. Here a helper thread follows
the writer: each time a row group is in the file it reads the new bytes back from the page cache
(so the checksum covers the bytes as they landed), hashes them, ``fdatasync``s the file and lets
the kernel drop the pages already on disk. The disk then works while the next row groups are
encoded, and commit only hashes and syncs the tail. Both formats only ever append, so bytes below
a size the writer reported never change.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

__all__ = ["Flusher"]

_CHUNK = 16 * 2**20


class Flusher:
    def __init__(self, path: Path):
        self.path = path
        self.digest = hashlib.sha256()
        self.done = 0  # bytes hashed (and synced)
        self._target = 0
        self._closing = False
        self._error: BaseException | None = None
        self._cv = threading.Condition()
        self._fd: int | None = None
        self._thread = threading.Thread(target=self._loop, name="raysight-flush", daemon=True)

    def start(self) -> Flusher:
        self._fd = os.open(self.path, os.O_RDONLY)
        self._thread.start()
        return self

    def advance(self) -> None:
        """The writer has put more bytes in the file (called after each row group)."""
        size = os.fstat(self._fd).st_size
        with self._cv:
            self._target = max(self._target, size)
            self._cv.notify()

    def finish(self) -> tuple[str, int]:
        """After the writer closed the file: hash and sync the rest; (sha256, size)."""
        self.advance()
        self._stop()
        if self._error is not None:
            raise self._error
        self._catch_up(self._target)
        os.fsync(self._fd)  # metadata too: the size, before the rename publishes the file
        self._close_fd()
        return self.digest.hexdigest(), self.done

    def abandon(self) -> None:
        self._stop()
        self._close_fd()

    def _stop(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _loop(self) -> None:
        try:
            while True:
                with self._cv:
                    while self._target <= self.done and not self._closing:
                        self._cv.wait()
                    if self._closing:
                        return
                    target = self._target
                self._catch_up(target)
        except BaseException as e:  # raised by finish(), in the caller
            self._error = e

    def _catch_up(self, target: int) -> None:
        start = self.done
        while self.done < target:
            data = os.pread(self._fd, min(_CHUNK, target - self.done), self.done)
            if not data:
                raise OSError(f"{self.path}: ended at {self.done} bytes, expected {target}")
            self.digest.update(data)  # releases the GIL for buffers this size
            self.done += len(data)
        if self.done > start:
            os.fdatasync(self._fd)
            # on disk now: the pages need not stay in memory (a shard can be tens of GB)
            os.posix_fadvise(self._fd, 0, self.done, os.POSIX_FADV_DONTNEED)
