"""Write the trained LiT CLIP as a stock transformers folder.

Contract: :func:`export` saves ``VisionTextDualEncoderModel`` weights and config, its
``VisionTextDualEncoderProcessor`` (the tower's image processor at the training input size + the caption
tokenizer) and ``lit.json`` (how it was trained and evaluated: ``flip_average`` tells an evaluation to
average each image with its mirror image, as training selected it; the dev figures). Before returning it
reloads the folder with the stock classes and checks that text and image features match the model in
memory, so a folder that does not round-trip is never reported as written. ``vlm export --format clip-parts``
turns the folder into the compact form that leaves the registered tower out (:mod:`vlm.clip_parts`).
"""
from __future__ import annotations

import json
from pathlib import Path

from vlm.clip_parts import LIT_FILE


def image_processor(vision: str, size: int):
    """The tower's saved image processor, resizing and cropping to ``size``."""
    from transformers import AutoImageProcessor

    from vlm import registry

    proc = AutoImageProcessor.from_pretrained(registry.resolve_vision(vision))
    if hasattr(proc, "crop_size"):
        proc.crop_size = {"height": size, "width": size}
    proc.size = {"shortest_edge": size}
    return proc


def check_round_trip(clip, folder: Path, tokenizer) -> float:
    """Largest absolute difference between features of the model in memory and of the reloaded folder."""
    from transformers import AutoTokenizer, VisionTextDualEncoderModel

    from vlm.clip_parts import feature_difference

    loaded = VisionTextDualEncoderModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    texts = ["a dog runs on the beach .", "two children play in the snow"]
    if tok(texts)["input_ids"] != tokenizer(texts)["input_ids"]:
        raise RuntimeError(f"the tokenizer saved in {folder} encodes differently from the one trained")
    return feature_difference(clip, loaded, tok)


def export(clip, tokenizer, cfg, folder: str | Path, preprocessing: dict, best: dict | None) -> Path:
    from transformers import VisionTextDualEncoderProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clip.save_pretrained(folder)
    proc = image_processor(cfg.vision, clip.config.vision_config.image_size)
    VisionTextDualEncoderProcessor(image_processor=proc, tokenizer=tokenizer).save_pretrained(folder)
    meta = {"vision": cfg.vision, "image_layer": clip.config.vision_config.num_hidden_layers,
            "image_mean": preprocessing["image_mean"], "image_std": preprocessing["image_std"],
            "flip_average": cfg.flip, "locked_image_tower": not cfg.unlock_vision, "best": best,
            "config": cfg.to_dict()}
    (folder / LIT_FILE).write_text(json.dumps(meta, indent=2))
    diff = check_round_trip(clip, folder, tokenizer)
    if diff > 1e-4:
        raise RuntimeError(f"{folder}: the reloaded model's features differ from the trained model's by {diff:.2e}")
    return folder
