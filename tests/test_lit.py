"""LiT (``vlm train clip``): the CLIP of a locked image tower and a trained text tower, in stock classes.

Tiny random towers on real Flickr8k images for the mechanics; the real DINOv2 tower for the end-to-end run
(which also round-trips through the compact form of :mod:`vlm.clip_parts`; its unit tests are in
``tests/test_clip_parts.py``).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlm.train.lit.config import LitConfig

CAPTIONS = ["A dog runs on the beach .", "Two children play in the snow", "a man rides a bike down a street",
            "A black dog jumps over a log .", "people stand near the water"] * 4


@pytest.fixture(scope="module")
def tiny_tower(tmp_path_factory) -> Path:
    """A 3-layer random Dinov2Model folder with an image processor (28 px, two 14 px patches a side)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("tower")
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                          image_size=28, patch_size=14)
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def tiny_config(data_dir: Path, tower: Path, out: Path, **overrides) -> LitConfig:
    base = dict(data_dir=str(data_dir / "flickr8k"), out_dir=str(out), cache=False, vision=str(tower),
                image_size=28, feature_bf16=False, vocab_size=300, text_layers=1, text_hidden=32, text_heads=2,
                text_intermediate=64, max_text_length=32, embed_init="random", projection_dim=16, batch_size=8,
                lr=3e-3, warmup_steps=1, epochs=1.0, train_limit=12, dev_limit=6, threads=1, log_every=1)
    base.update(overrides)
    return LitConfig(**base)


def test_tokenizer_round_trips_and_ends_with_eos(tmp_path):
    from transformers import AutoTokenizer

    from vlm.train.lit.tokenizer import EOS_ID, encode, train_tokenizer

    tok = train_tokenizer(CAPTIONS, vocab_size=300)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    ids = again(CAPTIONS)["input_ids"]
    assert ids == tok(CAPTIONS)["input_ids"]
    assert all(x[-1] == EOS_ID and EOS_ID not in x[:-1] for x in ids)
    assert again("A DOG")["input_ids"] == again("a dog")["input_ids"]  # lower-cased
    clipped = encode(tok, ["a dog " * 50], max_length=10)[0]
    assert len(clipped) == 10 and clipped[-1] == EOS_ID
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(CAPTIONS, vocab_size=100)


def test_truncated_tower_pools_the_cached_layer(tiny_tower):
    from transformers import Dinov2Model

    from vlm.train.lit.features import tower_outputs
    from vlm.vision import truncate

    tower = Dinov2Model.from_pretrained(tiny_tower).eval()
    pixels = torch.randn(3, 3, 28, 28)
    out = tower_outputs(tower, pixels)
    assert out["cls"].shape == out["mean"].shape == (3, 3, 32)
    with torch.no_grad():
        assert torch.allclose(tower(pixel_values=pixels).pooler_output, out["cls"][:, 2], atol=1e-6)
        for layers in (1, 2):
            cut = truncate(tower, layers)
            assert type(cut) is Dinov2Model and cut.config.num_hidden_layers == layers
            assert torch.allclose(cut(pixel_values=pixels).pooler_output, out["cls"][:, layers - 1], atol=1e-6)
    assert truncate(tower, 0) is tower
    with pytest.raises(ValueError, match="image_layer"):
        truncate(tower, 4)


def test_feature_cache_is_reused_and_keyed(tiny_tower, data_dir, flickr_records, tmp_path):
    from transformers import Dinov2Model

    from vlm.train.lit.features import cached_outputs

    tower = Dinov2Model.from_pretrained(tiny_tower).eval()
    prep = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    paths = [str(data_dir / "flickr8k" / r["image"]) for r in flickr_records[:5]]
    first = cached_outputs(tower, prep, paths, tmp_path, part_size=2, log=lambda m: None)
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and not list(tmp_path.glob(".*parts"))
    again = cached_outputs(tower, prep, paths, tmp_path, log=lambda m: pytest.fail("recomputed: " + m))
    assert torch.equal(first["cls"], again["cls"])
    mirrored = cached_outputs(tower, prep, paths, tmp_path, flip=True, log=lambda m: None)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2 and not torch.allclose(mirrored["cls"], first["cls"])
    assert torch.allclose(first["cls"], cached_outputs(tower, prep, paths, None)["cls"], atol=1e-6)


