"""Frozen-tower features computed once and cached on disk.

The cached tensor is exactly what the llava model feeds its projector: the tower's hidden state at
``vision_feature_layer`` (concatenated when it is a list), CLS dropped for the ``default`` strategy.
Entries live under ``<root>/<tower fingerprint>/<hh>/<image sha256>.safetensors``; the fingerprint hashes
the tower's weights, its config, the feature selection and the image preprocessing, so any change to the
tower (other weights, another layer, another resolution) misses the old entries: they are
never reused. Writes are atomic (temp file + ``os.replace``), so ranks and concurrent runs can share a root.
With the cache disabled (``--no-cache``) features are still computed once per run and kept in memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from .durable import write_file


def default_root() -> Path:
    return Path(os.environ.get("VLM_CACHE", Path.home() / ".cache" / "vlm")).expanduser() / "features"


def _select(model):
    cfg = model.config
    return cfg.vision_feature_layer, cfg.vision_feature_select_strategy


def tower_fingerprint(model, processor) -> str:
    """sha256 over the tower weights, tower config, feature selection and image preprocessing."""
    tower = model.model.vision_tower
    h = hashlib.sha256()
    layer, strategy = _select(model)
    ip = processor.image_processor
    prep = {k: getattr(ip, k, None) for k in ("size", "crop_size", "do_pad", "image_mean", "image_std",
                                               "do_resize", "do_center_crop", "do_normalize", "rescale_factor")}
    meta = {"config": tower.config.to_dict(), "layer": layer, "strategy": strategy, "prep": prep}
    for key in list(meta["config"]):  # bookkeeping, not architecture (the tensors' dtypes are hashed below)
        if key.startswith("_") or key in ("dtype", "torch_dtype", "transformers_version", "architectures"):
            del meta["config"][key]
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, t in sorted(tower.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.inference_mode()
def tower_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """(images, tokens, dim) features before the projector, as ``LlavaModel.get_image_features`` selects them."""
    tower = model.model.vision_tower
    layer, strategy = _select(model)
    out = tower(pixel_values.to(tower.dtype), output_hidden_states=True, return_dict=True)
    layers = [layer] if isinstance(layer, int) else list(layer)
    picked = [out.hidden_states[i] for i in layers]
    if strategy == "default":
        picked = [hs[:, 1:] for hs in picked]
    return torch.cat(picked, dim=-1)


class FeatureCache:
    """Features by image content hash for one tower fingerprint; on disk, or in memory when disabled."""

    def __init__(self, fingerprint: str, root: str | Path | None = None, enabled: bool = True):
        self.fingerprint = fingerprint
        self.enabled = enabled
        self.dir = Path(root or default_root()) / fingerprint[:32]
        self._memory: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.computed = 0

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return key in self._memory or (self.enabled and self.path(key).exists())

    def get(self, key: str) -> torch.Tensor:
        if key in self._memory:
            return self._memory[key]
        if not self.enabled:
            raise KeyError(f"no features for image {key[:12]}")
        return load_file(self.path(key))["features"]

    def put(self, key: str, features: torch.Tensor) -> None:
        features = features.detach().contiguous().clone()
        if not self.enabled:
            self._memory[key] = features
            return
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            data = safetensors_bytes({"features": features})
            write_file(Path(tmp), lambda f: f.write(data), fsync=False)  # a full disk raises OSError(ENOSPC)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def write_manifest(self, model) -> None:
        if self.enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
            info = {"fingerprint": self.fingerprint, "tower": model.model.vision_tower.config.to_dict()}
            (self.dir / "tower.json").write_text(json.dumps(info, indent=2, default=str))


def ensure_features(model, processor, images: dict[str, Path], cache: FeatureCache, batch_size: int = 32,
                    rank: int = 0, world: int = 1, progress=None) -> set[str]:
    """Compute and store features for every image the cache lacks; return keys of unreadable images.

    With a disk cache, rank ``r`` computes whichever of images ``r, r+world, ...`` are missing (call a
    barrier after);
    in memory every rank computes all of them. Keys still missing afterwards are unreadable images.
    """
    from vlm.config import InputLimits
    from vlm.images import load_image

    keys = sorted(images)
    # Split all keys (not just the missing ones) between ranks: each rank's share must not depend on
    # when it looked, since another rank may already be writing entries.
    share = keys[rank::world] if cache.enabled else keys
    mine = [k for k in share if not cache.has(k)]
    cache.hits += len(share) - len(mine)
    bad: set[str] = set()
    limits = InputLimits()
    was_training = model.training
    model.eval()
    for start in range(0, len(mine), batch_size):
        chunk, pics = [], []
        for key in mine[start : start + batch_size]:
            try:
                pics.append(load_image(images[key], limits))
                chunk.append(key)
            except (ValueError, OSError):
                bad.add(key)
        if pics:
            pixels = processor.image_processor(pics, return_tensors="pt")["pixel_values"]
            feats = tower_features(model, pixels)
            for key, f in zip(chunk, feats):
                cache.put(key, f)
            cache.computed += len(chunk)
        if progress is not None:
            progress(min(start + batch_size, len(mine)), len(mine))
    model.train(was_training)
    return bad


def unreadable(cache: FeatureCache, images: dict[str, Path]) -> set[str]:
    """After every rank has run :func:`ensure_features` (and a barrier): keys without features."""
    return {k for k in images if not cache.has(k)}
