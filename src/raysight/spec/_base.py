"""Shared pieces of the spec models: the strict base class and site-checking validators."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

from .sites import SiteError, parse_module_site, parse_value_site
from .sweep import Placeholder, syntax_text

__all__ = [
    "MAX_TOKENS",
    "Dtype",
    "PathText",
    "PositionField",
    "Positions",
    "ValueSite",
    "_Strict",
    "_module_site",
    "_value_site",
    "tag_by_key",
]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        use_attribute_docstrings=True,
        populate_by_name=True,
        frozen=True,
        allow_inf_nan=False,  # NaN has no JSON form: _spec.json would not be JSON
    )


def _checked(v: str, parse: Callable[[str], Any]) -> str:
    """The canonical site text; a site with sweep placeholders is checked with each placeholder
    read as 0 and kept as written (each variant is checked again once filled in)."""
    try:
        if isinstance(v, str) and ("{" in v or "}" in v):
            parse(syntax_text(v))
            return v
        return str(parse(v))
    except SiteError as e:
        raise ValueError(str(e)) from None


def _value_site(v: str) -> str:
    return _checked(v, parse_value_site)


def _module_site(v: str) -> str:
    return _checked(v, parse_module_site)


ValueSite = Annotated[str, Field(description="a value site, e.g. layers.5.output[:, -1]")]


def _path(v: str) -> str:
    if not v.strip():
        raise ValueError("the path is blank")
    # expanded once, here, so every stage (and the resolved spec) sees the same path
    return os.path.expanduser(v)


#: a file or directory path; a leading ~ is expanded to the home directory
PathText = Annotated[str, AfterValidator(_path)]
Dtype = Literal["float32", "float16", "bfloat16"]


#: no row is longer than this many tokens (the bound of data.max_length)
MAX_TOKENS = 1_048_576


class PositionField(_Strict):
    """One position per row, read from a data column (``positions: {field: subj_pos}``)."""

    field: str = Field(min_length=1)
    """A data column holding each row's position among its real tokens (an integer; negative
    counts from the end). A row whose value is not one, or lies past its tokens, is a row
    error."""


def _nonempty(v: Any) -> Any:
    if isinstance(v, PositionField):
        return v
    if v is not None and not v:
        raise ValueError("positions is empty; omit it to mean every token")
    for p in v or []:
        if isinstance(p, int) and abs(p) > MAX_TOKENS:
            raise ValueError(f"position {p} lies beyond any row (at most {MAX_TOKENS:,} tokens)")
    return v


Positions = Annotated[
    list[StrictInt | Placeholder] | PositionField | None,  # strict: true is not position 1
    AfterValidator(_nonempty),
    Field(
        description="Token positions among the row's real tokens (negative counts from the end), "
        "whatever the padding side. Default: every token. With a sweep, an entry may be a "
        "placeholder such as '{pos}'. {field: column}: one position per row, from the data."
    ),
]


def tag_by_key(keys: tuple[str, ...]) -> Callable[[Any], str | None]:
    """A discriminator for variants tagged by the key they carry (``save:``, ``logprob:``…): the
    first of ``keys`` in a dict, or among a model's declared fields (not ``getattr``: nnsight
    patches ``object.save`` onto every object)."""

    def tag(v: Any) -> str | None:
        have = v if isinstance(v, dict) else getattr(type(v), "model_fields", {})
        return next((k for k in keys if k in have), None)

    return tag
