"""The stage-0 training loop: distil the teacher and align to the locked caption states, select on dev."""
from __future__ import annotations

import functools
import json
import math
import random
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from vlm.compose import load_tokenizer
from vlm.eval.retrieval import RetrievalSpec, TextSide, chance_recall, recall_at_k

from . import data as D
from .checkpoint import LoopState, checkpoint_dir, restore_checkpoint, save_checkpoint, warm_start
from .config import Stage0Config
from .export import export_tower
from .losses import cosine_distill, info_nce, standardize
from .model import Student, match_grid
from .probe import HeadFit, best_head, closed_form_heads, per_image_targets, ridge_probe
from .teacher import OpenNSFWTeacher, cached_teacher_features, teacher_features
from .text_targets import load_text_llm, text_states

MEAN, STD = list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Logger:
    def __init__(self, path: Path | None):
        self.path = path
        self.t0 = time.time()

    def drop_after(self, step: int) -> None:
        """Forget the metric lines of steps after ``step`` (a resumed run redoes them)."""
        if self.path is None or not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def __call__(self, msg: str, **metrics) -> None:
        stamp = f"[{time.time() - self.t0:7.1f}s]"
        print(stamp, msg, flush=True)
        if self.path is not None and metrics:
            with self.path.open("a") as f:
                f.write(json.dumps({"elapsed_s": round(time.time() - self.t0, 1), **metrics}) + "\n")


def lr_at(progress: float, cfg: Stage0Config, step: int) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    return cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def prepare_data(cfg: Stage0Config, log: Logger) -> dict:
    """Pixels, teacher features (cached), text states (cached) for train and dev, and the SIF token weights."""
    out = {}
    cache = Path(cfg.cache_dir) if cfg.cache_dir else None
    splits = {split: D.load_split(cfg.data_dir, split, limit)
              for split, limit in (("train", cfg.train_limit), ("dev", cfg.dev_limit))}
    token_weight = None
    if cfg.text_sif_a:
        from vlm.eval.retrieval import sif_weights

        token_weight = sif_weights(load_tokenizer(cfg.llm), splits["train"].flat_captions()[0], cfg.text_sif_a)
    text_llm = functools.cache(lambda: load_text_llm(cfg.llm))  # loaded once, and only on a cache miss
    for split, s in splits.items():
        t = time.time()
        pixels = D.load_pixels(s.images)
        log(f"{split}: {len(s)} images decoded in {time.time() - t:.1f}s")
        texts, owner = s.flat_captions()
        key = f"flickr8k_{split}_{len(s)}_{Path(s.images[-1]).stem}"
        factory = lambda: OpenNSFWTeacher(dtype=torch.bfloat16)  # noqa: E731
        t = time.time()
        if cache is not None:
            spatial, pooled = cached_teacher_features(
                factory, pixels, cache / f"teacher_{key}_opennsfw_bf16.safetensors", log=log)
        else:
            spatial, pooled = teacher_features(factory(), pixels, log=log)
        log(f"{split}: teacher features {tuple(spatial.shape)} in {time.time() - t:.1f}s")
        t = time.time()
        states = text_states(texts, cfg.llm, cfg.text_layer, cache, llm=text_llm, token_weight=token_weight)
        log(f"{split}: text states {tuple(states.shape)} in {time.time() - t:.1f}s")
        out[split] = dict(split=s, pixels=pixels, spatial=spatial, pooled=pooled, texts=texts, owner=owner,
                          states=states)
    out["token_weight"] = token_weight
    return out


