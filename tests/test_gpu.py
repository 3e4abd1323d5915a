"""On a CUDA device: saves copied off the device in one pinned, non-blocking pass per batch give
the values a plain-hook reference computes on the CPU. Skipped where no GPU is visible."""

from __future__ import annotations

import pytest
import torch

from conftest import by_id, make_spec
from raysight.interleave.host import to_host
from reference import alone, first

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_to_host_copies_tensors_and_row_lists_in_one_pass():
    dev = torch.device("cuda")
    whole = torch.randn(4, 3, 5, device=dev)
    rows = [torch.randn(n, 5, device=dev) for n in (3, 1, 4)]
    odd = [torch.randn(2, device=dev), torch.randn(2, 3, device=dev)]  # cannot be concatenated
    got = to_host({"whole": whole, "rows": rows, "odd": odd})
    assert got["whole"].device.type == "cpu" and got["whole"].is_pinned()
    assert torch.equal(got["whole"], whole.cpu())
    assert [r.shape for r in got["rows"]] == [r.shape for r in rows]
    assert all(torch.equal(a, b.cpu()) for a, b in zip(got["rows"], rows))
    assert all(torch.equal(a, b.cpu()) for a, b in zip(got["odd"], odd))


@pytest.mark.parametrize("layout", ["per_sequence", "per_token"])
def test_gpu_run_matches_cpu_hooks(layout, tiny_dirs, tiny_models, run_spec):
    model, tok = tiny_models["llama"]
    ops = [{"save": "layers.1.output", "as": "h"}]
    if layout == "per_sequence":  # positions: per-sequence only
        ops.append({"save": "layers.0.output", "positions": [-1], "as": "last"})
    ds = run_spec(
        make_spec(
            tiny_dirs["llama"], None, ops, model={"device": "cuda"}, output={"layout": layout}
        )
    )
    prompts = make_spec(tiny_dirs["llama"], None, ops)["data"]["prompts"]
    if layout == "per_token":
        t = ds.table()
        h = ds.to_torch("h")
        ids = t.column("example_id").to_pylist()
        pos = t.column("position").to_pylist()
    else:
        h_rows, last = by_id(ds, "h"), by_id(ds, "last")
    for i, prompt in enumerate(prompts):
        cap, _ = alone(
            model, tok, prompt, capture={"h": "model.layers.1", "last": "model.layers.0"}
        )
        ref = first(cap["h"])[0]
        if layout == "per_token":
            mine = torch.stack([h[k] for k, e in enumerate(ids) if e == i])
            assert [p for e, p in zip(ids, pos) if e == i] == list(range(len(ref)))
        else:
            mine = h_rows[i]
            torch.testing.assert_close(last[i][0], first(cap["last"])[0][-1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(mine, ref, atol=1e-4, rtol=1e-4)
