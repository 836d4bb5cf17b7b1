"""Stage-0 configuration (one dataclass; ``vlm train stage0`` flags map onto its fields)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from vlm.config import TowerPreset

from .data import AugmentConfig


@dataclass
class Stage0Config:
    data_dir: str = "../shared/data/flickr8k"
    out_dir: str = "runs/stage0/tower"
    cache_dir: str | None = "runs/stage0/cache"  # teacher features and text states (safetensors)
    # student tower (CLIPVisionConfig fields)
    tower: TowerPreset = field(default_factory=TowerPreset)
    # text side: frozen LLM, mean-pooled hidden_states[text_layer]
    llm: str = "smollm2-135m-instruct"
    text_layer: int = 0  # input embeddings: best teacher-probe R@5 among layers 0/2/4/8 (see report)
    # SIF pooling (weights a/(a+p(token)) from train captions) and common directions removed: teacher-probe
    # dev t2i R@5 13.6% (plain mean) -> 26.5% (a=3e-3, 1 component); None / 0 turn them off
    text_sif_a: float | None = 3e-3
    text_remove_components: int = 1
    ridge_head: bool = True  # at each evaluation also fit a ridge image head on clean train features; keep the better
    cca_head: bool = True  # ... and a CCA head (image and caption both projected into a shared space)
    # signals
    w_spatial: float = 1.0  # teacher 7x7 map vs student layer -2 patch tokens (cosine, standardised)
    w_pooled: float = 1.0  # teacher pooled vs student pooled output (cosine, standardised)
    w_clip: float = 1.0  # symmetric InfoNCE image <-> caption states, learnable temperature
    init_logit_scale: float = 10.0
    max_logit_scale: float = 100.0
    teacher_online: bool = False  # True: run the teacher on every augmented view; False: warp cached maps
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # starting point: resume <out_dir>.checkpoint exactly, or warm-start from a tower folder's weights
    resume: bool = False
    init_tower: str | None = None
    # optimisation
    batch_size: int = 96
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    max_steps: int = 2000
    time_budget_min: float | None = None  # the schedule follows max(step/max_steps, elapsed/budget)
    bf16: bool = True  # autocast the student to bf16 (AMX)
    threads: int | None = None
    seed: int = 0
    # limits, evaluation, saving
    train_limit: int | None = None
    dev_limit: int | None = None
    eval_every: int = 250
    save_every: int = 250  # every N steps export the latest weights to <out_dir>.last and write the
    #                        training state to <out_dir>.checkpoint (0: never)
    log_every: int = 10

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Stage0Config":
        d = dict(d)
        if isinstance(d.get("tower"), dict):
            d["tower"] = TowerPreset(**d["tower"])
        if isinstance(d.get("augment"), dict):
            aug = dict(d["augment"])
            if "ratio" in aug:
                aug["ratio"] = tuple(aug["ratio"])
            d["augment"] = AugmentConfig(**aug)
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown stage-0 config field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def validate(self) -> None:
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (contrastive loss needs negatives)")
        if self.max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if min(self.w_spatial, self.w_pooled, self.w_clip) < 0 or self.w_spatial + self.w_pooled + self.w_clip == 0:
            raise ValueError("loss weights must be >= 0 and not all zero")
        if self.tower.image_size % self.tower.patch_size:
            raise ValueError("tower image_size must be a multiple of patch_size")
