"""A spec is data: it never runs code, and hostile or careless spec text gets a clear error that
names where (exit 2), never a traceback, a hang or a silent last-one-wins."""

from __future__ import annotations

import io
import json
import os
import signal
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

import raysight
from conftest import make_spec
from raysight.cli import main
from raysight.spec import SpecBuilder, SpecError, parse_spec

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: int = 60) -> tuple[int, str]:
    """Run the CLI in-process; any exception escaping main() fails the test (a traceback)."""

    def hang(*_):
        raise TimeoutError(f"raysight {' '.join(args)} did not finish in {timeout} s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(timeout)
    err = io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            rc = main(list(args))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return rc, err.getvalue()


# ----------------------------------------------------------------------------- code from specs
CODE_SPECS = {
    "os.system": {"factory": "os:system", "factory_kwargs": {"command": "touch pwned"}},
    "subprocess.run": {"factory": "subprocess:run", "factory_kwargs": {"args": ["touch", "pwned"]}},
    "runpy": {"factory": "runpy:run_path", "factory_kwargs": {"path_name": "evil.py"}},
}


@pytest.mark.parametrize("name", CODE_SPECS)
@pytest.mark.parametrize("command", ["validate", "plan", "run", "submit"])
def test_a_spec_file_cannot_run_code(name, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.py").write_text("open('pwned', 'w').close()\n")
    spec = {
        "model": CODE_SPECS[name],
        "data": {"prompts": [{"x": [1.0]}], "input_field": "x"},
        "output": {"path": "out"},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    extra = ["--address", "http://127.0.0.1:9"] if command == "submit" else []
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, err = cli(command, "s.yaml", *extra)
    assert rc == 2
    assert "model.factory:" in err and "--allow-code" in err and "allow_code=True" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no pwned, no out/


def test_no_model_validation_refuses_code_too(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"model": CODE_SPECS["os.system"], "data": {"prompts": ["a"]}}))
    rc, err = cli("validate", str(p), "--no-model")
    assert rc == 2 and "model.factory:" in err and not (Path.cwd() / "pwned").exists()


def test_trust_remote_code_needs_the_opt_in(tiny_dirs, tmp_path):
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", [{"save": "layers.0.output"}])
    spec["model"]["trust_remote_code"] = True
    with pytest.raises(SpecError, match=r"model\.trust_remote_code: true asks raysight"):
        parse_spec(spec)
    assert parse_spec(spec, allow_code=True).model.trust_remote_code
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec))
    assert cli("validate", str(p))[0] == 2
    assert cli("validate", str(p), "--allow-code")[0] == 0


def test_the_opt_in_lets_a_factory_run_and_reaches_the_actor(tmp_path):
    spec = {
        "model": {"factory": "tiny:sequential"},
        "data": {"prompts": [{"x": [0.5] * 8}], "input_field": "x"},
        "ops": [{"save": "1.output", "as": "h"}],
        "output": {"path": str(tmp_path / "o")},
        "execution": {"runner": "local"},
    }
    with pytest.raises(SpecError, match=r"model\.factory"):
        raysight.run(spec, log=lambda _: None)
    assert not (tmp_path / "o").exists()
    raysight.run(spec, log=lambda _: None, allow_code=True)
    assert raysight.open(tmp_path / "o").table().num_rows == 1
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({**spec, "output": {"path": str(tmp_path / "o2")}}))
    assert cli("run", str(p))[0] == 2 and not (tmp_path / "o2").exists()
    assert cli("run", str(p), "--allow-code")[0] == 0


def test_submit_hands_the_opt_in_to_the_job_as_a_flag(tmp_path, monkeypatch):
    """The job on the cluster runs `raysight run` again: it must get --allow-code from the
    submitter's command line, never from the uploaded spec."""
    import ray.job_submission as js

    seen = {}

    class Client:
        def __init__(self, address):
            pass

        def submit_job(self, entrypoint, runtime_env):
            seen["entrypoint"] = entrypoint
            return "job1"

    monkeypatch.setattr(js, "JobSubmissionClient", Client)
    monkeypatch.setattr("raysight.engine.submit.probe", lambda address: None)
    monkeypatch.chdir(tmp_path)
    spec = {
        "model": {"factory": "tiny:sequential"},
        "data": {"prompts": [{"x": [0.5] * 8}], "input_field": "x"},
        "output": {"path": "o"},
    }
    Path("s.yaml").write_text(yaml.safe_dump(spec))
    assert cli("submit", "s.yaml", "--address", "http://h:8265", "--no-wait")[0] == 2
    assert "entrypoint" not in seen
    rc, _ = cli("submit", "s.yaml", "--address", "http://h:8265", "--no-wait", "--allow-code")
    assert rc == 0 and seen["entrypoint"] == "raysight run s.yaml --allow-code"


