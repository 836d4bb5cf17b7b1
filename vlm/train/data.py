"""LLaVA JSON -> tokenised training examples with assistant-only labels; length-grouped batches; collation.

Labels come from the processor's own chat template (the LLM's template behind vlm's multimodal prelude):
the conversation is rendered once, and each assistant turn's character span is found by rendering the
prefix before it (with the generation prompt) and the prefix through it. Tokens whose text overlaps a
span (or straddling its start, like a space-prefixed first word) are labelled; trailing whitespace-only tokens after the end-of-turn token are not. Nothing depends on
the template's marker strings, so ChatML, Llama-3 or Vicuna templates all work.

Bad records are skipped and counted by reason (``vlm.records`` checks plus ``too_long`` and
``template_mismatch`` here, ``unreadable_image`` when the tower cannot read a file); a long run never dies
on one.
"""
from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlm.records import IMAGE_TOKEN, UNREADABLE_IMAGE, ImageChecker, check_record, record_images, resolve_path

IGNORE_INDEX = -100
ROLE_MAP = {"human": "user", "gpt": "assistant", "system": "system"}
TOO_LONG = "too_long"
TEMPLATE_MISMATCH = "template_mismatch"


@dataclass
class Example:
    input_ids: list[int]  # image placeholders already expanded to image_seq_length tokens each
    labels: list[int]
    image_keys: list[str] = field(default_factory=list)  # content hashes, in order of appearance
    image_paths: list[Path] = field(default_factory=list)
    record_id: str | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def to_messages(record: dict) -> list[dict]:
    """LLaVA turns -> chat messages; ``<image>`` placeholders become leading image parts of their turn."""
    messages = []
    for turn in record["conversations"]:
        text = turn["value"] or ""
        n = text.count(IMAGE_TOKEN)
        if n:
            text = text.replace(IMAGE_TOKEN, "").strip()
        role = ROLE_MAP.get(turn["from"], turn["from"])
        messages.append({"role": role, "content": [{"type": "image"}] * n + [{"type": "text", "text": text}]})
    return messages


class TemplateMismatch(ValueError):
    """The template does not render a conversation's prefixes as prefixes of the whole (cannot mask)."""


