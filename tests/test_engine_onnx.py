"""The ONNX Runtime engine (vlm.engines.onnx + vlm.engines.loop) answers as stock transformers does.

Real weights (vlm-tiny), real Flickr8k dev photos and a real SROIE receipt: the ``VLM`` on the onnx engine (the
default levers) must give the token ids ``model.generate`` gives on the same float32 model -- greedy, with a
repetition penalty, an answer n-gram ban, stop strings, a JSON grammar (extraction), one request at a time and
as a left-padded batch, streamed or not; beam search runs on transformers; the export is keyed by the
checkpoint and reused; an engine that can't start leaves a working VLM on transformers.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from PIL import Image  # noqa: E402

from vlm import VLM, generation  # noqa: E402
from vlm.engines import loop  # noqa: E402
from vlm.engines import onnx as ox  # noqa: E402
from vlm.extract.prompts import get_template  # noqa: E402
from vlm.messages import user_turn  # noqa: E402
from vlm.optimize import InferenceOptions, apply  # noqa: E402

MAX_NEW = 32
# The receipt template without its rules reader: the rules decide every field of the test receipt, and then the
# model does not run (``vlm.extract.extract.reader_decided``); without them the model picks among rows and dates.
MODEL_DECIDES = replace(get_template("receipt"), reader=None)


@pytest.fixture(scope="module")
def tiny():
    return VLM.load("vlm-tiny", levers=None)  # the plain transformers float32 model (the reference)


@pytest.fixture(scope="module")
def fast(tiny):
    """The same model object on the onnx engine (what ``VLM.load`` gives by default)."""
    vlm = apply(VLM(tiny.model, tiny.processor, name="vlm-tiny"), InferenceOptions(engine="onnx"))
    assert vlm.inference.engine is not None, vlm.inference.engine_error
    return vlm


@pytest.fixture(scope="module")
def folder(tiny):
    return ox.export(tiny.model)


@pytest.fixture(scope="module")
def photos(data_dir, flickr_records):
    out = []
    for rec in flickr_records[:3]:
        with Image.open(data_dir / "flickr8k" / rec["image"]) as im:
            out.append(im.convert("RGB"))
    return out


def new_ids(vlm, prepared) -> list[list[int]]:
    """The new token ids of each row (``VLM.generate`` with a tally), trailing pads dropped."""
    tally = generation.Tally()
    vlm.generate(prepared, tally=tally)
    pad = vlm.model.generation_config.pad_token_id
    rows = []
    for i in range(prepared.batch["input_ids"].shape[0]):
        row = tally.row(i)
        while row and row[-1] == pad:
            row = row[:-1]
        rows.append(row)
    return rows


def test_graph_is_the_stock_decoder(folder):
    import onnx

    graph = onnx.load(str(folder / ox.GRAPH), load_external_data=False).graph
    names = [i.name for i in graph.input]
    assert names[:3] == list(ox.INPUTS) and names[3:] == ox.kv_names(len(names[3:]) // 2)
    # transformers' module names survive the trace (the Linear weights become transposed MatMul constants)
    inits = {i.name for i in graph.initializer}
    assert "language_model.norm.weight" in inits
    assert "language_model.layers.0.input_layernorm.weight" in inits


def test_greedy_tokens_match_transformers_on_real_photos(tiny, fast, photos):
    answers = []
    for photo in photos:
        prepared = fast.prepare([user_turn(photo, "Describe the image.")], max_new_tokens=MAX_NEW, ocr="never")
        ours = new_ids(fast, prepared)
        assert ours == new_ids(tiny, prepared)
        answers.append(fast.processor.tokenizer.decode(ours[0], skip_special_tokens=True).strip())
    assert all(answers), answers  # real answers, not empty strings


@pytest.mark.parametrize("options", [dict(repetition_penalty=1.3), dict(no_repeat_ngram_size=2), dict(stop=[" is"]),
                                     dict(max_new_tokens=5)])
def test_generation_options_match_transformers(tiny, fast, photos, options):
    prepared = fast.prepare([user_turn(photos[1], "Describe the image.")], ocr="never",
                            **{"max_new_tokens": 24, **options})
    assert new_ids(fast, prepared) == new_ids(tiny, prepared)
    assert fast.generate(prepared) == tiny.generate(prepared)


def test_left_padded_batch_and_stream_match_transformers(tiny, fast, photos):
    convs = [user_turn(photos[0], "Describe the image."),
             user_turn(photos[1], "What is the person in this photo doing, and where are they?")]
    prepared = fast.prepare(convs, max_new_tokens=16, ocr="never")
    assert (prepared.batch["attention_mask"] == 0).any(), "the prompts should differ in length so the batch is padded"
    assert new_ids(fast, prepared) == new_ids(tiny, prepared)
    one = fast.prepare([convs[0]], max_new_tokens=16, ocr="never")
    assert "".join(fast.generate_stream(one)) == tiny.generate(one)[0]


def test_json_extraction_matches_transformers(tiny, fast, receipt):
    """A receipt through ``VLM.extract``: OCR, JSON-grammar decoding (vlm's own logits processor) on each engine."""
    ours, theirs = fast.extract(receipt, template=MODEL_DECIDES), tiny.extract(receipt, template=MODEL_DECIDES)
    assert ours == theirs
    assert json.dumps(ours) and any(ours.values()), ours


def test_seeded_sampling_is_reproducible_and_beams_run_on_transformers(tiny, fast, photos):
    ask = dict(image=photos[2], question="Describe the image.", max_new_tokens=12)
    assert fast.ask(**ask, temperature=0.9, seed=7) == fast.ask(**ask, temperature=0.9, seed=7)
    assert loop.settings(fast.model, {"max_new_tokens": 8, "num_beams": 3}) is None
    assert loop.settings(fast.model, {"max_new_tokens": 8, "do_sample": False}) is not None
    assert fast.ask(**ask, num_beams=2) == tiny.ask(**ask, num_beams=2)


def test_per_step_api(tiny, fast, photos):
    prepared = fast.prepare([user_turn(photos[2], "Describe the image.")], max_new_tokens=12, ocr="never")
    engine = fast.inference.engine
    state = engine.prefill(prepared.batch)
    with torch.inference_mode():  # prefill logits are the stock model's, up to float rounding
        ref = tiny.model(**prepared.batch).logits[:, -1].numpy()
    np.testing.assert_allclose(state.logits, ref, atol=2e-3, rtol=0)
    first = int(state.logits[0].argmax())
    logits = engine.step(state, [first])
    assert logits.shape == ref.shape and state.mask.shape[1] == prepared.prompt_width + 1


def test_an_engine_that_cannot_start_leaves_transformers(tiny_vlm, photo, caplog):
    bf16 = VLM(copy.deepcopy(tiny_vlm.model).to(torch.bfloat16), copy.deepcopy(tiny_vlm.processor))
    with caplog.at_level("WARNING", logger="vlm"):
        apply(bf16, InferenceOptions(engine="onnx"))  # the export refuses non-float32 weights
    assert bf16.inference.engine is None and "float32" in bf16.inference.engine_error
    assert "generating with transformers" in caplog.text
    assert bf16.info()["engine"] == "torch"
    assert isinstance(bf16.ask(photo, "What is this?", max_new_tokens=3), str)


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


def test_prune_keeps_the_most_recently_used_exports(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_CACHE", str(tmp_path))
    root = ox.cache_dir()
    for i in range(6):
        (root / f"export{i}").mkdir(parents=True)
        (root / f"export{i}" / ox.GRAPH).write_bytes(b"x")
        stamp = time.time() - 100 + (50 if i == 0 else i)  # export0 was used last
        import os

        os.utime(root / f"export{i}", (stamp, stamp))
    removed = ox.prune(keep=4)
    assert sorted(p.name for p in removed) == ["export1", "export2"]
    assert sorted(p.name for p in root.iterdir()) == ["export0", "export3", "export4", "export5"]


def test_onnx_export_folder_answers_as_the_torch_model(tiny, photos, tmp_path):
    """``vlm export --format onnx`` writes a folder that ONNX Runtime runs alone (OnnxVLM: no torch weights)."""
    from vlm.cli import main
    from vlm.engines.onnx_export import OnnxVLM

    out = tmp_path / "vlm-tiny-onnx"
    assert main(["export", "--format", "onnx", "--model", "vlm-tiny", "--out", str(out)]) == 0
    assert {"llm.onnx", "vision.onnx", "embed_tokens.safetensors", "config.json", "export.json"} <= \
        {p.name for p in out.iterdir()}
    runner = OnnxVLM(out, threads=2)
    for photo in photos[:2]:
        assert runner.ask(photo, "Describe the image.", max_new_tokens=24) == \
            tiny.ask(photo, "Describe the image.", max_new_tokens=24, ocr="never")
    assert runner.ask(None, "What is the capital of France?", max_new_tokens=8) == \
        tiny.ask(None, "What is the capital of France?", max_new_tokens=8)
    with pytest.raises(FileNotFoundError, match="not a vlm ONNX export"):
        OnnxVLM(tmp_path)


def test_extend_and_truncate_agree_with_single_steps(tiny, fast, photos):
    """Several tokens fed at once give the logits single steps give (float rounding apart); truncating them
    and feeding one again gives that token's logits."""
    prepared = fast.prepare([user_turn(photos[0], "Describe the image.")], max_new_tokens=8, ocr="never")
    engine = fast.inference.engine
    assert engine.can_extend
    ids = new_ids(tiny, prepared)[0][:5]
    one = engine.prefill(prepared.batch)
    steps = [engine.step(one, [t])[0].copy() for t in ids]
    many = engine.prefill(prepared.batch)
    outs = engine.extend(many, ids)
    assert outs.shape == (len(ids), one.logits.shape[-1])
    np.testing.assert_allclose(outs, np.stack(steps), atol=2e-3, rtol=0)
    engine.truncate(many, 3)
    assert many.mask.shape[1] == prepared.prompt_width + 2
    assert all(kv.shape[2] == prepared.prompt_width + 2 for kv in many.past.values())
    np.testing.assert_allclose(engine.step(many, [ids[2]])[0], steps[2], atol=2e-3, rtol=0)


def test_jump_forward_extraction_is_greedy_decoding_in_fewer_engine_calls(tiny, fast, receipt, monkeypatch):
    """The JSON grammar's forced text (keys, the shared part of a value's choices) is fed in one engine call
    and verified: same ids as token-by-token decoding on the same engine and as transformers, far fewer calls."""
    engine = fast.inference.engine
    calls = {"step": 0, "extend": 0}
    for name in calls:
        original = getattr(engine, name)

        def counted(*a, _name=name, _original=original, **kw):
            calls[_name] += 1
            return _original(*a, **kw)

        monkeypatch.setattr(engine, name, counted)
    jumped = fast.extract(receipt, template=MODEL_DECIDES)
    jumped_calls = dict(calls)
    monkeypatch.setattr(loop, "MAX_DRAFT", 0)
    calls.update(step=0, extend=0)
    stepped = fast.extract(receipt, template=MODEL_DECIDES)
    assert jumped == stepped == tiny.extract(receipt, template=MODEL_DECIDES)
    assert calls["extend"] == 0 and jumped_calls["extend"] > 0
    assert sum(jumped_calls.values()) * 3 < calls["step"], (jumped_calls, calls)
