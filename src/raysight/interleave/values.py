"""Value sources for ``set`` and ``skip``: numbers, zeros, seeded noise, tensor files.

Specs are data: tensors come from .npy (``allow_pickle=False``) or safetensors, never pickle.
Noise is drawn per row from (seed, example_id) on the CPU, so a row's noise is the same whatever
its batch, device or shard.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RaysightError
from ..spec.models import FileValue, NoiseValue, ZerosValue
from ..spec.values import DatasetValue

__all__ = ["ValueError_", "check_broadcast", "load_tensor_file", "make_value", "row_seed"]


class ValueError_(RaysightError, ValueError):
    """A value that cannot be built (unreadable file, wrong shape)."""


@lru_cache(maxsize=32)
def load_tensor_file(path: str, key: str | None) -> torch.Tensor:
    p = Path(path)
    if not p.exists():
        raise ValueError_(f"tensor file {path!r} not found")
    if not p.is_file():  # a FIFO would block, a device never end
        raise ValueError_(f"tensor file {path!r} is not a regular file")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as e:
            if "pickle" not in str(e):  # truncated or malformed, not an object array
                raise ValueError_(f"{path!r} is not a readable .npy file: {e}") from None
            raise ValueError_(
                f"{path!r} holds pickled Python objects ({e}); raysight never unpickles "
                "spec data: save a plain numeric array (np.save with a numeric dtype)"
            ) from None
        except (OSError, EOFError) as e:
            raise ValueError_(f"{path!r} is not a readable .npy file: {e}") from None
        if arr.dtype.kind not in "fiub":
            raise ValueError_(f"{path!r} has dtype {arr.dtype}; a numeric array is needed")
        return torch.from_numpy(np.ascontiguousarray(arr))
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(p)
        except (SafetensorError, OSError) as e:
            raise ValueError_(f"{path!r} is not a readable safetensors file: {e}") from None
        if key is None:
            if len(tensors) != 1:
                raise ValueError_(f"{path!r} holds {sorted(tensors)}; name one with file.key")
            return next(iter(tensors.values()))
        if key not in tensors:
            raise ValueError_(f"{path!r} has no tensor {key!r} (it has {sorted(tensors)})")
        return tensors[key]
    raise ValueError_(f"tensor file {path!r}: use .npy or .safetensors")


def row_seed(seed: int, example_id: Any) -> int:
    """A stable seed for (seed, example_id), the same in every process (unlike hash())."""
    digest = hashlib.sha256(f"{seed}\x00{example_id!r}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def make_value(value: Any, like: torch.Tensor, example_id: Any, where: str) -> torch.Tensor:
    """The tensor ``value`` means for one row's target ``like`` (no batch dimension).

    Numbers, zeros and file tensors broadcast; noise is drawn in the row's exact shape from
    (seed, example_id), so it does not depend on the batch's padded length.
    """
    if isinstance(value, (int, float)):
        return torch.tensor(value, dtype=like.dtype, device=like.device)
    if isinstance(value, ZerosValue):
        return torch.zeros((), dtype=like.dtype, device=like.device)
    if isinstance(value, FileValue):
        t = load_tensor_file(value.file.path, value.file.key)
        check_broadcast(t, like, f"{where}: tensor from {value.file.path!r}")
        return (t.to(torch.float32) * value.file.scale).to(like.dtype).to(like.device)
    if isinstance(value, DatasetValue):
        from .runs import dataset_value  # reads datasets: only where a spec asks

        t = dataset_value(value, like, example_id)
        check_broadcast(t, like, f"{where}: the value from {value.dataset!r}")
        return t
    if isinstance(value, NoiseValue):
        p = value.noise
        if like.device.type == "meta":
            return torch.empty_like(like)
        g = torch.Generator().manual_seed(row_seed(p.seed, example_id))
        return (torch.randn(like.shape, generator=g) * p.std).to(like.dtype).to(like.device)
    raise TypeError(f"{where}: unsupported value {value!r}")


def check_broadcast(t: torch.Tensor, like: torch.Tensor, what: str) -> None:
    """Refuse a value that would broadcast the target to a bigger shape or not at all."""
    try:
        ok = torch.broadcast_shapes(t.shape, like.shape) == like.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError_(
            f"{what} has shape {list(t.shape)}; expected a shape that broadcasts to the "
            f"target's per-row shape {list(like.shape)}"
        )
