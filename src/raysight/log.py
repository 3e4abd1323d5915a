"""raysight's logger: stdlib ``logging`` under the name ``raysight``, which prints plain lines to
stderr unless the application configures it (as transformers does with its own logger). The
CLI sets its level: ``-q`` warnings and errors only, ``-v`` debug lines, Ray's and HF's own
output left on."""

from __future__ import annotations

import logging
import sys

__all__ = ["logger", "set_verbosity", "verbose"]

_LOGGER = logging.getLogger("raysight")


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a notebook's, pytest's capture)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def logger() -> logging.Logger:
    """The ``raysight`` logger, given a stderr handler the first time if it has none."""
    if not _LOGGER.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        _LOGGER.addHandler(handler)
        _LOGGER.propagate = False  # one copy of each line, not another via the root logger
        if _LOGGER.level == logging.NOTSET:
            _LOGGER.setLevel(logging.INFO)
    return _LOGGER


def set_verbosity(level: int) -> None:
    """-1: quiet (warnings), 0: normal (info), 1: verbose (debug)."""
    logger().setLevel({-1: logging.WARNING, 0: logging.INFO}.get(level, logging.DEBUG))


def verbose() -> bool:
    return logger().isEnabledFor(logging.DEBUG)
