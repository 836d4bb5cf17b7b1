"""The ONNX Runtime backend (vlm.engines.onnx) decodes the shipped vlm-tiny as stock transformers does.

Real weights (vlm-tiny), real Flickr8k dev photos: greedy token ids from the exported stock transformers
decoder (float32, explicit KV inputs/outputs) on ONNX Runtime must equal ``model.generate``'s with vlm's
generation settings, one request at a time and as a left-padded batch; the per-step API gives the same
tokens; the export is keyed by the checkpoint and reused.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from PIL import Image  # noqa: E402

from vlm import VLM, generation  # noqa: E402
from vlm.engines import onnx as ox  # noqa: E402
from vlm.messages import user_turn  # noqa: E402

MAX_NEW = 32


@pytest.fixture(scope="module")
def tiny():
    return VLM.load("vlm-tiny", levers=None)  # the plain transformers float32 model


@pytest.fixture(scope="module")
def folder(tiny, tmp_path_factory):
    return ox.export(tiny.model, tmp_path_factory.mktemp("onnx") / "llm")


@pytest.fixture(scope="module")
def decoder(tiny, folder):
    return ox.OrtDecoder(tiny.model, threads=2, folder=folder)


@pytest.fixture(scope="module")
def photos(data_dir, flickr_records):
    out = []
    for rec in flickr_records[:3]:
        with Image.open(data_dir / "flickr8k" / rec["image"]) as im:
            out.append(im.convert("RGB"))
    return out


def reference(vlm, prepared) -> list[list[int]]:
    """New token ids of stock ``model.generate`` with vlm's greedy settings."""
    batch = prepared.batch
    kwargs = generation.generate_kwargs(vlm.model, vlm.processor, prepared.options, batch["input_ids"].shape[1])
    with torch.inference_mode():
        out = vlm.model.generate(**batch, **kwargs)
    return out[:, batch["input_ids"].shape[1]:].tolist()


def trim(rows: list[list[int]], pad: int) -> list[list[int]]:
    """Drop the trailing pads ``generate`` adds to rows that stopped early (and a batch's common tail)."""
    out = []
    for row in rows:
        while row and row[-1] == pad:
            row = row[:-1]
        out.append(row)
    return out


def test_graph_is_the_stock_decoder(folder):
    import onnx

    graph = onnx.load(str(folder / ox.GRAPH), load_external_data=False).graph
    names = [i.name for i in graph.input]
    assert names[:3] == list(ox.INPUTS) and names[3:] == ox.kv_names(len(names[3:]) // 2)
    # transformers' module names survive the trace (the Linear weights become transposed MatMul constants)
    inits = {i.name for i in graph.initializer}
    assert "language_model.norm.weight" in inits
    assert "language_model.layers.0.input_layernorm.weight" in inits


def test_greedy_tokens_match_transformers_on_real_photos(tiny, decoder, photos):
    answers = []
    for photo in photos:
        prepared = tiny.prepare([user_turn(photo, "Describe the image.")], max_new_tokens=MAX_NEW, ocr="never")
        ours = decoder.generate(prepared.batch, MAX_NEW)
        theirs = reference(tiny, prepared)
        assert trim(ours, decoder.pad) == trim(theirs, decoder.pad)
        answers.append(tiny.processor.tokenizer.decode(ours[0], skip_special_tokens=True).strip())
    assert all(answers), answers  # real answers, not empty strings
    prepared = tiny.prepare([user_turn(photos[0], "Describe the image.")], max_new_tokens=MAX_NEW, ocr="never")
    assert decoder.answers(tiny.processor, prepared.batch, MAX_NEW) == tiny.generate(prepared)


def test_left_padded_batch_matches_transformers(tiny, decoder, photos):
    convs = [user_turn(photos[0], "Describe the image."),
             user_turn(photos[1], "What is the person in this photo doing, and where are they?")]
    prepared = tiny.prepare(convs, max_new_tokens=16, ocr="never")
    assert (prepared.batch["attention_mask"] == 0).any(), "the prompts should differ in length so the batch is padded"
    assert trim(decoder.generate(prepared.batch, 16), decoder.pad) == trim(reference(tiny, prepared), decoder.pad)


def test_per_step_api_streams_the_same_tokens(tiny, decoder, photos):
    prepared = tiny.prepare([user_turn(photos[2], "Describe the image.")], max_new_tokens=12, ocr="never")
    state = decoder.prefill(prepared.batch)
    with torch.inference_mode():  # prefill logits are the stock model's, up to float rounding
        ref = tiny.model(**prepared.batch).logits[:, -1].numpy()
    np.testing.assert_allclose(state.logits, ref, atol=2e-3, rtol=0)
    tokens = []
    for _ in range(12):
        logits = state.logits.copy()
        logits[:, decoder.suppress] = -np.inf  # the caller applies its own logits processing
        tokens.append(int(logits[0].argmax()))
        if tokens[-1] in decoder.eos:
            break
        decoder.step(state, [tokens[-1]])
    assert tokens == decoder.generate(prepared.batch, 12)[0][: len(tokens)]


def test_export_is_keyed_by_checkpoint_and_reused(tiny, folder):
    key = ox.checkpoint_key(tiny.model)
    assert key == ox.checkpoint_key(tiny.model)
    started = time.perf_counter()
    assert ox.export(tiny.model, folder) == folder  # already there: not exported again
    assert time.perf_counter() - started < 5
    head = tiny.model.lm_head.weight
    with torch.no_grad():
        head[0, 0] += 1.0  # another checkpoint (tied: the embedding changes too) gets another key
        try:
            assert ox.checkpoint_key(tiny.model) != key
        finally:
            head[0, 0] -= 1.0
    assert ox.checkpoint_key(tiny.model) == key
