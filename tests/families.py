"""Tiny random-weight models of each architecture family raysight names, built from transformers'
own config classes (no download), and the raw module behind each standardized name, written out
by hand from each family's modeling file: the independent reference tests/test_families.py checks
names.json against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import tiny

_DECODER = dict(
    num_hidden_layers=2,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
_GQA = {**_DECODER, "head_dim": 8}
_OPT_CONFIG = dict(
    num_hidden_layers=2,
    hidden_size=32,
    ffn_dim=64,
    num_attention_heads=4,
    max_position_embeddings=128,
    word_embed_proj_dim=32,
)

#: family -> (config class name, config arguments)
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", dict(n_layer=2, n_embd=32, n_head=4, n_positions=128)),
    "gptj": ("GPTJConfig", dict(n_layer=2, n_embd=32, n_head=4, rotary_dim=4, n_positions=128)),
    "gpt_neox": (
        "GPTNeoXConfig",
        {k: v for k, v in _DECODER.items() if k != "num_key_value_heads"},
    ),
    "llama": ("LlamaConfig", _DECODER),
    "mistral": ("MistralConfig", _DECODER),
    "mixtral": ("MixtralConfig", {**_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2": ("Qwen2Config", _DECODER),
    "qwen3": ("Qwen3Config", _GQA),
    "gemma": ("GemmaConfig", _GQA),
    "gemma2": ("Gemma2Config", _GQA),
    "gemma3_text": ("Gemma3TextConfig", _GQA),
    "phi3": ("Phi3Config", _DECODER),
    "olmo2": ("Olmo2Config", _DECODER),
    "opt": ("OPTConfig", _OPT_CONFIG),
    "opt_postnorm": ("OPTConfig", {**_OPT_CONFIG, "do_layer_norm_before": False}),
    "bert": (
        "BertConfig",
        dict(
            num_hidden_layers=2,
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            max_position_embeddings=128,
        ),
    ),
}
FAMILIES = list(CONFIGS)
LAYERS = 2
#: families with a residual value between attention and MLP (the others run them in parallel,
#: or normalize after the residual add)
RESID_MID = [f for f in FAMILIES if f not in ("gptj", "gpt_neox", "opt_postnorm", "bert")]

_LLAMA = {
    "embed": "model.embed_tokens",
    "layers": "model.layers",
    "attn": "self_attn",
    "mlp": "mlp",
    "attn_norm": "input_layernorm",
    "mlp_norm": "post_attention_layernorm",
    "attn.out_proj": "self_attn.o_proj",
    "mlp.down_proj": "mlp.down_proj",
    "final_norm": "model.norm",
    "lm_head": "lm_head",
}
_GEMMA2 = {
    **_LLAMA,
    "attn_post_norm": "post_attention_layernorm",
    "mlp_norm": "pre_feedforward_layernorm",
    "mlp_post_norm": "post_feedforward_layernorm",
}
_OPT = {
    "embed": "model.decoder.embed_tokens",
    "layers": "model.decoder.layers",
    "attn": "self_attn",
    "attn_norm": "self_attn_layer_norm",
    "mlp_norm": "final_layer_norm",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.down_proj": "fc2",
    "final_norm": "model.decoder.final_layer_norm",
    "lm_head": "lm_head",
}
#: family -> standardized name -> raw path (layer parts relative to the layer)
RAW: dict[str, dict[str, str]] = {
    "gpt2": {
        "embed": "transformer.wte",
        "layers": "transformer.h",
        "attn": "attn",
        "mlp": "mlp",
        "attn_norm": "ln_1",
        "mlp_norm": "ln_2",
        "attn.out_proj": "attn.c_proj",
        "mlp.down_proj": "mlp.c_proj",
        "final_norm": "transformer.ln_f",
        "lm_head": "lm_head",
    },
    "gptj": {
        "embed": "transformer.wte",
        "layers": "transformer.h",
        "attn": "attn",
        "mlp": "mlp",
        "attn_norm": "ln_1",
        "mlp_norm": "ln_1",  # attention and MLP run in parallel on the same norm
        "attn.out_proj": "attn.out_proj",
        "mlp.down_proj": "mlp.fc_out",
        "final_norm": "transformer.ln_f",
        "lm_head": "lm_head",
    },
    "gpt_neox": {
        "embed": "gpt_neox.embed_in",
        "layers": "gpt_neox.layers",
        "attn": "attention",
        "mlp": "mlp",
        "attn_norm": "input_layernorm",
        "mlp_norm": "post_attention_layernorm",
        "attn.out_proj": "attention.dense",
        "mlp.down_proj": "mlp.dense_4h_to_h",
        "final_norm": "gpt_neox.final_layer_norm",
        "lm_head": "lm_head",
    },
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "mixtral": {
        **{k: v for k, v in _LLAMA.items() if k != "mlp.down_proj"},
        "mlp.router": "mlp.gate",
    },
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,  # Gemma 1's post_attention_layernorm is the norm before the MLP
    "gemma2": _GEMMA2,
    "gemma3_text": _GEMMA2,
    "phi3": _LLAMA,
    "olmo2": {
        **{k: v for k, v in _LLAMA.items() if k not in ("attn_norm", "mlp_norm")},
        "attn_post_norm": "post_attention_layernorm",
        "mlp_post_norm": "post_feedforward_layernorm",
    },
    "opt": _OPT,
    "opt_postnorm": {k: v for k, v in _OPT.items() if "norm" not in k},
    "bert": {
        "embed": "embeddings",
        "layers": "encoder.layer",
        "attn": "attention",
        "attn.out_proj": "attention.output.dense",
        "mlp.down_proj": "output.dense",
    },
}


def build(family: str, seed: int = 0) -> tuple[torch.nn.Module, Any]:
    import transformers

    cls, kwargs = CONFIGS[family]
    cfg = getattr(transformers, cls)(
        **kwargs, vocab_size=tiny.VOCAB, pad_token_id=0, bos_token_id=2, eos_token_id=3
    )
    torch.manual_seed(seed)
    if family == "bert":
        model = transformers.BertModel(cfg)
    else:
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    return model.eval(), tiny.char_tokenizer(with_bos=family not in ("gpt2", "bert"))


def save(family: str, root: Path) -> Path:
    model, tok = build(family)
    path = root / family
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
