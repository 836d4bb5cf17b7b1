"""The training loop shared by stages 1 and 2 (accelerate: runs alone, under ``accelerate launch`` or ``torchrun``).

Per run: load the model (recipe), tokenise the data, make sure every image's tower features are cached
(the tower never runs during the steps), train with length-grouped batches, gradient accumulation,
optional gradient checkpointing and bf16 autocast, checkpoint atomically every ``save_every`` steps, and
finish with the recipe's output folder plus ``metrics.jsonl``, ``loss.png`` and ``summary.json``. A checkpoint
or final model that cannot be written (full disk) stops the run with :class:`checkpoint.CheckpointWriteError`.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

from vlm.memory import peak_memory_mb
from vlm.records import load_records

from . import checkpoint
from .config import TrainConfig
from .data import IGNORE_INDEX, Collator, LengthGroupedBatches, TrainingSet
from .durable import os_error_of
from .feature_cache import FeatureCache, ensure_features, tower_fingerprint, unreadable
from .recipes import get_recipe
from .recipes.common import llava_of


class FeatureLlava(nn.Module):
    """Loss of a llava model fed cached tower features: projector -> ``mm_encoder_outputs`` -> LLM.

    The LM head runs only at positions whose next token is supervised (the answers), not at every image and
    prompt position: the same mean cross-entropy as the model's own ``labels`` loss, without a
    batch x length x vocabulary logits tensor (stage 1 supervises about 15 of 124 positions).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.__dict__["llava"] = llava_of(model)  # not a submodule: the same weights are already in `model`

    def forward(self, input_ids, attention_mask, labels, image_features=None):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        extra = {}
        if image_features is not None:
            projector = self.llava.model.multi_modal_projector
            projected = projector(image_features.to(projector.linear_1.weight.dtype))
            extra["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=list(projected))}
        hidden = self.llava.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                  **extra).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.llava.lm_head(hidden[:, :-1][keep]).float()
        return nn.functional.cross_entropy(logits, targets[keep])


