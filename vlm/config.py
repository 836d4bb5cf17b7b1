"""Typed configuration for vlm: generation options, input limits and tower presets."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class GenerationOptions:
    """How to decode. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or the answer (1 = off)
    no_repeat_ngram_size: int = 0  # never repeat an n-gram of this size within the answer (0 = off)
    num_beams: int = 1  # beam search width (1 = greedy or sampling); a beam answer streams as one piece

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {self.num_beams}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]

    @classmethod
    def from_kwargs(cls, options: "GenerationOptions | None" = None, **kwargs) -> "GenerationOptions":
        """Merge keyword overrides (``None`` values ignored) into ``options``."""
        base = asdict(options) if options is not None else {}
        unknown = set(kwargs) - set(cls.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
        base.update({k: v for k, v in kwargs.items() if v is not None})
        return cls(**base)


@dataclass
class InputLimits:
    """Guards applied to every image and prompt before it reaches the model."""

    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_images: int = 8


@dataclass
class TowerPreset:
    """A small fresh (random) CLIP ViT tower, quick on a CPU: benchmarks, tests and stage 1's ``--vision preset``
    build on it (vlm-tiny v3's stored tower has this shape). Fields map onto ``CLIPVisionConfig``."""

    image_size: int = 112
    patch_size: int = 16
    hidden_size: int = 192  # 192 x 6 layers: ~1.7x the training throughput of 256 x 6 on the shared CPU
    intermediate_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 3

    def to_config(self):
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(**asdict(self))
