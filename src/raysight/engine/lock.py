"""One driver per output directory at a time: a lock file with a lease.

The driver that holds ``_lock.json`` renews it every few seconds. A second driver is refused
with a message naming the holder, unless the lease has run out (its driver died: a successor
takes over) or the holder is a dead process on this host (taken over at once). Without the lock
a second driver deleted the first one's in-progress files and every shard ran twice.
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

__all__ = ["LEASE_SECONDS", "LOCK_FILE", "LockHeld", "OutputLock"]

LOCK_FILE = "_lock.json"
LEASE_SECONDS = 30.0


class LockHeld(RuntimeError):
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
    def __init__(self, directory: Path, lease: float = LEASE_SECONDS):
        self.path = directory / LOCK_FILE
        self.lease = lease
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        return {**self.me, "renewed": time.time()}

    def _write(self) -> None:
        tmp = self.path.with_name(f".{LOCK_FILE}.{self.me['token']}")
        tmp.write_text(json.dumps(self._record()))
        os.replace(tmp, self.path)

    def _holder(self) -> dict[str, Any] | None:
        try:
            held = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # half-written or garbled: judge it by its age alone
            return {"renewed": self.path.stat().st_mtime}
        return held if isinstance(held, dict) else {"renewed": self.path.stat().st_mtime}

    def _alive(self, held: dict[str, Any]) -> bool:
        renewed = held.get("renewed")
        if not isinstance(renewed, (int, float)) or time.time() - renewed > self.lease:
            return False
        if held.get("host") == self.me["host"]:
            return _pid_alive(held.get("pid"))
        return True  # another host's driver: trust its lease

    def acquire(self) -> OutputLock:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = self._holder() or {}
            if self._alive(held):
                age = time.time() - held["renewed"]
                raise LockHeld(
                    f"output.path {str(self.path.parent)!r} is being written by another "
                    f"raysight run (pid {held.get('pid')} on {held.get('host')}, lock renewed "
                    f"{age:.0f} s ago); wait for it or stop it. A driver that died lets go "
                    f"after {self.lease:.0f} s."
                ) from None
            self._write()  # a dead driver's lock: take it over
        else:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self._record()))
        self._thread = threading.Thread(target=self._renew, name="raysight-lock", daemon=True)
        self._thread.start()
        return self

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
            self.path.unlink(missing_ok=True)
