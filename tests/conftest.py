"""Shared fixtures: tiny random models saved to a temp dir once per session, and a helper that
runs a spec in-process and opens its output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import tiny

# Mixed lengths, including one-character prompts and repeats.
PROMPTS = [
    "The Eiffel Tower is in the city of",
    "Hi",
    "a",
    "Once upon a time there was a very long prompt that keeps going, and going, on and on.",
    "Two plus two equals",
    "The quick brown fox jumps over the lazy dog",
    "Hi",
    "Interpretability at dataset scale!",
    "x y z",
    "What is the capital of France?",
]
ARCHS = ["gpt2", "llama", "bert"]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: tiny.save(arch, root) for arch in ARCHS}


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs):
    """The same tiny models (same weights) as plain HF objects, for references."""
    return {arch: tiny.build(arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session's Ray tests; actors import test models from tests/."""
    ray = pytest.importorskip("ray")
    here = str(Path(__file__).parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def make_spec(
    model_path: Path | str,
    out: Path,
    ops: list[dict],
    prompts: list[Any] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"path": str(model_path)},
        "data": {"prompts": list(prompts or PROMPTS)},
        "ops": ops,
        "output": {"path": str(out) if out else ""},
        "execution": {"runner": "local"},
    }
    for key, val in sections.items():
        spec[key] = {**spec.get(key, {}), **val}
    return spec


@pytest.fixture
def run_spec(tmp_path):
    """run_spec(spec_dict) -> raysight Dataset (in-process runner)."""
    import raysight

    counter = {"n": 0}

    def _run(spec: dict[str, Any], **kwargs: Any):
        counter["n"] += 1
        if not spec["output"].get("path"):
            spec["output"]["path"] = str(tmp_path / f"out{counter['n']}")
        raysight.run(spec, log=lambda _: None, **kwargs)
        return raysight.open(spec["output"]["path"])

    return _run


def plan_problems(spec: dict[str, Any]) -> str:
    """The message validating and planning ``spec`` on its meta-device model fails with."""
    from raysight.engine.plan import make_plan
    from raysight.interleave.resolve import PlanError
    from raysight.models.loading import load_model
    from raysight.spec import SpecError, parse_spec

    if not spec["output"].get("path"):  # nothing is written: any path will do
        spec = {**spec, "output": {**spec["output"], "path": "unused"}}
    try:
        parsed = parse_spec(spec)
        make_plan(parsed, loaded=load_model(parsed.model, meta=True))
    except (SpecError, PlanError) as e:
        return str(e)
    raise AssertionError("the spec was accepted")


def by_id(ds, column: str) -> dict[Any, Any]:
    """Saved values keyed by example_id (rows come out in batch order)."""
    ids = ds.table(["example_id"]).column("example_id").to_pylist()
    vals = ds.to_torch(column)
    return {i: vals[k] for k, i in enumerate(ids)}
