"""TransformerLens hook names as aliases of raysight's standardized sites, so a researcher's
``blocks.6.hook_resid_post`` (or an SAE's ``hook_name``) works as written.

Each alias is the standardized site holding the same tensor: ``hook_resid_post`` is the decoder
layer's output, ``attn.hook_z`` the input of the attention's output projection (TL's
[batch, pos, head, d_head], here [batch, pos, head * d_head]), ``mlp.hook_post`` the input of
the MLP's down projection (the activation, gated where the MLP is). A TL hook with no module
value behind it in an HF model (``hook_q``...) is refused with what to use instead.
``hook_resid_mid`` is ``layers.N.resid_mid``; ``attn.hook_pattern`` the attention module's
weights, ``[heads, queries, keys]`` per row (under ``model.attn_implementation: eager``).
Pure Python: no torch.
"""

from __future__ import annotations

import re

__all__ = ["TL_HOOKS", "from_transformer_lens"]

_LAYER = r"(?P<i>-?\d+|\*|-?\d*:-?\d*(?::[1-9]\d*)?)"

#: TL hook (``{i}``: a layer, index, ``*`` or range) -> standardized value site
TL_HOOKS = {
    "hook_embed": "embed.output",
    "blocks.{i}.hook_resid_pre": "layers.{i}.input",
    "blocks.{i}.hook_resid_post": "layers.{i}.output",
    "blocks.{i}.hook_resid_mid": "layers.{i}.resid_mid",
    "blocks.{i}.hook_attn_out": "layers.{i}.attn.output",
    "blocks.{i}.hook_mlp_out": "layers.{i}.mlp.output",
    "blocks.{i}.attn.hook_z": "layers.{i}.attn.out_proj.input",
    "blocks.{i}.mlp.hook_post": "layers.{i}.mlp.down_proj.input",
    "blocks.{i}.ln1.hook_normalized": "layers.{i}.attn_norm.output",
    "blocks.{i}.ln2.hook_normalized": "layers.{i}.mlp_norm.output",
    "ln_final.hook_normalized": "final_norm.output",
    "blocks.{i}.attn.hook_pattern": "layers.{i}.attn.output[1]",
    "unembed": "logits",
    "unembed.output": "logits",
}

#: TL hooks that are not a module's input or output in an HF model: what to write instead
_NOT_A_MODULE_VALUE = {
    "attn.hook_attn_scores": "attention scores are computed inside the attention's forward",
    "attn.hook_q": "per-head queries: save the query projection's output, heads flattened "
    "(Llama: layers.{i}.attn.q_proj.output; GPT-2 fuses q, k and v in layers.{i}.attn.c_attn)",
    "attn.hook_k": "per-head keys: save the key projection's output, heads flattened (Llama: "
    "layers.{i}.attn.k_proj.output; GPT-2: layers.{i}.attn.c_attn)",
    "attn.hook_v": "per-head values: save the value projection's output, heads flattened "
    "(Llama: layers.{i}.attn.v_proj.output; GPT-2: layers.{i}.attn.c_attn)",
    "mlp.hook_pre": "the MLP's pre-activation: save its up (or gate) projection's output "
    "(a raw path)",
    "hook_pos_embed": "the position embedding has no standardized name; use its raw path "
    "(GPT-2: transformer.wpe.output)",
}

_PATTERNS = [
    (re.compile("^" + re.escape(tl).replace(r"\{i\}", _LAYER) + "$"), site)
    for tl, site in TL_HOOKS.items()
]
# any path ending in a TL-style hook part (blocks.3.hook_x, layers.3.hook_resid_post, hook_x)
_REFUSED = re.compile(r"^(?:(?P<base>.*?)\.)?(?P<hook>(?:attn\.|mlp\.|ln\d\.)?hook_\w+)$")


def from_transformer_lens(head: str) -> str | None:
    """The standardized value site for a TL hook path (the part before any ``[...]``), or None
    when ``head`` is not a TL name. Raises ValueError for a TL hook with no module value."""
    for pattern, site in _PATTERNS:
        m = pattern.match(head)
        if m:
            return site.format(i=m.groupdict().get("i"))
    m = _REFUSED.match(head)
    if m is None:
        return None
    hook = m.group("hook")
    i = next((p for p in (m.group("base") or "").split(".") if p.lstrip("-").isdigit()), "N")
    if hook in _NOT_A_MODULE_VALUE:
        raise ValueError(f"TransformerLens hook '{head}': " + _NOT_A_MODULE_VALUE[hook].format(i=i))
    known = ", ".join(TL_HOOKS)
    raise ValueError(
        f"'{head}' looks like a TransformerLens hook but is not one raysight knows; the TL "
        f"names it accepts are: {known}"
    )
