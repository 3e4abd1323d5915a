"""Copy a batch's saved values off the device in one go.

On a GPU every saved value is copied into pinned (page-locked) host memory with
``non_blocking=True`` and the stream is synchronized once per batch, instead of one blocking copy
per value, or per row for values whose rows differ in length (those are concatenated on the
device first and split again on the host, as views). Pinned buffers come from torch's caching
host allocator, so they are reused across batches. On the CPU nothing is copied.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["to_host"]


def _on_device(t: torch.Tensor) -> bool:
    return t.device.type not in ("cpu", "meta")


def _copy(t: torch.Tensor) -> torch.Tensor:
    pin = t.device.type == "cuda"
    buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=pin)
    buf.copy_(t, non_blocking=pin)
    return buf


def _rows(rows: list[torch.Tensor]) -> list[torch.Tensor]:
    if not any(_on_device(r) for r in rows):
        return rows
    if rows and all(r.dim() >= 1 and r.shape[1:] == rows[0].shape[1:] for r in rows):
        flat = _copy(torch.cat(rows))
        return list(flat.split([r.shape[0] for r in rows]))
    return [_copy(r) if _on_device(r) else r for r in rows]


def to_host(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` (tensors, or lists of per-row tensors) with every tensor in host memory."""
    out: dict[str, Any] = {}
    devices: set[torch.device] = set()
    for key, v in results.items():
        tensors = [v] if torch.is_tensor(v) else list(v)
        devices.update(t.device for t in tensors if _on_device(t))
        if torch.is_tensor(v):
            out[key] = _copy(v) if _on_device(v) else v
        else:
            out[key] = _rows(tensors)
    for device in devices:
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()  # the non-blocking copies landed
    return out
