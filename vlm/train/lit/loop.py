"""The LiT training loop: InfoNCE between a locked image tower's cached outputs and a trained text tower,
selected on dev text-to-image R@5.

Per run: read train/dev pairs, learn the caption tokenizer (saved in ``<out>/tokenizer``; a resumed run
reads it back), cache the locked tower's outputs (:mod:`vlm.train.lit.features`), build the sides
(:mod:`vlm.train.lit.sides`), then train with AdamW and a warmup + cosine schedule. Each evaluation scores dev
retrieval (:func:`vlm.retrieval.recall_at_k`, the protocol of ``vlm eval retrieval``) and keeps the best
trainable weights in ``<out>/best.safetensors`` (+ ``best.json``); checkpoints (``vlm/train/checkpoint.py``:
atomic, ``--resume`` continues exactly) go to ``<out>/checkpoints``; ``metrics.jsonl`` logs losses and
evaluations. At the end the best weights become the model: for the stock layout (``config.exportable``)
a ``VisionTextDualEncoderModel`` folder at ``<out>`` (:mod:`vlm.train.lit.export`); other layouts are
measurements and write only their figures. ``summary.json`` holds the outcome.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
from torch import nn

from .config import LitConfig

SPLITS = ("train", "dev")


def _device(cfg: LitConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _tokenizer(cfg: LitConfig, out: Path, captions: list[str]):
    from transformers import AutoTokenizer

    from .tokenizer import train_tokenizer

    folder = out / "tokenizer"
    if cfg.resume and (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(folder)
    tok = train_tokenizer(captions, cfg.vocab_size, cfg.max_text_length)
    tok.save_pretrained(folder)
    return tok


def _features(cfg: LitConfig, tower, prep: dict, pairs: dict, log) -> dict[str, list[torch.Tensor]]:
    """Per split, the views (plain, mirrored when ``cfg.flip``) of the features the image side reads."""
    from .features import cached_outputs

    cache = _cache_root(cfg)
    layer = (cfg.image_layer or tower.config.num_hidden_layers) - 1
    out = {}
    for split in SPLITS:
        views = []
        for flip in ((False, True) if cfg.flip else (False,)):
            t = time.time()
            o = cached_outputs(tower, prep, pairs[split].images, cache, flip=flip, bf16=cfg.feature_bf16, log=log)
            f = o["cls"][:, layer] if cfg.image_features == "cls" else torch.cat([o["cls"][:, layer],
                                                                                  o["mean"][:, layer]], 1)
            views.append(f.contiguous())
            log(f"{split}: image features {tuple(f.shape)} ({'mirrored' if flip else 'plain'}) in {time.time() - t:.1f}s")
        out[split] = views
    return out


def _cache_root(cfg: LitConfig) -> Path | None:
    from vlm.train.feature_cache import default_root

    return Path(cfg.cache_dir or default_root() / "lit") if cfg.cache else None


def _frozen_states(cfg: LitConfig, pairs: dict, log) -> dict[str, torch.Tensor]:
    """Pooled SmolLM2 states of every caption (cached beside the tower outputs, keyed by LLM, layer, SIF
    weight and the captions themselves)."""
    import hashlib

    from safetensors.torch import load_file, save_file

    from vlm.compose import load_llm
    from vlm.retrieval import embed_texts, sif_weights

    root = _cache_root(cfg)
    text = json.dumps([cfg.llm, cfg.llm_layer, cfg.llm_sif_a] + [pairs[s].captions for s in SPLITS])
    path = root / f"text-states-{hashlib.sha256(text.encode()).hexdigest()[:16]}.safetensors" if root else None
    if path is not None and path.is_file():
        return load_file(str(path))
    llm, tok = load_llm(cfg.llm)
    weight = sif_weights(tok, pairs["train"].captions, cfg.llm_sif_a) if cfg.llm_sif_a else None
    states = {}
    for split in SPLITS:
        t = time.time()
        states[split] = embed_texts(llm, tok, pairs[split].captions, cfg.llm_layer, token_weight=weight)
        log(f"{split}: {cfg.llm} layer {cfg.llm_layer} states {tuple(states[split].shape)} in {time.time() - t:.1f}s")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(states, str(path))
    return states


def build(cfg: LitConfig, out: Path, pairs: dict, log):
    """(DualEncoder, the stock model or None, tokenizer or None, tower preprocessing); ``cfg`` is resolved
    (:meth:`LitConfig.resolved`: bf16 choices made)."""
    if cfg.bf16 is None or cfg.feature_bf16 is None:
        raise ValueError("build() needs a resolved LitConfig (cfg.resolved(device)): bf16 is still automatic")
    from vlm.vision import load_vision, truncate

    from .model import build_clip, smollm2_token_embeddings, text_config
    from .sides import CachedImages, ClipText, DualEncoder, FrozenStates, UnlockedImages
    from .tokenizer import encode

    tower, prep = load_vision(cfg.vision, image_size=cfg.image_size)
    if not prep:
        raise ValueError(f"vision tower {cfg.vision!r} has no image processor beside it (image mean/std unknown)")
    tower = truncate(tower.eval(), cfg.image_layer)
    torch.manual_seed(cfg.seed)
    clip = tokenizer = None
    if cfg.text_tower == "clip":
        tokenizer = _tokenizer(cfg, out, pairs["train"].captions)
        emb = None
        if cfg.embed_init == "smollm2" and not cfg.resume:  # a resumed run gets its weights from the checkpoint
            emb = smollm2_token_embeddings(tokenizer, cfg.llm, cfg.text_hidden)
        tcfg = text_config(len(tokenizer), cfg.text_hidden, cfg.text_layers, cfg.text_heads, cfg.text_intermediate,
                           cfg.max_text_length, cfg.text_attention_dropout, tokenizer.eos_token_id)
        clip = build_clip(tower, tcfg, cfg.projection_dim, cfg.init_logit_scale, emb)
        ids = {s: encode(tokenizer, pairs[s].captions, cfg.max_text_length) for s in SPLITS}
        text = ClipText(clip.text_model, clip.text_projection, tokenizer, ids, cfg.bf16)
    else:
        states = _frozen_states(cfg, pairs, log)
        text = FrozenStates(nn.Linear(states["train"].shape[1], cfg.projection_dim), states)
    if cfg.unlock_vision:
        image = UnlockedImages(clip.vision_model, clip.visual_projection,
                               {s: pairs[s].images for s in SPLITS}, prep, cfg.flip, cfg.bf16)
    else:
        tower.requires_grad_(False)
        features = _features(cfg, tower, prep, pairs, log)
        width = features["train"][0].shape[1]
        proj = clip.visual_projection if cfg.exportable else nn.Linear(width, cfg.projection_dim, bias=False)
        image = CachedImages(proj, features)
    scale = clip.logit_scale if clip is not None else nn.Parameter(torch.tensor(cfg.init_logit_scale))
    model = DualEncoder(image, text, scale, cfg.max_logit_scale)
    return model, clip, tokenizer, prep


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (embeddings included), none on biases, norms and the temperature."""
    decay, rest = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def evaluate(model, split: str, pairs) -> dict:
    from vlm.retrieval import recall_at_k

    img, txt = model.embed(split, len(pairs.images), len(pairs.captions))
    return {k: round(v, 5) for k, v in recall_at_k(img @ txt.T, pairs.owner).items()}


