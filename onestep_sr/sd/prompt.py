"""Prompt -> CLIP token ids -> text embedding, offline.

SD 1.x and 2.x share the CLIP BPE vocabulary (49408 tokens: BOS ``<|startoftext|>`` = 49406, EOS
``<|endoftext|>`` = 49407) and a context of 77 tokens. They differ in padding: SD 1.x pads with EOS
(49407, the diffusers/HF tokenizer of CLIP ViT-L/14), SD 2.x pads with 0 (OpenCLIP; "!" in the HF
tokenizer of SD 2). The values come from ``weights/configs/<family>/prompt.json``.

The empty prompt (the default of the one-step path) is ``[BOS, EOS, pad...]`` and needs no
vocabulary. Any other prompt is tokenised with transformers' ``CLIPTokenizer`` built from OpenAI's
MIT-licensed ``bpe_simple_vocab_16e6.txt.gz`` shipped in ``weights/configs/`` (the vocabulary is
derived from its merges: 256 byte symbols, the same with ``</w>``, one token per merge, then BOS and
EOS). Over-long prompts are cut to BOS + 75 tokens + EOS.
"""
from __future__ import annotations

import gzip
import json
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from .checkpoint import CONFIG_ROOT

BPE_FILE = CONFIG_ROOT / "bpe_simple_vocab_16e6.txt.gz"
MERGE_COUNT = 49152 - 256 - 2   # merges used by CLIP (vocab 49408 = 2 * 256 + merges + BOS + EOS)


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes, in vocabulary order (printable bytes keep their own
    character; the others get 256, 257, ... in byte order), as GPT-2/CLIP BPE define them."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def _bpe_merges(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(
            f"a non-empty prompt needs the CLIP BPE vocabulary {path} (OpenAI CLIP's "
            "bpe_simple_vocab_16e6.txt.gz, MIT licence); put the file there or use the empty prompt")
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    return lines[1:1 + MERGE_COUNT]   # line 0 is a version header


@lru_cache(maxsize=2)
def clip_tokenizer(path: str = str(BPE_FILE)):
    """transformers CLIPTokenizer built from the BPE merges file (no hub access)."""
    from transformers import CLIPTokenizer

    merges = _bpe_merges(Path(path))
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges_file = Path(tmp) / "vocab.json", Path(tmp) / "merges.txt"
        vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        return CLIPTokenizer(str(vocab), str(merges_file))


def token_ids(prompt: str, settings: dict) -> torch.Tensor:
    """``1 x max_length`` int64 token ids of ``prompt`` (settings from ``prompt.json``)."""
    length, bos, eos, pad = (int(settings[k]) for k in ("max_length", "bos_token_id", "eos_token_id",
                                                        "pad_token_id"))
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if prompt.strip() == "":
        ids = [bos, eos]
    else:
        ids = clip_tokenizer()(prompt, truncation=True, max_length=length).input_ids
        ids = ids[:length - 1] + [eos] if len(ids) > length or ids[-1] != eos else ids
    return torch.tensor([ids + [pad] * (length - len(ids))], dtype=torch.long)


@torch.no_grad()
def encode_prompt(text_encoder, prompt: str, settings: dict) -> torch.Tensor:
    """``1 x 77 x D`` text embedding: the encoder's last hidden state (after its final layer norm).
    For SD 2.x the configured encoder has 23 of OpenCLIP's 24 layers: the penultimate layer."""
    ids = token_ids(prompt, settings).to(text_encoder.device)
    return text_encoder(ids)[0]
