"""Paired-row patching: a value copied from the paired row of the same batch, against nnsight 0.8's
invokes + barrier and against plain PyTorch hooks run prompt by prompt (no raysight code)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_spec, plan_problems

LAYER = {"gpt2": "transformer.h", "llama": "model.layers"}
EMBED = {"gpt2": "transformer.wte", "llama": "model.embed_tokens"}
# Same number of characters (the tiny models' tokens) within a pair, except where noted.
PAIRS = [
    {"clean": "The Eiffel Tower", "corrupt": "The Colosseum is", "target": "a"},
    {"clean": "Two plus two", "corrupt": "One plus one", "target": "o"},
    {"clean": "Hi", "corrupt": "Yo", "target": "b"},
]
UNEVEN = {"clean": "Paris is in", "corrupt": "Rome, the city, is in", "target": "e"}


def pair_spec(arch, tiny_dirs, ops, pairs=PAIRS, **pair):
    spec = make_spec(tiny_dirs[arch], None, ops, prompts=pairs, execution={"max_padding": 1})
    spec["data"]["pair"] = {"fields": ["clean", "corrupt"], **pair}
    return spec


def rows_of(ds, column):
    t = ds.table()
    keys = zip(*(t.column(c).to_pylist() for c in ("example_id", "row")))
    return dict(zip(keys, ds.to_torch(column)))


def run_alone(model, tok, prompt, capture=(), patch=None):
    """The prompt alone with plain hooks: captured module outputs, and ``patch`` (module path ->
    fn(output) -> output) applied; returns (captured, logits[0])."""
    mods = dict(model.named_modules())
    got = {}
    hooks = [
        mods[p].register_forward_hook(lambda m, a, o, p=p: got.__setitem__(p, o.clone()))
        for p in capture
    ]
    hooks += [
        mods[p].register_forward_hook(lambda m, a, o, f=f: f(o)) for p, f in (patch or {}).items()
    ]
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tok(prompt)["input_ids"]])).logits[0]
    finally:
        for h in hooks:
            h.remove()
    return got, logits


# ----------------------------------------------------------------------------- nnsight parity
nnsight = pytest.importorskip("nnsight")


def envoy(root, path: str):
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


@pytest.mark.parametrize("arch", list(LAYER))
def test_cross_prompt_patching_matches_nnsight_barrier(arch, tiny_dirs, run_spec):
    import tiny

    model, tok = tiny.build(arch)
    lm = nnsight.LanguageModel(model, tokenizer=tok)
    ds = run_spec(
        pair_spec(
            arch,
            tiny_dirs,
            [
                {
                    "set": "embed.output",
                    "value": {"from": {"site": "embed.output", "row": "clean"}},
                },
                {
                    "set": "layers.1.output",
                    "positions": [-1],
                    "mode": "add",
                    "value": {"from": {"site": "layers.0.output", "row": "clean"}},
                },
                {"save": "logits", "positions": [-1], "as": "last"},
            ],
        )
    )
    got = rows_of(ds, "last")
    for k, pair in enumerate(PAIRS):
        with lm.trace() as tracer:
            at_embed, at_layer0 = tracer.barrier(2), tracer.barrier(2)
            with tracer.invoke(pair["clean"]):
                emb = envoy(lm, EMBED[arch]).output
                at_embed()
                h0 = envoy(lm, f"{LAYER[arch]}.0").output
                at_layer0()
                clean = lm.lm_head.output[:, -1].save()
            with tracer.invoke(pair["corrupt"]):
                at_embed()
                envoy(lm, EMBED[arch]).output = emb
                at_layer0()
                envoy(lm, f"{LAYER[arch]}.1").output[:, -1] += h0[:, -1]
                corrupt = lm.lm_head.output[:, -1].save()
        torch.testing.assert_close(got[(k, "clean")][0], clean[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got[(k, "corrupt")][0], corrupt[0], atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- patching grid
@pytest.mark.parametrize("arch", list(LAYER))
def test_patching_grid_equals_nested_loops_with_plain_hooks(arch, tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models[arch]
    a, b = (tok(c, add_special_tokens=False)["input_ids"][0] for c in "ab")
    # positions from the end align rows of different lengths; "Hi" is too short for pos -4
    pairs = [PAIRS[0], PAIRS[1], UNEVEN, PAIRS[2]]
    spec = pair_spec(
        arch,
        tiny_dirs,
        [
            {
                "set": "layers.{layer}.output",
                "positions": ["{pos}"],
                "value": {"from": {"site": "layers.{layer}.output", "row": "clean"}},
            },
            {
                "save": "logits",
                "positions": [-1],
                "reduce": {"logit_diff": {"a": "a", "b": "b"}},
                "as": "diff",
            },
            {
                "save": "logits",
                "positions": [-1],
                "reduce": {"prob": {"field": "target"}},
                "as": "p",
            },
        ],
        pairs=pairs,
    )
    spec["sweep"] = {"layer": "0:3", "pos": [-1, -2, -4]}
    ds = run_spec(spec)
    t = ds.table()
    # the short pair loses only the 3 variants at pos -4; it is written in the other 6
    assert t.num_rows == 3 * 9 * 2 + 6 * 2
    errors = ds.errors()
    assert sorted(e["variant"] for e in errors) == [2, 5, 8]
    for e in errors:
        assert e["example_id"] == 3 and e["reason"].startswith("[layer=")
        assert "pos=-4] " in e["reason"] and "positions need at least 4" in e["reason"]
    keys = list(zip(*(t.column(c).to_pylist() for c in ("example_id", "row", "layer", "pos"))))
    diff, prob = ds.to_torch("diff"), ds.to_torch("p")
    grid = dict(zip(keys, zip(diff, prob)))
    for k, pair in enumerate(pairs):
        target = tok(pair["target"], add_special_tokens=False)["input_ids"][0]
        paths = [f"{LAYER[arch]}.{i}" for i in range(3)]
        clean, clean_logits = run_alone(model, tok, pair["clean"], capture=paths)
        for layer in range(3):
            for pos in (-1, -2, -4):
                if pair is PAIRS[2] and pos == -4:
                    assert (k, "corrupt", layer, pos) not in grid
                    continue
                src = clean[paths[layer]][0, pos].clone()

                def patch(o, src=src, pos=pos):
                    o = o.clone()
                    o[0, pos] = src
                    return o

                _, logits = run_alone(model, tok, pair["corrupt"], patch={paths[layer]: patch})
                for row, lg in (("corrupt", logits), ("clean", clean_logits)):
                    d, p = grid[(k, row, layer, pos)]
                    torch.testing.assert_close(d[0], lg[-1, a] - lg[-1, b], atol=1e-5, rtol=1e-4)
                    ref_p = lg[-1].softmax(-1)[target]
                    torch.testing.assert_close(p[0], ref_p, atol=1e-6, rtol=1e-4)


def test_position_map_aligns_rows_of_different_lengths(tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models["gpt2"]
    pmap = [[0, 0], [6, 17], [10, 20]]  # clean position -> corrupt position
    pairs = [{**UNEVEN, "map": pmap}]
    ops = [
        {"set": "embed.output", "value": {"from": {"site": "embed.output", "row": "clean"}}},
        {"save": "logits", "positions": [-1], "as": "last"},
    ]
    ds = run_spec(pair_spec("gpt2", tiny_dirs, ops, pairs=pairs, position_map="map"))
    got = rows_of(ds, "last")
    clean, _ = run_alone(model, tok, UNEVEN["clean"], capture=["transformer.wte"])

    def patch(o):
        o = o.clone()
        for c, r in pmap:
            o[0, r] = clean["transformer.wte"][0, c]
        return o

    _, logits = run_alone(model, tok, UNEVEN["corrupt"], patch={"transformer.wte": patch})
    torch.testing.assert_close(got[(0, "corrupt")][0], logits[-1], atol=1e-5, rtol=1e-4)
    # with positions, each target position goes through the map; one not in it is a row error
    ops[0]["positions"] = [-1, 6]
    ds = run_spec(pair_spec("gpt2", tiny_dirs, ops, pairs=pairs, position_map="map"))
    assert ds.table().num_rows == 0
    assert "position 6 of row 0 (corrupt) is not in its position map" in ds.errors()[0]["reason"]


def test_mismatched_pair_lengths_without_a_map_are_a_row_error(tiny_dirs, run_spec):
    ops = [
        {"set": "layers.0.output", "value": {"from": {"site": "layers.0.output", "row": "clean"}}},
        {"save": "logits", "positions": [-1], "as": "last"},
    ]
    ds = run_spec(pair_spec("gpt2", tiny_dirs, ops, pairs=[*PAIRS, UNEVEN]))
    assert sorted(set(ds.table().column("example_id").to_pylist())) == [0, 1, 2]
    (err,) = ds.errors()
    assert err["example_id"] == 3
    assert "pair rows of different lengths (clean 11 tokens, corrupt 21 tokens)" in err["reason"]
    assert "data.pair.position_map" in err["reason"] and "ops.0" in err["reason"]


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"pair": None}, "ops.0.value.from.row: copying from another row needs data.pair"),
        ({"row": "base"}, "'base' is not one of data.pair.fields ['clean', 'corrupt']"),
        ({"fields": ["a", "b", "c"], "position_map": "m"}, "give exactly two fields"),
        ({"fields": ["a", "a"]}, "repeats a field"),
        ({"skip": True}, "ops.0.with.from.row: a skip takes its own row's value; use a set"),
    ],
)
def test_bad_pair_specs_name_the_field(change, expect, tiny_dirs):
    spec = pair_spec(
        "gpt2",
        tiny_dirs,
        [{"set": "layers.0.output", "value": {"from": {"site": "embed.output", "row": "clean"}}}],
    )
    if "row" in change:
        spec["ops"][0]["value"]["from"]["row"] = change["row"]
    if change.get("pair", 1) is None:
        del spec["data"]["pair"]
    if "fields" in change:
        spec["data"]["pair"].update({k: v for k, v in change.items()})
    if "skip" in change:
        spec["ops"] = [
            {"skip": "layers.1", "with": {"from": {"site": "embed.output", "row": "clean"}}}
        ]
    assert expect in plan_problems(spec)


def test_bad_pair_records_are_row_errors(tiny_dirs, run_spec):
    pairs = [PAIRS[0], {"clean": "abc"}, {"clean": "abc", "corrupt": ""}, {**PAIRS[1], "map": "x"}]
    ops = [{"save": "logits", "positions": [-1], "as": "last"}]
    ds = run_spec(pair_spec("gpt2", tiny_dirs, ops, pairs=pairs, position_map="map"))
    reasons = {e["example_id"]: e["reason"] for e in ds.errors()}
    assert reasons[1] == "no field 'corrupt' (data.pair.fields)"
    assert reasons[2] == "field 'corrupt' (data.pair.fields) must be a non-empty string"
    assert "must be a list of [position, position] integer pairs" in reasons[3]
    assert "no field 'map'" in reasons[0]
    assert json.dumps(reasons)  # every reason is plain text
