"""The compact CLIP (:mod:`vlm.clip_parts`): a LiT CLIP stored without its registered tower, composed back into
the stock ``VisionTextDualEncoderModel``; ``vlm export --format clip-parts / clip``; ``vlm eval retrieval`` on it.

A tiny random ``Dinov2Model`` stands in for the registered ``dinov2-vits14``: it is placed where :mod:`vlm.registry`
keeps the converted tower (``$VLM_CACHE/vision/dinov2-vits14``), so every lookup of the name finds it. The real
tower's round trip is in ``tests/test_lit.py::test_real_tower_end_to_end``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlm.cli import main

TOWER = "dinov2-vits14"


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A 3-layer random Dinov2Model (56 px native) registered as ``dinov2-vits14`` for this module."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    cache = tmp_path_factory.mktemp("vlm-cache")
    folder = cache / "vision" / TOWER
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                             image_size=56, patch_size=14)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLM_CACHE", str(cache))
        yield folder


@pytest.fixture(scope="module")
def lit_folder(registered, data_dir, tmp_path_factory) -> Path:
    """A stock LiT CLIP over the registered tower, at 28 px (resized from 56) and cut to 2 of its 3 layers."""
    from vlm.train.lit.config import LitConfig
    from vlm.train.lit.loop import train

    cfg = LitConfig(data_dir=str(data_dir / "flickr8k"), out_dir=str(tmp_path_factory.mktemp("lit")), cache=False,
                    vision=TOWER, image_size=28, image_layer=2, feature_bf16=False, vocab_size=300, text_layers=1,
                    text_hidden=32, text_heads=2, text_intermediate=64, max_text_length=32, embed_init="random",
                    projection_dim=16, batch_size=8, lr=3e-3, warmup_steps=1, max_steps=3, train_limit=12,
                    dev_limit=20, threads=1, log_every=1)
    return Path(train(cfg, log=lambda *a: None)["model_folder"])


def _state(model) -> dict:
    return {k: v.float() for k, v in model.state_dict().items()}


def test_compact_clip_stores_no_tower_and_composes_the_stock_model(lit_folder, tmp_path):
    from transformers import AutoTokenizer, Dinov2Model, VisionTextDualEncoderModel

    from vlm.clip_parts import load_clip_parts
    from vlm.clip import is_clip_folder

    compact = tmp_path / "compact"
    assert main(["export", "--format", "clip-parts", "--model", str(lit_folder), "--out", str(compact)]) == 0
    manifest = json.loads((compact / "clip_parts.json").read_text())
    assert {k: manifest[k] for k in ("format", "base_vision", "vision_image_size", "vision_layers", "projection_dim",
                                     "dtype")} == {"format": 1, "base_vision": TOWER, "vision_image_size": 28,
                                                   "vision_layers": 2, "projection_dim": 16, "dtype": "float32"}
    assert {p.name for p in compact.iterdir()} == {"clip_parts.json", "text", "projections.safetensors", "processor",
                                                  "lit.json"}
    stored = [k for f in compact.rglob("*.safetensors") for k in load_file(str(f))]
    assert stored and not [k for k in stored if "vision" in k and k != "visual_projection.weight"]
    assert set(load_file(str(compact / "projections.safetensors"))) == {
        "visual_projection.weight", "text_projection.weight", "logit_scale"}
    assert not (compact / "config.json").exists()  # nothing loads it as a model with a random tower
    assert (compact / "lit.json").read_text() == (lit_folder / "lit.json").read_text()

    stock = VisionTextDualEncoderModel.from_pretrained(lit_folder)
    model, processor = load_clip_parts(compact)
    assert type(model) is VisionTextDualEncoderModel and type(model.vision_model) is Dinov2Model
    assert model.config.vision_config.num_hidden_layers == 2 and model.config.vision_config.image_size == 28
    want, got = _state(stock), _state(model)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    texts = ["a dog runs on the beach", "people stand near the water"]
    assert processor(text=texts)["input_ids"] == AutoTokenizer.from_pretrained(lit_folder)(texts)["input_ids"]

    # and back: a plain folder the stock class loads, equal to the one training wrote
    plain = tmp_path / "plain"
    assert main(["export", "--format", "clip", "--model", str(compact), "--out", str(plain)]) == 0
    again = VisionTextDualEncoderModel.from_pretrained(plain)
    assert all(torch.equal(want[k], v) for k, v in _state(again).items()) and want.keys() == _state(again).keys()
    assert is_clip_folder(plain) and (plain / "lit.json").is_file()
    assert AutoTokenizer.from_pretrained(plain)(texts)["input_ids"] == processor(text=texts)["input_ids"]


def test_bfloat16_stores_rounded_text_weights(lit_folder, tmp_path):
    from transformers import VisionTextDualEncoderModel

    from vlm.clip_parts import load_clip_parts

    assert main(["export", "--format", "clip-parts", "--model", str(lit_folder), "--out", str(tmp_path / "f32")]) == 0
    assert main(["export", "--format", "clip-parts", "--model", str(lit_folder), "--out", str(tmp_path / "bf16"),
                 "--dtype", "bfloat16"]) == 0
    size = {n: (tmp_path / n / "text" / "model.safetensors").stat().st_size for n in ("f32", "bf16")}
    assert size["bf16"] < 0.6 * size["f32"]
    assert json.loads((tmp_path / "bf16" / "clip_parts.json").read_text())["dtype"] == "bfloat16"
    stock = _state(VisionTextDualEncoderModel.from_pretrained(lit_folder))
    model, _ = load_clip_parts(tmp_path / "bf16")
    for key, value in _state(model).items():
        want = stock[key] if key.startswith("vision_model.") else stock[key].to(torch.bfloat16).float()
        assert torch.equal(value, want), key


def test_only_the_registered_tower_is_left_out(lit_folder, tmp_path, capsys):
    from transformers import VisionTextDualEncoderModel, VisionTextDualEncoderProcessor

    from vlm.clip_parts import save_clip_parts

    model = VisionTextDualEncoderModel.from_pretrained(lit_folder)
    processor = VisionTextDualEncoderProcessor.from_pretrained(lit_folder)
    with pytest.raises(ValueError, match="not a registered tower"):
        save_clip_parts(model, processor, tmp_path / "a", "no-such-tower")
    with torch.no_grad():  # an unlocked (trained) tower is no longer the registered one: it must stay stock
        model.vision_model.embeddings.cls_token += 1
    with pytest.raises(ValueError, match="differs from the registered 'dinov2-vits14'"):
        save_clip_parts(model, processor, tmp_path / "b", TOWER)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

    assert main(["export", "--format", "clip-parts", "--model", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "not a CLIP folder" in capsys.readouterr().err
    assert main(["export", "--format", "clip", "--model", str(lit_folder), "--out", str(tmp_path / "d")]) == 2
    assert "not a compact CLIP folder" in capsys.readouterr().err


def test_eval_retrieval_reads_a_compact_clip_and_a_parts_folder_carrying_one(lit_folder, data_dir, tmp_path,
                                                                              capsys):
    """`vlm eval retrieval --vision` on the stock folder, its compact form, and a parts folder with it as
    clip/: the same figures. A parts folder without clip/ is named in one line."""
    parts = tmp_path / "parts"
    assert main(["export", "--format", "clip-parts", "--model", str(lit_folder), "--out", str(parts / "clip")]) == 0
    (parts / "vlm_parts.json").write_text(json.dumps({"format": 2}))  # only the CLIP is read for retrieval
    dev = data_dir / "flickr8k" / "dev.jsonl"
    reports = {}
    for name, vision in (("stock", lit_folder), ("compact", parts / "clip"), ("parts", parts)):
        out = tmp_path / f"eval-{name}"
        assert main(["eval", "retrieval", "--data", str(dev), "--vision", str(vision), "--limit", "40",
                     "--out", str(out), "--no-progress"]) == 0
        reports[name] = json.loads((out / "report.json").read_text())["systems"]
    capsys.readouterr()
    assert "flip-averaged" in reports["compact"]["clip"]["note"]  # as lit.json says
    assert reports["stock"] == reports["compact"] == reports["parts"]
    assert "zero-shot" in reports["parts"]

    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "vlm_parts.json").write_text(json.dumps({"format": 2}))
    assert main(["eval", "retrieval", "--data", str(dev), "--vision", str(tmp_path / "bare"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "holds no CLIP" in capsys.readouterr().err