def test_batches_are_reproducible_and_grouped_by_length():
    from vlm.train.lit.data import batches

    lengths = [(i * 7) % 23 + 3 for i in range(1000)]
    first = batches(1000, 64, seed=1, epoch=0, lengths=lengths)
    assert [b.tolist() for b in first] == [b.tolist() for b in batches(1000, 64, seed=1, epoch=0, lengths=lengths)]
    assert len(first) == 15 and all(len(b) == 64 for b in first)
    flat = torch.cat(first)
    assert len(set(flat.tolist())) == len(flat)  # no caption twice
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first)
    plain = batches(1000, 64, seed=1, epoch=0)
    assert spread < sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain) / 4
    assert torch.cat(batches(1000, 64, seed=1, epoch=1, lengths=lengths)).tolist() != flat.tolist()
    with pytest.raises(ValueError, match="2 captions"):
        batches(1, 64, seed=1, epoch=0)


def test_info_nce_masks_pairs_of_the_same_image():
    from vlm.train.lit.sides import info_nce

    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    txt = img.clone()
    scale = torch.tensor(3.0)
    masked = info_nce(img, txt, scale, torch.tensor([7, 7, 9]))
    unmasked = info_nce(img, txt, scale)
    assert masked < unmasked  # rows 0 and 1 show one image: not each other's negatives
    assert torch.isclose(unmasked, info_nce(img, txt, scale, torch.tensor([1, 2, 3])))  # distinct images: no mask
    perfect = info_nce(torch.eye(3), torch.eye(3), torch.tensor(4.6), torch.tensor([0, 1, 2]))
    assert perfect < 0.01


def test_training_steps_lower_the_loss(tiny_tower, data_dir, tmp_path):
    from vlm.train.lit.data import load_pairs
    from vlm.train.lit.loop import build, param_groups

    cfg = tiny_config(data_dir, tiny_tower, tmp_path / "run").validate().resolved("cpu")
    pairs = {s: load_pairs(data_dir / "flickr8k" / f"{s}.jsonl", 8) for s in ("train", "dev")}
    model, clip, _, _ = build(cfg, tmp_path, pairs, log=lambda m: None)
    assert clip is not None and not any(p.requires_grad for p in clip.vision_model.parameters())
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=3e-3)
    owner = torch.tensor(pairs["train"].owner)
    batch = torch.arange(0, 40, 5)  # one caption of each of 8 images
    views = torch.zeros(8, dtype=torch.long)
    losses = []
    for _ in range(8):
        loss = model("train", batch, owner, views)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.7, losses


def _trainable(out: Path) -> dict:
    from safetensors.torch import load_file

    from vlm.train import checkpoint

    return load_file(str(checkpoint.latest(out) / "trainable.safetensors"))


def test_train_exports_a_stock_clip_and_resumes_exactly(tiny_tower, data_dir, tmp_path):
    from transformers import AutoTokenizer, CLIPTextModel, VisionTextDualEncoderModel, VisionTextDualEncoderProcessor

    from vlm.train.lit.loop import train

    quiet = lambda *a: None  # noqa: E731
    straight = train(tiny_config(data_dir, tiny_tower, tmp_path / "a", max_steps=4, eval_every=2), log=quiet)
    folder = Path(straight["model_folder"])
    assert straight["best"]["step"] in (2, 4) and (folder / "lit.json").is_file()

    # stock classes load it, and its text tower gives the embeddings the training selected
    clip = VisionTextDualEncoderModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    proc = VisionTextDualEncoderProcessor.from_pretrained(folder)
    assert isinstance(clip.text_model, CLIPTextModel) and clip.config.vision_config.model_type == "dinov2"
    enc = tok(CAPTIONS[:3], padding=True, return_tensors="pt")
    assert proc(text=CAPTIONS[:3], padding=True, return_tensors="pt")["input_ids"].tolist() == enc["input_ids"].tolist()
    from safetensors.torch import load_file

    best = load_file(str(Path(straight["out_dir"]) / "best.safetensors"))
    assert torch.equal(clip.text_projection.weight, best["text.proj.weight"])
    assert torch.equal(clip.logit_scale.detach(), best["logit_scale"])
    clip.text_model.save_pretrained(tmp_path / "text")  # the text tower alone round-trips too
    alone = CLIPTextModel.from_pretrained(tmp_path / "text").eval()
    with torch.no_grad():
        assert torch.equal(alone(**enc).pooler_output, clip.text_model(**enc).pooler_output)
        pixels = torch.randn(2, 3, 28, 28)
        feats = clip.get_image_features(pixel_values=pixels).pooler_output
        assert feats.shape == (2, 16)

    # interrupted after step 2's checkpoint (a crash during step 3), then --resume: the weights of 4 straight steps
    train(tiny_config(data_dir, tiny_tower, tmp_path / "b", max_steps=4, eval_every=2), log=quiet)
    b_full = _trainable(tmp_path / "b")

    def crash_at_step_3(message):
        if '"step": 3,' in str(message):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data_dir, tiny_tower, tmp_path / "c", max_steps=4, eval_every=2), log=crash_at_step_3)
    resumed = train(tiny_config(data_dir, tiny_tower, tmp_path / "c", max_steps=4, eval_every=2, resume=True),
                    log=quiet)
    assert resumed["steps"] == 4 and resumed["best"] == json.loads((tmp_path / "b" / "best.json").read_text())
    c_full = _trainable(tmp_path / "c")
    assert b_full.keys() == c_full.keys()
    assert all(torch.equal(b_full[k], c_full[k]) for k in b_full)
    rows = [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]


