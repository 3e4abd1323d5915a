"""Mutations of the specs in specs/ for property-based tests (Hypothesis): replace, delete, add
or wrap any value of a spec, with values chosen to hit the edges (huge and negative numbers,
NaN, wildcards, placeholders, device paths, import paths, deep lists)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
SPEC_FILES = sorted((ROOT / "specs").glob("*.yaml"))
SPECS = {p.name: yaml.safe_load(p.read_text()) for p in SPEC_FILES}

KEYS = sorted(
    {
        *"save set skip cache grad positions steps value mode as apply reduce dtype with".split(),
        *"zeros noise file from number std seed path key scale site row topk argmax".split(),
        *"logit_diff prob logprob a b field loss sum mean logit target position".split(),
        *"source prompts text_field id_field input_field max_length limit pair fields".split(),
        *"layout format tensor_storage compression runner actors batch_tokens".split(),
        *"max_batch_rows shard_rows max_padding max_retries gpus_per_actor".split(),
        *"max_new_tokens do_sample temperature top_k top_p stop factory".split(),
        *"trust_remote_code device device_map gguf_file tokenizer version sweep edits".split(),
        *"expr let call attn_implementation".split(),
        "MODEL",
        "data-x",
        "a key",
    }
)
STRINGS = [
    "",
    " ",
    "layers.*.output",
    "layers.0.output",
    "layers.99.output",
    "layers.0:2.output",
    "layers.0.output[0][:, -1]",
    "layers.0.mlp.output[..., 1:3]",
    "logits",
    "embed.output",
    "final_norm",
    "lm_head",
    "0:3",
    "::2",
    "2:",
    "all",
    "-1",
    "{layer}",
    "{layer+1}",
    "{nope}",
    "os:system",
    "subprocess:run",
    "/dev/zero",
    "/dev/null",
    "/proc/self/environ",
    "../../etc/passwd",
    "~/x",
    "$HOME/x",
    "specs/data/prompts.jsonl",
    "specs/data/steer_576.npy",
    "cuda:7",
    "garbage",
    "float16",
    "bfloat16",
    "x" * 300,
    "ablate(x, d)",
    "cosine(x, x)",
    "x.__class__",
    "entropy(x)[tok(' Paris')]",
    "x[..., None] * x[..., None, :]",
    "topk(x, 99999)",
    "é\u0000\ud7ff",
]
_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 40),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(STRINGS),
    st.text(max_size=12),
)
VALUES = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=3),
    ),
    max_leaves=10,
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _parent(root: Any, path: tuple) -> Any:
    node = root
    for part in path[:-1]:
        node = node[part]
    return node


@st.composite
def mutated_specs(draw: Any, names: list[str] | None = None) -> tuple[str, dict]:
    """(spec file name, a mutated copy of its data)."""
    name = draw(st.sampled_from(names or sorted(SPECS)))
    spec = copy.deepcopy(SPECS[name])
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(spec)))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add", "wrap"]))
        if not path:  # the root: add a section or key
            spec[draw(st.sampled_from(KEYS))] = draw(VALUES)
            continue
        parent, last = _parent(spec, path), path[-1]
        if action == "replace":
            parent[last] = draw(VALUES)
        elif action == "delete":
            del parent[last]
        elif action == "wrap":
            parent[last] = [parent[last]]
        elif isinstance(parent[last], dict):
            parent[last][draw(st.sampled_from(KEYS))] = draw(VALUES)
        elif isinstance(parent[last], list):
            parent[last].append(draw(VALUES))
        else:
            parent[last] = {draw(st.sampled_from(KEYS)): parent[last]}
    return name, spec


def for_tiny(spec: dict, model_dir: str, layers: int = 3) -> dict:
    """The spec aimed at a tiny test model: its model section replaced, layer numbers folded
    into the model's depth so the sites resolve and validation gets past them."""
    import re

    text = yaml.safe_dump(spec)
    text = re.sub(r"layers\.(\d+)", lambda m: f"layers.{int(m.group(1)) % layers}", text)
    out = yaml.safe_load(text)
    out["model"] = {"path": model_dir}
    return out
