"""Values from an earlier run's dataset (nnsight's sessions, as data): a mean-ablation from run
1's means, a row-by-row patch joined on example_id, an expression over both; against plain
PyTorch hooks. An incomplete or mismatched dataset is refused before any model work."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import PROMPTS, by_id, make_spec
from reference import alone, first, on_first

PICKED = [PROMPTS[0], PROMPTS[1], PROMPTS[3], PROMPTS[4]]
OTHER = [PROMPTS[5], PROMPTS[7], PROMPTS[9]]


def _close(got, want, what=""):
    assert got.shape == want.shape, (what, got.shape, want.shape)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


LAYERS = {"gpt2": "transformer.h", "llama": "model.layers"}


@pytest.fixture(params=["gpt2", "llama"])
def arch(request):
    return request.param


@pytest.fixture
def run1(arch, tiny_dirs, tmp_path, run_spec):
    """Run 1: layer 1's output at every token, and at the last token, over PICKED."""
    out = tmp_path / "run1"
    ops = [
        {"save": "layers.1.output", "as": "h"},
        {"save": "layers.1.output", "positions": [-1], "as": "last"},
    ]
    run_spec(make_spec(tiny_dirs[arch], out, ops, prompts=PICKED))
    return out


def _with_layer1(arch, model, tok, prompt, fn):
    """The plain model on one prompt with layer 1's output replaced by fn(output)."""
    edit = {f"{LAYERS[arch]}.1": on_first(lambda h: fn(h.clone()))}
    return alone(model, tok, prompt, edit=edit)[1].logits[0]


def test_mean_ablation_from_an_earlier_runs_means(arch, run1, tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models[arch]
    # the reference mean: every token of every PICKED prompt at layer 1, by plain hooks
    rows = [
        first(alone(model, tok, p, capture={"h": f"{LAYERS[arch]}.1"})[0]["h"])[0] for p in PICKED
    ]
    mean = torch.cat(rows).double().mean(0).float()
    mean_value = {"dataset": str(run1), "column": "h", "reduce": "mean"}
    ops = [
        {"set": "layers.1.output", "value": mean_value},
        {"save": "logits[:, -1]", "as": "ablated"},
    ]
    ds = run_spec(make_spec(tiny_dirs[arch], None, ops, prompts=OTHER))
    got = by_id(ds, "ablated")
    for k, prompt in enumerate(OTHER):
        want = _with_layer1(arch, model, tok, prompt, lambda h: mean.expand_as(h).clone())
        _close(got[k], want[-1], "mean-ablated logits")
    # the earlier run is in this run's fingerprint
    manifest = json.loads((ds.path / "_manifest.json").read_text())
    earlier = manifest["fingerprint"]["datasets"][str(run1)]
    assert earlier["spec_hash"] == json.loads((run1 / "_manifest.json").read_text())["spec_hash"]


def test_join_on_example_id_and_an_expression_over_both(
    arch, run1, tiny_dirs, tiny_models, run_spec
):
    """Run 2 on the same prompts in another order: its last token takes run 1's value for the
    same example_id, then is centred on run 1's mean with an expression."""
    model, tok = tiny_models[arch]
    order = [2, 0, 3, 1]  # example ids of run 1, by index into PICKED
    prompts = [{"id": i, "text": PICKED[i]} for i in order]
    mu = {"dataset": str(run1), "column": "h", "reduce": "mean"}
    ops = [
        {
            "set": "layers.1.output",
            "positions": [-1],
            "value": {"dataset": str(run1), "column": "last", "join": "example_id"},
        },
        {"set": "layers.1.output", "value": {"expr": "x - mu", "let": {"mu": mu}}},
        {"save": "logits[:, -1]", "as": "out"},
    ]
    spec = make_spec(tiny_dirs[arch], None, ops, prompts=prompts)
    spec["data"]["id_field"] = "id"
    ds = run_spec(spec)
    got = by_id(ds, "out")
    rows = [
        first(alone(model, tok, p, capture={"h": f"{LAYERS[arch]}.1"})[0]["h"])[0] for p in PICKED
    ]
    mean = torch.cat(rows).double().mean(0).float()
    for i in order:
        last = rows[i][-1]

        def patch(h, last=last):
            h[:, -1] = last
            return h - mean

        want = _with_layer1(arch, model, tok, PICKED[i], patch)
        _close(got[i], want[-1], f"example {i}")


def test_an_incomplete_or_mismatched_earlier_run_is_refused(arch, run1, tiny_dirs, tmp_path):
    import raysight
    from raysight.interleave.runs import EarlierRunError

    def spec(value):
        ops = [{"set": "layers.1.output", "value": value}, {"save": "logits"}]
        return make_spec(tiny_dirs[arch], tmp_path / "o", ops, prompts=OTHER)

    cases = [
        ({"dataset": str(run1), "column": "nope", "reduce": "mean"}, "has no column 'nope'"),
        ({"dataset": str(tmp_path / "none"), "column": "h", "reduce": "mean"}, "not complete"),
    ]
    for value, says in cases:
        with pytest.raises(EarlierRunError, match=says):
            raysight.run(spec(value), log=lambda _: None)
    part = next(run1.glob("part-*"))
    part.write_bytes(part.read_bytes()[:-10])  # a damaged shard file
    with pytest.raises(EarlierRunError, match="is not complete"):
        raysight.run(
            spec({"dataset": str(run1), "column": "h", "reduce": "mean"}), log=lambda _: None
        )
