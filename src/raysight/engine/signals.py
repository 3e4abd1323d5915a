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

__all__ = ["Interrupted", "as_interrupted", "interruptible", "rearm"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_handler: Any = None  # the active handler, while a run is interruptible
_received: list[int] = []  # the signal that stopped the run, while it is interruptible


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

    def handler(signum: int, frame: Any) -> None:
        if _received:
            return  # already stopping: let the clean-up finish
        _received.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    _handler = handler
    rearm()
    try:
        yield
    finally:
        _handler = None
        _received.clear()
        for s, h in previous.items():
            signal.signal(s, h)


def as_interrupted(e: KeyboardInterrupt) -> Interrupted:
    """The Interrupted behind ``e``: Ray's blocking calls (ray.wait) catch the exception our
    handler raises inside them and raise a plain KeyboardInterrupt instead."""
    if isinstance(e, Interrupted):
        return e
    return Interrupted(_received[0] if _received else signal.SIGINT)


def rearm() -> None:
    """Install the active handler again: ``ray.init`` replaces the SIGTERM handler with its own
    (which aborts the process)."""
    if _handler is not None and threading.current_thread() is threading.main_thread():
        for s in _SIGNALS:
            signal.signal(s, _handler)
