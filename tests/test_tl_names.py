"""TransformerLens hook names are aliases of standardized sites: each saves the tensor a plain
PyTorch hook sees on the module TL's hook stands for (tiny GPT-2 and Llama); TL hooks with no
module value behind them are refused with what to use instead."""

from __future__ import annotations

import pytest
import torch

from conftest import PROMPTS, by_id, make_spec, plan_problems
from raysight.spec.sites import SiteError, parse_value_site

# TL hook -> (kind, module path) of its plain reference, per architecture
RAW = {
    "gpt2": {
        "hook_embed": ("out", "transformer.wte"),
        "blocks.1.hook_resid_pre": ("in", "transformer.h.1"),
        "blocks.1.hook_resid_post": ("out", "transformer.h.1"),
        "blocks.1.hook_attn_out": ("out", "transformer.h.1.attn"),
        "blocks.1.hook_mlp_out": ("out", "transformer.h.1.mlp"),
        "blocks.1.attn.hook_z": ("in", "transformer.h.1.attn.c_proj"),
        "blocks.1.mlp.hook_post": ("in", "transformer.h.1.mlp.c_proj"),
        "blocks.1.ln1.hook_normalized": ("out", "transformer.h.1.ln_1"),
        "blocks.1.ln2.hook_normalized": ("out", "transformer.h.1.ln_2"),
        "ln_final.hook_normalized": ("out", "transformer.ln_f"),
        "unembed": ("out", "lm_head"),
    },
    "llama": {
        "hook_embed": ("out", "model.embed_tokens"),
        "blocks.1.hook_resid_pre": ("in", "model.layers.1"),
        "blocks.1.hook_resid_post": ("out", "model.layers.1"),
        "blocks.1.hook_attn_out": ("out", "model.layers.1.self_attn"),
        "blocks.1.hook_mlp_out": ("out", "model.layers.1.mlp"),
        "blocks.1.attn.hook_z": ("in", "model.layers.1.self_attn.o_proj"),
        "blocks.1.mlp.hook_post": ("in", "model.layers.1.mlp.down_proj"),
        "blocks.1.ln1.hook_normalized": ("out", "model.layers.1.input_layernorm"),
        "blocks.1.ln2.hook_normalized": ("out", "model.layers.1.post_attention_layernorm"),
        "ln_final.hook_normalized": ("out", "model.norm"),
        "unembed": ("out", "lm_head"),
    },
}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_each_tl_hook_saves_what_a_plain_hook_sees(arch, tiny_dirs, tiny_models, run_spec):
    from reference import alone, first

    model, tok = tiny_models[arch]
    hooks = RAW[arch]
    ops = [{"save": tl, "as": f"c{k}"} for k, tl in enumerate(hooks)]
    ds = run_spec(make_spec(tiny_dirs[arch], None, ops))
    got = {k: by_id(ds, f"c{k}") for k in range(len(hooks))}
    for i, prompt in enumerate(PROMPTS):
        cap = {f"c{k}": p for k, (kind, p) in enumerate(hooks.values()) if kind == "out"}
        pre = {f"c{k}": p for k, (kind, p) in enumerate(hooks.values()) if kind == "in"}
        ref, _ = alone(model, tok, prompt, capture=cap, pre_capture=pre)
        for k, tl in enumerate(hooks):
            want = first(ref[f"c{k}"])[0]
            torch.testing.assert_close(got[k][i], want, atol=1e-5, rtol=1e-4, msg=f"{arch} {tl}")


def test_tl_names_take_indices_wildcards_and_ranges():
    assert str(parse_value_site("blocks.6.hook_resid_post[:, -1]")) == "layers.6.output[:, -1]"
    assert str(parse_value_site("blocks.-1.hook_resid_post")) == "layers.-1.output"
    assert parse_value_site("blocks.*.attn.hook_z").module == "layers.*.attn.out_proj"
    assert parse_value_site("blocks.2:4.mlp.hook_post").module == "layers.2:4.mlp.down_proj"
    # the pattern is the attention module's own element 1, and the user's index follows it
    pattern = "blocks.1.attn.hook_pattern[:, :, -1]"
    assert str(parse_value_site(pattern)) == "layers.1.attn.output[1][:, :, -1]"


def test_tl_hooks_with_no_module_value_say_what_to_use(tiny_dirs):
    for hook, says in [
        ("blocks.0.attn.hook_attn_scores", "computed inside the attention's forward"),
        ("blocks.0.attn.hook_q", "layers.0.attn.q_proj.output"),
        ("blocks.0.hook_nonsense", "the TL names it accepts are: hook_embed"),
        ("layers.1.hook_resid_post", "looks like a TransformerLens hook"),
    ]:
        with pytest.raises(SiteError) as e:
            parse_value_site(hook)
        assert says in str(e.value), (hook, str(e.value))
    # in a spec: the field is named, with the same message
    msg = plan_problems(make_spec(tiny_dirs["gpt2"], None, [{"save": "blocks.0.attn.hook_q"}]))
    assert "ops.0.save" in msg and "c_attn" in msg


def test_bert_has_no_mlp_module_and_says_so(tiny_dirs):
    msg = plan_problems(make_spec(tiny_dirs["bert"], None, [{"save": "blocks.0.hook_mlp_out"}]))
    assert "ops.0.save: the bert architecture has no standard 'mlp' module" in msg


def test_near_misses_of_standardized_names_suggest_them(tiny_dirs):
    ops = [
        {"save": "layer.1.output"},
        {"save": "layers.1.atn.output"},
        {"save": "final_nrm.output"},
        {"save": "transformer.hh.0.output"},  # a raw path: raw suggestions
    ]
    msg = plan_problems(make_spec(tiny_dirs["llama"], None, ops))
    assert "ops.0.save: no module 'layer.1'; did you mean 'layers.1'?" in msg
    assert "ops.1.save: no module 'layers.1.atn'; did you mean 'layers.1.attn'?" in msg
    assert "ops.2.save: no module 'final_nrm'; did you mean 'final_norm'?" in msg
    assert "ops.3.save: no module 'transformer'" in msg


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cache_star_saves_every_tensor_module_and_lists_the_rest(
    arch, tiny_dirs, tiny_models, run_spec
):
    """nnsight's tracer.cache(): every module that returns a tensor (a tuple's first item),
    against plain hooks on every module; the others are named with the reason."""
    import raysight
    from reference import alone, first

    model, tok = tiny_models[arch]
    spec = make_spec(tiny_dirs[arch], None, [{"cache": "*", "positions": [-1]}])
    report = raysight.plan({**spec, "output": {"path": "unused"}})
    skipped = "\n".join(report.skipped)
    root_child = "transformer" if arch == "gpt2" else "model"
    assert f"{root_child}: returns BaseModelOutputWithPast" in skipped, skipped
    ds = run_spec(spec)
    names = [c for c in ds.columns]
    every = [n for n, _ in model.named_modules() if n]
    assert set(names) | {line.split(": ")[1] for line in report.skipped} == set(every)
    assert len(names) > 3 * len(
        model.get_submodule(root_child).get_submodule("h" if arch == "gpt2" else "layers")
    )
    got = {n: by_id(ds, n) for n in names}
    for i, prompt in enumerate(PROMPTS):
        ref, _ = alone(model, tok, prompt, capture={n: n for n in names})
        for n in names:
            want = first(ref[n])[0][-1]
            torch.testing.assert_close(got[n][i][0], want, atol=1e-5, rtol=1e-4, msg=n)
