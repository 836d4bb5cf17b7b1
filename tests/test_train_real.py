"""Stages 1 and 2 on the real SmolLM2-135M-Instruct and real Flickr8k photos, a few steps each."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import *  # noqa: F401,F403

pytestmark = pytest.mark.real


def test_real_stage1_then_stage2_then_load(smollm2_dir, data_dir, flickr_records, tmp_path, reset_accelerate):
    from accelerate.state import AcceleratorState

    from vlm.train.config import stage1_defaults, stage2_defaults
    from vlm.train.loop import train
    from vlm import VLM

    data = write_llava_json(tmp_path / "flickr.json", data_dir, flickr_records, 8)
    # float32, the training default (bf16 on a CPU without native bf16 is emulated and ~3x slower; the bf16
    # path is covered on a tiny model below)
    common = dict(data=str(data), batch_size=2, cache_dir=str(tmp_path / "cache"), seed=0, threads=1,
                  dtype="float32")
    s1 = train(stage1_defaults(model="smollm2-135m-instruct", vision="preset", out=str(tmp_path / "s1"),
                               max_steps=3, **common))
    AcceleratorState._reset_state(reset_partial_state=True)
    assert s1["steps"] == 3 and s1["examples"] == 8
    # a real instruct LLM on caption text: far below the ~10.8 nats of a uniform guess, and finite
    assert 0 < s1["first_loss"] < 8 and all(
        torch.isfinite(torch.tensor(json.loads(l)["loss"])) for l in (tmp_path / "s1" / "metrics.jsonl").open())

    cfg = stage2_defaults(model=str(tmp_path / "s1"), out=str(tmp_path / "s2"), max_steps=2, **common)
    cfg.lora.r, cfg.lora.alpha = 8, 16
    s2 = train(cfg)
    assert s2["steps"] == 2 and s2["feature_cache"]["hits"] == 8  # stage 2 never ran the tower
    vlm = VLM.load(tmp_path / "s2")
    answer = vlm.ask(data_dir / "flickr8k" / flickr_records[0]["image"], "Describe the image.", max_new_tokens=8)
    assert isinstance(answer, str) and answer.strip()


def test_bf16_frozen_weights_train_fp32_trainables(llava_json, tiny_llm_dir, tiny_tower_dir, tmp_path, reset_accelerate):
    """``dtype="bfloat16"`` holds the frozen tower and LLM in bf16; the projector trains and is saved in fp32."""
    from vlm.train.loop import train

    summary = train(stage1_cfg(llava_json, tiny_llm_dir, tiny_tower_dir, tmp_path / "s1", tmp_path / "cache",
                               max_steps=2, threads=1, dtype="bfloat16"))
    assert summary["steps"] == 2
    assert all(torch.isfinite(torch.tensor(json.loads(l)["loss"])) for l in (tmp_path / "s1" / "metrics.jsonl").open())
    saved = load_file(tmp_path / "s1" / "model.safetensors")
    projector = [v for k, v in saved.items() if "multi_modal_projector" in k]
    frozen = next(v for k, v in saved.items() if k.endswith("embed_tokens.weight"))
    assert projector and all(v.dtype == torch.float32 for v in projector)  # trainables stay fp32
    assert frozen.dtype == torch.bfloat16
