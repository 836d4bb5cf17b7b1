"""Inference benchmark: stock ``LlavaForConditionalGeneration.generate`` (float32, defaults) vs vlm paths.

Everything runs in one process on the same weights and inputs. Repeats are interleaved (baseline, path A,
path B, baseline, ...) so machine drift hits every path alike; figures are medians after a warm-up.
"""
from __future__ import annotations

import copy
import itertools
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlm import memory
from vlm.messages import user_turn
from vlm.records import read_jsonl

from .machine import median


@dataclass
class InferenceConfig:
    repeats: int = 5
    warmup: int = 1
    decode_tokens: int = 32
    answer_tokens: int = 32
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 8, 16])
    batch_tokens: int = 16
    batch_repeats: int = 3
    agreement_samples: int = 20
    agreement_tokens: int = 24
    question: str = "What is in this picture?"
    follow_up: str = "Describe it in one sentence."


# -- inputs ------------------------------------------------------------------------------------------
def load_samples(data_dir: Path, n: int) -> list[dict]:
    """Up to ``n`` Flickr8k dev records with absolute image paths."""
    out = []
    for _, rec in itertools.islice(read_jsonl(data_dir / "dev.jsonl"), n):
        rec["path"] = str(data_dir / rec["image"])
        out.append(rec)
    if not out:
        raise ValueError(f"no records in {data_dir / 'dev.jsonl'}")
    return out


def open_image(path: str):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


@contextmanager
def num_threads(n: int | None):
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def forced_length(model, n: int | None):
    """Make ``generate`` emit exactly ``n`` tokens (EOS suppressed until then) via the generation config."""
    cfg = model.generation_config
    old = cfg.min_new_tokens
    cfg.min_new_tokens = n
    try:
        yield
    finally:
        cfg.min_new_tokens = old


# -- the two kinds of path -----------------------------------------------------------------------------
class BaselinePath:
    """Stock transformers: processor -> ``model.generate`` (float32, default settings) -> batch_decode."""

    name = "baseline"

    def __init__(self, model, processor):
        self.model, self.processor = model, processor
        self.threads = None

    def _messages(self, image, question):
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]

    def answer(self, images: list, questions: list[str], max_new_tokens: int, forced: bool = False,
               history: list[list[dict]] | None = None) -> list[str]:
        prompts = []
        for i, q in enumerate(questions):
            msgs = (history[i] if history else []) + (
                self._messages(images[i], q) if not history else [{"role": "user", "content": q}])
            prompts.append(self.processor.apply_chat_template(msgs, add_generation_prompt=True))
        batch = self.processor(text=prompts, images=images, padding=True, return_tensors="pt")
        kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=self.processor.tokenizer.pad_token_id)
        if forced:
            kwargs["min_new_tokens"] = max_new_tokens
        with torch.inference_mode():
            out = self.model.generate(**batch, **kwargs)
        new = out[:, batch["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True)]


class VlmPath:
    """The vlm API (``VLM.ask_batch`` / ``VLM.chat``) on a copy of the weights with ``InferenceOptions``."""

    def __init__(self, vlm, options):
        self.vlm, self.options = vlm, options
        self.name = options.label()
        self.threads = options.threads

    def answer(self, images: list, questions: list[str], max_new_tokens: int, forced: bool = False,
               history: list[list[dict]] | None = None) -> list[str]:
        with forced_length(self.vlm.model, max_new_tokens if forced else None):
            if history:
                return self.vlm.chat_batch(
                    [h + [{"role": "user", "content": q}] for h, q in zip(history, questions)],
                    max_new_tokens=max_new_tokens, ocr="never")  # like the baseline: no OCR in the prompt
            return self.vlm.ask_batch(list(zip(images, questions)), max_new_tokens=max_new_tokens, ocr="never")


def make_paths(base_vlm, option_sets: list) -> tuple[BaselinePath, list[VlmPath]]:
    """The baseline on ``base_vlm``'s own (float32, untouched) model, and one deep copy per option set."""
    from vlm import VLM
    from vlm.optimize import apply

    baseline = BaselinePath(base_vlm.model, base_vlm.processor)
    paths = []
    for opts in option_sets:
        twin = VLM(copy.deepcopy(base_vlm.model), copy.deepcopy(base_vlm.processor), name=base_vlm.name)
        with num_threads(None):  # apply() may set threads; the bench sets them per call instead
            apply(twin, opts.with_(threads=None))
        path = VlmPath(twin, opts)
        paths.append(path)
    return baseline, paths


# -- measurements ---------------------------------------------------------------------------------------
def _timed(path, *args, **kwargs) -> tuple[float, list[str]]:
    with num_threads(path.threads):
        t = time.perf_counter()
        out = path.answer(*args, **kwargs)
        return time.perf_counter() - t, out


def interleaved(paths: list, fn, repeats: int, warmup: int, log=None) -> dict[str, list]:
    """Run ``fn(path)`` for every path, ``warmup + repeats`` rounds, rotating the order each round."""
    results: dict[str, list] = {p.name: [] for p in paths}
    for r in range(warmup + repeats):
        if log:
            log(f"  round {r + 1}/{warmup + repeats}{' (warm-up)' if r < warmup else ''}")
        order = paths[r % len(paths):] + paths[: r % len(paths)]
        for p in order:
            value = fn(p)
            if r >= warmup:
                results[p.name].append(value)
    return results


def measure_latency(paths, image, cfg: InferenceConfig, log=None) -> dict[str, dict]:
    """TTFT (1 token), decode tok/s (N forced tokens minus TTFT), end-to-end answer, second-turn TTFT."""
    q = cfg.question

    def one(p):
        t1, _ = _timed(p, [image], [q], 1, forced=True)
        tn, _ = _timed(p, [image], [q], cfg.decode_tokens, forced=True)
        te, ans = _timed(p, [image], [q], cfg.answer_tokens)
        history = [[{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": q}]},
                    {"role": "assistant", "content": ans[0]}]]
        if isinstance(p, BaselinePath):
            history = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]},
                        {"role": "assistant", "content": ans[0]}]]
        t2, _ = _timed(p, [image], [cfg.follow_up], 1, forced=True, history=history)
        return {"ttft": t1, "full": tn, "e2e": te, "turn2_ttft": t2, "answer": ans[0]}

    raw = interleaved(paths, one, cfg.repeats, cfg.warmup, log)
    out = {}
    for name, runs in raw.items():
        ttft = median([r["ttft"] for r in runs])
        decode = median([r["full"] - r["ttft"] for r in runs])  # paired within a repeat
        out[name] = {
            "ttft_s": round(ttft, 4),
            "decode_tok_s": round((cfg.decode_tokens - 1) / decode, 2) if decode > 0 else None,
            "e2e_s": round(median([r["e2e"] for r in runs]), 4),
            "turn2_ttft_s": round(median([r["turn2_ttft"] for r in runs]), 4),
            "answer": runs[-1]["answer"],
            "repeats": len(runs),
        }
    return out