def assistant_char_spans(processor, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render ``messages``; return the text and the character span of each assistant turn."""
    render = processor.apply_chat_template
    full = render(messages, tokenize=False)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = render(messages[:i], tokenize=False, add_generation_prompt=True)
        through = render(messages[: i + 1], tokenize=False)
        if not (full.startswith(before) and full.startswith(through) and len(through) > len(before)):
            raise TemplateMismatch(f"the chat template does not render turn {i} as a prefix of the conversation")
        spans.append((len(before), len(through)))
    return full, spans


def tokenize_conversation(processor, messages: list[dict], image_seq_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (``-100`` outside assistant turns), image placeholders expanded."""
    tok = processor.tokenizer
    text, spans = assistant_char_spans(processor, messages)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        inside = [t for t, (a, b) in enumerate(offsets) if a < end and b > start]  # overlaps the turn
        # drop trailing whitespace-only tokens (e.g. the newline after <|im_end|>): not part of the turn
        while inside and not tok.decode([ids[inside[-1]]]).strip():
            inside.pop()
        for t in inside:
            labels[t] = ids[t]
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    out_ids, out_labels = [], []
    for t, l in zip(ids, labels):
        if t == image_id:
            out_ids.extend([t] * image_seq_length)
            out_labels.extend([IGNORE_INDEX] * image_seq_length)
        else:
            out_ids.append(t)
            out_labels.append(l)
    return out_ids, out_labels


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class TrainingSet(torch.utils.data.Dataset):
    """Tokenised examples from a LLaVA JSON file. Image features come from a feature store (see
    :mod:`vlm.train.feature_cache`) attached with :meth:`attach_features`."""

    def __init__(
        self,
        records: list,
        processor,
        image_seq_length: int,
        root: str | Path | None,
        max_length: int = 2048,
    ):
        self.root = Path(root) if root is not None else None
        self.skipped: Counter[str] = Counter()
        self.examples: list[Example] = []
        self.features = None
        checker = ImageChecker(decode=False)
        image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        hashes: dict[Path, str] = {}
        for record in records:
            problem = check_record(record, self.root, images=checker)
            if problem is not None:
                self.skipped[problem.reason] += 1
                continue
            try:
                ids, labels = tokenize_conversation(processor, to_messages(record), image_seq_length)
            except TemplateMismatch:
                self.skipped[TEMPLATE_MISMATCH] += 1
                continue
            if len(ids) > max_length:
                self.skipped[TOO_LONG] += 1
                continue
            paths = [resolve_path(p, self.root) for p in record_images(record)]
            if sum(1 for t in ids if t == image_id) != image_seq_length * len(paths):
                self.skipped[TEMPLATE_MISMATCH] += 1  # the template dropped or duplicated a placeholder
                continue
            keys = []
            for p in paths:
                if p not in hashes:
                    hashes[p] = file_hash(p)
                keys.append(hashes[p])
            self.examples.append(Example(ids, labels, keys, paths, record.get("id")))

    def images(self) -> dict[str, Path]:
        """Every distinct image (content hash -> a path holding it)."""
        out: dict[str, Path] = {}
        for ex in self.examples:
            for key, path in zip(ex.image_keys, ex.image_paths):
                out.setdefault(key, path)
        return out

    def attach_features(self, store, bad_keys: set[str] = frozenset()) -> None:
        """Use ``store.get(key)`` for features; drop examples whose image could not be read."""
        self.features = store
        if bad_keys:
            kept = []
            for ex in self.examples:
                if any(k in bad_keys for k in ex.image_keys):
                    self.skipped[UNREADABLE_IMAGE] += 1
                else:
                    kept.append(ex)
            self.examples = kept

    @property
    def lengths(self) -> list[int]:
        return [len(ex) for ex in self.examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        ex = self.examples[i]
        feats = [self.features.get(k) for k in ex.image_keys] if ex.image_keys else []
        return {"input_ids": ex.input_ids, "labels": ex.labels, "features": feats}


class LengthGroupedBatches:
    """Deterministic per-epoch batches for one rank, grouped by length (LLaVA's ``group_by_modality_length``
    idea without the modality split).

    Each epoch: a seeded permutation (padded by wrapping so every rank gets the same number of samples),
    cut into mega-batches of ``megabatch_mult`` global batches, each sorted by length (longest first) and cut
    into global batches; the order of global batches is shuffled; rank ``r`` takes ``batch[r::world]``.
    The batch count is padded to a multiple of ``grad_accum`` so optimizer steps never straddle epochs.
    The order depends only on ``(seed, epoch)``, so a resumed run replays it exactly.
    """

    def __init__(self, lengths, batch_size, world_size=1, rank=0, seed=0, group_by_length=True,
                 grad_accum=1, megabatch_mult=8):
        if not lengths:
            raise ValueError("no usable training examples (all records were skipped or the file is empty)")
        self.lengths = list(lengths)
        self.batch_size, self.world, self.rank = batch_size, world_size, rank
        self.seed, self.group, self.accum, self.mult = seed, group_by_length, grad_accum, megabatch_mult

    def __len__(self) -> int:
        n = len(self.lengths)
        padded = math.ceil(n / self.world) * self.world
        batches = math.ceil(padded / (self.batch_size * self.world))
        return math.ceil(batches / self.accum) * self.accum

    def epoch(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self.lengths)
        perm = torch.randperm(n, generator=g).tolist()
        padded = math.ceil(n / self.world) * self.world
        perm += perm[: padded - n]
        global_bs = self.batch_size * self.world
        globals_: list[list[int]] = []
        if self.group:
            mega = global_bs * self.mult
            for m in range(0, len(perm), mega):
                chunk = sorted(perm[m : m + mega], key=lambda i: -self.lengths[i])
                globals_ += [chunk[b : b + global_bs] for b in range(0, len(chunk), global_bs)]
            order = torch.randperm(len(globals_), generator=g).tolist()
            globals_ = [globals_[i] for i in order]
        else:
            globals_ = [perm[b : b + global_bs] for b in range(0, len(perm), global_bs)]
        batches = [gb[self.rank :: self.world] for gb in globals_]
        while len(batches) % self.accum:
            batches.append(batches[len(batches) % len(globals_)])
        return batches


class Collator:
    """Right-pads ids (pad id) and labels (-100); stacks image features in order of appearance."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, items: list[dict]) -> dict:
        longest = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), longest), self.pad, dtype=torch.long)
        labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for i, it in enumerate(items):
            n = len(it["input_ids"])
            ids[i, :n] = torch.tensor(it["input_ids"])
            labels[i, :n] = torch.tensor(it["labels"])
            mask[i, :n] = 1
        feats = [f for it in items for f in it["features"]]
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if feats:
            batch["image_features"] = torch.stack(feats)
        return batch
