"""Sparse autoencoders in SAELens' layout, for expressions: ``encode(s, x)``, ``decode(s, z)``,
``error(s, x)`` (what the SAE misses, so ``decode(s, z') + error(s, x)`` is the standard
intervention that edits latents and keeps the rest of ``x``).

The weights (W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec, and threshold for JumpReLU)
are read from safetensors, never a pickle, once per process; cfg.json says the architecture
(standard ReLU, JumpReLU, top-k) and whether b_dec is subtracted from the input first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import RaysightError
from ..spec.values import SaeBinding

__all__ = ["Sae", "SaeError", "load_sae"]

WEIGHTS = "sae_weights.safetensors"
_NEEDED = ("W_enc", "b_enc", "W_dec", "b_dec")


class SaeError(RaysightError, ValueError):
    """An SAE file that cannot be used: missing, unreadable, or of inconsistent shapes."""


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: it holds tensors
class Sae:
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor | None
    architecture: str  # standard | jumprelu | topk
    k: int | None
    subtract_b_dec: bool

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    def to(self, like: torch.Tensor) -> Sae:
        return _moved(self, like.dtype, like.device)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d_in:
            raise SaeError(
                f"the SAE reads vectors of {self.d_in}; this value's last dim is {x.shape[-1]}"
            )
        pre = (x - self.b_dec if self.subtract_b_dec else x) @ self.W_enc + self.b_enc
        z = torch.relu(pre)
        if self.architecture == "jumprelu":  # as SAELens: ReLU, then the threshold's mask
            return z * (pre > self.threshold)
        if self.architecture == "topk":
            if pre.device.type == "meta":
                return z
            top = torch.topk(z, min(self.k, z.shape[-1]), dim=-1)
            return torch.zeros_like(z).scatter(-1, top.indices, top.values)
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[-1] != self.W_dec.shape[0]:
            raise SaeError(
                f"the SAE has {self.W_dec.shape[0]} latents; this value has {z.shape[-1]}"
            )
        return z @ self.W_dec + self.b_dec

    def error(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.decode(self.encode(x))


def load_sae(b: SaeBinding) -> Sae:
    return _load(b.sae, b.architecture, b.k)


@lru_cache(maxsize=8)
def _load(path: str, architecture: str, k: int | None) -> Sae:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    weights = p / WEIGHTS if p.is_dir() else p
    cfg_file = p / "cfg.json"  # SAELens' directory; a bare file says its kind by its tensors
    if not weights.is_file() or weights.suffix != ".safetensors":
        raise SaeError(f"SAE {path!r}: no {WEIGHTS} (or .safetensors file) there")
    try:
        t = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise SaeError(f"SAE {path!r}: not a readable safetensors file ({e})") from None
    missing = [n for n in _NEEDED if n not in t]
    if missing:
        raise SaeError(f"SAE {path!r} lacks {missing} (it has {sorted(t)}): SAELens' layout")
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    unsupported = {
        "normalize_activations": cfg.get("normalize_activations", "none") not in (None, "none"),
        "rescale_acts_by_decoder_norm": bool(cfg.get("rescale_acts_by_decoder_norm")),
        "hook_head_index": cfg.get("hook_head_index") is not None,
        "reshape_activations": cfg.get("reshape_activations", "none") not in (None, "none"),
    }
    asks = [k for k, v in unsupported.items() if v]
    if asks:
        raise SaeError(f"SAE {path!r}: cfg.json asks for {asks}, which raysight does not apply")
    threshold = t.get("threshold")
    if threshold is None and "log_threshold" in t:
        threshold = t["log_threshold"].exp()
    arch = architecture if architecture != "auto" else _architecture(cfg, threshold)
    if arch == "topk":
        k = k or (cfg.get("activation_fn_kwargs") or {}).get("k") or cfg.get("k")
        if not k:
            raise SaeError(f"SAE {path!r} is top-k but says no k: give k")
    if arch == "jumprelu" and threshold is None:
        raise SaeError(f"SAE {path!r}: a JumpReLU SAE needs a threshold tensor")
    d_in, d_sae = t["W_enc"].shape
    shapes = {"b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, want in shapes.items():
        if tuple(t[name].shape) != want:
            raise SaeError(
                f"SAE {path!r}: {name} is {list(t[name].shape)}; W_enc says {list(want)}"
            )
    subtract = bool(cfg.get("apply_b_dec_to_input", False))
    return Sae(t["W_enc"], t["b_enc"], t["W_dec"], t["b_dec"], threshold, arch, k, subtract)


def _architecture(cfg: dict, threshold: torch.Tensor | None) -> str:
    named = str(cfg.get("architecture", "")).lower()
    if named in ("standard", "jumprelu", "topk"):
        return named
    if str(cfg.get("activation_fn", "")).lower() == "topk":
        return "topk"
    return "jumprelu" if threshold is not None else "standard"


@lru_cache(maxsize=16)
def _moved(sae: Sae, dtype: torch.dtype, device: torch.device) -> Sae:
    def mv(w: torch.Tensor | None) -> torch.Tensor | None:
        return None if w is None else w.to(dtype=dtype, device=device)

    return Sae(
        mv(sae.W_enc),
        mv(sae.b_enc),
        mv(sae.W_dec),
        mv(sae.b_dec),
        mv(sae.threshold),
        sae.architecture,
        sae.k,
        sae.subtract_b_dec,
    )
