"""LiT configuration: one dataclass; ``vlm train clip`` flags map onto its fields (see :mod:`vlm.train.lit.cli`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from vlm.paths import data_dir as shared_data

TEXT_TOWERS = ("clip", "smollm2-frozen")  # a CLIPTextModel trained from scratch; frozen SmolLM2 states + a head
IMAGE_FEATURES = ("cls", "cls+mean")  # the tower's pooled class token (stock); that and its mean patch token


@dataclass
class LitConfig:
    data_dir: str = field(default_factory=lambda: str(shared_data("flickr8k")))  # train.jsonl and dev.jsonl: {"image", "captions": [...]}
    out_dir: str = "runs/lit/clip"
    cache_dir: str | None = None  # where locked-tower outputs are cached (None: $VLM_CACHE/features/lit)
    cache: bool = True  # False: compute them in memory for this run only
    # image side: a locked (frozen) pretrained tower; its class token after `image_layer` layers, normed
    vision: str = "dinov2-vits14"  # registered name or tower folder
    image_size: int = 224
    image_layer: int = 0  # the tower is cut to this many layers (0: all); the saved model keeps only those
    image_features: str = "cls"  # "cls+mean" is a measurement only: no stock class pools that way
    flip: bool = True  # train on plain and mirrored views; evaluate on their average
    feature_bf16: bool | None = None  # compute the cached tower outputs under bf16 autocast (None: where bf16 is fast)
    unlock_vision: bool = False  # train the tower too (no cache; for GPUs): LiT's "unlocked" setting
    # text side
    text_tower: str = "clip"  # see TEXT_TOWERS; only "clip" writes a model folder
    vocab_size: int = 4096  # byte-level BPE trained on the training captions (lower-cased)
    text_layers: int = 4
    text_hidden: int = 256
    text_heads: int = 4
    text_intermediate: int = 1024
    text_attention_dropout: float = 0.1  # CLIPTextModel has no other dropout
    max_text_length: int = 64
    embed_init: str = "smollm2"  # "smollm2": token embeddings from SmolLM2's (PCA to text_hidden); "random"
    llm: str = "smollm2-135m-instruct"  # for embed_init and the smollm2-frozen text tower
    llm_layer: int = 0  # smollm2-frozen: hidden_states index that is pooled (0: the token embeddings)
    llm_sif_a: float | None = 3e-3  # smollm2-frozen: SIF-weighted mean (None: plain mean)
    projection_dim: int = 256
    init_logit_scale: float = 2.6592  # log(1 / 0.07), CLIP's
    max_logit_scale: float = 4.6052  # log(100), CLIP's clamp
    # optimisation
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    epochs: float = 20.0  # one epoch: every training caption once (5 passes over the images)
    max_steps: int | None = None  # overrides epochs
    bf16: bool | None = None  # autocast the trained towers to bf16 (None: where bf16 is fast: AMX CPUs, bf16 GPUs;
    # ~1.7x on AMX, but ~9x slower than float32 on a CPU without it)
    group_by_length: bool = True  # batches of captions of similar length (less padding); batch order stays random
    device: str = "auto"  # "auto": cuda when available, else cpu
    threads: int | None = None
    seed: int = 0
    # limits, evaluation, checkpoints
    train_limit: int | None = None  # first N training images
    dev_limit: int | None = None
    eval_every: int = 0  # steps between dev evaluations (0: once per epoch); the best by dev t2i R@5 is kept
    save_every: int = 0  # steps between checkpoints (0: at each evaluation)
    keep_checkpoints: int = 2
    log_every: int = 20
    resume: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LitConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown LiT config field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def validate(self) -> "LitConfig":
        if self.text_tower not in TEXT_TOWERS:
            raise ValueError(f"text_tower must be one of {', '.join(TEXT_TOWERS)}, got {self.text_tower!r}")
        if self.image_features not in IMAGE_FEATURES:
            raise ValueError(f"image_features must be one of {', '.join(IMAGE_FEATURES)}, got {self.image_features!r}")
        if self.embed_init not in ("smollm2", "random"):
            raise ValueError(f"embed_init must be smollm2 or random, got {self.embed_init!r}")
        if self.unlock_vision and self.image_features != "cls":
            raise ValueError("unlock_vision trains the stock model, whose image features are the class token: "
                             "use image_features=cls")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (InfoNCE needs in-batch negatives), got {self.batch_size}")
        if self.image_layer < 0:
            raise ValueError(f"image_layer must be >= 0 (0: all layers), got {self.image_layer}")
        if self.text_hidden % self.text_heads:
            raise ValueError(f"text_hidden ({self.text_hidden}) must be a multiple of text_heads ({self.text_heads})")
        for name in ("lr", "epochs", "projection_dim", "vocab_size", "text_layers", "max_text_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        return self

    def resolved(self, device) -> "LitConfig":
        """A copy with the automatic choices (``None``) made for ``device`` (:func:`vlm.hardware.bf16_is_fast`)."""
        from dataclasses import replace

        from vlm.hardware import bf16_is_fast

        fast = bf16_is_fast(device)
        return replace(self, bf16=fast if self.bf16 is None else self.bf16,
                       feature_bf16=fast if self.feature_bf16 is None else self.feature_bf16)

    @property
    def exportable(self) -> bool:
        """Whether the trained parts form a stock ``VisionTextDualEncoderModel``."""
        return self.text_tower == "clip" and self.image_features == "cls"
