"""Load the model a spec names: an HF directory (safetensors or GGUF), a bundled model, or any
``torch.nn.Module`` from an import path. ``meta=True`` builds the same module tree with no
weights, for validation and planning.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import RaysightError
from ..spec.models import ModelSpec
from .bundled import resolve_bundled
from .names import NameTable

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "kept_models",
    "load_model",
    "meta_safe",
    "pick_device",
    "quiet_hf",
]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RaysightError, RuntimeError):
    """The model (or its tokenizer) could not be loaded; the message says which and why."""


@dataclass
class LoadedModel:
    module: torch.nn.Module
    tokenizer: Any | None
    kind: str  # "causal" | "encoder" | "tensor"
    names: NameTable
    device: torch.device
    model_type: str | None
    padding_side: str


@contextmanager
def meta_safe(loaded: LoadedModel) -> Iterator[None]:
    """Let a meta-device forward through HF code that needs values or a kernel meta lacks.

    HF's padding check reads ``config.pad_token_id`` against the ids; meta tensors have no values,
    so the check is switched off for the duration (it only warns anyway). A mixture of experts'
    default ``grouped_mm`` has a meta kernel for bf16 only and the eager loop picks experts by
    value, so experts run as ``batched_mm`` (the same shapes) for the duration.
    """
    if loaded.device.type != "meta":
        yield
        return
    saved: list[tuple[Any, str, Any]] = []
    configs = {id(c): c for m in loaded.module.modules() if (c := getattr(m, "config", None))}
    for config in configs.values():
        if getattr(config, "pad_token_id", None) is not None:
            saved.append((config, "pad_token_id", config.pad_token_id))
            config.pad_token_id = None
        if getattr(config, "_experts_implementation", None) not in (None, "batched_mm"):
            saved.append((config, "_experts_implementation", config._experts_implementation))
            config._experts_implementation = "batched_mm"
    try:
        yield
    finally:
        for config, attr, value in saved:
            setattr(config, attr, value)


def quiet_hf() -> None:
    """No weight-loading progress bars and only HF's errors: on a normal run they are noise
    between raysight's own progress lines (``raysight -v`` leaves them on)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device {requested!r}: no CUDA device is visible here")
    return dev


# models kept between runs by a session (engine/session.py): (model spec, meta, device) -> model
_KEPT: ContextVar[dict | None] = ContextVar("raysight_kept_models", default=None)


@contextmanager
def kept_models(store: dict) -> Iterator[dict]:
    """Inside, ``load_model`` returns the model it loaded before for the same model spec and
    device, from ``store``; a different model replaces what is kept (one model and its meta
    twin at a time: a session does not pile up replicas)."""
    token = _KEPT.set(store)
    try:
        yield store
    finally:
        _KEPT.reset(token)


def load_model(spec: ModelSpec, *, meta: bool = False, device: str | None = None) -> LoadedModel:
    """Load (or, with ``meta``, only build) the model; eval mode, no parameter gradients."""
    kept = _KEPT.get()
    if kept is None:
        return _load(spec, meta, device)
    model = spec.model_dump_json()
    key = (model, meta, device or spec.device)
    if key not in kept:
        for other in [k for k in kept if k[0] != model]:  # another model: free the old one
            del kept[other]
        kept[key] = _load(spec, meta, device)
    return kept[key]


def _load(spec: ModelSpec, meta: bool, device: str | None) -> LoadedModel:
    dev = torch.device("meta") if meta else pick_device(device or spec.device)
    if spec.factory:
        module, tok, kind, mtype = _from_factory(spec, dev), None, "tensor", None
    else:
        module, tok, kind, mtype = _from_hf(spec, dev, meta)
    module.eval().requires_grad_(False)
    side = spec.padding_side
    if side == "auto":
        side = "left" if kind == "causal" else "right"
    if tok is not None:
        tok.padding_side = side
    names = NameTable(
        mtype, {n for n, _ in module.named_modules()}, getattr(module, "config", None)
    )
    return LoadedModel(module, tok, kind, names, dev, mtype, side)


def _from_factory(spec: ModelSpec, dev: torch.device) -> torch.nn.Module:
    mod_name, _, attr = spec.factory.partition(":")  # type: ignore[union-attr]
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ModelLoadError(f"model.factory {spec.factory!r}: {e}") from None
    with torch.device(dev):
        module = obj(**spec.factory_kwargs)
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            f"model.factory {spec.factory!r} returned {type(module).__name__}, "
            "not a torch.nn.Module"
        )
    return module.to(dtype=_DTYPES.get(spec.dtype, torch.float32))