def test_unlocked_tower_trains_too(tiny_tower, data_dir, tmp_path):
    from transformers import Dinov2Model, VisionTextDualEncoderModel

    from vlm.train.lit.loop import train

    summary = train(tiny_config(data_dir, tiny_tower, tmp_path / "u", max_steps=2, unlock_vision=True),
                    log=lambda *a: None)
    before = Dinov2Model.from_pretrained(tiny_tower).state_dict()
    after = VisionTextDualEncoderModel.from_pretrained(summary["model_folder"]).vision_model.state_dict()
    assert before.keys() == after.keys()
    assert not torch.equal(before["embeddings.patch_embeddings.projection.weight"],
                           after["embeddings.patch_embeddings.projection.weight"])
    assert json.loads((Path(summary["model_folder"]) / "lit.json").read_text())["locked_image_tower"] is False


def test_measurement_layouts_write_no_model(tiny_tower, data_dir, tmp_path):
    from vlm.train.lit.loop import train

    summary = train(tiny_config(data_dir, tiny_tower, tmp_path / "m", max_steps=2, image_features="cls+mean"),
                    log=lambda *a: None)
    assert summary["model_folder"] is None and "measurement only" in summary["note"]
    assert not (tmp_path / "m" / "config.json").exists()
    assert 0.0 <= summary["best"]["dev"]["t2i_r5"] <= 1.0


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="text_tower"):
        LitConfig(text_tower="bert").validate()
    with pytest.raises(ValueError, match="batch_size"):
        LitConfig(batch_size=1).validate()
    with pytest.raises(ValueError, match="unlock_vision"):
        LitConfig(unlock_vision=True, image_features="cls+mean").validate()


def test_cli_flags_map_onto_the_config():
    import argparse

    from vlm.train.lit.cli import add_arguments, to_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = to_config(parser.parse_args(["--image-layer", "10", "--no-flip", "--max-steps", "5", "--no-cache",
                                       "--llm-sif-a", "none", "--text-tower", "smollm2-frozen"]))
    assert (cfg.image_layer, cfg.flip, cfg.max_steps, cfg.cache, cfg.llm_sif_a, cfg.text_tower) == \
        (10, False, 5, False, None, "smollm2-frozen")
    assert to_config(parser.parse_args([])) == LitConfig()
    with pytest.raises(SystemExit):
        parser.parse_args(["--image-features", "patches"])


def test_zero_shot_labels_follow_caption_agreement():
    from vlm.eval import retrieval_zeroshot as zs

    dog = ["A dog runs .", "The brown dog plays", "two dogs on grass", "an animal", "a puppy on a field"]
    assert zs.label_of(dog) is None  # dog 4, grass 2 (grass, field): grass competes
    dog[4] = "a puppy"
    assert zs.label_of(dog) == "dog"
    assert zs.label_of(["a man", "a person", "someone", "a guy", "a man"]) is None
    snow_dog = ["dog in snow", "a dog in the snow", "dog on snowy hill", "a dog", "snow"]
    assert zs.label_of(snow_dog) is None
    names = list(zs.LABELS)
    prompts = torch.eye(len(names))
    images = torch.stack([prompts[0], prompts[0], prompts[5]])
    result = zs.score(images, prompts, ["dog", "water", "snow"], names)
    assert result["top1"] == round(2 / 3, 4) and result["per_label_top1"] == {"dog": 1.0, "water": 0.0, "snow": 1.0}
    assert result["chance_top1"] == 0.1 and result["majority_top1"] == round(1 / 3, 4)


def test_zero_shot_set_on_flickr8k_dev(flickr_records):
    from vlm.eval import retrieval_zeroshot as zs

    chosen = zs.labelled([r["captions"] for r in flickr_records])
    counts = {n: sum(1 for _, m in chosen if m == n) for n in zs.LABELS}
    assert len(chosen) == 344 and counts["dog"] == 102 and min(counts.values()) == 12  # as documented


