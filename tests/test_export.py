"""`raysight export saelens`: a per-token column in SAELens' cached-activations layout, read
back with HF datasets as SAELens' ActivationsStore reads it (load_from_disk, the hook column's
Array2D shape, torch format, slices of [batch, context, d_in]) and compared with plain hooks;
with SAELens' own ActivationsStore when sae-lens is installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import PROMPTS, make_spec
from raysight.cli import main
from raysight.dataset.export import ExportError, export_saelens

datasets = pytest.importorskip("datasets")
OPS = [{"save": "layers.1.output", "as": "resid"}]


@pytest.fixture(scope="module")
def per_token(tiny_dirs, tmp_path_factory):
    import raysight

    out = tmp_path_factory.mktemp("export") / "tok"
    spec = make_spec(tiny_dirs["llama"], out, OPS, output={"layout": "per_token"})
    spec["execution"]["shard_rows"] = 4  # three shards: contexts cross shard boundaries
    raysight.run(spec, log=lambda _: None)
    return raysight.open(out)


def _reference(ds, model, tok):
    """Every token's layer-1 output from a plain hook, in the dataset's row order."""
    from reference import alone, first

    ref = {}
    for i, prompt in enumerate(PROMPTS):
        cap, _ = alone(model, tok, prompt, capture={"h": "model.layers.1"})
        ref[i] = first(cap["h"])[0]
    t = ds.table(["example_id", "position", "token_id"]).to_pylist()
    vals = torch.stack([ref[r["example_id"]][r["position"]] for r in t])
    return vals, np.array([r["token_id"] for r in t], dtype=np.int32)


def test_per_token_contexts_load_as_saelens_reads_them(per_token, tiny_models, tmp_path):
    model, tok = tiny_models["llama"]
    dest = tmp_path / "cache"
    summary = export_saelens(
        per_token.path,
        dest,
        "resid",
        hook_name="blocks.1.hook_resid_post",
        context_size=8,
        file_bytes=3 * 8 * 32 * 4,  # three contexts per file: several data files
    )
    vals, ids = _reference(per_token, model, tok)
    n = len(vals) // 8
    assert (summary.contexts, summary.dropped_tokens) == (n, len(vals) - 8 * n)
    assert summary.files == -(-n // 3) > 1

    cache = datasets.load_from_disk(str(dest))  # what ActivationsStore does
    assert cache.features["blocks.1.hook_resid_post"].shape == (8, 32)
    assert len(cache) == n and set(cache.column_names) == {"blocks.1.hook_resid_post", "token_ids"}
    cache.set_format(type="torch", columns=["blocks.1.hook_resid_post", "token_ids"])
    got = cache[0:n]
    assert got["blocks.1.hook_resid_post"].shape == (n, 8, 32)
    torch.testing.assert_close(
        got["blocks.1.hook_resid_post"].reshape(-1, 32), vals[: 8 * n], atol=1e-5, rtol=1e-4
    )
    assert got["token_ids"].shape == (n, 8)
    assert np.array_equal(got["token_ids"].reshape(-1).numpy(), ids[: 8 * n])


def test_sae_lens_own_store_reads_the_export(per_token, tiny_models, tmp_path):
    """SAELens' own loader and batch reader (skipped where sae-lens is not installed: it is
    not a test dependency, see docs/output.md). Its ActivationsStore wants a model to build;
    the two methods that read a cache use only the attributes set here."""
    store_mod = pytest.importorskip("sae_lens.training.activations_store")
    hook = "blocks.1.hook_resid_post"
    export_saelens(per_token.path, tmp_path / "cache", "resid", hook_name=hook, context_size=8)
    store = object.__new__(store_mod.ActivationsStore)
    store.cached_activations_path, store.hook_name = str(tmp_path / "cache"), hook
    store.context_size, store.d_in, store.store_batch_size_prompts = 8, 32, 4
    store.device, store.dtype = torch.device("cpu"), torch.float32
    store.cached_activation_dataset = store.load_cached_activation_dataset()
    acts, ids = store._load_raw_llm_batch_from_cached(raise_on_epoch_end=True)
    vals, want_ids = _reference(per_token, *tiny_models["llama"])
    torch.testing.assert_close(acts, vals[:32], atol=1e-5, rtol=1e-4)
    assert ids.tolist() == want_ids[:32].tolist()


def test_a_windowed_column_is_one_context_per_row(tiny_dirs, tiny_models, run_spec, tmp_path):
    spec = make_spec(tiny_dirs["llama"], None, OPS)
    spec["data"]["chunk"] = {"size": 4, "last": "drop"}
    ds = run_spec(spec)
    assert ds.manifest.columns[0]["shape"] == [None, 32]  # windows: all 4 long under `drop`
    rc = main(["export", "saelens", str(ds.path), str(tmp_path / "c"), "--column", "resid"])
    assert rc == 0
    cache = datasets.load_from_disk(str(tmp_path / "c")).with_format("torch")
    assert len(cache) == ds.num_rows and cache.features["resid"].shape == (4, 32)
    torch.testing.assert_close(cache[:]["resid"], torch.stack(ds.to_torch("resid")))
    ids = ds.table(["input_ids"]).column(0).to_pylist()
    assert cache[:]["token_ids"].tolist() == ids


def test_what_cannot_be_exported_says_why(per_token, tiny_dirs, run_spec, tmp_path, capsys):
    with pytest.raises(ExportError, match="--context-size is needed: 'resid' holds one token"):
        export_saelens(per_token.path, tmp_path / "a", "resid")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(ExportError, match="is not an empty directory"):
        export_saelens(per_token.path, tmp_path / "full", "resid", context_size=8)
    with pytest.raises(ExportError, match="identity column"):
        export_saelens(per_token.path, tmp_path / "b", "token_id", context_size=8)
    with pytest.raises(ExportError, match="fewer than one context"):
        export_saelens(per_token.path, tmp_path / "c", "resid", context_size=10**6)
    assert not any((tmp_path / "c").iterdir())  # nothing half-written left behind
    last = run_spec(make_spec(tiny_dirs["llama"], None, [{**OPS[0], "positions": [-1]}]))
    with pytest.raises(ExportError, match="does not hold every token"):
        export_saelens(last.path, tmp_path / "d", "resid")
    assert export_saelens(last.path, tmp_path / "e", "resid", token_ids=False).contexts == 10
    swept = make_spec(
        tiny_dirs["llama"],
        None,
        [*OPS, {"set": "layers.0.output", "value": "{v}"}],
        sweep={"v": [0, 1]},
    )
    with pytest.raises(ExportError, match="2 sweep variants"):
        export_saelens(run_spec(swept).path, tmp_path / "f", "resid")
    assert (
        main(
            [
                "export",
                "saelens",
                str(per_token.path),
                str(tmp_path / "g"),
                "--column",
                "nope",
                "--context-size",
                "4",
            ]
        )
        == 2
    )
    assert "no column 'nope'" in capsys.readouterr().err
