"""Fixtures for the stage-1/2 training tests: tiny LLaVA JSON files over real Flickr8k photos, a saved tiny
tower, and a tiny stage-1 model trained once per session. Import with ``from train_fixtures import *``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

__all__ = ["llava_json", "tiny_tower_dir", "tiny_stage1", "reset_accelerate", "write_llava_json", "stage1_cfg"]


def write_llava_json(path: Path, data_dir: Path, records: list[dict], n: int, extra: list | None = None) -> Path:
    """``n`` caption records (real photos, absolute paths), every second one two-turn, plus ``extra``."""
    out = []
    for i, rec in enumerate(records[:n]):
        conv = [{"from": "human", "value": "<image>\nDescribe the image briefly."},
                {"from": "gpt", "value": rec["captions"][0]}]
        if i % 2:
            conv += [{"from": "human", "value": "Say it another way."}, {"from": "gpt", "value": rec["captions"][1]}]
        out.append({"id": f"r{i}", "image": str(data_dir / "flickr8k" / rec["image"]), "conversations": conv})
    path.write_text(json.dumps(out + (extra or [])))
    return path


@pytest.fixture(scope="session")
def llava_json(tmp_path_factory, data_dir, flickr_records) -> Path:
    return write_llava_json(tmp_path_factory.mktemp("llava-json") / "train.json", data_dir, flickr_records, 24)


@pytest.fixture(scope="session")
def tiny_tower_dir(tmp_path_factory, tiny_vision_config) -> Path:
    from transformers import CLIPVisionModel

    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("tiny-tower")
    CLIPVisionModel(tiny_vision_config).save_pretrained(out)
    return out


def stage1_cfg(data, llm, tower, out, cache, **kw):
    from vlm.train.config import stage1_defaults

    base = dict(data=str(data), model=str(llm), vision=str(tower), out=str(out), batch_size=4,
                cache_dir=str(cache), seed=0)
    base.update(kw)
    return stage1_defaults(**base)


@pytest.fixture
def reset_accelerate():
    """Each in-process run builds its own Accelerator; drop the process-wide state between runs."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def tiny_stage1(tmp_path_factory, llava_json, tiny_llm_dir, tiny_tower_dir) -> Path:
    """A tiny stage-1 llava folder (projector trained a few steps)."""
    from accelerate.state import AcceleratorState

    from vlm.train.loop import train

    root = tmp_path_factory.mktemp("tiny-stage1")
    train(stage1_cfg(llava_json, tiny_llm_dir, tiny_tower_dir, root / "out", root / "cache", max_steps=3))
    AcceleratorState._reset_state(reset_partial_state=True)
    return root / "out"