def test_the_builder_opts_in_by_holding_the_callable(tmp_path):
    import tiny

    b = SpecBuilder(tiny.sequential, {"prompts": [{"x": [0.5] * 8}], "input_field": "x"}, "o")
    with b.trace() as t:
        t.model[1].output.save("h")
    assert b.spec().model.factory == "tiny:sequential" and b.spec().allow_code
    named = SpecBuilder({"factory": "tiny:sequential"}, {"prompts": [[1.0]]}, "o")
    with pytest.raises(SpecError, match=r"model\.factory"):
        named.spec()
    with pytest.raises(TypeError, match="not a lambda"):
        SpecBuilder(lambda: None, ["a"], "o")


def test_each_trace_block_starts_afresh(tiny_dirs):
    """Re-running a notebook cell with `with b.trace()` must not apply a += twice."""
    b = SpecBuilder(str(tiny_dirs["gpt2"]), ["a"], "o")
    for _ in range(2):
        with b.trace() as t:
            t.layers[1].output += 2.0
            t.layers[1].output.save("h")
        with b.edit() as e:
            e.layers[0].output = 1.0
    spec = b.spec()
    assert [type(op).__name__ for op in spec.ops] == ["SetOp", "SaveOp"]
    assert len(spec.edits) == 1


# ----------------------------------------------------------------------------- hostile text
def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nmodel: {{path: m}}\ndata: {{prompts: *a{levels - 1}}}\n"


HOSTILE_TEXT = {
    "duplicate key": ("model: {path: m}\nops: []\nops: []\n", "key 'ops' is given twice"),
    "duplicate nested key": (
        "model: {path: m, path: n}\n",
        "key 'path' is given twice (first at line 1",
    ),
    "deep nesting": ("a: " + "[" * 2000 + "]" * 2000 + "\n", "nests deeper than 64 levels"),
    "billion laughs": (_bomb(), "expands to more than 1,000,000 values"),
    "binary": ("model: {path: !!binary aGVsbG8=}\n", "!!binary value has no JSON equivalent"),
    "set": ("model: !!set {a, b}\n", "!!set value has no JSON equivalent"),
    "nan": ("execution: {max_padding: .nan}\n", "'.nan' is not a finite number"),
    "inf": ("execution: {max_padding: -.inf}\n", "'-.inf' is not a finite number"),
    "python object": ("model: !!python/object/apply:os.system [touch pwned]\n", "invalid YAML"),
    "python name": ("model: !!python/name:os.system\n", "invalid YAML"),
    "not a mapping": ("- a\n- b\n", "a spec is a mapping of sections"),
    "empty": ("", "a spec is a mapping of sections, got NoneType"),
}


