"""Training benchmark: ``vlm.train.loop.train`` (feature cache, length grouping; frozen weights in bf16 + bf16
autocast where the CPU has AMX, float32 otherwise: :func:`vlm.hardware.bf16_is_fast`) vs a naive loop.

The naive loop is what one writes first: the full llava forward with ``pixel_values`` (the frozen tower runs
every step), batches in plain random order (no length grouping), float32, AdamW on the same trainable
parameters (stage 1: projector; stage 2: LoRA on the LLM's linears + projector). Both run in this process
on the same records (Flickr8k train captions), and samples/s is the median over optimizer steps after the
first. Achieved TFLOP/s counts 4 x (LLM linear parameters) x (non-pad tokens) per sample — forward plus the
activation-gradient half of backward; frozen weights need no weight gradients — against the measured bf16
matmul peak.
"""
from __future__ import annotations

import itertools
import json
import random
import shutil
import tempfile
import time
from statistics import median
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vlm import memory
from vlm.records import read_jsonl


PROMPTS = ["Describe the image briefly.", "What is happening in this picture?", "Write a caption for this photo."]


@dataclass
class TrainingBenchConfig:
    records: int = 64
    steps: int = 6
    batch_size: int = 8
    lora_r: int = 16
    tiny: bool = False


def make_records(data_dir: Path, n: int, stage: int) -> list[dict]:
    """LLaVA records from Flickr8k train: stage 1 one caption, stage 2 one to five captions (varied lengths)."""
    out = []
    for i, (_, rec) in enumerate(itertools.islice(read_jsonl(data_dir / "train.jsonl"), n)):
        caps = rec["captions"]
        answer = caps[i % len(caps)] if stage == 1 else " ".join(caps[: 1 + i % len(caps)])
        out.append({
            "id": f"flickr-{i}",
            "image": str((data_dir / rec["image"]).resolve()),
            "conversations": [{"from": "human", "value": "<image>\n" + PROMPTS[i % len(PROMPTS)]},
                              {"from": "gpt", "value": answer}],
        })
    return out


def linear_params(llava) -> int:
    llm = llava.model.language_model
    n = sum(m.weight.numel() for m in llm.modules() if isinstance(m, nn.Linear))
    return n + llava.lm_head.weight.numel()


def _step_rates(metrics: Path) -> list[float]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rates = []
    for prev, row in zip(rows, rows[1:]):
        dt = row["elapsed_s"] - prev["elapsed_s"]
        if dt > 0:
            rates.append((row["samples"] - prev["samples"]) / dt)
    return rates


def run_vlm_loop(stage: int, data: Path, model: str, vision: str | None, out: Path, cache: Path,
                 cfg: TrainingBenchConfig) -> dict:
    from vlm.hardware import bf16_is_fast
    from vlm.train.config import LoraSettings, stage1_defaults, stage2_defaults
    from vlm.train.loop import train

    bf16 = bf16_is_fast("cpu")  # without AMX, bf16 matmuls are emulated and several times slower than float32
    common = dict(data=str(data), model=model, out=str(out), max_steps=cfg.steps + 1, batch_size=cfg.batch_size,
                  bf16=bf16, dtype="bfloat16" if bf16 else "float32", cache_dir=str(cache), seed=0, save_every=0,
                  log_every=1)
    if stage == 1:
        tcfg = stage1_defaults(vision=vision, **common)
    else:
        tcfg = stage2_defaults(lora=LoraSettings(r=cfg.lora_r, alpha=2 * cfg.lora_r), **common)
    with memory.peak_rss() as box:
        t = time.perf_counter()
        summary = train(tcfg)
        wall = time.perf_counter() - t
    rates = _step_rates(out / "metrics.jsonl")
    return {"samples_per_s": round(median(rates), 3) if rates else summary["samples_per_s"],
            "setup_s": summary["setup_time_s"], "wall_s": round(wall, 2),
            "peak_rss_mb": round(box["peak"] / 2**20, 1), "steps": summary["steps"],
            "final_loss": summary["final_loss"]}


