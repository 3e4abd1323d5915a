"""Every standardized name on every family names.json covers (tiny random configs from
transformers' own config classes): raysight's saved value against a plain PyTorch hook on the raw
module each prompt alone, and the names against the model's own data flow — each norm's output
is what the next module reads, a layer's output is its input plus its attention and MLP branches,
resid_mid is its input plus the attention branch, the logit lens at every layer is a hand-written
lm_head(final_norm(h)), and `logits` is what the model returns."""

from __future__ import annotations

import pytest
import torch

import families
from conftest import PROMPTS, by_id, make_spec
from raysight.models.names import LAYER_PARTS, SUB_PARTS

PARTS = [*LAYER_PARTS, *SUB_PARTS]
TOP = ("embed", "final_norm", "lm_head")
PICKED = [PROMPTS[0], PROMPTS[1], PROMPTS[3], PROMPTS[9]]  # mixed lengths: padding in a batch


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: families.save(f, root) for f in families.FAMILIES}


def _col(part: str, suffix: str = "") -> str:
    return "_".join([part.replace(".", "_"), *([suffix] if suffix else [])])


def _raw(family: str, name: str, layer: int | None = None) -> str:
    table = families.RAW[family]
    return table[name] if layer is None else f"{table['layers']}.{layer}.{table[name]}"


def _row(x):
    """One prompt's value without its batch dimension; OPT's MLP and Mixtral's router lay a
    batch's tokens out flat ([tokens, ...]), which for one prompt is already its row."""
    return x[0] if x.shape[0] == 1 else x


def _primary(x):
    return x[0] if isinstance(x, tuple) else x


