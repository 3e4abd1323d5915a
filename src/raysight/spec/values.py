"""Values a ``set`` writes or a ``skip`` returns, tagged by their key: a number, ``zeros``,
``noise``, ``file`` or ``from``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from ._base import PathText, ValueSite, _Strict, _value_site
from .expr import FUNCTIONS, ExprError, check_expr
from .sweep import PLACEHOLDER, Placeholder

__all__ = [
    "DatasetValue",
    "ExprValue",
    "FileValue",
    "FromValue",
    "NoiseValue",
    "NumberField",
    "SaeBinding",
    "Value",
    "ZerosValue",
    "dataset_values",
    "number_fields",
]


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
    """A tensor read from a file (or its path alone); it must broadcast to the target."""

    @field_validator("file", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v


class DatasetValue(_Strict):
    """A value from an earlier raysight run's dataset (nnsight's sessions, as data)."""

    dataset: PathText
    """The earlier run's output directory (or s3:// URI); it must verify complete, and its spec
    hash goes into this run's manifest (its fingerprint)."""
    column: str = Field(min_length=1)
    """The column to read (`raysight inspect` lists a dataset's columns)."""
    reduce: Literal["mean"] | None = None
    """mean: the mean over every row (and every token, for a column with a token dimension): a
    mean-ablation value, or a steering vector from a contrast's two runs."""
    join: Literal["example_id"] | None = None
    """example_id: this row's value is the earlier run's value for the row with the same
    example_id (a row missing there is a row error)."""

    @model_validator(mode="after")
    def _one_way(self) -> DatasetValue:
        if (self.reduce is None) == (self.join is None):
            raise ValueError("give exactly one of reduce: mean or join: example_id")
        return self


class SaeBinding(_Strict):
    """A sparse autoencoder (or transcoder) in SAELens' layout, for expressions' encode(),
    decode() and error()."""

    sae: PathText
    """A directory holding `sae_weights.safetensors` and `cfg.json` (SAELens' layout), or a
    .safetensors file alone: W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec, and
    `threshold` for JumpReLU."""
    architecture: Literal["auto", "standard", "jumprelu", "topk"] = "auto"
    """auto: cfg.json's `architecture` (or `activation_fn: topk`), else jumprelu where the file
    has a threshold, else standard (ReLU)."""
    k: int | None = Field(None, ge=1, le=1_000_000)
    """Latents a top-k SAE keeps (default: cfg.json's `activation_fn_kwargs.k`)."""


class NumberField(_Strict):
    field: str = Field(min_length=1)
    """A data column holding a number per row (a per-prompt coefficient); a row whose value is
    not a finite number is a row error."""


class ExprValue(_Strict):
    expr: str
    """An expression computed per row (spec/expr.py): `x` is the target's value for the row
    (what a save of the same site gives), `let` names numbers and tensor files; e.g.
    `ablate(x, d)`. The result must broadcast to the target."""
    let: dict[str, float | Placeholder | FileValue | DatasetValue | SaeBinding | NumberField] = {}
    """Names the expression may use besides `x`: a number (or a sweep placeholder), a tensor
    file {file: path.npy}, an earlier run's value {dataset, column, reduce | join}, an SAE
    {sae: path}, or the row's own number from a data column {field: name}."""

    @model_validator(mode="after")
    def _checked(self) -> ExprValue:
        check_let_names(self.let)
        try:  # a sweep fills its placeholders ({alpha}) in before the variant is checked again
            check_expr(PLACEHOLDER.sub("1", self.expr), set(self.let))
        except ExprError as e:
            shown = self.expr if len(self.expr) <= 60 else self.expr[:57] + "..."
            raise ValueError(f"expr {shown!r}: {e}") from None
        return self


def check_let_names(let: dict[str, Any]) -> None:
    for name in let:
        if not name.isidentifier() or name == "x" or name in FUNCTIONS:
            raise ValueError(
                f"let: {name!r} cannot be a name here (an identifier other than x and the "
                "function names)"
            )


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
        else {
            k
            for k in ("zeros", "noise", "file", "expr", "dataset", "from_")
            if getattr(v, k, None) is not None
        }
    )
    for key in ("zeros", "noise", "file", "expr", "dataset"):
        if key in keys:
            return key
    return "from" if keys & {"from", "from_"} else None


Value = Annotated[
    Annotated[float | Placeholder, Tag("number")]
    | Annotated[ZerosValue, Tag("zeros")]
    | Annotated[NoiseValue, Tag("noise")]
    | Annotated[FileValue, Tag("file")]
    | Annotated[ExprValue, Tag("expr")]
    | Annotated[DatasetValue, Tag("dataset")]
    | Annotated[FromValue, Tag("from")],
    Discriminator(
        _value_tag,
        custom_error_type="value",
        custom_error_message="a value is a number (or a sweep placeholder) or one of "
        "{zeros: true}, {noise: {std, seed}}, {file: {path, key, scale}}, {expr, let}, "
        "{dataset, column, reduce | join}, {from: site}",
    ),
]


def number_fields(ops: list[Any], where: str = "ops") -> list[tuple[str, str]]:
    """(data column, where) for every per-row number the ops' expressions read."""
    out = []
    for i, op in enumerate(ops):
        for key in ("value", "reduce"):
            v = getattr(op, key, None)
            if isinstance(v, ExprValue):
                for name, b in v.let.items():
                    if isinstance(b, NumberField):
                        out.append((b.field, f"{where}.{i}.{key}.let.{name}"))
    return out


def dataset_values(ops: list[Any]) -> list[DatasetValue]:
    """Every earlier run's value the ops read (set values, and expressions' let bindings)."""
    out = []
    for op in ops:
        for v in (getattr(op, "value", None), getattr(op, "reduce", None)):
            if isinstance(v, DatasetValue):
                out.append(v)
            elif isinstance(v, ExprValue):
                out += [b for b in v.let.values() if isinstance(b, DatasetValue)]
    return out