def trainable_sha256(model) -> str:
    """Hash of this rank's trainable weights (ranks of a data-parallel run must agree)."""
    import hashlib

    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class MetricsLog:
    """``metrics.jsonl``: one line per optimizer step. A resumed run drops lines after its checkpoint."""

    def __init__(self, path: Path, keep_through: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        lines = []
        if keep_through > 0 and path.exists():
            lines = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= keep_through]
        path.write_text("".join(l + "\n" for l in lines))

    def write(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def rows(self) -> list[dict]:
        return [json.loads(l) for l in self.path.read_text().splitlines() if l.strip()]


def plot_losses(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (assistant tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(cfg: TrainConfig) -> dict:
    """Run one training stage; return the summary (also written to ``<out>/summary.json``)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from vlm.api import as_dtype

    cfg.validate()
    out = Path(cfg.out)
    # Accelerate keeps its mixed-precision choice process-wide; a second run in the same process (a
    # notebook, the test suite) may ask for another one. The process group (PartialState) is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision="bf16" if cfg.bf16 else "no",
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=not torch.cuda.is_available(),
    )
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    log = accelerator.print
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    recipe = get_recipe(cfg.recipe)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        else:
            checkpoint.remove_partial(out)
        (out / "train_config.json").write_text(cfg.to_json())
    accelerator.wait_for_everyone()

    t_setup = time.time()
    model, processor = recipe.load(cfg, as_dtype(cfg.dtype))
    llava = llava_of(model)
    records = load_records(cfg.data)
    if cfg.limit:
        records = records[: cfg.limit]
    root = cfg.image_root or str(Path(cfg.data).resolve().parent)
    dataset = TrainingSet(records, processor, llava.config.image_seq_length, root, cfg.max_length)

    cache = FeatureCache(tower_fingerprint(llava, processor), cfg.cache_dir, enabled=cfg.use_cache)
    if main:
        cache.write_manifest(llava)
    images = dataset.images()
    ensure_features(llava, processor, images, cache, cfg.feature_batch_size, rank, world)
    accelerator.wait_for_everyone()
    dataset.attach_features(cache, unreadable(cache, images))
    log(f"data: {len(dataset)} examples from {len(records)} records; skipped {dict(dataset.skipped) or 'none'}; "
        f"features: {len(images)} images ({cache.hits} cached, {cache.computed} computed on rank {rank})")

    model = recipe.prepare(model, cfg)
    for p in model.parameters():  # frozen weights may be bf16; what the optimizer updates stays fp32
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    if cfg.gradient_checkpointing:
        llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    wrapper = FeatureLlava(model)
    optimizer = torch.optim.AdamW(recipe.param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = LengthGroupedBatches(dataset.lengths, cfg.batch_size, world, rank, cfg.seed, cfg.group_by_length,
                                   cfg.grad_accum)
    steps_per_epoch = len(batches) // cfg.grad_accum
    total = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(total * cfg.warmup_ratio), total)
    wrapper, optimizer = accelerator.prepare(wrapper, optimizer)

    state = (checkpoint.resume(accelerator, wrapper, optimizer, scheduler, out, log) if cfg.resume
             else checkpoint.TrainerState())
    state.threads = torch.get_num_threads()
    metrics = MetricsLog(out / "metrics.jsonl", state.step, main)
    setup_s = time.time() - t_setup

    collate = Collator(processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None
                       else processor.tokenizer.eos_token_id)
    bar = tqdm(total=total, initial=state.step, disable=not main, desc=f"stage {cfg.stage} ({cfg.recipe})",
               file=sys.stderr, dynamic_ncols=True)
    wrapper.train()
    t0, samples_here = time.time(), 0
    group_losses: list[torch.Tensor] = []
    group_samples = 0
    while state.step < total:
        epoch_batches = batches.epoch(state.epoch)
        for b in range(state.batch_in_epoch, len(epoch_batches)):
            batch = collate([dataset[i] for i in epoch_batches[b]])
            with accelerator.accumulate(wrapper):
                loss = wrapper(**batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(wrapper.parameters(), cfg.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            group_losses.append(loss.detach().float())
            group_samples += len(epoch_batches[b]) * world
            state.batch_in_epoch = b + 1
            if not accelerator.sync_gradients:
                continue
            step_loss = accelerator.reduce(torch.stack(group_losses).mean(), reduction="mean").item()
            state.step += 1
            state.samples += group_samples
            samples_here += group_samples
            group_losses, group_samples = [], 0
            elapsed = time.time() - t0
            lr = scheduler.get_last_lr()[0]
            row = {"step": state.step, "epoch": state.epoch, "loss": round(step_loss, 5), "lr": lr,
                   "samples": state.samples, "samples_per_s": round(samples_here / max(elapsed, 1e-9), 3),
                   "elapsed_s": round(state.elapsed + elapsed, 2)}
            if state.step % cfg.log_every == 0 or state.step == total:
                metrics.write(row)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", sps=f"{row['samples_per_s']:.1f}")
            if cfg.save_every and state.step % cfg.save_every == 0 and state.step < total:
                saved = state.elapsed
                state.elapsed = saved + elapsed
                try:
                    checkpoint.save(accelerator, wrapper, optimizer, scheduler, state, out, cfg.keep_checkpoints)
                except checkpoint.CheckpointWriteError:
                    bar.close()  # end the progress line, so the error starts on a line of its own
                    raise
                state.elapsed = saved
            if state.step >= total:
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
    bar.close()
    train_s = time.time() - t0
    state.elapsed += train_s

    accelerator.wait_for_everyone()
    from accelerate.utils import gather_object

    rank_hashes = gather_object([trainable_sha256(accelerator.unwrap_model(wrapper).model)])
    summary = {}
    if main:
        final_model = accelerator.unwrap_model(wrapper).model
        processor.tokenizer.padding_side = "left"  # the saved processor is for generation
        try:
            recipe.save(final_model, processor, out, cfg)
        except Exception as exc:  # transformers and safetensors wrap a failed write in their own errors
            cause = os_error_of(exc)
            if cause is None:
                raise
            raise checkpoint.write_failure(cause, "the final model", out, out) from exc
        rows = metrics.rows()
        losses = [r["loss"] for r in rows]
        tail = losses[-max(1, len(losses) // 10):] if losses else []
        summary = {
            "stage": cfg.stage, "recipe": cfg.recipe, "steps": state.step,
            "epochs": round(state.epoch + state.batch_in_epoch / len(batches), 3),
            "examples": len(dataset), "records": len(records), "skipped": dict(dataset.skipped),
            "samples": state.samples, "samples_this_run": samples_here,
            "time_s": round(state.elapsed, 2), "train_time_this_run_s": round(train_s, 2),
            "setup_time_s": round(setup_s, 2),
            "samples_per_s": round(samples_here / max(train_s, 1e-9), 3),
            "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
            "final_loss_mean_last_10pct": round(sum(tail) / len(tail), 5) if tail else None,
            "peak_memory_mb": round(peak_memory_mb(), 1), "trainable_parameters": trainable,
            "world_size": world, "bf16": cfg.bf16, "gradient_checkpointing": cfg.gradient_checkpointing,
            "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
            "trainable_sha256_by_rank": rank_hashes,
            "feature_cache": {"dir": str(cache.dir) if cache.enabled else None, "hits": cache.hits,
                              "computed_rank0": cache.computed},
        }
        if rows:
            plot_losses(rows, out / "loss.png", f"stage {cfg.stage} ({cfg.recipe})")
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        log(json.dumps(summary))
    accelerator.wait_for_everyone()
    torch.set_num_threads(threads_before)
    return summary
