"""Start-up (engine/startup.py): what the Ray workers preload, and when the actors may start
before planning. The overlap itself is timed in benchmarks/startup.py; the Ray runs in
test_ray.py check its results."""

import importlib
import json

import raysight
from raysight.engine.ray_runner import worker_modules
from raysight.engine.startup import _converts


def _spec(path: str):
    return raysight.parse_spec(
        {
            "model": {"path": path},
            "data": {"source": "x.jsonl"},
            "ops": [{"save": "h.0.output"}],
            "output": {"path": "out"},
        }
    )


def test_preload_names_the_architectures_module_and_it_imports(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    mods = worker_modules(_spec(str(tmp_path)))
    assert mods == ["raysight.engine.worker", "transformers.models.gpt2.modeling_gpt2"]
    for m in mods:  # a name that does not import would log a traceback from every worker
        importlib.import_module(m)


def test_preload_leaves_out_what_it_cannot_know(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    assert worker_modules(_spec(str(tmp_path))) == ["raysight.engine.worker"]
    assert worker_modules(_spec("org/hub-id")) == ["raysight.engine.worker"]  # no config here


def test_an_unconverted_bundled_model_is_planned_before_any_actor(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSIGHT_CACHE", str(tmp_path))  # an empty cache: not converted
    spec = _spec("bundled:smollm2-135m-instruct")
    assert _converts(spec)
    # nothing in the preload list triggers the conversion (it looks, never converts)
    assert worker_modules(spec) == ["raysight.engine.worker"]
    assert not any(tmp_path.iterdir())
    done = tmp_path / "models" / "smollm2-135m-instruct"
    done.mkdir(parents=True)
    (done / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (done / "model.safetensors").write_bytes(b"")
    assert not _converts(spec)
    assert worker_modules(spec)[-1] == "transformers.models.llama.modeling_llama"
