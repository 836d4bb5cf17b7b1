"""Typed configs for stage 1 (projector alignment) and stage 2 (visual instruction tuning).

Defaults follow LLaVA-1.5: stage 1 trains only the projector at lr 1e-3 for one epoch; stage 2 puts LoRA
(r=128, alpha=256) on every linear layer of the LLM except ``lm_head`` at lr 2e-4, with the projector at 2e-5.
Both use a cosine schedule with 3% warmup and no weight decay.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class LoraSettings:
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    # None = every nn.Linear inside the LLM (lm_head, tower and projector excluded)
    target_modules: list[str] | None = None


@dataclass
class TrainConfig:
    """Everything one training run needs. Paths are strings so the config round-trips through JSON."""

    stage: int = 1
    data: str = ""
    image_root: str | None = None  # default: the JSON file's folder
    model: str = ""  # llava folder / shipped name, or the LLM when building from --vision
    vision: str | None = None  # tower: registered name, folder or "preset" (fresh TowerPreset tower); stage 1 only
    image_size: int | None = None  # with vision: the tower's input size (None: the tower's own)
    vision_feature_layer: int | list[int] | None = None  # with vision: hidden state(s) fed to the projector (None: -2)
    out: str = ""
    recipe: str = "base"  # base | lora | qlora | full
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs
    limit: int | None = None  # use only the first N records
    batch_size: int = 16  # per process, per micro-batch
    grad_accum: int = 1
    lr: float = 1e-3
    projector_lr: float | None = None  # stage 2: projector lr (None = same as lr)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    max_length: int = 2048
    group_by_length: bool = True
    gradient_checkpointing: bool = False
    bf16: bool = False  # bf16 autocast (AMX on this CPU)
    dtype: str = "float32"  # frozen weights' dtype; trainable parameters are always kept in float32
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    seed: int = 42
    save_every: int = 0  # checkpoint every N optimizer steps (0 = only at the end)
    keep_checkpoints: int = 2
    resume: bool = False
    cache_dir: str | None = None  # feature cache root (default: $VLM_CACHE/features)
    use_cache: bool = True
    feature_batch_size: int = 32
    log_every: int = 1
    lora: LoraSettings = field(default_factory=LoraSettings)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        lora = LoraSettings(**data.pop("lora", {}))
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(lora=lora, **data)

    def validate(self) -> "TrainConfig":
        if not self.data:
            raise ValueError("--data is required (a LLaVA-format JSON file)")
        if not Path(self.data).is_file():
            raise FileNotFoundError(f"training data not found: {self.data}")
        if not self.out:
            raise ValueError("--out is required")
        if not self.model:
            raise ValueError("--model is required")
        if self.recipe not in ("base", "lora", "qlora", "full"):
            raise ValueError(f"unknown recipe {self.recipe!r}")
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("--max-steps must be at least 1")
        if self.epochs <= 0:
            raise ValueError("--epochs must be positive")
        if not self.vision and (self.image_size is not None or self.vision_feature_layer is not None):
            raise ValueError("--image-size and --vision-feature-layer shape a new model; they need --vision")
        return self


def stage1_defaults(**overrides) -> TrainConfig:
    """LLaVA-1.5 pretraining: projector only, lr 1e-3, cosine, 3% warmup, 1 epoch (global batch 256)."""
    base = dict(stage=1, recipe="base", lr=1e-3, epochs=1.0, warmup_ratio=0.03, weight_decay=0.0)
    base.update(overrides)
    return TrainConfig(**base)


def stage2_defaults(**overrides) -> TrainConfig:
    """LLaVA-1.5 LoRA instruction tuning: r=128 alpha=256 on all LLM linears, lr 2e-4, projector 2e-5."""
    base = dict(
        stage=2, recipe="lora", lr=2e-4, projector_lr=2e-5, epochs=1.0, warmup_ratio=0.03, weight_decay=0.0,
    )
    base.update(overrides)
    return TrainConfig(**base)