def test_eval_retrieval_on_a_dual_encoder_matches_training(tiny_tower, data_dir, tmp_path):
    """The stock-class evaluation (real pixels through get_image_features) reproduces the training loop's
    dev figures (cached features), and a CLIP folder also gets the zero-shot check."""
    from vlm.train.lit.loop import train
    from vlm.clip import is_clip_folder
    from vlm.eval.retrieval_task import evaluate_retrieval

    summary = train(tiny_config(data_dir, tiny_tower, tmp_path / "run", max_steps=3, dev_limit=40),
                    log=lambda *a: None)
    folder = summary["model_folder"]
    assert is_clip_folder(folder) and not is_clip_folder(tiny_tower)
    report = evaluate_retrieval(data_dir / "flickr8k" / "dev.jsonl", folder, tmp_path / "eval", limit=40,
                                progress=False)
    clip = report["systems"]["clip"]
    for k in ("t2i_r1", "t2i_r5", "i2t_r5"):
        assert clip[k] == pytest.approx(summary["best"]["dev"][k], abs=1e-4), k
    assert "flip-averaged" in clip["note"] and report["settings"]["flip_average"] is True
    zero = report["systems"]["zero-shot"]
    assert zero["images"] >= 1 and 0.0 <= zero["top1"] <= 1.0 and zero["chance_top1"] == 0.1
    off = evaluate_retrieval(data_dir / "flickr8k" / "dev.jsonl", folder, tmp_path / "eval2", limit=40,
                             progress=False, flip_average=False)
    assert off["settings"]["flip_average"] is False


def test_real_tower_end_to_end(data_dir, tmp_path):
    """The real DINOv2 tower and SmolLM2-initialised token embeddings on a small real subset: training runs,
    the exported stock CLIP evaluates to the figures training selected, and aligned pairs beat chance. Its
    compact form (no tower stored) composes the same model from the registered tower and evaluates the same."""
    from transformers import VisionTextDualEncoderModel

    from vlm.train.export import export_clip_parts
    from vlm.train.lit.loop import train
    from vlm.clip_parts import load_clip_parts
    from vlm.eval.retrieval_task import evaluate_retrieval

    cfg = LitConfig(data_dir=str(data_dir / "flickr8k"), out_dir=str(tmp_path / "clip"), cache=False,
                    image_size=112, feature_bf16=False, vocab_size=512, text_layers=1, text_hidden=64, text_heads=2,
                    text_intermediate=128, projection_dim=32, batch_size=64, lr=2e-3, warmup_steps=2, epochs=3.0,
                    train_limit=200, dev_limit=32, threads=2)
    summary = train(cfg, log=lambda *a: None)
    chance = 10 / 32  # text-to-image R@10 of a random ranking of 32 images (this run: 0.50)
    assert summary["model_folder"] and summary["best"]["dev"]["t2i_r10"] > 1.4 * chance
    report = evaluate_retrieval(data_dir / "flickr8k" / "dev.jsonl", summary["model_folder"], tmp_path / "eval",
                                limit=32, progress=False)
    assert report["systems"]["clip"]["t2i_r5"] == pytest.approx(summary["best"]["dev"]["t2i_r5"], abs=1e-4)
    lit = json.loads((Path(summary["model_folder"]) / "lit.json").read_text())
    assert lit["vision"] == "dinov2-vits14" and lit["image_layer"] == 12 and lit["flip_average"] is True

    compact = export_clip_parts(summary["model_folder"], tmp_path / "compact")
    manifest = json.loads((compact / "clip_parts.json").read_text())
    assert (manifest["base_vision"], manifest["vision_image_size"], manifest["vision_layers"]) == \
        ("dinov2-vits14", 112, 12)
    size = sum(f.stat().st_size for f in compact.rglob("*") if f.is_file())
    stock_size = sum(f.stat().st_size for f in Path(summary["model_folder"]).glob("*.safetensors"))
    assert size < 2e6 and stock_size > 40e6  # the ~44 MB tower stays out
    stock = VisionTextDualEncoderModel.from_pretrained(summary["model_folder"]).state_dict()
    composed = load_clip_parts(compact)[0].state_dict()
    assert stock.keys() == composed.keys() and all(torch.equal(stock[k], composed[k]) for k in stock)
    again = evaluate_retrieval(data_dir / "flickr8k" / "dev.jsonl", compact, tmp_path / "eval-compact", limit=32,
                               progress=False)
    assert again["systems"] == report["systems"]
