"""The shipped default model: it loads by name, answers about a real photo, extracts from a real receipt."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vlm import VLM
from vlm.loading import ASSETS

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def tiny():
    return VLM.load("vlm-tiny")


def test_shipped_parts_are_small_bf16_safetensors():
    folder = ASSETS / "vlm-tiny"
    manifest = json.loads((folder / "vlm_parts.json").read_text())
    assert manifest["base_llm"] == "smollm2-135m-instruct"
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 60 * 1024 * 1024, f"vlm-tiny is {size / 2**20:.1f} MiB; the budget is 60"
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))


def test_vlm_tiny_describes_a_photo(tiny, photo):
    info = tiny.info()
    vision = tiny.model.config.vision_config
    assert info["image_tokens"] == (vision.image_size // vision.patch_size) ** 2 and info["llm"]["layers"] == 30
    answer = tiny.ask(photo, "Describe the image briefly.", max_new_tokens=30)
    assert len(answer.split()) >= 3


def test_vlm_tiny_extracts_grounded_receipt_fields(tiny, receipt):
    from vlm.ocr import run_ocr

    fields = ["company", "date", "address", "total"]
    result = tiny.extract(receipt, fields=fields)
    assert list(result) == fields
    ocr_text = " ".join(" ".join(line.text for line in run_ocr(receipt)).split()).lower()
    for value in result.values():
        assert value is None or " ".join(value.split()).lower() in ocr_text
    assert sum(v is not None for v in result.values()) >= 2


FIXED_CAPTION = "A dog is running through the grass ."  # the commonest Flickr8k scene, said of every photo


def test_vlm_tiny_captions_beat_a_fixed_caption(tiny, data_dir, flickr_records):
    """On real dev photos the shipped model's captions score above one caption said of every photo (CIDEr).
    120 photos: on 40, CIDEr moved by 0.04 between two models that are level on 120 (v4 0.139 / v4.1 0.097 on
    the first 40; 0.111 / 0.108 on 120, the fixed caption 0.076)."""
    from vlm.eval.captions import DEFAULT_PROMPT, score

    records = flickr_records[:120]
    images = [data_dir / "flickr8k" / r["image"] for r in records]
    captions = tiny.ask_batch([(image, DEFAULT_PROMPT) for image in images], max_new_tokens=30)
    references = [r["captions"] for r in records]
    model = score(captions, references, tokenizer="simple")["cider"]
    fixed = score([FIXED_CAPTION] * len(records), references, tokenizer="simple")["cider"]
    assert model > fixed + 0.02, f"model CIDEr {model:.3f} vs fixed caption {fixed:.3f}"


def test_cli_defaults_to_vlm_tiny(photo):
    out = subprocess.run([sys.executable, "-m", "vlm.cli", "ask", str(photo), "What is in the picture?",
                          "--max-new-tokens", "12", "--no-stream"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
