"""Property-based fuzzing of specs (Hypothesis): every mutation of every spec in specs/ is either
a valid spec or a clean error whose every problem names its field. Never a traceback, never a
hang: at the spec level (`validate --no-model`) and against a tiny model (`validate`, which
resolves every site and plans on the meta device).

The default run replays the same 1,000 + 1,000 cases each time (derandomized, so CI is stable);
`pytest -m fuzz` explores fresh random cases, many more of them.
"""

from __future__ import annotations

import io
import json
import signal
from contextlib import contextmanager, redirect_stderr, redirect_stdout

import pytest
from hypothesis import HealthCheck, given, settings

import fuzz_specs
from raysight.cli import main
from raysight.spec import SpecError, parse_spec

CI_CASES = 1000
FUZZ_CASES = 20_000


def _settings(n: int, derandomize: bool):
    return settings(
        max_examples=n,
        deadline=None,  # hangs are caught by the alarm below, slow cases are not failures
        derandomize=derandomize,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@contextmanager
def no_hang(seconds: int):
    def hang(*_):
        raise TimeoutError(f"a case ran for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _names_a_field(problem: str) -> bool:
    """`field.path: message` (the path may quote an odd key), or a whole-spec message."""
    where, sep, _ = problem.partition(": ")
    return bool(sep and where.strip()) or problem.startswith("a spec is a mapping")


def check_spec_level(spec: dict) -> None:
    with no_hang(10):
        try:
            parse_spec(spec)
        except SpecError as e:
            assert e.problems
            unnamed = [p for p in e.problems if not _names_a_field(p)]
            assert not unnamed, unnamed


def check_model_level(spec: dict, model_dir: str, tmp_path) -> None:
    if isinstance(spec.get("model"), dict):
        spec = fuzz_specs.for_tiny(spec, model_dir)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))  # non-finite floats become NaN, which is refused
    err = io.StringIO()
    with no_hang(30), redirect_stderr(err), redirect_stdout(io.StringIO()):
        rc = main(["validate", str(path)])  # an escaping exception fails the test
    assert rc in (0, 2)
    assert "Traceback" not in err.getvalue()


@pytest.fixture(autouse=True)
def _from_the_repository(monkeypatch):
    monkeypatch.chdir(fuzz_specs.ROOT)  # specs name their data files relative to it


@_settings(CI_CASES, derandomize=True)
@given(case=fuzz_specs.mutated_specs())
def test_mutated_specs_are_valid_or_name_their_field(case):
    check_spec_level(case[1])


def test_mutated_specs_against_a_tiny_model(tiny_dirs, tmp_path):
    model = str(tiny_dirs["llama"])

    @_settings(CI_CASES, derandomize=True)
    @given(case=fuzz_specs.mutated_specs())
    def run(case):
        check_model_level(case[1], model, tmp_path)

    run()


@pytest.mark.fuzz
@_settings(FUZZ_CASES, derandomize=False)
@given(case=fuzz_specs.mutated_specs())
def test_fuzz_spec_level_random(case):
    check_spec_level(case[1])


@pytest.mark.fuzz
def test_fuzz_model_level_random(tiny_dirs, tmp_path):
    model = str(tiny_dirs["llama"])

    @_settings(FUZZ_CASES // 4, derandomize=False)
    @given(case=fuzz_specs.mutated_specs())
    def run(case):
        check_model_level(case[1], model, tmp_path)

    run()
