"""Generation with step ranges: raysight's batched, left-padded generate against each prompt
generated alone by nnsight 0.8 (tracer.iter) and by plain HF generate with hooks that count the
forward passes."""

from __future__ import annotations

import pytest
import torch

from conftest import PROMPTS, make_spec, plan_problems

LAYERS = {"gpt2": "transformer.h", "llama": "model.layers"}
WIDE = {"max_padding": 1, "batch_tokens": 4096}


def _rows(ds, *cols):
    """{example_id: {col: value}} with tensors for saves and lists for the rest."""
    ids = ds.table(["example_id"]).column("example_id").to_pylist()
    out = {i: {} for i in ids}
    for col in cols:
        if col in ("generated_ids", "n_generated", "generated_text"):
            vals = ds.table([col]).column(col).to_pylist()
        else:
            vals = ds.to_torch(col)
        for k, i in enumerate(ids):
            out[i][col] = vals[k]
    return out


def _hf_alone(model, tok, prompt, n, hooks=(), **kw):
    """HF greedy generate of one unpadded prompt, with (module, make_hook(step_of)) hooks; a
    pre-hook on the root counts forward passes."""
    step = [-1]

    def count(mod, args, kwargs):
        step[0] += 1

    handles = [model.register_forward_pre_hook(count, with_kwargs=True)]
    mods = dict(model.named_modules())
    for path, make in hooks:
        handles.append(mods[path].register_forward_hook(make(lambda: step[0])))
    try:
        ids = torch.tensor([tok(prompt)["input_ids"]])
        with torch.no_grad():
            out = model.generate(
                ids, max_new_tokens=n, do_sample=False, pad_token_id=0, num_beams=1, **kw
            )
    finally:
        for h in handles:
            h.remove()
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("arch", list(LAYERS))
def test_generation_with_step_ranges_matches_nnsight(arch, tiny_dirs, tiny_models, run_spec):
    nnsight = pytest.importorskip("nnsight")
    layers = LAYERS[arch]
    ds = run_spec(
        make_spec(
            tiny_dirs[arch],
            None,
            [
                {"set": "layers.0.output", "value": 0.5, "mode": "scale"},  # step 0 only
                {"save": "layers.1.output", "positions": [-1], "steps": "1:3", "as": "h"},
                {"save": "layers.2.output", "positions": [-1], "steps": "all", "as": "every"},
            ],
            generate={"max_new_tokens": 4},
            execution=WIDE,
        )
    )
    got = _rows(ds, "h", "every", "generated_ids", "n_generated")
    model, tok = tiny_models[arch]
    lm = nnsight.LanguageModel(model, tokenizer=tok)

    def envoy(path):
        root = lm
        for part in path.split("."):
            root = root[int(part)] if part.isdigit() else getattr(root, part)
        return root

    def halve(step_of):
        return lambda m, a, o: o * 0.5 if step_of() == 0 else None

    for k, prompt in enumerate(PROMPTS):
        kw = {"do_sample": False, "pad_token_id": 0}
        # nnsight's loop must be bounded by the steps the row really makes (a row that emits EOS
        # stops), or what follows it is cut off; plain HF generate tells how many that is.
        n = len(_hf_alone(model, tok, prompt, 4, [(f"{layers}.0", halve)]))
        with lm.generate(prompt, max_new_tokens=4, **kw) as tracer:
            hs, every = list().save(), list().save()
            for step in tracer.iter[0:n]:
                if step == 0:
                    h0 = envoy(f"{layers}.0")
                    h0.output[:] = h0.output * 0.5
                if step in (1, 2):
                    hs.append(envoy(f"{layers}.1").output[:, -1].save())
                every.append(envoy(f"{layers}.2").output[:, -1].save())
            out = tracer.result.save()
        n_prompt = len(tok(prompt)["input_ids"])
        assert got[k]["generated_ids"] == out[0, n_prompt:].tolist()
        assert got[k]["n_generated"] == n
        if hs:  # steps 1 and 2, those the row made
            torch.testing.assert_close(got[k]["h"][:, 0], torch.cat(hs), atol=1e-5, rtol=1e-4)
        else:
            assert got[k]["h"].shape[0] == 0
        torch.testing.assert_close(got[k]["every"][:, 0], torch.cat(every), atol=1e-5, rtol=1e-4)