@pytest.mark.parametrize("case", HOSTILE_TEXT)
def test_hostile_yaml_is_refused_with_where(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, message = HOSTILE_TEXT[case]
    p = tmp_path / "s.yaml"
    p.write_text(text)
    for command in (["validate", "--no-model"], ["validate"], ["plan"], ["run"]):
        rc, err = cli(command[0], str(p), *command[1:])
        assert rc == 2 and message in err, err
    assert not (tmp_path / "pwned").exists()


HOSTILE_JSON = {
    "duplicate key": ('{"model": {"path": "m"}, "model": {}}', "key 'model' is given twice"),
    "NaN": ('{"execution": {"max_padding": NaN}}', "NaN is not a finite number"),
    "deep nesting": ('{"a": ' + "[" * 5000 + "]" * 5000 + "}", "nests too deeply"),
}


@pytest.mark.parametrize("case", HOSTILE_JSON)
def test_hostile_json_is_refused(case, tmp_path):
    text, message = HOSTILE_JSON[case]
    p = tmp_path / "s.json"
    p.write_text(text)
    rc, err = cli("validate", str(p), "--no-model")
    assert rc == 2 and message in err, err


def test_yaml_dates_stay_text_and_overrides_are_checked_too(tiny_dirs, tmp_path):
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", [{"save": "layers.0.output"}])
    text = yaml.safe_dump(spec).replace("prompts:", "prompts:\n  - 2024-01-01", 1)
    p = tmp_path / "s.yaml"
    p.write_text(text)
    assert raysight.load_spec(p).data.prompts[0] == "2024-01-01"
    assert cli("validate", str(p), "--set", "data.limit=1")[0] == 0
    rc, err = cli("validate", str(p), "--set", "execution.max_padding=.nan")
    assert rc == 2 and "execution.max_padding:" in err  # taken as the text '.nan'
    rc, err = cli("validate", str(p), "--set", "execution.max_padding=1e999")
    assert rc == 2 and "execution.max_padding:" in err
    rc, err = cli("validate", str(p), "--set", "data.prompts=!!binary aGVsbG8=")
    assert rc == 2 and "data.prompts" in err  # taken as text: not a list of prompts


def test_yaml_base_60_numbers_stay_ranges(tiny_dirs, tmp_path):
    """YAML 1.1 reads an unquoted 1:3 as 63 (base 60); a spec means the range."""
    from raysight.spec.plain import load_yaml

    assert yaml.safe_load("a: 1:3") == {"a": 63}  # what plain PyYAML does
    assert load_yaml("a: 1:3\nb: 2:10\nc: 1:30.5\nd: 12\ne: 1.5") == {
        "a": "1:3",
        "b": "2:10",
        "c": "1:30.5",
        "d": 12,
        "e": 1.5,
    }
    spec = make_spec(tiny_dirs["gpt2"], tmp_path / "o", [{"save": "layers.{layer}.output"}])
    text = yaml.safe_dump({**spec, "sweep": {"layer": "LAYERS"}}).replace("LAYERS", "1:3")
    p = tmp_path / "s.yaml"
    p.write_text(text)
    assert [v.values["layer"] for v in raysight.load_spec(p).variants] == [1, 2]
    assert cli("validate", str(p), "--set", "sweep.layer=2:3")[0] == 0  # not 123


def test_python_values_that_are_not_json_are_named(tiny_dirs):
    import datetime

    spec = make_spec(tiny_dirs["gpt2"], None, [{"save": "layers.0.output"}])
    spec["data"]["prompts"] = [b"bytes", {1, 2}, datetime.date(2024, 1, 1), float("nan")]
    with pytest.raises(SpecError) as e:
        parse_spec(spec)
    problems = e.value.problems
    assert "data.prompts.0: a bytes value has no place in a spec" in problems[0]
    assert "data.prompts.1: a set value" in problems[1]
    assert "data.prompts.2: a date value" in problems[2]
    assert "data.prompts.3: nan is not a finite number" in problems[3]


def test_special_files_and_resource_bombs(tiny_dirs, tmp_path):
    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    npy_fifo = tmp_path / "v.npy"
    os.mkfifo(npy_fifo)
    base = make_spec(tiny_dirs["gpt2"], tmp_path / "o", [{"save": "layers.0.output"}])
    cases = {
        "fifo source": (
            {"data": {"source": str(fifo)}},
            f"data.source '{fifo}': not a regular file",
        ),
        "device source": ({"data": {"source": "/dev/zero"}}, "not a regular file"),
        "fifo value": (
            {"ops": [{"set": "layers.0.output", "value": {"file": {"path": str(npy_fifo)}}}]},
            "is not a regular file",
        ),
        "huge sweep": (
            {
                "sweep": {"a": "0:1000", "b": "0:1000", "c": "0:1000"},
                "ops": [{"save": "layers.0.output", "positions": ["{a}", "{b}", "{c}"], "as": "h"}],
            },
            "sweep: a 1000 x b 1000 x c 1000 = 1,000,000,000 variants; at most 100,000",
        ),
        "range overflow": (
            {"sweep": {"a": "0:99999999999999999999"}, "ops": [{"skip": "layers.{a}"}]},
            "sweep.a: '0:99999999999999999999' has 99,999,999,999,999,999,999 values",
        ),
        "huge position": (
            {"ops": [{"save": "layers.0.output", "positions": [10**30]}]},
            "ops.0.positions: position 1000000000000000000000000000000 lies beyond any row",
        ),
        "bool position": (
            {"ops": [{"save": "layers.0.output", "positions": [True]}]},
            "ops.0.positions.0",
        ),
        "bad device": ({"model": {"device": "garbage"}}, "model.device: 'garbage' is not a dev"),
        "output in /proc": ({"output": {"path": "/proc/raysight/o"}}, "cannot write there"),
        "output under a file": (
            {"output": {"path": str(Path(__file__) / "o")}},
            "output.path",
        ),
    }
    for name, (change, message) in cases.items():
        spec = json.loads(json.dumps(base))
        for section, value in change.items():  # data, ops and sweep replaced, others merged
            merge = section in ("model", "output")
            spec[section] = {**spec[section], **value} if merge else value
        p = tmp_path / f"case{len(list(tmp_path.iterdir()))}.json"
        p.write_text(json.dumps(spec))
        rc, err = cli("run", str(p), "--local", timeout=60)
        assert rc == 2 and message in err, (name, err)


def test_unknown_keys_are_named_however_they_are_spelled(tiny_dirs):
    spec = make_spec(tiny_dirs["gpt2"], None, [{"save": "layers.0.output", "a key": 1}])
    spec["MODEL"] = {}
    spec["data"]["data-x"] = 1
    with pytest.raises(SpecError) as e:
        parse_spec(spec)
    text = str(e.value)
    for where in ("MODEL: unknown key", "data.'data-x': unknown key", "ops.0.'a key': unknown"):
        assert where in text, text


def test_a_truncated_npy_is_not_called_pickled(tiny_dirs, tmp_path):
    import numpy as np

    good = tmp_path / "v.npy"
    np.save(good, np.ones(32, dtype=np.float32))
    bad = tmp_path / "t.npy"
    bad.write_bytes(good.read_bytes()[:-40])
    spec = make_spec(
        tiny_dirs["gpt2"],
        tmp_path / "o",
        [{"set": "layers.0.output", "value": {"file": {"path": str(bad)}}}],
    )
    p = tmp_path / "s.json"
    p.write_text(json.dumps(spec))
    rc, err = cli("validate", str(p))
    assert rc == 2 and "is not a readable .npy file" in err and "pickled" not in err