@dataclass(frozen=True)
class TeacherStats:
    """Per-channel statistics of the training images' teacher features; targets are standardised with them."""

    sp_mean: torch.Tensor
    sp_std: torch.Tensor
    po_mean: torch.Tensor
    po_std: torch.Tensor

    @classmethod
    def of(cls, spatial: torch.Tensor, pooled: torch.Tensor) -> "TeacherStats":
        sp = spatial.float()
        return cls(sp.mean((0, 2, 3)), sp.std((0, 2, 3)).clamp_min(1e-3), pooled.mean(0),
                   pooled.std(0).clamp_min(1e-3))

    def targets(self, spatial: torch.Tensor, pooled: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised (spatial map at the student's grid, pooled vector) distillation targets."""
        return (standardize(match_grid(spatial.float(), grid), self.sp_mean, self.sp_std, 1),
                standardize(pooled.float(), self.po_mean, self.po_std, 1))


@torch.no_grad()
def clean_pass(student: Student, pixels_uint8: torch.Tensor, size: int, bf16: bool, teacher: tuple | None = None,
               batch: int = 200) -> tuple[torch.Tensor, dict[str, float] | None]:
    """The tower's pooled output (float32) for un-augmented images and, with ``teacher`` = (spatial, pooled,
    :class:`TeacherStats`) for the first n of them, the student's distillation error on those n in the same
    pass: mean (1 - cosine) against the teacher's standardised features. Train and dev errors close together
    mean the tower underfits (too small or too short a run); a dev error well above the train one means it
    overfits (too few images, too weak augmentation)."""
    student.eval()
    n_fit = len(teacher[1]) if teacher is not None else 0
    outs, sums = [], {"spatial": 0.0, "pooled": 0.0}
    for st in range(0, len(pixels_uint8), batch):
        x = D.to_student(pixels_uint8[st:st + batch].float() / 255.0, size, MEAN, STD)
        k = min(n_fit - st, len(x))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if k > 0:
                s_spatial, pooled = student.encode(x)
                s_pooled = student.pooled_head(pooled[:k])
            else:
                pooled = student.tower(pixel_values=x).pooler_output
        outs.append(pooled.float())
        if k > 0:
            spatial, t_pooled = teacher[2].targets(teacher[0][st:st + k], teacher[1][st:st + k], student.grid)
            sums["spatial"] += cosine_distill(s_spatial[:k], spatial, dim=1).item() * k
            sums["pooled"] += cosine_distill(s_pooled, t_pooled, dim=1).item() * k
    student.train()
    errors = {name: v / max(1, n_fit) for name, v in sums.items()} if teacher is not None else None
    return torch.cat(outs), errors


def evaluate(student: Student, dev_pooled: torch.Tensor, text_unit: torch.Tensor, dev_owner: list[int]) -> dict:
    """Dev recall with the contrastively trained image head, from the tower's pooled dev features."""
    with torch.no_grad():
        img = student.image_head(dev_pooled)
    return recall_at_k(img @ text_unit.t(), dev_owner)


def train(cfg: Stage0Config) -> dict:
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint_dir(out_dir)
    resuming = cfg.resume and (ckpt / "state.json").is_file()
    metrics = out_dir.parent / f"{out_dir.name}_metrics.jsonl"
    if not resuming:  # a fresh run: its own metrics file, and no stale checkpoint to resume by mistake later
        metrics.unlink(missing_ok=True)
        shutil.rmtree(ckpt, ignore_errors=True)
    log = Logger(metrics)
    log(f"config: {json.dumps(cfg.to_dict(), default=str)}")
    t_start = time.time()
    data = prepare_data(cfg, log)
    tr, dv = data["train"], data["dev"]
    text_side = TextSide.fit(tr["states"], cfg.text_remove_components, data["token_weight"])
    tr_unit, dv_unit = text_side.unit(tr["states"]), text_side.unit(dv["states"])
    n_img = len(tr["pixels"])
    caps_of = [[] for _ in range(n_img)]
    for j, i in enumerate(tr["owner"]):
        caps_of[i].append(j)
    image_targets = per_image_targets(tr_unit, tr["owner"], n_img)

    probe, _ = ridge_probe(tr["pooled"], image_targets, dv["pooled"], dv_unit, dv["owner"])
    chance = chance_recall(len(dv["pixels"]), 5)
    log(f"teacher linear probe (dev): {json.dumps(probe)}", kind="probe", **probe)
    log(f"chance (dev): {json.dumps({k: round(v, 4) for k, v in chance.items()})}")

    # standardisation statistics of the teacher targets
    stats = TeacherStats.of(tr["spatial"], tr["pooled"])

    tcfg = cfg.tower.to_config()
    student = Student(tcfg, teacher_dim=tr["pooled"].shape[1], text_dim=tr_unit.shape[1],
                      init_logit_scale=cfg.init_logit_scale)
    n_params = sum(p.numel() for p in student.tower.parameters())
    log(f"student tower: {n_params / 1e6:.2f}M parameters, grid {student.grid}x{student.grid}")
    decay = [p for n, p in student.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in student.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    online_teacher = OpenNSFWTeacher(dtype=torch.bfloat16) if cfg.teacher_online else None
    spec = RetrievalSpec(text_model=cfg.llm, text_layer=cfg.text_layer, embed_dim=tr_unit.shape[1],
                         text_pooling="sif" if cfg.text_sif_a else "mean")
    gen = torch.Generator().manual_seed(cfg.seed)
    state = LoopState(perm=torch.randperm(n_img, generator=gen).tolist())
    if resuming:
        state = restore_checkpoint(ckpt, student, opt, gen, cfg.to_dict())
        log.drop_after(state.step)
        log(f"resumed from {ckpt}: step {state.step}, {state.elapsed_s / 60:.1f} min of training done")
    else:
        if cfg.resume:
            log(f"--resume: no checkpoint at {ckpt}; starting from scratch")
        if cfg.init_tower:
            log(f"warm start from {cfg.init_tower}: {', '.join(warm_start(student, cfg.init_tower))}")

    best, history = state.best, state.history
    step, perm, pos, seen = state.step, torch.tensor(state.perm), state.pos, state.seen
    t_train = time.time() - state.elapsed_s
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else None

    def progress() -> float:
        p = step / cfg.max_steps
        if budget_s:
            p = max(p, (time.time() - t_train) / budget_s)
        return p

    def do_eval():
        nonlocal best
        t = time.time()
        n_fit = min(len(tr["pixels"]), len(dv["pixels"]))  # distillation error on as many train images as dev
        dev_pooled, dev_fit = clean_pass(student, dv["pixels"], cfg.tower.image_size, cfg.bf16,
                                         (dv["spatial"][:n_fit], dv["pooled"][:n_fit], stats))
        spec.logit_scale = float(student.logit_scale(cfg.max_logit_scale).detach())
        fits = [HeadFit("contrastive", evaluate(student, dev_pooled, dv_unit, dv["owner"]), None, text_side)]
        closed_form = cfg.ridge_head or cfg.cca_head  # closed-form heads need clean features of every train image
        train_pooled, train_fit = clean_pass(student, tr["pixels"] if closed_form else tr["pixels"][:n_fit],
                                             cfg.tower.image_size, cfg.bf16,
                                             (tr["spatial"][:n_fit], tr["pooled"][:n_fit], stats))
        if closed_form:
            fits += closed_form_heads(train_pooled, tr["owner"], tr_unit, dev_pooled, dv_unit, dv["owner"],
                                      text_side, ridge=cfg.ridge_head, cca=cfg.cca_head)
        for f in fits:
            log(f"eval step {step}: {f.name} head {json.dumps({k: round(v, 4) for k, v in f.recalls.items()})}")
        chosen = best_head(fits)
        r, head_state, side = chosen.recalls, chosen.state, chosen.side
        spec.head, spec.embed_dim = chosen.name, side.dim
        fit = {f"fit_{name}_{k}": round(v, 4) for name, errors in (("train", train_fit), ("dev", dev_fit))
               for k, v in errors.items()}
        rec = {"step": step, "head": spec.head, **{k: round(v, 4) for k, v in r.items()}, **fit,
               "eval_s": round(time.time() - t, 1)}
        history.append(rec)
        log(f"eval step {step}: {json.dumps(rec)}", kind="eval", **rec)
        extra = {"config": cfg.to_dict(), "step": step, "dev": r, "teacher_probe": probe, "chance": chance}
        if best is None or r["t2i_r5"] >= best["t2i_r5"]:
            best = {"step": step, "head": spec.head, **r}
            extra["best"] = best
            export_tower(student, out_dir, spec, side, MEAN, STD, extra, head_state=head_state)
            log(f"saved best tower (dev t2i R@5 {r['t2i_r5']:.4f}, {spec.head} head) to {out_dir}")

    student.train()
    while progress() < 1.0:
        if pos + cfg.batch_size > n_img:
            perm, pos = torch.randperm(n_img, generator=gen), 0
        idx = perm[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        lr = lr_at(progress(), cfg, step)
        for g in opt.param_groups:
            g["lr"] = lr
        # views
        x = tr["pixels"][idx].float() / 255.0
        theta = D.random_grids(len(idx), cfg.augment, gen)
        view = D.color_jitter(D.warp(x, theta, D.SIZE), cfg.augment, gen)
        if online_teacher is not None:
            t_spatial, t_pooled = online_teacher(view)
        else:
            t_spatial = D.warp_maps(tr["spatial"][idx].float(), theta)
            t_pooled = tr["pooled"][idx]
        t_spatial, t_pooled = stats.targets(t_spatial, t_pooled, student.grid)
        cap = torch.tensor([random.choice(caps_of[int(i)]) for i in idx])
        text = tr_unit[cap]
        pixels = D.to_student(view, cfg.tower.image_size, MEAN, STD)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            s_spatial, s_pooled, s_img = student(pixels)
        l_sp = cosine_distill(s_spatial, t_spatial, dim=1) if cfg.w_spatial else torch.zeros(())
        l_po = cosine_distill(s_pooled, t_pooled, dim=1) if cfg.w_pooled else torch.zeros(())
        l_clip = info_nce(s_img, text, student.logit_scale(cfg.max_logit_scale)) if cfg.w_clip else torch.zeros(())
        loss = cfg.w_spatial * l_sp + cfg.w_pooled * l_po + cfg.w_clip * l_clip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        step += 1
        seen += len(idx)
        if step % cfg.log_every == 0 or step == 1:
            el = time.time() - t_train
            rec = {"step": step, "loss": round(loss.item(), 4), "spatial": round(l_sp.item(), 4),
                   "pooled": round(l_po.item(), 4), "clip": round(l_clip.item(), 4),
                   "scale": round(float(student.logit_scale(cfg.max_logit_scale).detach()), 2), "lr": lr,
                   "img_per_s": round(seen / el, 1), "progress": round(progress(), 3)}
            log(json.dumps(rec), kind="train", **rec)
        if cfg.eval_every and step % cfg.eval_every == 0:
            do_eval()
        if cfg.save_every and step % cfg.save_every == 0:  # latest weights, whatever their dev score
            spec.logit_scale = float(student.logit_scale(cfg.max_logit_scale).detach())
            spec.head, spec.embed_dim = "contrastive", text_side.dim
            export_tower(student, out_dir.with_name(out_dir.name + ".last"), spec, text_side, MEAN, STD,
                         {"config": cfg.to_dict(), "step": step})
            now = LoopState(step, seen, time.time() - t_train, perm.tolist(), pos, best, history)
            save_checkpoint(ckpt, student, opt, gen, now, cfg.to_dict())
    if not history or history[-1]["step"] != step:
        do_eval()
    summary = {
        "best": best, "teacher_probe": probe, "chance": chance, "steps": step, "images_seen": seen,
        "train_img_per_s": round(seen / max(1e-9, time.time() - t_train), 1),  # over the whole run if resumed
        "wall_s": round(time.time() - t_start, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
        "history": history, "out_dir": str(out_dir),
    }
    (out_dir.parent / f"{out_dir.name}_summary.json").write_text(json.dumps(summary, indent=2))
    log(f"done: {json.dumps({k: v for k, v in summary.items() if k != 'history'})}")
    return summary
