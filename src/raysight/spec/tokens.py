"""Tokens named in a spec: an id, a text that is one token, or a data column holding either per
row (the loss's targets, the metric reduces' tokens)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ._base import _Strict

__all__ = ["FieldRef", "TokenRef"]


class FieldRef(_Strict):
    field: str = Field(min_length=1)
    """A data column holding, per row, the token as text (exactly one token) or as an id."""


TokenRef = Annotated[
    int | str | FieldRef,
    Field(
        description="A token: its id (int), its text (must tokenize to exactly one token, "
        "e.g. ' Paris'), or {field: column} to take it from each data row."
    ),
]
