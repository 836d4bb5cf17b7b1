"""The frozen-tower feature cache: exact features, hits on reuse, invalidation when the tower changes."""
from __future__ import annotations

import copy

import torch
from PIL import Image

from vlm.train.data import file_hash
from vlm.train.feature_cache import FeatureCache, ensure_features, tower_features, tower_fingerprint, unreadable


def test_cached_features_are_what_the_projector_consumes(tiny_vlm, photo):
    model, proc = tiny_vlm.model, tiny_vlm.processor
    pixels = proc.image_processor([Image.open(photo)], return_tensors="pt")["pixel_values"]
    feats = tower_features(model, pixels)
    assert feats.shape == (1, model.config.image_seq_length, model.config.vision_config.hidden_size)
    with torch.no_grad():
        reference = model.model.get_image_features(pixel_values=pixels).pooler_output[0]
        assert torch.allclose(model.model.multi_modal_projector(feats)[0], reference, atol=1e-6)


def test_cache_hits_then_misses_when_the_tower_changes(tiny_vlm, photo, receipt, tmp_path):
    model, proc = copy.deepcopy(tiny_vlm.model), tiny_vlm.processor
    images = {file_hash(photo): photo, file_hash(receipt): receipt}
    fp = tower_fingerprint(model, proc)

    first = FeatureCache(fp, tmp_path)
    assert ensure_features(model, proc, images, first) == set()
    assert (first.hits, first.computed) == (0, 2)
    key = file_hash(photo)
    assert first.path(key).exists()

    again = FeatureCache(tower_fingerprint(model, proc), tmp_path)
    ensure_features(model, proc, images, again)
    assert (again.hits, again.computed) == (2, 0)
    assert torch.equal(again.get(key), first.get(key))

    with torch.no_grad():  # a changed tower (other weights): nothing old may be reused
        next(p for n, p in model.model.vision_tower.named_parameters() if n.endswith("layers.0.mlp.fc1.weight")).add_(0.5)
    changed = FeatureCache(tower_fingerprint(model, proc), tmp_path)
    assert changed.fingerprint != fp
    ensure_features(model, proc, images, changed)
    assert (changed.hits, changed.computed) == (0, 2)
    assert not torch.allclose(changed.get(key), first.get(key))
    # preprocessing is part of the key too
    proc2 = copy.deepcopy(proc)
    proc2.image_processor.image_mean = [0.5, 0.5, 0.5]
    assert tower_fingerprint(model, proc2) != changed.fingerprint


def test_no_cache_keeps_features_in_memory_and_flags_unreadable_images(tiny_vlm, photo, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    images = {file_hash(photo): photo, file_hash(bad): bad}
    cache = FeatureCache(tower_fingerprint(tiny_vlm.model, tiny_vlm.processor), tmp_path / "c", enabled=False)
    assert ensure_features(tiny_vlm.model, tiny_vlm.processor, images, cache) == {file_hash(bad)}
    assert unreadable(cache, images) == {file_hash(bad)}
    assert cache.get(file_hash(photo)).shape[0] == tiny_vlm.model.config.image_seq_length
    assert not (tmp_path / "c").exists()


def test_training_loss_on_answer_positions_equals_the_models_own_loss(tiny_vlm, photo):
    """FeatureLlava runs the LM head only where the next token is supervised; the loss is the model's."""
    from vlm.train.loop import FeatureLlava

    model, proc = copy.deepcopy(tiny_vlm.model), tiny_vlm.processor
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
            {"role": "assistant", "content": "A dog runs on the grass."}]
    text = proc.apply_chat_template(conv)
    batch = proc(text=[text, text], images=[Image.open(photo).convert("RGB")] * 2, return_tensors="pt")
    labels = batch["input_ids"].clone()
    labels[:, :-8] = -100  # the answer's tokens only
    labels[1, -3:] = -100  # rows supervise different numbers of tokens
    with torch.no_grad():
        ours = FeatureLlava(model)(batch["input_ids"], batch["attention_mask"], labels,
                                   image_features=tower_features(model, batch["pixel_values"]))
        theirs = model(**batch, labels=labels).loss
    assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)
