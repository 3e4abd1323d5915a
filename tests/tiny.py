"""Tiny random-weight models the tests build and save locally (no hub access needed).

Each has a character-level tokenizer so any ASCII prompt tokenizes without a download.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

CHARS = list(string.ascii_letters + string.digits + " .,!?'-:;")


def char_tokenizer(with_bos: bool = False):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + CHARS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    if with_bos:
        tk.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


VOCAB = 4 + len(CHARS)


def build(arch: str, seed: int = 0):
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = GPT2Config(
            n_layer=3,
            n_embd=32,
            n_head=4,
            vocab_size=VOCAB,
            n_positions=256,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
        )
        model = GPT2LMHeadModel(cfg)
    elif arch == "llama":
        cfg = LlamaConfig(
            num_hidden_layers=3,
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=VOCAB,
            max_position_embeddings=256,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=0,
        )
        model = LlamaForCausalLM(cfg)
    elif arch == "bert":
        cfg = BertConfig(
            num_hidden_layers=3,
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            vocab_size=VOCAB,
            max_position_embeddings=256,
            pad_token_id=0,
        )
        model = BertModel(cfg)
    else:
        raise ValueError(arch)
    return model.eval(), char_tokenizer(with_bos=arch == "llama")


def save(arch: str, root: Path) -> Path:
    model, tok = build(arch)
    path = root / arch
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def sequential(width: int = 8, seed: int = 0) -> torch.nn.Module:
    """A plain nn.Sequential, loadable as model.factory 'tiny:sequential'."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(width, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 4),
    )


def sequential_inplace(width: int = 8, seed: int = 0) -> torch.nn.Module:
    """Like :func:`sequential`, but its ReLUs modify their input in place."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(width, 16),
        torch.nn.ReLU(inplace=True),
        torch.nn.Linear(16, 16),
        torch.nn.ReLU(inplace=True),
        torch.nn.Linear(16, 4),
    )


class Flaky(torch.nn.Module):
    """Raises inside forward for rows whose first input is >= 100 (a 'bad row' in the model), and
    sleeps ``delay`` seconds per call so chaos tests have time to strike."""

    def __init__(self, width: int = 8, delay: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(width, 4)
        self.delay = delay

    def forward(self, x):
        import time

        if self.delay:
            time.sleep(self.delay)
        # Branching on values needs real tensors; the planner's meta-device pass has none.
        if x.device.type != "meta" and (x[:, 0] >= 100).any():
            raise RuntimeError("poisoned input")
        return self.lin(x)


def flaky(width: int = 8, delay: float = 0.0) -> torch.nn.Module:
    return Flaky(width, delay)


class Wide(torch.nn.Module):
    """y[:, j] = 2 * x[:, 0] + 1 for every one of ``width`` outputs: a large, known value from a
    small input (reader memory tests)."""

    def __init__(self, width: int = 4096):
        super().__init__()
        self.lin = torch.nn.Linear(8, width)
        with torch.no_grad():
            self.lin.weight.zero_()
            self.lin.weight[:, 0] = 2.0
            self.lin.bias.fill_(1.0)

    def forward(self, x):
        return self.lin(x)


def wide(width: int = 4096) -> torch.nn.Module:
    return Wide(width)


class Twice(torch.nn.Module):
    """One linear layer applied twice per forward (a module called more than once)."""

    def __init__(self, width: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(width, width)
        self.out = torch.nn.Linear(width, 4)

    def forward(self, x):
        return self.out(self.lin(torch.tanh(self.lin(x))))


def twice(width: int = 8) -> torch.nn.Module:
    return Twice(width)
