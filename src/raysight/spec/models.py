"""The intervention spec as Pydantic models.

Every field carries a docstring (it becomes the JSON Schema description and the CLI help);
``extra="forbid"`` everywhere so a typo is an error, not a silently ignored key. Ops and values are
tagged by the key they carry (``save:``, ``set:``…; ``zeros:``, ``noise:``…), so error paths read
like the YAML: ``ops.2.set.value.noise.std``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ._base import (
    Dtype,
    PathText,
    Positions,
    ValueSite,
    _module_site,
    _Strict,
    _value_site,
    tag_by_key,
)
from .backward import BackwardSpec, GradOp, MeanLoss, SumLoss
from .data import DataSpec, PairSpec
from .generate import GenerateSpec, Steps, parse_steps
from .output import ExecutionSpec, OutputSpec
from .reduce import Reduce, TopK
from .sweep import Axis, Variant
from .values import ExprValue, FileValue, FromValue, NoiseValue, SaeBinding, Value, ZerosValue

__all__ = [
    "ALLOW_CODE",
    "BackwardSpec",
    "CacheOp",
    "DataSpec",
    "ExecutionSpec",
    "ExprValue",
    "FileValue",
    "FromValue",
    "GradOp",
    "ModelSpec",
    "NoiseValue",
    "Op",
    "OutputSpec",
    "PairSpec",
    "SaveOp",
    "SetOp",
    "SkipOp",
    "Spec",
    "TopK",
    "Value",
    "Variant",
    "ZerosValue",
    "code_allowed",
]


# ----------------------------------------------------------------------------- model / data
class ModelSpec(_Strict):
    path: PathText | None = None
    """HF model directory, or a hub id (`org/name`) already in the local HF cache (HF_HUB_CACHE,
    default ~/.cache/huggingface/hub): raysight never downloads at run time, so every actor
    loads the same files; fetch first with `huggingface-cli download org/name`."""
    gguf_file: str | None = None
    """A GGUF file inside `path` to load (needs the `gguf` package)."""
    factory: str | None = None
    """Import path `pkg.module:callable` returning a torch.nn.Module (instead of `path`). This
    imports and runs code, so it needs an opt-in outside the spec: `--allow-code` on the command
    line, or `allow_code=True` in Python."""
    factory_kwargs: dict[str, Any] = {}
    """Keyword arguments for `factory` (JSON values only)."""
    tokenizer: PathText | None = None
    """Tokenizer directory; defaults to `path`."""
    dtype: Literal["float32", "float16", "bfloat16", "auto"] = "auto"
    """Dtype the weights are loaded in; auto: the checkpoint's own (its config's dtype), as HF
    loads it."""
    device: str = "auto"
    """'auto' (CUDA when the actor has a GPU, else CPU), 'cpu', 'cuda', 'cuda:1', 'mps', 'xpu'."""
    device_map: str | None = None
    """accelerate device_map (e.g. 'auto') for a model larger than one device."""
    revision: str | None = None
    """Hub revision (branch, tag or commit)."""
    trust_remote_code: bool = False
    """Run code shipped with the model directory. Needs the same opt-in outside the spec as
    `factory` (`--allow-code`, or `allow_code=True` in Python)."""
    padding_side: Literal["auto", "left", "right"] = "auto"
    """'auto': left for causal LMs (with position_ids from the mask), right for encoders."""
    attn_implementation: Literal[
        "auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"
    ] = "auto"
    """The attention kernel HF runs (its `attn_implementation`); auto: the model's default
    (usually sdpa). Attention modules return their weights (element 1 of a raw attention
    module's output) under eager only; the fused kernels return None there."""

    @field_validator("factory", "trust_remote_code")
    @classmethod
    def _code_needs_opt_in(cls, v: Any, info: ValidationInfo) -> Any:
        # A spec is data: whoever hands us a spec file must not be able to run code with it.
        # The opt-in travels in the validation context, which a spec file cannot set.
        if v and not code_allowed(info.context):
            what = repr(v) if isinstance(v, str) else "true"
            raise ValueError(
                f"{what} asks raysight to import and run code, which a spec cannot do on its "
                "own; opt in outside the spec: `raysight ... --allow-code`, or allow_code=True "
                "in Python (see docs/security.md)"
            )
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d{1,3})?", v):
            raise ValueError(f"{v!r} is not a device: use auto, cpu, cuda, cuda:N, mps or xpu")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.path is None) == (self.factory is None):
            raise ValueError("give exactly one of model.path or model.factory")
        if self.factory is not None and not _is_import_path(self.factory):
            raise ValueError(f"model.factory {self.factory!r} must look like 'pkg.module:callable'")
        if self.gguf_file and self.path is None:
            raise ValueError("model.gguf_file needs model.path (the directory holding it)")
        return self