def _hf_kwargs(spec: ModelSpec) -> dict[str, Any]:
    kw: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if spec.attn_implementation != "auto":
        kw["attn_implementation"] = spec.attn_implementation
    if spec.gguf_file:
        kw["gguf_file"] = spec.gguf_file
    if spec.revision:
        kw["revision"] = spec.revision
    return kw


def _check_weights(spec: ModelSpec, path: str) -> None:
    """A local directory must hold weights raysight loads without unpickling (safetensors or
    GGUF); pickle checkpoints (``pytorch_model.bin``) can run code when loaded."""
    d = Path(path)
    if not d.is_dir() or spec.gguf_file:
        return  # a hub id, or a GGUF file named in the spec
    names = [p.name for p in d.iterdir()]
    if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
        return
    pickles = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
    what = f"only pickle weights ({', '.join(pickles)})" if pickles else "no weights"
    raise ModelLoadError(
        f"model.path {spec.path!r} holds {what}: raysight loads .safetensors (or a GGUF file "
        "named in model.gguf_file), never pickles; convert with save_pretrained("
        "safe_serialization=True)"
    )


def _config_dtype(config: Any) -> torch.dtype:
    """The checkpoint's dtype as its config records it (``dtype``, formerly ``torch_dtype``);
    float32 where it records none."""
    for key in ("dtype", "torch_dtype"):
        value = getattr(config, key, None)
        if isinstance(value, torch.dtype):
            return value
        if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
            return getattr(torch, value)
    return torch.float32


def _model_class(config: Any) -> tuple[Any, str]:
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            causal = arch.endswith(("ForCausalLM", "LMHeadModel"))
            return cls, "causal" if causal else "encoder"
    if getattr(config, "is_encoder_decoder", False) or not getattr(config, "is_decoder", True):
        return transformers.AutoModel, "encoder"
    return transformers.AutoModelForCausalLM, "causal"


def _from_hf(spec: ModelSpec, dev: torch.device, meta: bool):
    from transformers import AutoConfig, AutoTokenizer

    path = spec.path or ""
    try:
        if path.startswith("bundled:"):
            path = resolve_bundled(path)
        kw = _hf_kwargs(spec)
        if not Path(path).is_dir():  # a hub id: from the local cache only, never a download
            kw["local_files_only"] = True
        attn = kw.pop("attn_implementation", None)  # for the model, not its config
        config = AutoConfig.from_pretrained(path, **kw)
    except (OSError, ValueError, FileNotFoundError) as e:
        if kw.get("local_files_only"):
            raise ModelLoadError(
                f"model.path {spec.path!r} is not a model directory, and not a hub id in the "
                "local HF cache (HF_HUB_CACHE, default ~/.cache/huggingface/hub): raysight "
                f"does not download at run time; fetch it first (huggingface-cli download "
                f"{spec.path}) or give a directory"
            ) from None
        raise ModelLoadError(f"model.path {spec.path!r}: cannot read a model config: {e}") from None
    _check_weights(spec, path)
    cls, kind = _model_class(config)
    # the same dtype on the meta model (planning) and the real one (running): "auto" is the
    # checkpoint's own, read from its config, not whatever from_config would default to
    dtype = _config_dtype(config) if spec.dtype == "auto" else _DTYPES[spec.dtype]
    if meta:
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        # the fused kernels have the same shapes as sdpa, which runs on meta (flash does not)
        with torch.device("meta"):
            if attn:  # Auto classes have from_config, model classes _from_config
                build = getattr(cls, "from_config", None) or cls._from_config
                module = build(config, attn_implementation=attn if attn == "eager" else "sdpa")
            else:
                module = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
        module = module.to(dtype)
    else:
        load_kw: dict[str, Any] = dict(kw, dtype=dtype)
        if attn:
            load_kw["attn_implementation"] = attn
        if spec.device_map:
            load_kw["device_map"] = spec.device_map
        try:
            module = cls.from_pretrained(path, **load_kw)
        except (OSError, ValueError, ImportError) as e:  # ImportError: a missing flash-attn
            raise ModelLoadError(f"model.path {spec.path!r}: cannot load weights: {e}") from None
        if not spec.device_map:
            module = module.to(dev)
    tok = None
    try:
        tok_kw = kw if spec.tokenizer is None else {"trust_remote_code": spec.trust_remote_code}
        if spec.tokenizer is not None and not Path(spec.tokenizer).is_dir():
            tok_kw = dict(tok_kw, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(spec.tokenizer or path, **tok_kw)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"cannot load a tokenizer from {spec.tokenizer or path!r}: {e}"
        ) from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelLoadError("the tokenizer has neither a pad nor an eos token to pad with")
        tok.pad_token = tok.eos_token
    return module, tok, kind, getattr(config, "model_type", None)