def measure_batches(paths, images: list, cfg: InferenceConfig) -> dict[str, dict]:
    """images/s of batched VQA at each batch size (``batch_tokens`` forced new tokens per answer)."""
    out: dict[str, dict] = {p.name: {} for p in paths}
    for bs in cfg.batch_sizes:
        imgs = [images[i % len(images)] for i in range(bs)]
        qs = [cfg.question] * bs

        def one(p):
            t, _ = _timed(p, imgs, qs, cfg.batch_tokens, forced=True)
            return t

        raw = interleaved(paths, one, cfg.batch_repeats, cfg.warmup)
        for name, times in raw.items():
            out[name][str(bs)] = round(bs / median(times), 3)
    return out


def measure_rss(paths, images: list, cfg: InferenceConfig) -> dict[str, dict]:
    """Process peak RSS while each path answers the largest batch (both models stay resident: the
    ``extra_mb`` column is the path's own working memory above the RSS before its call)."""
    bs = max(cfg.batch_sizes)
    imgs = [images[i % len(images)] for i in range(bs)]
    out = {}
    for p in paths:
        before = memory.current_rss_bytes()
        with memory.peak_rss() as box:
            _timed(p, imgs, [cfg.question] * bs, cfg.batch_tokens, forced=True)
        out[p.name] = {"peak_rss_mb": round(box["peak"] / 2**20, 1),
                       "extra_mb": round((box["peak"] - before) / 2**20, 1) if box["reset"] else None}
    return out


def measure_agreement(paths, samples: list[dict], cfg: InferenceConfig) -> dict[str, dict]:
    """Greedy answers of each vlm path vs the float32 baseline on Flickr8k dev images."""
    baseline = paths[0]
    ref = [_timed(baseline, [open_image(s["path"])], [cfg.question], cfg.agreement_tokens)[1][0]
           for s in samples]
    out = {}
    for p in paths[1:]:
        answers = [_timed(p, [open_image(s["path"])], [cfg.question], cfg.agreement_tokens)[1][0]
                   for s in samples]
        same = sum(a == b for a, b in zip(answers, ref))
        out[p.name] = {"exact_agreement": round(same / len(ref), 3), "samples": len(ref),
                       "first_words_agreement": round(sum(
                           a.split()[:3] == b.split()[:3] for a, b in zip(answers, ref)) / len(ref), 3)}
    return out


def run(base_vlm, option_sets: list, samples: list[dict], cfg: InferenceConfig, log=print) -> dict:
    """All inference measurements. ``option_sets[0]`` is the configuration reported as "vlm"."""
    from vlm.optimize import kv_bytes_per_token, weight_bytes_per_token

    baseline, vlm_paths = make_paths(base_vlm, option_sets)
    paths = [baseline] + vlm_paths
    image = open_image(samples[0]["path"])
    images = [open_image(s["path"]) for s in samples[: max(cfg.batch_sizes)]]
    log(f"latency: {len(paths)} paths x {cfg.repeats} repeats")
    latency = measure_latency(paths, image, cfg, log)
    main = [baseline, vlm_paths[0]]
    log(f"batches: {cfg.batch_sizes}")
    batches = measure_batches(main, images, cfg)
    rss = measure_rss(main, images, cfg)
    log(f"agreement: {len(samples[: cfg.agreement_samples])} images")
    agreement = measure_agreement(paths, samples[: cfg.agreement_samples], cfg)
    prompt_tokens = base_vlm.prepare([user_turn(image, cfg.question)], ocr="never",
                                     max_new_tokens=1).prompt_tokens[0]
    context = prompt_tokens + cfg.decode_tokens // 2
    bytes_per_token = {baseline.name: weight_bytes_per_token(baseline.model)
                       + kv_bytes_per_token(baseline.model, context)}
    for p in vlm_paths:
        bytes_per_token[p.name] = (weight_bytes_per_token(p.vlm.model)
                                   + kv_bytes_per_token(p.vlm.model, context))
    return {
        "config": cfg.__dict__,
        "paths": {p.name: (p.options.to_dict() if isinstance(p, VlmPath) else "stock generate, float32")
                  for p in paths},
        "vlm_path": vlm_paths[0].name,
        "prompt_tokens": prompt_tokens,
        "latency": latency,
        "batch_images_per_s": batches,
        "rss": rss,
        "agreement": agreement,
        "bytes_per_token": bytes_per_token,
    }
