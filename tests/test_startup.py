"""Start-up (engine/startup.py): what the Ray workers preload, and when the actors may start
before planning. The overlap itself is timed in benchmarks/startup.py; the Ray runs in
test_ray.py check its results."""

import importlib
import json

import pytest

import raysight
from raysight.engine.connect import converts, worker_modules


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
    mods = worker_modules(_spec(str(tmp_path)).model)
    assert mods == ["raysight.engine.actor", "transformers.models.gpt2.modeling_gpt2"]
    for m in mods:  # a name that does not import would log a traceback from every worker
        importlib.import_module(m)


def test_preload_leaves_out_what_it_cannot_know(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    assert worker_modules(_spec(str(tmp_path)).model) == ["raysight.engine.actor"]
    assert worker_modules(_spec("org/hub-id").model) == ["raysight.engine.actor"]  # no config here


def test_an_unconverted_bundled_model_is_planned_before_any_actor(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSIGHT_CACHE", str(tmp_path))  # an empty cache: not converted
    spec = _spec("bundled:smollm2-135m-instruct")
    assert converts(spec)
    # nothing in the preload list triggers the conversion (it looks, never converts)
    assert worker_modules(spec.model) == ["raysight.engine.actor"]
    assert not any(tmp_path.iterdir())
    done = tmp_path / "models" / "smollm2-135m-instruct"
    done.mkdir(parents=True)
    (done / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (done / "model.safetensors").write_bytes(b"")
    assert not converts(spec)
    assert worker_modules(spec.model)[-1] == "transformers.models.llama.modeling_llama"


def _early_calls(monkeypatch, spec, **kwargs) -> list[tuple]:
    """The init_ray calls start_early makes (none of them reaching a real Ray)."""
    from raysight.engine import connect

    calls: list[tuple] = []

    def fake(address, num_cpus, preload=None):
        calls.append((address, num_cpus, preload))
        return True

    monkeypatch.setattr(connect, "init_ray", fake)
    monkeypatch.setattr(connect, "_early", [])
    connect.start_early(spec, **kwargs)
    return calls


def _ray_spec(model: str, out, runner: str = "ray", **execution):
    return raysight.parse_spec(
        {
            "model": {"path": model},
            "data": {"prompts": ["a", "b", "c"]},
            "ops": [{"save": "h.0.output"}],
            "output": {"path": str(out)},
            "execution": {"runner": runner, **execution},
        }
    )


def test_ray_starts_before_the_engine_imports_for_a_fresh_run(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    spec = _ray_spec(str(tmp_path), tmp_path / "out", actors=4, shard_rows=2, cpus_per_actor=3)
    calls = _early_calls(monkeypatch, spec, address="127.0.0.1:1")
    # 3 prompts in shards of 2: a pool of 2 actors, not execution.actors' 4
    assert calls == [("127.0.0.1:1", 6, worker_modules(spec.model))]
    from raysight.engine import connect

    assert connect._early == [True]  # the run's own init_ray learns that raysight started it


def test_no_early_start_where_the_run_may_not_need_ray(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert _early_calls(monkeypatch, _ray_spec(str(tmp_path), tmp_path / "o1", "local")) == []
    resumed = _ray_spec(str(tmp_path), tmp_path / "o2")
    (tmp_path / "o2").mkdir()
    from raysight.dataset.manifest import MANIFEST_FILE

    (tmp_path / "o2" / MANIFEST_FILE).write_text("{}")  # may have nothing left to do
    assert _early_calls(monkeypatch, resumed) == []
    assert len(_early_calls(monkeypatch, resumed, overwrite=True)) == 1
    monkeypatch.setenv("RAYSIGHT_CACHE", str(tmp_path / "cache"))  # not converted yet
    assert _early_calls(monkeypatch, _ray_spec("bundled:smollm2-135m-instruct", tmp_path)) == []


def test_a_failed_early_start_is_left_to_the_run(tmp_path, monkeypatch):
    from raysight.engine import connect

    def refused(*_a, **_k):
        raise connect.ClusterError("cannot reach a Ray cluster at 127.0.0.1:1")

    monkeypatch.setattr(connect, "init_ray", refused)
    monkeypatch.setattr(connect, "_early", [])
    connect.start_early(_ray_spec("org/hub-id", tmp_path / "o"), address="127.0.0.1:1")
    assert connect._early == []  # no error here: the run reports it after planning


def test_an_early_start_a_failed_run_did_not_use_is_forgotten(tmp_path, monkeypatch, tiny_dirs):
    from raysight.engine import connect
    from raysight.engine.run import run
    from raysight.interleave.resolve import PlanError

    spec = _ray_spec(str(tiny_dirs["gpt2"]), tmp_path / "o")
    assert len(_early_calls(monkeypatch, spec)) == 1 and connect._early == [True]
    bad = _ray_spec(str(tiny_dirs["gpt2"]), tmp_path / "o", "local")
    bad = bad.model_dump(mode="json", by_alias=True, exclude_unset=True)
    bad["ops"] = [{"save": "no.such.module.output"}]
    with pytest.raises(PlanError):  # fails in planning, before any Ray is connected
        run(raysight.parse_spec(bad), log=lambda _: None)
    # else a later run in this process would take the Ray it finds for one it started
    assert connect._early == []