def _print(message: str) -> None:
    print(message, flush=True)


def train(cfg: LitConfig, log=_print) -> dict:
    """Run LiT training; return the summary (also written to ``<out>/summary.json``)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from safetensors.torch import load_file, save_file
    from transformers import get_cosine_schedule_with_warmup

    from vlm.train import checkpoint
    from vlm.train.loop import MetricsLog

    from .data import batches, load_pairs

    cfg.validate()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not cfg.resume:
        for stale in ("checkpoints", "best.safetensors", "best.json", "tokenizer", "summary.json"):
            path = out / stale
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    else:
        checkpoint.remove_partial(out)
    device = _device(cfg)
    cfg = cfg.resolved(device)
    (out / "lit_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=device.type == "cpu")
    t_setup = time.time()
    data = Path(cfg.data_dir)
    pairs = {"train": load_pairs(data / "train.jsonl", cfg.train_limit),
             "dev": load_pairs(data / "dev.jsonl", cfg.dev_limit)}
    log(f"data: {len(pairs['train'].images)} train images / {len(pairs['train'])} captions, "
        f"{len(pairs['dev'].images)} dev images / {len(pairs['dev'])} captions")
    model, clip, tokenizer, prep = build(cfg, out, pairs, log)
    model.to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lengths = model.text.lengths("train") if cfg.group_by_length else None
    per_epoch = len(batches(len(pairs["train"]), cfg.batch_size, cfg.seed, 0, lengths))
    total = cfg.max_steps or max(1, math.ceil(per_epoch * cfg.epochs))
    eval_every = cfg.eval_every or per_epoch
    save_every = cfg.save_every or eval_every
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup_steps, total // 2), total)
    best = json.loads((out / "best.json").read_text()) if cfg.resume and (out / "best.json").is_file() else None
    state = (checkpoint.resume(accelerator, model, optimizer, scheduler, out, log) if cfg.resume
             else checkpoint.TrainerState())
    state.threads = torch.get_num_threads()
    metrics = MetricsLog(out / "metrics.jsonl", state.step, True)
    owner = torch.tensor(pairs["train"].owner)
    setup_s = time.time() - t_setup
    log(f"setup {setup_s:.0f}s; {trainable:,} trainable parameters; {per_epoch} steps per epoch, {total} steps")
    n_views = 2 if cfg.flip else 1
    model.train()
    t0 = time.time()
    losses: list[float] = []
    while state.step < total:
        epoch_batches = batches(len(pairs["train"]), cfg.batch_size, cfg.seed, state.epoch, lengths)
        for b in range(state.batch_in_epoch, len(epoch_batches)):
            captions = epoch_batches[b]
            views = torch.randint(n_views, (len(captions),))  # the global RNG: restored on resume
            loss = model("train", captions, owner, views)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            model.clamp_()
            state.step += 1
            state.batch_in_epoch = b + 1
            state.samples += len(captions)
            losses.append(loss.item())
            elapsed = state.elapsed + time.time() - t0
            if state.step % cfg.log_every == 0 or state.step == total:
                row = {"step": state.step, "epoch": state.epoch, "loss": round(sum(losses) / len(losses), 5),
                       "lr": scheduler.get_last_lr()[0], "temperature": round(1 / model.logit_scale.exp().item(), 5),
                       "elapsed_s": round(elapsed, 1)}
                metrics.write(row)
                log(json.dumps(row))
                losses = []
            if state.step % eval_every == 0 or state.step == total:
                dev = evaluate(model, "dev", pairs["dev"])
                metrics.write({"step": state.step, "epoch": state.epoch, "dev": dev, "elapsed_s": round(elapsed, 1)})
                log(f"step {state.step}: dev {json.dumps(dev)}")
                if best is None or dev["t2i_r5"] > best["dev"]["t2i_r5"]:
                    best = {"step": state.step, "epoch": state.epoch, "dev": dev}
                    save_file(checkpoint.trainable_state(model), str(out / "best.safetensors"))
                    (out / "best.json").write_text(json.dumps(best, indent=2))
            if state.step % save_every == 0 or state.step == total:
                saved, state.elapsed = state.elapsed, state.elapsed + time.time() - t0
                checkpoint.save(accelerator, model, optimizer, scheduler, state, out, cfg.keep_checkpoints)
                state.elapsed = saved
            if state.step >= total:
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0
    train_s = time.time() - t0
    state.elapsed += train_s
    # the best weights become the model
    weights = load_file(str(out / "best.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in weights.items():
            params[name].copy_(t.to(params[name].device))
    folder = None
    if clip is not None and cfg.exportable:
        from .export import export

        folder = export(clip.cpu(), tokenizer, cfg, out, prep, best)
    summary = {"out_dir": str(out), "model_folder": str(folder) if folder else None, "best": best,
               "steps": state.step, "train_s": round(state.elapsed, 1), "setup_s": round(setup_s, 1),
               "trainable_parameters": trainable, "config": cfg.to_dict()}
    if folder is None:
        summary["note"] = "measurement only: this layout is not a stock transformers class, no model folder written"
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
