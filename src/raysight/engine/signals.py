"""Stop a run cleanly on SIGTERM (what ``ray job stop`` and Kubernetes send) and SIGINT (Ctrl-C).

While a run is under way, either signal raises :class:`Interrupted` in the main thread. It is a
``KeyboardInterrupt``, so ``except Exception`` blocks let it through and a notebook treats it as
an interrupt; every ``finally`` on the way out runs: in-flight shard files are dropped, actors
killed, a Ray instance that the run started is shut down. The CLI turns it into exit code
128 + the signal (130 for SIGINT, 143 for SIGTERM) and one line saying how to resume.

A second signal while stopping is ignored, so the clean-up is not cut short halfway.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Interrupted", "interruptible", "rearm"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_handler: Any = None  # the active handler, while a run is interruptible


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; finished shards are kept, a rerun resumes."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGINT raise Interrupted inside the block (main thread only; elsewhere the
    block runs as it is). The previous handlers come back afterwards."""
    global _handler
    if threading.current_thread() is not threading.main_thread() or _handler is not None:
        yield
        return
    stopping: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if stopping:
            return  # already stopping: let the clean-up finish
        stopping.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    _handler = handler
    rearm()
    try:
        yield
    finally:
        _handler = None
        for s, h in previous.items():
            signal.signal(s, h)


def rearm() -> None:
    """Install the active handler again: ``ray.init`` replaces the SIGTERM handler with its own
    (which aborts the process)."""
    if _handler is not None and threading.current_thread() is threading.main_thread():
        for s in _SIGNALS:
            signal.signal(s, _handler)