def _reference(model, tok, prompt: str, paths: set[str]):
    """Each raw module's primary output and first tensor input for one prompt run alone, and the
    model's own hidden states and logits."""
    mods = dict(model.named_modules())
    got: dict[tuple[str, str], torch.Tensor] = {}

    def hook(path):
        def fn(mod, args, kwargs, out):
            first = args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))
            got[path, "input"], got[path, "output"] = first, _primary(out)

        return fn

    handles = [mods[p].register_forward_hook(hook(p), with_kwargs=True) for p in paths]
    try:
        with torch.no_grad():
            out = model(**tok(prompt, return_tensors="pt"), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return got, out


def _close(got, want, what):
    assert got.shape == want.shape, (what, got.shape, want.shape)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("family", families.FAMILIES)
def test_standardized_names_match_plain_hooks(family, family_dirs, run_spec):
    from transformers import AutoTokenizer

    model, _ = families.build(family)
    # as raysight loads it: for some model types (Qwen2) AutoTokenizer picks its own class
    tok = AutoTokenizer.from_pretrained(family_dirs[family])
    table = families.RAW[family]
    causal = "lm_head" in table
    parts = [p for p in PARTS if p in table]
    ops = [
        {"save": "embed.output", "as": "embed"},
        {"save": "layers.*.output", "as": "out"},
        {"save": "layers.*.input", "as": "in"},
    ]
    for p in parts:
        ops.append({"save": f"layers.*.{p}.output", "as": _col(p)})
        if p in SUB_PARTS:
            ops.append({"save": f"layers.*.{p}.input", "as": _col(p, "in")})
    if "final_norm" in table:
        ops.append({"save": "final_norm.output", "as": "final_norm"})
        ops.append({"save": "layers.*.output", "apply": ["final_norm", "lm_head"], "as": "lens"})
    if causal:
        ops.append({"save": "logits", "as": "logits"})
    if family in families.RESID_MID:
        ops.append({"save": "blocks.*.hook_resid_mid", "as": "mid"})  # = layers.*.resid_mid
    ds = run_spec(
        make_spec(family_dirs[family], None, ops, prompts=PICKED, execution={"max_padding": 1})
    )

    paths = {_raw(family, n) for n in TOP if n in table}
    paths |= {_raw(family, p, i) for p in parts for i in range(families.LAYERS)}
    paths |= {f"{table['layers']}.{i}" for i in range(families.LAYERS)}
    if family == "opt":
        paths |= {f"{table['layers']}.{i}.fc1" for i in range(families.LAYERS)}
    cols = {name: by_id(ds, name) for name in ds.columns if name not in ("example_id",)}
    for k, prompt in enumerate(PICKED):
        ref, out = _reference(model, tok, prompt, paths)
        hidden = out.hidden_states
        _close(cols["embed"][k], ref[_raw(family, "embed"), "output"][0], "embed.output")
        for i in range(families.LAYERS):
            layer = f"{table['layers']}.{i}"
            _close(cols[f"out.{i}"][k], ref[layer, "output"][0], f"layers.{i}.output")
            _close(cols[f"in.{i}"][k], ref[layer, "input"][0], f"layers.{i}.input")
            if i < families.LAYERS - 1:  # the model's own record of the residual stream
                _close(cols[f"out.{i}"][k], hidden[i + 1][0], f"layers.{i}.output vs hidden_states")
            for p in parts:
                raw = _raw(family, p, i)
                _close(cols[f"{_col(p)}.{i}"][k], _row(ref[raw, "output"]), f"layers.{i}.{p}")
                if p in SUB_PARTS:
                    _close(
                        cols[f"{_col(p, 'in')}.{i}"][k],
                        _row(ref[raw, "input"]),
                        f"layers.{i}.{p}.input",
                    )
            _check_data_flow(family, cols, k, i, ref)
            if family in families.RESID_MID:  # recomputed: the layer's input + attention branch
                branch = "attn_post_norm" if "attn_post_norm" in table else "attn"
                want = ref[layer, "input"] + ref[_raw(family, branch, i), "output"]
                _close(cols[f"mid.{i}"][k], _row(want), f"layers.{i}.resid_mid")
        if "final_norm" in table:
            _close(
                cols["final_norm"][k], ref[_raw(family, "final_norm"), "output"][0], "final_norm"
            )
        if causal:
            # what the model returns: Gemma 2 caps lm_head's output in its forward
            logits, cap = out.logits[0], getattr(model.config, "final_logit_softcapping", None)
            _close(cols["logits"][k], logits, "logits vs the model's logits")
        if causal and "final_norm" in table:  # a hand-written logit lens at every layer
            mods = dict(model.named_modules())
            norm, head = mods[_raw(family, "final_norm")], mods[_raw(family, "lm_head")]
            for i in range(families.LAYERS):
                with torch.no_grad():
                    hand = head(norm(ref[f"{table['layers']}.{i}", "output"]))[0]
                _close(cols[f"lens.{i}"][k], hand, f"layers.{i} logit lens")
            lens = cols[f"lens.{families.LAYERS - 1}"][k]  # lm_head's output: before the cap
            if cap:
                lens = torch.tanh(lens / cap) * cap
            _close(lens, logits, "the last layer's logit lens vs the model's logits")


def _check_data_flow(family, cols, k, i, ref):
    """The standardized names fit the model's computation, whatever the table says."""
    table = families.RAW[family]
    if "attn_norm" in table:
        _close(
            cols[f"attn_norm.{i}"][k], ref[_raw(family, "attn", i), "input"][0], "attn_norm -> attn"
        )
    if "mlp_norm" in table:  # OPT has no MLP module: its fc1 reads the norm
        reader = _raw(family, "mlp", i) if "mlp" in table else f"{table['layers']}.{i}.fc1"
        _close(cols[f"mlp_norm.{i}"][k], _row(ref[reader, "input"]), "mlp_norm -> the MLP")
    if family in ("bert", "opt_postnorm"):  # they normalize after the residual add
        return
    attn = cols.get(f"attn_post_norm.{i}", cols[f"attn.{i}"])[k]
    if f"mlp_post_norm.{i}" in cols:
        mlp = cols[f"mlp_post_norm.{i}"][k]
    elif f"mlp.{i}" in cols:
        mlp = cols[f"mlp.{i}"][k]
    else:
        mlp = cols[f"mlp_down_proj.{i}"][k]
    _close(cols[f"in.{i}"][k] + attn + mlp, cols[f"out.{i}"][k], f"layers.{i}: input + attn + mlp")


def test_resid_mid_is_refused_where_it_does_not_exist_or_is_written(family_dirs):
    from conftest import plan_problems

    mid = [{"save": "layers.0.resid_mid"}]
    msg = plan_problems(make_spec(family_dirs["gptj"], None, mid))
    assert "the gptj's layers have no resid_mid: its attention and MLP read the same input" in msg
    write = [{"set": "layers.0.resid_mid", "value": 0}, {"save": "logits"}]
    msg = plan_problems(make_spec(family_dirs["llama"], None, write))
    assert "ops.0.set: layers.0.resid_mid is read-only" in msg
