"""The one base class of raysight's expected errors: a bad spec, input, model, output path or
cluster, a damaged dataset. Each carries a message meant for a person, and the CLI prints it
without a traceback. Anything else escaping is a bug. (No imports: the spec layer uses it too.)
"""

from __future__ import annotations

__all__ = ["RaysightError"]


class RaysightError(Exception):
    """Something the user can fix; the message says what and where."""
