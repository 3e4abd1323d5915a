"""One driver per output directory at a time: a lock file with a lease.

The driver that holds ``_lock.json`` renews it every few seconds. A second driver is refused
with a message naming the holder, unless the lease has run out (its driver died: a successor
takes over) or the holder is a dead process on this host (taken over at once). Without the lock
a second driver deleted the first one's in-progress files and every shard ran twice.

On an object store there is no exclusive create: the lock is written, then read back after a
moment, and the driver whose token is there holds it. Two drivers that start within that moment
can still both run; they write the same shard files and completion records, so the dataset is
still whole (tests/test_s3.py races two).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..dataset.store import Store
from ..errors import RaysightError

__all__ = ["LEASE_SECONDS", "LOCK_FILE", "LockHeld", "OutputLock"]

LOCK_FILE = "_lock.json"
LEASE_SECONDS = 30.0


class LockHeld(RaysightError, RuntimeError):
    """Another live driver is writing this output directory."""


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class OutputLock:
    def __init__(self, directory: Path | Store, lease: float = LEASE_SECONDS, settle: float = 1.0):
        self.store = directory if isinstance(directory, Store) else Store(directory)
        self.lease = lease
        self.settle = settle  # object stores: how long to wait before reading the lock back
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        return {**self.me, "renewed": time.time()}

    def _write(self) -> None:
        self.store.write_bytes(LOCK_FILE, json.dumps(self._record()).encode())

    def _holder(self) -> dict[str, Any] | None:
        try:
            held = json.loads(self.store.read_bytes(LOCK_FILE))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # half-written or garbled: judge it by its age alone
            return {"renewed": self._mtime()}
        return held if isinstance(held, dict) else {"renewed": self._mtime()}

    def _mtime(self) -> float:
        info = self.store.fs.get_file_info(self.store.path(LOCK_FILE))
        return info.mtime.timestamp() if info.mtime else 0.0

    def _alive(self, held: dict[str, Any]) -> bool:
        renewed = held.get("renewed")
        if not isinstance(renewed, (int, float)) or time.time() - renewed > self.lease:
            return False
        if held.get("host") == self.me["host"]:
            return _pid_alive(held.get("pid"))
        return True  # another host's driver: trust its lease

    def acquire(self) -> OutputLock:
        held = self._holder() if not self._create() else None
        if held is not None:
            if self._alive(held):
                raise self._refusal(held)
            self._write()  # a dead driver's lock: take it over
        if not self.store.local:  # no exclusive create: the last writer holds it
            time.sleep(self.settle)
            held = self._holder() or {}
            if held.get("token") != self.me["token"]:
                raise self._refusal(held)
        self._thread = threading.Thread(target=self._renew, name="raysight-lock", daemon=True)
        self._thread.start()
        return self

    def _create(self) -> bool:
        """Create the lock where there is none; False where one exists."""
        if not self.store.local:
            if self.store.exists(LOCK_FILE):
                return False
            self._write()
            return True
        try:
            fd = os.open(self.store.dir / LOCK_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self._record()))
        return True

    def _refusal(self, held: dict[str, Any]) -> LockHeld:
        age = time.time() - held.get("renewed", time.time())
        return LockHeld(
            f"output.path {self.store.uri!r} is being written by another raysight run (pid "
            f"{held.get('pid')} on {held.get('host')}, lock renewed {age:.0f} s ago); wait for "
            f"it or stop it. A driver that died lets go after {self.lease:.0f} s."
        )

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / 3):
            held = self._holder()
            if held is None or held.get("token") != self.me["token"]:
                return  # taken over (we looked dead): the new holder's run wins
            with contextlib.suppress(OSError):
                self._write()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = self._holder()
        if held is not None and held.get("token") == self.me["token"]:
            self.store.delete(LOCK_FILE)