def test_sets_skips_and_stop_tokens_per_step_match_plain_hooks(tiny_dirs, tiny_models, run_spec):
    """A set on steps 1:3, an MLP skipped on every other step, stop tokens that end rows early: each
    row's tokens and per-step values equal HF generate of the prompt alone, and the steps after
    a row's stop token are missing (not padded)."""
    stop = ["e", "a", " ", "o"]
    ds = run_spec(
        make_spec(
            tiny_dirs["llama"],
            None,
            [
                {"set": "layers.1.output", "value": 0.25, "mode": "add", "steps": "1:3"},
                {"skip": "layers.2.mlp", "steps": "::2"},
                {"save": "logits", "positions": [-1], "steps": "all", "as": "logits"},
                {"save": "layers.0.output", "as": "prompt_h0"},  # step 0: every prompt token
            ],
            generate={"max_new_tokens": 6, "stop": stop},
            execution=WIDE,
        )
    )
    got = _rows(ds, "logits", "prompt_h0", "generated_ids", "n_generated")
    model, tok = tiny_models["llama"]
    stop_ids = [tok.eos_token_id] + [tok(s, add_special_tokens=False)["input_ids"][0] for s in stop]

    def add(step_of):
        return lambda m, a, o: o + 0.25 if step_of() in (1, 2) else None

    def skip(step_of):
        return lambda m, a, o: a[0] if step_of() % 2 == 0 else None

    def keep(store):
        return lambda step_of: lambda m, a, o: store.append(o[0, -1:].clone())

    def keep_all(store):
        return lambda step_of: lambda m, a, o: store.append(o[0].clone())

    stopped_early = 0
    for k, prompt in enumerate(PROMPTS):
        logits, first = [], []
        ref = _hf_alone(
            model,
            tok,
            prompt,
            6,
            [
                ("model.layers.1", add),
                ("model.layers.2.mlp", skip),
                ("lm_head", keep(logits)),
                ("model.layers.0", keep_all(first)),
            ],
            eos_token_id=stop_ids,
        )
        n = next((j + 1 for j, t in enumerate(ref) if t in stop_ids), len(ref))
        stopped_early += n < 6
        assert got[k]["generated_ids"] == ref[:n] and got[k]["n_generated"] == n
        assert got[k]["logits"].shape[0] == n  # one entry per step the row computed
        torch.testing.assert_close(got[k]["logits"], torch.stack(logits[:n]), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got[k]["prompt_h0"], first[0], atol=1e-5, rtol=1e-4)
    assert stopped_early >= 2  # the test exercises rows that end before the others


def test_sampling_is_per_row_and_seeded(tiny_dirs, run_spec):
    def run(execution, **gen):
        ds = run_spec(
            make_spec(
                tiny_dirs["gpt2"],
                None,
                [{"save": "layers.0.output", "positions": [-1], "as": "h"}],
                generate={"max_new_tokens": 5, **gen},
                execution=execution,
            )
        )
        return _rows(ds, "generated_ids")

    wide = run(WIDE, do_sample=True, seed=3, temperature=2.0)
    alone = run({"max_batch_rows": 1}, do_sample=True, seed=3, temperature=2.0)
    assert wide == alone  # a row's samples do not depend on its batch
    other = run(WIDE, do_sample=True, seed=4, temperature=2.0)
    assert other != wide
    greedy = run(WIDE)
    assert run(WIDE, do_sample=True, seed=3, top_k=1) == greedy
    assert greedy != wide