def run_naive_loop(stage: int, records: list[dict], model_src: str, vision: str | None,
                   cfg: TrainingBenchConfig) -> dict:
    """Plain PyTorch: tower every step, random order, float32."""
    from PIL import Image

    from vlm.train.data import TrainingSet
    from vlm.train.recipes.common import freeze_all, llava_of, load_start, projector_params
    from vlm.train.config import TrainConfig, LoraSettings

    tcfg = TrainConfig(stage=stage, model=model_src, vision=vision, seed=0,
                       lora=LoraSettings(r=cfg.lora_r, alpha=2 * cfg.lora_r))
    model, processor = load_start(tcfg, torch.float32)
    processor.tokenizer.padding_side = "right"
    llava = llava_of(model)
    dataset = TrainingSet(records, processor, llava.config.image_seq_length, None)
    freeze_all(model)
    if stage == 2:
        from vlm.train.recipes.lora import lora_config
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(model, tcfg))
    for p in projector_params(model):
        p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    pad = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
    rng = random.Random(0)
    order = list(range(len(dataset.examples)))
    rng.shuffle(order)
    model.train()
    rates = []
    with memory.peak_rss() as box:
        for step in range(cfg.steps + 1):
            idx = [order[(step * cfg.batch_size + j) % len(order)] for j in range(cfg.batch_size)]
            exs = [dataset.examples[i] for i in idx]
            t = time.perf_counter()
            longest = max(len(e) for e in exs)
            ids = torch.full((len(exs), longest), pad, dtype=torch.long)
            labels = torch.full((len(exs), longest), -100, dtype=torch.long)
            mask = torch.zeros((len(exs), longest), dtype=torch.long)
            for i, e in enumerate(exs):
                ids[i, : len(e)] = torch.tensor(e.input_ids)
                labels[i, : len(e)] = torch.tensor(e.labels)
                mask[i, : len(e)] = 1
            images = []
            for e in exs:
                with Image.open(e.image_paths[0]) as im:
                    images.append(im.convert("RGB"))
            pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
            loss = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            if step:  # the first step is the warm-up
                rates.append(len(exs) / (time.perf_counter() - t))
    mean_len = sum(len(e) for e in dataset.examples) / len(dataset.examples)
    return {"samples_per_s": round(median(rates), 3), "peak_rss_mb": round(box["peak"] / 2**20, 1),
            "steps": cfg.steps, "final_loss": round(loss.item(), 5), "mean_tokens": round(mean_len, 1),
            "linear_params": linear_params(llava)}


def run(args, base_vlm, info, log=print) -> dict:
    """Stage 1 (projector) and stage 2 (LoRA) samples/s: vlm loop vs naive loop."""
    cfg = TrainingBenchConfig(steps=args.train_steps, batch_size=args.train_batch_size)
    if args.tiny:
        cfg = TrainingBenchConfig(records=4, steps=1, batch_size=2, lora_r=4, tiny=True)
    data_dir = args.data
    if not (data_dir / "train.jsonl").exists():
        return {"status": f"skipped: no train.jsonl in {data_dir}"}
    tmp = Path(tempfile.mkdtemp(prefix="vlm-bench-train-"))
    stages: dict[str, dict] = {}
    try:
        if args.tiny:
            llm_dir = tmp / "tiny-llm"
            _save_tiny_llm(base_vlm, llm_dir)
            model_src, vision = str(llm_dir), "preset"
        else:
            model_src, vision = args.llm, "preset"
        stage1_out = tmp / "s1-vlm"
        for stage in (1, 2):
            records = make_records(data_dir, cfg.records, stage)
            data = tmp / f"stage{stage}.json"
            data.write_text(json.dumps(records))
            src, vis = (model_src, vision) if stage == 1 else (str(stage1_out), None)
            log(f"training stage {stage}: naive loop ({cfg.steps} steps)")
            naive = run_naive_loop(stage, records, src, vis, cfg)
            log(f"stage {stage} naive: {json.dumps(naive)}")
            log(f"training stage {stage}: vlm loop ({cfg.steps} steps)")
            out = stage1_out if stage == 1 else tmp / "s2-vlm"
            fast = run_vlm_loop(stage, data, src, vis, out, tmp / "cache", cfg)
            flops_per_sample = 4 * naive["linear_params"] * naive["mean_tokens"]
            peak = info.bf16_matmul_tflops * 1e12
            for row in (naive, fast):
                row["tflops"] = round(flops_per_sample * row["samples_per_s"] / 1e12, 4)
                row["peak_fraction"] = round(flops_per_sample * row["samples_per_s"] / peak, 4) if peak else None
            stages[f"stage{stage}"] = {"naive": naive, "vlm": fast,
                                       "speedup": round(fast["samples_per_s"] / naive["samples_per_s"], 2)}
            log(f"stage {stage}: {json.dumps(stages[f'stage{stage}'])}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"config": cfg.__dict__, "stages": stages,
            "note": "vlm loop = vlm.train.loop.train (feature cache, length grouping; frozen weights bf16 and bf16 "
                    "autocast where the CPU has AMX, float32 otherwise); "
                    "naive = tower every step, random order, float32"}


def _save_tiny_llm(base_vlm, out: Path) -> None:
    """Save the tiny vlm's LLM as a plain causal-LM folder (for the smoke run's stage 1)."""
    from transformers import LlamaForCausalLM

    llava = base_vlm.model
    cfg = llava.config.text_config
    lm = LlamaForCausalLM(cfg)
    lm.model = llava.model.language_model
    lm.lm_head = llava.lm_head
    lm.save_pretrained(out)
    base_vlm.processor.tokenizer.save_pretrained(out)
