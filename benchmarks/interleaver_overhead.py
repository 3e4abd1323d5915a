"""Interleaver overhead: the same batches through a bare HF forward, plain PyTorch hooks,
nnsight 0.8 and raysight's interleaver, saving the full hidden state of 1, 4 and all 30 layers
of SmolLM2-135M (CPU, float32). Measured in one run, median of --repeat.

The saved layers always include the last one, so raysight cannot stop early (benchmark 2 is about
that); it still skips lm_head, which nothing here needs, and the "bare forward, no logits" row
shows what that alone is worth.

    python benchmarks/interleaver_overhead.py [--batch 8] [--words 48] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from types import SimpleNamespace

import torch

WORDS = (
    "the model reads every token of a long prompt and writes activations while another "
    "process works on a different shard of the same dataset"
).split()


def round_robin(fns: dict[str, object], repeat: int) -> dict[str, float]:
    """Median seconds per function, the functions interleaved within each repetition so that
    drift on a shared machine (other load, frequency changes) hits all of them alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def setup(n_prompts: int, words: int) -> SimpleNamespace:
    """SmolLM2 on the CPU, one left-padded batch of ``n_prompts`` prompts of words/2-words words,
    the HF model, nnsight's wrapper of it, and a separate raysight replica (hooks never mix)."""
    import nnsight
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raysight.data.batching import Encoded, collate
    from raysight.models.bundled import resolve_bundled
    from raysight.models.loading import load_model
    from raysight.spec import parse_spec

    path = str(resolve_bundled("bundled:smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(path)
    rng = random.Random(0)
    prompts = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(words // 2, words)))
        for _ in range(n_prompts)
    ]
    enc = [Encoded(i, tok(p)["input_ids"]) for i, p in enumerate(prompts)]
    batch = collate(enc, tok.pad_token_id or 0, "left", True)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    spec = parse_spec(
        {"model": {"path": path}, "data": {"prompts": ["x"]}, "output": {"path": "-"}}
    )
    return SimpleNamespace(
        path=path,
        batch=batch,
        model=model,
        lm=nnsight.LanguageModel(model, tokenizer=tok),
        loaded=load_model(spec.model),
    )


def interleaver_for(env: SimpleNamespace, ops: list[dict]):
    """raysight's interleaver with ``ops`` planned on the meta device, on the shared replica."""
    from raysight.engine.plan import make_plan
    from raysight.interleave.interleaver import Interleaver
    from raysight.models.loading import load_model
    from raysight.spec import parse_spec

    spec = parse_spec(
        {
            "model": {"path": env.path},
            "data": {"prompts": ["x"]},
            "ops": ops,
            "output": {"path": "-"},
        }
    )
    plan = make_plan(spec, loaded=load_model(spec.model, meta=True))
    return Interleaver(env.loaded, plan.hooks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--words", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    env = setup(args.batch, args.words)
    batch, model, lm = env.batch, env.model, env.lm
    inputs = batch.inputs
    n_tokens = sum(batch.lengths)
    layers = model.model.layers
    print(
        f"SmolLM2-135M, CPU, {torch.get_num_threads()} threads, batch {args.batch} x "
        f"{batch.padded_length} tokens ({n_tokens} real), median of {args.repeat}"
    )

    def bare():
        with torch.inference_mode():
            model(**inputs)

    def bare_no_logits():
        with torch.inference_mode():
            model.model(**inputs)

    fns = {"bare HF forward (logits)": bare, "bare HF forward, no logits": bare_no_logits}
    for n in (1, 4, 30):
        chosen = sorted({29 - i * (30 // n) for i in range(n)})

        def hooks(chosen=chosen):
            saved, hs = [], []
            for i in chosen:
                hs.append(
                    layers[i].register_forward_hook(
                        lambda m, a, o: saved.append(o.detach().clone())
                    )
                )
            try:
                with torch.inference_mode():
                    model(**inputs)
            finally:
                for h in hs:
                    h.remove()

        def nn_trace(chosen=chosen):
            saved = []  # bound before the trace: nnsight runs the with-body as its own code
            with lm.trace(dict(inputs)):
                for i in chosen:
                    saved.append(lm.model.layers[i].output.save())
            return saved

        inter = interleaver_for(
            env, [{"save": f"layers.{i}.output", "as": f"h{i}"} for i in chosen]
        )

        fns[f"plain hooks, {n} layer(s)"] = hooks
        fns[f"nnsight 0.8, {n} layer(s)"] = nn_trace
        fns[f"raysight interleaver, {n} layer(s)"] = lambda inter=inter: inter.run(batch)
    med = round_robin(fns, args.repeat)
    base, no_logits = med["bare HF forward (logits)"], med["bare HF forward, no logits"]
    print(f"{'how':<40} {'ms':>8} {'x bare':>8} {'x no-logits':>12}")
    for name, secs in med.items():
        print(f"{name:<40} {secs * 1000:>8.1f} {secs / base:>8.2f} {secs / no_logits:>12.2f}")


if __name__ == "__main__":
    main()