def test_bad_generation_specs_name_the_field(tiny_dirs):
    gpt2 = tiny_dirs["gpt2"]
    gen = {"max_new_tokens": 4}
    msg = plan_problems(make_spec(gpt2, "o", [{"save": "layers.0.output", "steps": "all"}]))
    assert "ops.0.steps: steps pick generation steps; add generate:" in msg
    msg = plan_problems(
        make_spec(
            gpt2,
            "o",
            [{"save": "layers.0.output", "steps": 4}, {"skip": "layers.1", "steps": "6:"}],
            generate=gen,
        )
    )
    assert "ops.0.steps: 4 starts at step 4, beyond generate.max_new_tokens (4 passes" in msg
    assert "ops.1.steps: '6:' starts at step 6" in msg
    msg = plan_problems(make_spec(gpt2, "o", [{"save": "logits", "steps": "::0"}], generate=gen))
    assert "ops.0.steps" in msg and "slice step must be 1 or more" in msg
    msg = plan_problems(
        make_spec(gpt2, "o", [{"save": "layers.1.output", "steps": "all"}], generate=gen)
    )
    assert "ops.0: 'layers.1.output' is stacked over steps 'all'" in msg and "positions" in msg
    msg = plan_problems(
        make_spec(gpt2, "o", [{"save": "layers.0.output"}], generate={**gen, "stop": ["ab"]})
    )
    assert "generate.stop.0: 'ab' is 2 tokens" in msg
    msg = plan_problems(
        make_spec(
            gpt2, "o", [{"save": "layers.0.output"}], generate=gen, output={"layout": "per_token"}
        )
    )
    assert "output.layout: per_token is not supported with generate" in msg
    msg = plan_problems(
        make_spec(tiny_dirs["bert"], "o", [{"save": "layers.0.output"}], generate=gen)
    )
    assert "generate: generation needs a causal language model" in msg


def test_swept_steering_during_generation_matches_plain_hooks(tiny_dirs, tiny_models, run_spec):
    """Three steering coefficients as sweep variants of every row, generated in the same
    batches: each (row, coefficient) equals HF generate of the prompt alone with that hook."""
    spec = make_spec(
        tiny_dirs["llama"],
        None,
        [
            {"set": "layers.1.output", "value": "{alpha}", "mode": "add", "steps": "all"},
            {"save": "logits", "positions": [-1], "steps": "all", "as": "logits"},
        ],
        prompts=PROMPTS[:6],
        generate={"max_new_tokens": 4},
        execution=WIDE,
    )
    spec["sweep"] = {"alpha": [0.0, 0.5, -1.0]}
    ds = run_spec(spec)
    t = ds.table()
    keys = list(zip(*(t.column(c).to_pylist() for c in ("example_id", "alpha"))))
    assert sorted(keys) == sorted((i, a) for i in range(6) for a in (0.0, 0.5, -1.0))
    ids, logits = t.column("generated_ids").to_pylist(), ds.to_torch("logits")
    model, tok = tiny_models["llama"]
    for k, (eid, alpha) in enumerate(keys):
        seen = []

        def add(step_of, alpha=alpha):
            return lambda m, a, o: o + alpha

        def keep(step_of, seen=seen):
            return lambda m, a, o: seen.append(o[0, -1:].clone())

        ref = _hf_alone(model, tok, PROMPTS[eid], 4, [("model.layers.1", add), ("lm_head", keep)])
        n = len(ids[k])
        assert ids[k] == ref[:n]
        torch.testing.assert_close(logits[k], torch.stack(seen[:n]), atol=1e-5, rtol=1e-4)


def test_a_skip_only_some_variants_make_is_refused_in_generation(tiny_dirs):
    spec = make_spec(
        tiny_dirs["llama"],
        "",
        [{"skip": "layers.{layer}"}, {"save": "logits", "positions": [-1]}],
        generate={"max_new_tokens": 2},
    )
    spec["sweep"] = {"layer": [1, 2]}
    assert "ops.0: a skip that only some sweep variants make cannot run during generate" in (
        plan_problems(spec)
    )
