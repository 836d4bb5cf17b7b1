"""Fixtures for the CLIP-use tests: a tiny random stock CLIP folder (``VisionTextDualEncoderModel`` of a tiny
CLIP vision tower and a tiny ``CLIPTextModel``, with its processor and a caption tokenizer), as ``vlm train
clip`` writes one. Import with ``from clip_fixtures import *``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

__all__ = ["tiny_clip_dir", "write_tiny_clip"]

CAPTIONS = ["A dog runs on the beach .", "Two children play in the snow", "a man rides a bike down a street",
            "A black dog jumps over a log .", "people stand near the water", "a cat sleeps on a red sofa"] * 4


def write_tiny_clip(folder: Path, seed: int = 0, flip_average: bool | None = None) -> Path:
    """A random 16-d CLIP (32 px images) saved the stock way, with a ``lit.json`` when ``flip_average`` is set."""
    import json

    from transformers import (CLIPImageProcessor, CLIPTextConfig, CLIPVisionConfig, VisionTextDualEncoderConfig,
                              VisionTextDualEncoderModel, VisionTextDualEncoderProcessor)

    from vlm.train.lit.tokenizer import EOS_ID, train_tokenizer

    tok = train_tokenizer(CAPTIONS, vocab_size=300)
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4)
    text = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=16, eos_token_id=EOS_ID,
                          pad_token_id=EOS_ID, bos_token_id=EOS_ID)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision, text, projection_dim=16)
    model = VisionTextDualEncoderModel(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                              image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    VisionTextDualEncoderProcessor(image_processor=proc, tokenizer=tok).save_pretrained(folder)
    if flip_average is not None:
        (folder / "lit.json").write_text(json.dumps({"flip_average": flip_average}))
    return folder


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random stock CLIP folder. Shared: tests must not modify it."""
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
