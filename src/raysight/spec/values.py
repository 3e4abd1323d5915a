"""Values a ``set`` writes or a ``skip`` returns, tagged by their key: a number, ``zeros``,
``noise``, ``file`` or ``from``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from ._base import PathText, ValueSite, _Strict, _value_site
from .sweep import Placeholder

__all__ = ["FileValue", "FromValue", "NoiseValue", "Value", "ZerosValue"]


class ZerosValue(_Strict):
    zeros: Literal[True]
    """Zeros shaped like the target."""


class NoiseParams(_Strict):
    std: float = Field(1.0, gt=0)
    """Standard deviation of the Gaussian noise."""
    seed: int = Field(0, ge=0)
    """Seed; each row draws from (seed, example_id), so a row's noise ignores its batch."""


class NoiseValue(_Strict):
    noise: NoiseParams
    """Gaussian noise shaped like the target."""


class FileParams(_Strict):
    path: PathText
    """A .npy (loaded with allow_pickle=False) or .safetensors file."""
    key: str | None = None
    """Tensor name inside a .safetensors file (optional when it holds one tensor)."""
    scale: float | Placeholder = 1.0
    """Multiply the tensor by this before use (e.g. a steering coefficient; with a sweep, a
    placeholder such as '{alpha}')."""


class FileValue(_Strict):
    file: FileParams
    """A tensor read from a file; it must broadcast to the target."""


class FromParams(_Strict):
    site: ValueSite
    """The value site to copy from; it must run before the target."""
    row: str | None = None
    """A pair member (one of data.pair.fields): copy the site's value from that row of the
    example's pair, in the same batch (nnsight's invokes + barrier). The op then applies to the
    pair's other rows. Default: the row itself."""

    _check = field_validator("site")(_value_site)


class FromValue(_Strict):
    from_: FromParams = Field(alias="from")
    """Another site's value (after the ops applied to it), in the same row or a paired one."""

    @field_validator("from_", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"site": v} if isinstance(v, str) else v


def _value_tag(v: Any) -> str | None:
    if isinstance(v, (int, float, str)) and not isinstance(v, bool):
        return "number"  # a string here is a sweep placeholder
    keys = (
        set(v)
        if isinstance(v, dict)
        else {k for k in ("zeros", "noise", "file", "from_") if getattr(v, k, None) is not None}
    )
    for key in ("zeros", "noise", "file"):
        if key in keys:
            return key
    return "from" if keys & {"from", "from_"} else None


Value = Annotated[
    Annotated[float | Placeholder, Tag("number")]
    | Annotated[ZerosValue, Tag("zeros")]
    | Annotated[NoiseValue, Tag("noise")]
    | Annotated[FileValue, Tag("file")]
    | Annotated[FromValue, Tag("from")],
    Discriminator(
        _value_tag,
        custom_error_type="value",
        custom_error_message="a value is a number (or a sweep placeholder) or one of "
        "{zeros: true}, {noise: {std, seed}}, {file: {path, key, scale}}, {from: site}",
    ),
]
