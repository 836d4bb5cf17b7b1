"""The locked image tower's outputs, computed once per image and view and cached on disk (LiT: the tower is
frozen, so an epoch costs only the text side).

Contract:
- :func:`tower_outputs` runs a tower whose ``pooler_output`` is its final norm applied to the class token
  (``Dinov2Model``, ``CLIPVisionModel``) and returns, for every layer ``l`` in ``1..num_hidden_layers``, the
  class token after layer ``l`` through that final norm (``cls[:, l-1]``, exactly the ``pooler_output`` of
  the same tower truncated to ``l`` layers: see :func:`vlm.vision.truncate`) and the mean of that
  layer's patch tokens through the same norm (``mean[:, l-1]``). Shapes (N, layers, hidden), float32.
- :func:`cached_outputs` does that for a list of image files, mirrored or not, through the evaluation's
  preprocessing (:func:`vlm.clip.preprocess`), and keeps the result under
  ``<cache_dir>/<key>.safetensors``. The key hashes the tower's weights and config, the preprocessing, the
  image paths and the view, so a different tower or image list never reuses an entry. Work is saved in
  parts of ``part_size`` images, so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file


def final_norm(tower) -> torch.nn.Module:
    """The norm a tower applies to its last hidden state before pooling the class token."""
    for owner in (tower, getattr(tower, "vision_model", None)):
        for name in ("layernorm", "post_layernorm"):
            norm = getattr(owner, name, None) if owner is not None else None
            if isinstance(norm, torch.nn.Module):
                return norm
    raise ValueError(f"{type(tower).__name__} has no final layernorm/post_layernorm: its pooled output is not "
                     "a normed class token, which LiT's cached features assume (Dinov2Model, CLIPVisionModel)")


@torch.no_grad()
def tower_outputs(tower, pixels: torch.Tensor, bf16: bool = False) -> dict[str, torch.Tensor]:
    """``{"cls", "mean"}``: (N, layers, hidden) float32, as the module docstring says."""
    norm = final_norm(tower)
    dtype = next(tower.parameters()).dtype
    with torch.autocast(pixels.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = tower(pixel_values=pixels.to(dtype), output_hidden_states=True)
        hidden = out.hidden_states[1:]  # after each layer; [0] is the embeddings
        cls = torch.stack([norm(h[:, 0]) for h in hidden], 1)
        mean = torch.stack([norm(h[:, 1:]).mean(1) for h in hidden], 1)
    return {"cls": cls.float().cpu(), "mean": mean.float().cpu()}


def tower_fingerprint(tower, preprocessing: dict) -> str:
    """sha256 over the tower's weights, its config and the image preprocessing."""
    h = hashlib.sha256()
    config = {k: v for k, v in tower.config.to_dict().items()
              if not k.startswith("_") and k not in ("dtype", "torch_dtype", "transformers_version", "architectures")}
    h.update(json.dumps({"config": config, "prep": preprocessing}, sort_keys=True, default=str).encode())
    for name, t in sorted(tower.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(fingerprint: str, paths: Sequence[str], flip: bool, bf16: bool) -> str:
    names = hashlib.sha256("\n".join(os.path.basename(p) for p in paths).encode()).hexdigest()[:12]
    return f"{fingerprint[:16]}-{len(paths)}img-{names}-{'flip' if flip else 'plain'}{'-bf16' if bf16 else ''}"


def load_pixels(paths: Sequence[str], size: int, mean: Sequence[float], std: Sequence[float],
                flip: bool = False) -> torch.Tensor:
    """Preprocessed pixels of image files (the evaluation's preprocessing), mirrored when ``flip``."""
    from vlm.clip import preprocess
    from vlm.images import load_image

    pixels = preprocess([load_image(p) for p in paths], size, mean, std)
    return pixels.flip(-1) if flip else pixels


def cached_outputs(tower, preprocessing: dict, paths: Sequence[str], cache_dir: str | Path | None, *,
                   flip: bool = False, bf16: bool = False, batch_size: int = 32, part_size: int = 256,
                   log: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """:func:`tower_outputs` of the image files ``paths`` (see the module docstring); ``cache_dir=None``
    computes them without caching."""
    size = tower.config.image_size
    mean, std = preprocessing["image_mean"], preprocessing["image_std"]
    device = next(tower.parameters()).device

    def compute(chunk: Sequence[str]) -> dict[str, torch.Tensor]:
        parts = [tower_outputs(tower, load_pixels(chunk[s:s + batch_size], size, mean, std, flip).to(device), bf16)
                 for s in range(0, len(chunk), batch_size)]
        return {k: torch.cat([p[k] for p in parts]) for k in ("cls", "mean")}

    if cache_dir is None:
        return compute(paths)
    key = cache_key(tower_fingerprint(tower, {"size": size, "mean": list(mean), "std": list(std)}), paths, flip, bf16)
    final = Path(cache_dir) / f"{key}.safetensors"
    if final.is_file():
        return load_file(str(final))
    work = Path(cache_dir) / f".{key}.parts"
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    for first in range(0, len(paths), part_size):
        part = work / f"part-{first:07d}.safetensors"
        if part.is_file():
            continue
        out = compute(paths[first:first + part_size])
        save_file(out, str(part.with_suffix(".tmp")))
        os.replace(part.with_suffix(".tmp"), part)
        done = min(first + part_size, len(paths))
        log(f"image tower outputs ({'mirrored' if flip else 'plain'}): {done}/{len(paths)} images, "
            f"{time.time() - start:.0f}s")
    parts = [load_file(str(work / f"part-{first:07d}.safetensors")) for first in range(0, len(paths), part_size)]
    result = {k: torch.cat([p[k] for p in parts]).contiguous() for k in ("cls", "mean")}
    tmp = final.with_suffix(".tmp")
    save_file(result, str(tmp))
    os.replace(tmp, final)
    shutil.rmtree(work, ignore_errors=True)
    return result
