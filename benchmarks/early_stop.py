"""Early stop: saving layer L of N should cost about (L+1)/N of a full forward.

SmolLM2-135M (N = 30 layers) on the CPU, one batch, float32. For each L, raysight's interleaver
saving ``layers.L.output`` against the bare base-model forward (``model.model``: all 30 layers,
no lm_head) and against nnsight 0.8 saving the same value (which runs the whole model unless
the script calls ``tracer.stop()``). Every method runs once per repetition, in turn; medians.

    python benchmarks/early_stop.py [--batch 8] [--words 48] [--repeat 5]
"""

from __future__ import annotations

import argparse

import torch
from interleaver_overhead import interleaver_for, round_robin, setup

LAYERS = (0, 7, 14, 22, 29)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--words", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    env = setup(args.batch, args.words)
    batch, model, lm = env.batch, env.model, env.lm
    n_layers = len(model.model.layers)

    def bare():
        with torch.inference_mode():
            model.model(**batch.inputs)

    fns = {"bare": bare}
    for layer in LAYERS:
        inter = interleaver_for(env, [{"save": f"layers.{layer}.output", "as": "h"}])
        fns[f"raysight {layer}"] = lambda inter=inter: inter.run(batch)

        def nn_trace(layer=layer):
            saved = []  # bound before the trace: nnsight runs the with-body as its own code
            with torch.inference_mode(), lm.trace(dict(batch.inputs)):
                saved.append(lm.model.layers[layer].output.save())
            return saved

        fns[f"nnsight {layer}"] = nn_trace
    med = round_robin(fns, args.repeat)
    base = med["bare"]
    print(
        f"SmolLM2-135M, CPU, {torch.get_num_threads()} threads, batch {args.batch} x "
        f"{batch.padded_length} tokens, median of {args.repeat}; bare base-model forward "
        f"{base * 1000:.0f} ms"
    )
    print(f"{'saved layer':<12} {'(L+1)/N':>8} {'raysight':>9} {'nnsight':>8}")
    for layer in LAYERS:
        print(
            f"{layer:<12} {(layer + 1) / n_layers:>8.2f} {med[f'raysight {layer}'] / base:>9.2f} "
            f"{med[f'nnsight {layer}'] / base:>8.2f}"
        )


if __name__ == "__main__":
    main()
