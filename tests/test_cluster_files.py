"""cluster/: the launcher config validates against the schema Ray ships, the KubeRay RayJob has
the structure the CRD requires, and every spec they name validates."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import yaml

from raysight.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


def test_launcher_config_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(cfg)))
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1
    bad = copy.deepcopy(cfg)
    bad["available_node_types"]["gpu_worker"]["min_workerz"] = 1  # the schema catches typos
    with pytest.raises(Exception, match="min_workerz"):
        validate_config(prepare_config(bad))


def _containers(pod_template: dict) -> list[dict]:
    spec = pod_template["spec"]
    containers = spec["containers"]
    assert containers and all(c.get("name") and c.get("image") for c in containers)
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for c in containers:
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"mount {m['name']} has no volume"
    return containers


def test_rayjob_structure_and_entrypoint():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    head = _containers(cluster["headGroupSpec"]["template"])
    assert any(p["containerPort"] == 8265 for p in head[0]["ports"])  # the dashboard
    assert isinstance(cluster["headGroupSpec"]["rayStartParams"], dict)
    assert cluster["workerGroupSpecs"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for c in _containers(group["template"]):
            assert c["resources"]["limits"]["nvidia.com/gpu"] >= 1
    yaml.safe_load(spec["runtimeEnvYAML"])
    args = shlex.split(spec["entrypoint"])
    assert args[:2] == ["raysight", "run"]
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    parsed = load_spec(ROOT / args[2], overrides)
    assert parsed.execution.gpus_per_actor == 1 and parsed.output.path.startswith("/mnt/shared")
    mounts = {m["mountPath"] for c in head for m in c.get("volumeMounts", [])}
    assert any(parsed.output.path.startswith(m) for m in mounts)


def test_runtime_env_file_is_accepted_by_submit():
    from raysight.engine.submit import _runtime_env

    env = _runtime_env(ROOT, str(CLUSTER / "runtime_env.yaml"))
    assert env["working_dir"] == str(ROOT)
    assert ".venv" in env["excludes"] and "*.safetensors" in env["excludes"]
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1" and env["pip"]