ALLOW_CODE = "allow_code"  # key of the validation context that carries the opt-in


def code_allowed(context: Any) -> bool:
    """Whether the validation context carries the caller's opt-in to run code."""
    return isinstance(context, dict) and context.get(ALLOW_CODE) is True


def _is_import_path(text: str) -> bool:
    mod, _, attr = text.partition(":")
    return bool(mod and attr) and all(p.isidentifier() for p in mod.split(".") + attr.split("."))


# ----------------------------------------------------------------------------- ops
class SaveOp(_Strict):
    save: ValueSite
    """Value site to save (wildcards and ranges expand to one column each)."""
    positions: Positions = None
    as_: str | None = Field(None, alias="as", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Column name (default: the site). With a wildcard, each column is `<as>.<expanded parts>`."""
    apply: list[str | SaeBinding] = []
    """Modules called on the value before saving, in order (e.g. [final_norm, lm_head] for the
    logit lens); their forward runs directly: no hooks fire. An item {sae: path} encodes with
    that SAE: its latents, which `reduce: {topk: k}` keeps sparse (ids and values)."""
    reduce: Reduce | None = None
    """Reduce the last dimension: argmax, topk {topk: k}, norm (L2), mean, or a metric on
    logits: {logit_diff: {a, b}}, {prob: token}, {logprob: token}; or any expression of the
    row's value x, {expr: "entropy(x)", let: {...}}."""
    dtype: Dtype | None = None
    """Cast before saving; default: the value's own dtype."""
    steps: Steps = None
    call: int | None = Field(None, ge=0, le=1023)
    """Which call of a module that runs more than once per forward pass (0: the first), as
    nnsight's `.next()`; needed on such a module, refused on one called once above 0."""
    special_tokens: Literal["keep", "drop"] = "keep"
    """drop: leave the tokenizer's special tokens (BOS, EOS...) out of the value's sequence
    dimension before `apply` and `reduce`, so the saved tokens are text tokens only (a BOS
    residual's norm can be many times a text token's, and dominates a mean over tokens).
    Every other token of the row is kept; not with `positions`, an index selector or
    `generate`. The per_token layout has `output.special_tokens` for its rows."""

    _site = field_validator("save")(_value_site)

    @model_validator(mode="after")
    def _drop_whole_rows(self) -> SaveOp:
        if self.special_tokens == "drop" and (self.positions is not None or "[" in self.save):
            raise ValueError(
                "special_tokens: drop keeps every text token of the row; it cannot be combined "
                "with positions or an index selector"
            )
        return self

    @field_validator("apply")
    @classmethod
    def _modules(cls, v: list[str | SaeBinding]) -> list[str | SaeBinding]:
        return [_module_site(m) if isinstance(m, str) else m for m in v]


class SetOp(_Strict):
    set: ValueSite
    """Value site to write (an index selector writes only that slice)."""
    positions: Positions = None
    value: Value
    """What to write."""
    mode: Literal["replace", "add", "scale"] = "replace"
    """replace: x = v; add: x = x + v; scale: x = x * v."""
    steps: Steps = None
    call: int | None = Field(None, ge=0, le=1023)
    """Which call of a module that runs more than once per forward pass (0: the first), as
    nnsight's `.next()`; needed on such a module, refused on one called once above 0."""

    _site = field_validator("set")(_value_site)


class SkipOp(_Strict):
    skip: str
    """Module whose forward is not run."""
    with_: str | Value | None = Field(None, alias="with")
    """Its output instead: a value site that ran before it, or a value. Default: the module's
    first input passes through unchanged (an identity layer)."""
    steps: Steps = None

    _site = field_validator("skip")(_module_site)

    @field_validator("with_")
    @classmethod
    def _with_site(cls, v: Any) -> Any:
        if isinstance(v, ExprValue):
            raise ValueError("an expression needs a value x to compute from; a skip has none")
        return _value_site(v) if isinstance(v, str) else v


class CacheOp(_Strict):
    cache: str
    """Module pattern (e.g. `layers.*`, `layers.*.mlp`): save the output of each match."""
    positions: Positions = None
    as_: str | None = Field(None, alias="as", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Column prefix (default: each module's path)."""
    dtype: Dtype | None = None
    """Cast before saving; default: the value's own dtype."""
    steps: Steps = None

    _site = field_validator("cache")(_module_site)


_op_tag = tag_by_key(("save", "set", "skip", "cache", "grad"))


_OP_ERROR = "an op has exactly one of the keys save, set, skip, cache, grad"
Op = Annotated[
    Annotated[SaveOp, Tag("save")]
    | Annotated[SetOp, Tag("set")]
    | Annotated[SkipOp, Tag("skip")]
    | Annotated[CacheOp, Tag("cache")]
    | Annotated[GradOp, Tag("grad")],
    Discriminator(_op_tag, custom_error_type="op", custom_error_message=_OP_ERROR),
]
Edit = Annotated[
    Annotated[SetOp, Tag("set")] | Annotated[SkipOp, Tag("skip")],
    Discriminator(
        _op_tag, custom_error_type="edit", custom_error_message="an edit is a set or a skip"
    ),
]


class Spec(_Strict):
    version: Literal[1] = 1
    """Spec format version."""
    model: ModelSpec
    """Which model to load."""
    data: DataSpec
    """Which rows to run."""
    sweep: dict[str, Axis] | None = None
    """Axes (name: list of values, or an integer range 'a:b'); every combination is a variant,
    whose ops have each placeholder ({name}, {name+k}, {name-k}) filled in. Variants of a row
    run in the same batch; each output row carries its `variant` and the axis values."""
    edits: list[Edit] = []
    """Interventions applied to every row before any op (nnsight's model.edit())."""
    ops: list[Op] = []
    """Saves, sets, skips, caches and grads; applied in the model's execution order, list order
    breaking ties on the same site."""
    backward: BackwardSpec | None = None
    """A loss to differentiate; `grad` ops save or set gradients of it."""
    generate: GenerateSpec | None = None
    """Generate new tokens; ops pick the forward passes (steps) they apply to."""
    output: OutputSpec
    """Where and how results are written."""
    execution: ExecutionSpec = ExecutionSpec()
    """How the run is executed."""

    _variants: list[Variant] = PrivateAttr(default_factory=list)
    _allow_code: bool = PrivateAttr(default=False)

    @property
    def variants(self) -> list[Variant]:
        """The sweep's variants (one, holding the ops as written, without a sweep)."""
        return self._variants

    @property
    def allow_code(self) -> bool:
        """Whether this spec was validated with the caller's opt-in to run code (the runner
        hands it on to the actors, which validate the spec again)."""
        return self._allow_code

    @model_validator(mode="after")
    def _cross_field(self, info: ValidationInfo) -> Spec:
        from .variants import expand

        self._allow_code = code_allowed(info.context)
        self._variants, problems = expand(self)
        problems += self._pair_problems()
        names: dict[str, int] = {}
        for i, op in enumerate(self.ops):
            name = getattr(op, "as_", None)
            if name is not None:
                if name in names:
                    problems.append(
                        f"ops.{i}.as: name {name!r} is already used by ops.{names[name]}"
                    )
                names.setdefault(name, i)
            saves = isinstance(op, (SaveOp, CacheOp)) or (isinstance(op, GradOp) and not op.is_set)
            if self.output.layout == "per_token" and saves:
                if op.positions is not None:
                    problems.append(
                        f"ops.{i}.positions: output.layout per_token writes one row per token; "
                        "drop positions or use layout per_sequence"
                    )
                key = "grad" if isinstance(op, GradOp) else "save"
                if not isinstance(op, CacheOp) and "[" in getattr(op, key):
                    problems.append(
                        f"ops.{i}.{key}: an index selector cannot be used with output.layout "
                        "per_token (each row is one token); use layout per_sequence"
                    )
            if getattr(op, "special_tokens", "keep") == "drop" and (
                self.output.layout == "per_token" or self.generate is not None
            ):
                where = "output.layout per_token" if self.generate is None else "generate"
                problems.append(
                    f"ops.{i}.special_tokens: drop is for per_sequence saves of a forward, not "
                    f"with {where}"
                    + ("; use output.special_tokens: drop" if self.generate is None else "")
                )
        grads = [i for i, op in enumerate(self.ops) if isinstance(op, GradOp)]
        if grads and self.backward is None:
            problems.append(f"ops.{grads[0]}.grad: a grad op needs a backward section (the loss)")
        if self.backward is not None and not grads:
            problems.append("backward: no grad op uses the loss; add a `grad:` op")
        problems += self._generation_problems()
        problems += self._keep_problems()
        if self.data.input_field and any(
            getattr(op, "positions", None) for op in [*self.ops, *self.edits]
        ):
            problems.append("positions index tokens; data.input_field rows have none")
        loss = self.backward.loss if self.backward else None
        if self.data.input_field and loss is not None and not isinstance(loss, (SumLoss, MeanLoss)):
            problems.append(
                "backward.loss: token losses read a language model's logits; a model fed "
                "data.input_field tensors can use sum or mean of a site"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _pair_problems(self) -> list[str]:
        out = []
        pair = self.data.pair
        for section, ops in (("edits", self.edits), ("ops", self.ops)):
            for i, op in enumerate(ops):
                where = f"{section}.{i}"
                value = getattr(op, "value", None)
                if isinstance(op, SkipOp):
                    value, where = op.with_, f"{where}.with"
                elif value is not None:
                    where = f"{where}.value"
                row = value.from_.row if isinstance(value, FromValue) else None
                if row is None:
                    continue
                if isinstance(op, SkipOp):
                    out.append(f"{where}.from.row: a skip takes its own row's value; use a set")
                elif pair is None:
                    out.append(f"{where}.from.row: copying from another row needs data.pair")
                elif row not in pair.fields:
                    out.append(
                        f"{where}.from.row: {row!r} is not one of data.pair.fields {pair.fields}"
                    )
        return out

    def _keep_problems(self) -> list[str]:
        from .variants import RESERVED

        taken = {*RESERVED, *(self.sweep or {})}
        out = [
            f"data.keep: {name!r} is an identity column or sweep axis of the output; it cannot "
            "be copied under that name"
            for name in self.data.keep
            if name in taken
        ]
        if self.data.keep and self.data.input_field:
            out.append("data.keep: rows of data.input_field tensors carry no other columns")
        return out

    def _generation_problems(self) -> list[str]:
        gen, out = self.generate, []
        for section, ops in (("edits", self.edits), ("ops", self.ops)):
            for i, op in enumerate(ops):
                steps = getattr(op, "steps", None)
                if steps is None:
                    continue
                if gen is None:
                    out.append(f"{section}.{i}.steps: steps pick generation steps; add generate:")
                elif parse_steps(steps)[0] >= gen.max_new_tokens:
                    out.append(
                        f"{section}.{i}.steps: {steps!r} starts at step {parse_steps(steps)[0]}, "
                        f"beyond generate.max_new_tokens ({gen.max_new_tokens} passes: steps "
                        f"0..{gen.max_new_tokens - 1})"
                    )
        if gen is not None:
            if self.output.layout == "per_token":
                out.append("output.layout: per_token is not supported with generate")
            if self.backward is not None:
                out.append(
                    "backward: gradients during generate are not supported (a generated token "
                    "is sampled, so no loss differentiates through it); take gradients on a "
                    "forward pass of the prompt and its continuation as text"
                )
            if self.data.input_field:
                out.append("generate: needs a language model fed text, not data.input_field")
        return out
