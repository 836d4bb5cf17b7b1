"""The text tower's tokenizer: a byte-level BPE vocabulary learned from the training captions.

Contract: :func:`train_tokenizer` returns a stock ``transformers`` fast tokenizer (``AutoTokenizer`` loads
what it saves) that lower-cases, never produces an unknown token (byte-level), and appends ``EOS``
(``<|endoftext|>``, id 0, also the padding token) to every text, which is where ``CLIPTextModel`` pools
(``config.eos_token_id = 0``). Training is deterministic for the same captions and ``vocab_size``.
A caption vocabulary is small (Flickr8k: 4,096 entries cover the words used), so the embedding table is a
fraction of what SmolLM2's 49,152-entry vocabulary would cost.
"""
from __future__ import annotations

from typing import Sequence

EOS = "<|endoftext|>"
EOS_ID = 0


def train_tokenizer(texts: Sequence[str], vocab_size: int = 4096, max_length: int = 64):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise ValueError("no captions to learn a vocabulary from")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise ValueError(f"vocab_size must be at least {len(alphabet) + 1} (the byte alphabet and EOS), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, EOS_ID)])
    if tok.token_to_id(EOS) != EOS_ID:
        raise RuntimeError(f"{EOS} got id {tok.token_to_id(EOS)}, expected {EOS_ID}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, model_max_length=max_length,
                                   padding_side="right", truncation_side="right")


def encode(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, EOS included; a text longer than ``max_length`` keeps its first tokens and
    still ends with EOS (the pooled position)."""
    ids = tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [x if len(x) <= max_length else x[:max_length - 1] + [eos] for x in ids]

