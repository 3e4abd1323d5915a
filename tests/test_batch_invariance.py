"""A row's saved values do not depend on batch size, neighbours or padding side: the same rows at
batch sizes 1, 7 and 32 (mixed lengths), and on the other padding side, each equal within 1e-5
(fp32) to the row run alone through the plain model with plain hooks."""

from __future__ import annotations

import hashlib
import random

import pytest
import torch

from conftest import by_id, make_spec
from raysight.data.batching import pack
from reference import alone, first

WORDS = [
    "the",
    "a",
    "of",
    "model",
    "layer",
    "token",
    "pad",
    "batch",
    "row",
    "value",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
]
LAYER = {"gpt2": "transformer.h", "llama": "model.layers", "bert": "encoder.layer"}


def prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14))) for _ in range(n)]


def ops_for(arch: str) -> tuple[list[dict], str]:
    edited = "layers.0.mlp.output" if arch != "bert" else "layers.0.output"
    return [
        {"set": edited, "value": 0.5, "mode": "scale"},
        {"save": "layers.1.output", "as": "h1"},
        {"save": "layers.2.output", "positions": [-1, 0], "as": "h2"},
        {"save": "layers.2.output[:, -1, :]", "as": "last"},
    ], edited.replace("layers.", f"{LAYER[arch]}.").removesuffix(".output")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_every_batching_equals_each_row_alone(arch, tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models[arch]
    rows = prompts(40)
    ops, edited = ops_for(arch)
    runs = {}
    for bs in (1, 7, 32):
        runs[bs] = run_spec(
            make_spec(
                tiny_dirs[arch],
                None,
                ops,
                prompts=rows,
                # max_padding 1: one wide batch of mixed lengths, the hard case for padding
                execution={"max_batch_rows": bs, "batch_tokens": 10**6, "max_padding": 1},
            )
        )
    other_side = "right" if arch != "bert" else "left"
    runs[other_side] = run_spec(
        make_spec(
            tiny_dirs[arch],
            None,
            ops,
            prompts=rows,
            model={"padding_side": other_side},
            execution={"max_batch_rows": 32, "max_padding": 1},
        )
    )
    got = {key: {c: by_id(ds, c) for c in ("h1", "h2", "last")} for key, ds in runs.items()}
    layer = LAYER[arch]
    for i, prompt in enumerate(rows):
        cap, _ = alone(
            model,
            tok,
            prompt,
            capture={"h1": f"{layer}.1", "h2": f"{layer}.2"},
            edit={edited: lambda o: first(o) * 0.5},
        )
        h1, h2 = first(cap["h1"])[0], first(cap["h2"])[0]
        want = {"h1": h1, "h2": h2[[-1, 0]], "last": h2[-1]}
        for key, cols in got.items():
            for col, ref in want.items():
                torch.testing.assert_close(
                    cols[col][i],
                    ref,
                    atol=1e-5,
                    rtol=0,
                    msg=lambda m, k=key, c=col, i=i: f"{k} {c} row {i}: {m}",
                )


def expected_noise(seed: int, example_id, shape) -> torch.Tensor:
    """The documented contract, re-implemented: N(0, 1) from a generator seeded by the first
    8 bytes (little-endian, 63 bits) of sha256(f"{seed}\\0{example_id!r}")."""
    digest = hashlib.sha256(f"{seed}\x00{example_id!r}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.randn(shape, generator=g)


def test_noise_is_per_row_and_batch_invariant(tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models["llama"]
    rows = prompts(12, seed=2)
    ops = [
        {"set": "layers.0.mlp.output", "value": {"noise": {"std": 0.3, "seed": 5}}, "mode": "add"},
        {"save": "layers.1.output", "as": "h1"},
    ]
    runs = [
        run_spec(
            make_spec(tiny_dirs["llama"], None, ops, prompts=rows, execution={"max_batch_rows": bs})
        )
        for bs in (1, 5)
    ]
    for i, prompt in enumerate(rows):
        n = len(tok(prompt)["input_ids"])
        noise = expected_noise(5, i, (n, 32)) * 0.3
        cap, _ = alone(
            model,
            tok,
            prompt,
            capture={"h1": "model.layers.1"},
            edit={"model.layers.0.mlp": lambda o, z=noise: o + z},
        )
        for ds in runs:
            torch.testing.assert_close(by_id(ds, "h1")[i], cap["h1"][0], atol=1e-5, rtol=0)


def test_token_budget_batches_equal_rows_alone(tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models["gpt2"]
    rows = prompts(25, seed=1)
    ops, edited = ops_for("gpt2")
    small = run_spec(
        make_spec(
            tiny_dirs["gpt2"],
            None,
            ops,
            prompts=rows,
            execution={"batch_tokens": 16, "max_padding": 1},
        )
    )
    got = by_id(small, "h1")
    assert set(got) == set(range(25))
    for i, prompt in enumerate(rows):
        cap, _ = alone(
            model, tok, prompt, capture={"h1": "transformer.h.1"}, edit={edited: lambda o: o * 0.5}
        )
        torch.testing.assert_close(got[i], cap["h1"][0], atol=1e-5, rtol=0)


def test_pack_buckets_lengths_within_the_padding_budget():
    rng = random.Random(3)
    lengths = [rng.randint(1, 200) for _ in range(3000)]
    for budget in (0.0, 0.05, 0.2):
        batches = pack(lengths, 4096, 256, budget)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        padded = real = 0
        for b in batches:
            width = max(lengths[i] for i in b)
            assert len(b) <= 256 and (len(b) == 1 or len(b) * width <= 4096)
            pad = 1 - sum(lengths[i] for i in b) / (len(b) * width)
            assert pad <= budget + 1e-12
            padded, real = padded + len(b) * width, real + sum(lengths[i] for i in b)
        assert 1 - real / padded <= budget + 1e-12
    # With no padding budget, a batch holds rows of one length only.
    assert all(len({lengths[i] for i in b}) == 1 for b in pack(lengths, 4096, 256, 0.0))
    # Bucketing off: budget-filling batches, as many rows as fit.
    wide = pack(lengths, 4096, 256, 1.0)
    assert len(wide) < len(pack(lengths, 4096, 256, 0.05))


def test_generation_batches_fill_rows_and_count_the_new_tokens():
    """A generate loop's steps cost the same whatever the padding: batches are full (as an HF
    loop's are) at any max_padding, and each row holds its prompt + new tokens of the budget."""
    rng = random.Random(5)
    lengths = [rng.randint(6, 70) for _ in range(24)]
    for budget in (0.0, 0.05, 1.0):
        batches = pack(lengths, 16384, 8, budget, new_tokens=16)
        assert [len(b) for b in batches] == [8, 8, 8]
        assert sorted(i for b in batches for i in b) == list(range(24))
        widths = [max(lengths[i] for i in b) for b in batches]
        assert widths == sorted(widths, reverse=True)  # longest first: the least padding
    # the KV cache at the last step counts: 70 + 16 tokens a row, so 4 rows in 400 tokens
    for b in pack(lengths, 400, 8, 0.05, new_tokens=16):
        assert len(b) == 1 or len(b) * (max(lengths[i] for i in b) + 16) <= 400
    assert len(pack([70] * 8, 400, 8, 1.0, new_tokens=16)) == 2
