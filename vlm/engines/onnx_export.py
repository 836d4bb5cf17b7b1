"""A whole VLM as a standalone ONNX folder (``vlm export --format onnx``), and :class:`OnnxVLM`, which runs one.

Contract
- :func:`export_vlm` writes, for a loaded ``VLM`` (float32, as stored: instance hooks such as the vision cache
  or token pooling are bypassed):
  - ``llm.onnx`` + ``export.json``: the stock transformers decoder with explicit KV (:func:`vlm.engines.onnx.export`;
    inputs ``inputs_embeds``, ``attention_mask``, ``position_ids``, ``past.<i>.key|value``; outputs ``logits`` of
    the last position and ``present.<i>.key|value``);
  - ``vision.onnx``: ``pixel_values`` [1, 3, S, S] float32 -> ``image_features`` [1, tokens, H] (one image per
    run), transformers' ``LlavaModel.get_image_features`` (the tower, the feature layer and strategy, the
    projector) traced;
  - ``embed_tokens.safetensors``: the token embedding table (``weight`` [V, H]);
  - ``config.json`` / ``generation_config.json`` (the llava config) and the processor's files
    (``LlavaProcessor.from_pretrained`` reads them: chat template, tokenizer, image preprocessing).
  The prompt embeddings are the table's rows with the image features written, in order, over the image
  placeholder tokens (what ``LlavaModel.forward`` does). Running the folder needs ONNX Runtime and a tokenizer,
  no torch weights.
- :class:`OnnxVLM` loads such a folder and answers (``ask``) with ``model.generate``'s loop
  (:mod:`vlm.engines.loop`): greedy answers equal the torch model's up to float rounding (tests compare them).
  It answers from the image and question only: OCR grounding, extraction and the server are ``VLM``'s.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .onnx import OrtLLM, export, ort_session

VISION = "vision.onnx"
TABLE = "embed_tokens.safetensors"


class VisionWrapper(nn.Module):
    """``pixel_values`` -> stacked image features, through the class's own ``get_image_features``."""

    def __init__(self, llava_model):
        super().__init__()
        self.inner, self.config = llava_model.model, llava_model.config

    def forward(self, pixel_values):
        out = type(self.inner).get_image_features(  # the class method: no instance hooks (vision cache, pooling)
            self.inner, pixel_values=pixel_values, vision_feature_layer=self.config.vision_feature_layer,
            vision_feature_select_strategy=self.config.vision_feature_select_strategy, return_dict=True)
        return torch.stack(list(out.pooler_output))


def export_vlm(vlm, out: str | Path) -> Path:
    """Write ``vlm`` (a ``VLM``) as a standalone ONNX folder at ``out``; returns it."""
    import warnings

    from safetensors.numpy import save_file

    model, processor = vlm.model, vlm.processor
    if model.dtype != torch.float32:
        raise ValueError(f"the ONNX export writes float32 weights; this model is {model.dtype}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    export(model, out, force=True)
    size = model.config.vision_config.image_size
    example = torch.zeros(1, 3, size, size)  # one image per run: the per-image split is traced with this size
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: the image size is fixed by the processor
        torch.onnx.export(VisionWrapper(model).eval(), (example,), str(out / VISION), dynamo=False, opset_version=17,
                          input_names=["pixel_values"], output_names=["image_features"])
    table = model.model.get_input_embeddings().weight.detach().float().numpy()
    save_file({"weight": np.ascontiguousarray(table)}, str(out / TABLE))
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    processor.save_pretrained(out)
    info = json.loads((out / "export.json").read_text())
    info.update(vision=VISION, embed_tokens=TABLE, image_token_id=model.config.image_token_id,
                image_tokens=model.config.image_seq_length, seconds=round(time.perf_counter() - started, 1))
    (out / "export.json").write_text(json.dumps(info, indent=1))
    return out


class OnnxVLM(OrtLLM):
    """A folder written by :func:`export_vlm`, run on ONNX Runtime (vision and decoder) with numpy embeddings."""

    dtype = torch.float32

    def __init__(self, folder: str | Path, threads: int | None = None):
        from safetensors.numpy import load_file
        from transformers import GenerationConfig, LlavaConfig, LlavaProcessor

        folder = Path(folder)
        if not (folder / VISION).exists() or not (folder / TABLE).exists():
            raise FileNotFoundError(f"{folder} is not a vlm ONNX export (no {VISION} / {TABLE}); "
                                    "write one with `vlm export --format onnx`")
        self.config = LlavaConfig.from_pretrained(folder)
        self.generation_config = GenerationConfig.from_pretrained(folder)
        self.processor = LlavaProcessor.from_pretrained(folder)
        self.vision = ort_session(folder / VISION, threads)
        super().__init__(folder, load_file(str(folder / TABLE))["weight"], self.config.image_token_id, threads)

    def embed_prompt(self, batch) -> np.ndarray:
        ids = batch["input_ids"].numpy()
        embeds = self.embedding[ids]  # a copy: the table is not written
        if batch.get("pixel_values") is not None:
            pixels = batch["pixel_values"].float().numpy()
            feats = np.concatenate([self.vision.run(None, {"pixel_values": pixels[i:i + 1]})[0]
                                    for i in range(len(pixels))])
            slots = ids == self.config.image_token_id
            if slots.sum() != feats.shape[0] * feats.shape[1]:
                raise ValueError(f"{int(slots.sum())} image tokens in the prompt, {feats.shape[0] * feats.shape[1]} "
                                 "image features")
            embeds[slots] = feats.reshape(-1, feats.shape[-1])
        return embeds

    def ask(self, image, question: str, **gen) -> str:
        """The answer to ``question`` about ``image`` (a path, URL, bytes or PIL image; None: text only).
        ``gen``: ``vlm.config.GenerationOptions`` fields (greedy by default)."""
        from vlm import generation
        from vlm.config import GenerationOptions, InputLimits
        from vlm.engines import loop
        from vlm.messages import normalise, user_turn

        normed, images = normalise(user_turn(image, question), InputLimits())
        prompt = self.processor.apply_chat_template(normed, tokenize=False, add_generation_prompt=True)
        batch = self.processor(text=[prompt], images=images or None, return_tensors="pt")
        opts = GenerationOptions(**gen)
        width = batch["input_ids"].shape[1]
        kwargs = generation.generate_kwargs(self, self.processor, opts, width)
        config = loop.settings(self, kwargs)
        if config is None:
            raise ValueError("the ONNX runner decodes with one beam; num_beams must be 1")
        with torch.inference_mode(), generation.seeded(opts.seed):
            ids = loop.run(self, batch, config, kwargs)
        text = self.processor.tokenizer.decode(ids[0, width:], skip_special_tokens=True)
        return generation.trim_stop(text, opts.stop).strip()
