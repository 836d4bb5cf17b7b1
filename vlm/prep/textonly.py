"""Text-only chats answered by the base LLM itself, so that stage 2 keeps its text behaviour.

LLaVA mixed ShareGPT conversations into its instruction data so that visual tuning would not erase
what the language model could do without an image. vlm does the same with answers the base LLM gives
(greedy) to :func:`vlm.prep.textonly_prompts.train_prompts`: training on them asks the fine-tuned model
to keep answering text prompts as the base model does.

Outputs in ``out``:

- ``textonly_answers.jsonl``: the answer cache, one ``{"key", "model", "max_new_tokens", "prompt",
  "answer", "finished"}`` per prompt. A re-run generates only prompts missing from it (``key`` hashes the
  model name, the token limit and the prompt).
- ``textonly_stage2.json``: LLaVA records without an image (``{"id", "conversations"}``). An answer cut
  by the token limit is trimmed to its last full sentence (or line), and dropped if nothing is left; an
  answer caught in a greedy loop (:func:`is_loop`) is dropped.
- ``textonly_dev.jsonl``: the held-out text-only dev set (:data:`~vlm.prep.textonly_prompts.DEV_QUESTIONS`
  and arithmetic), ``{"id", "image": null, "question", "answer", "type"}`` with reference answers: score it with
  ``vlm eval vqa --data textonly_dev.jsonl --systems model,llm`` (the fine-tuned model vs the base LLM).
- ``textonly_summary.json``: counts and generation time.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vlm.records import check_record, read_jsonl

from .io import write_json, write_records
from .textonly_prompts import dev_questions, train_prompts


@dataclass
class TextOnlyConfig:
    model: str = "smollm2-135m-instruct"
    out: Path = Path("runs/data/textonly")
    max_new_tokens: int = 96
    batch_size: int = 16
    limit: int | None = None  # answer only the first N prompts
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.max_new_tokens < 8:
            raise ValueError(f"max_new_tokens must be at least 8, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")


def cache_key(model: str, max_new_tokens: int, prompt: str) -> str:
    return hashlib.sha256(f"{model}\n{max_new_tokens}\n{prompt}".encode()).hexdigest()[:20]


_SENTENCE_END = re.compile(r"(?<=[^\d\s])[.!?](?=\s|$)|\n")  # not a list number's "2."


def trim_unfinished(text: str, min_chars: int = 20) -> str | None:
    """An answer cut by the token limit, up to its last sentence end (not a list number's "2.") or line break;
    ``None`` if that leaves fewer than ``min_chars`` characters."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if not ends:
        return None
    kept = text[:ends[-1]].rstrip()
    return kept if len(kept) >= min_chars else None


def is_loop(text: str, n: int = 4, times: int = 4) -> bool:
    """True when some ``n``-word sequence occurs ``times`` or more: a greedy decoding loop ("Boil an egg:
    Boil an egg: ..."), not an answer to learn."""
    words = re.findall(r"\w+", text.lower())
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return bool(grams) and max(grams.values()) >= times


def read_cache(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    out = {}
    for _, row in read_jsonl(path):
        out[row["key"]] = row
    return out


def record(i: int, prompt: str, answer: str) -> dict:
    return {"id": f"textonly-{i}", "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]}


def prepare_textonly(cfg: TextOnlyConfig, progress: bool = False, llm=None) -> dict:
    """Answers the training prompts with the base LLM (cached), writes the records and the dev set.

    ``llm`` (a :class:`vlm.text_llm.TextLLM`) replaces loading ``cfg.model`` (tests).
    """
    t0 = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    prompts = train_prompts(cfg.seed)[: cfg.limit]
    cache_path = cfg.out / "textonly_answers.jsonl"
    cache = read_cache(cache_path)
    keys = [cache_key(cfg.model, cfg.max_new_tokens, p) for p in prompts]
    todo = [(k, p) for k, p in zip(keys, prompts) if k not in cache]
    gen_seconds = 0.0
    if todo:
        import torch

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if llm is None:
            from vlm.text_llm import TextLLM

            llm = TextLLM(cfg.model, cfg.max_new_tokens)
        llm.max_new_tokens = cfg.max_new_tokens
        batches = [todo[i:i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="base LLM answers", unit="batch")
        t = time.perf_counter()
        with cache_path.open("a", encoding="utf-8") as fh:
            for batch in batches:
                for (key, prompt), answer in zip(batch, llm.generate([p for _, p in batch])):
                    row = {"key": key, "model": cfg.model, "max_new_tokens": cfg.max_new_tokens, "prompt": prompt,
                           "answer": answer.text, "finished": answer.finished}
                    cache[key] = row
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
        gen_seconds = time.perf_counter() - t
    records, trimmed, dropped, loops = [], 0, 0, 0
    for i, (key, prompt) in enumerate(zip(keys, prompts)):
        row = cache[key]
        answer = row["answer"].strip()
        if not row["finished"]:
            answer = trim_unfinished(answer)
            trimmed += answer is not None
        if not answer:
            dropped += 1
            continue
        if is_loop(answer):
            loops += 1
            continue
        rec = record(i, prompt, answer)
        if check_record(rec, cfg.out) is None:
            records.append(rec)
        else:
            dropped += 1
    n = write_records(cfg.out / "textonly_stage2.json", records)
    dev = dev_questions(cfg.seed)
    (cfg.out / "textonly_dev.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in dev),
                                               encoding="utf-8")
    summary = {
        "model": cfg.model,
        "out": str(cfg.out),
        "config": {"max_new_tokens": cfg.max_new_tokens, "batch_size": cfg.batch_size, "limit": cfg.limit,
                   "seed": cfg.seed},
        "prompts": len(prompts),
        "generated": len(todo),
        "cached": len(prompts) - len(todo),
        "records": n,
        "trimmed_unfinished": trimmed,
        "dropped": dropped,
        "dropped_loops": loops,
        "dev_questions": len(dev),
        "files": {"stage2": str(cfg.out / "textonly_stage2.json"), "dev": str(cfg.out / "textonly_dev.jsonl"),
                  "cache": str(cache_path)},
        "generation_seconds": round(gen_seconds, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json(cfg.out / "textonly_summary.json", summary)
    return summary
