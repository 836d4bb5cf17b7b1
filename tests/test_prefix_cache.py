"""The prompt-prefix KV cache (a default lever) gives the uncached answer for any sequence of prompts.

The bug this guards against: after a text-only prompt, a second prompt that shared only the chat header
made the cache crop itself with an API transformers 5.2x no longer accepts, and every later request failed.
"""
from __future__ import annotations

import copy
import logging

import openai
import pytest
from PIL import Image

from vlm import VLM
from vlm.optimize import InferenceOptions, PromptPrefixCache, apply

from _serve_server import Server, png_data_url

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
OTHER_SYSTEM = {"role": "system", "content": "You answer in French, always, even about photos."}


def user(text, *images):
    return {"role": "user", "content": [*({"type": "image", "image": i} for i in images), {"type": "text", "text": text}]}


def conversations(photo, receipt) -> list[list[dict]]:
    """Prompts in an order that makes the cache shrink, grow and miss: text-only first (a long stored
    prefix), then prompts sharing only the header, system prompts, histories, images, repeats."""
    return [
        [user("Hello")],
        [user("What is 2+2?")],
        [user("What is 2+2? Answer with a number.")],
        [user("Describe the image.", photo)],
        [SYSTEM, user("Hello")],
        [SYSTEM, user("What is in the picture?", receipt)],
        [OTHER_SYSTEM, user("What is in the picture?", receipt)],
        [user("Hi"), {"role": "assistant", "content": "Hello! How can I help?"}, user("Name a colour.")],
        [user("What is this?", photo), {"role": "assistant", "content": "A photo."}, user("And this?", receipt)],
        [user("Compare them.", photo, receipt)],
        [user("Hello")],
        [{"role": "user", "content": "plain string content"}],
        [SYSTEM, user("What is 2+2?")],
    ]


def cached_and_plain(vlm: VLM) -> tuple[VLM, VLM]:
    cached = apply(VLM(copy.deepcopy(vlm.model), copy.deepcopy(vlm.processor)), InferenceOptions(prefix_cache=True))
    plain = apply(VLM(copy.deepcopy(vlm.model), copy.deepcopy(vlm.processor)), InferenceOptions())
    return cached, plain


def test_any_sequence_of_prompts_matches_the_uncached_answers(tiny_vlm, photo, receipt):
    cached, plain = cached_and_plain(tiny_vlm)
    for conv in conversations(photo, receipt):
        assert cached.chat(conv, max_new_tokens=6) == plain.chat(conv, max_new_tokens=6), conv
        streamed = "".join(cached.chat_stream(conv, max_new_tokens=6)).strip()
        assert streamed == plain.chat(conv, max_new_tokens=6), conv
    cache = cached.inference.prefix_cache
    assert cache.disabled is None and cache.verified
    assert cache.hits >= 20 and cache.misses >= 1


def test_a_failing_cache_switches_itself_off_and_answers_stay_right(tiny_vlm, photo, receipt, monkeypatch, caplog):
    cached, plain = cached_and_plain(tiny_vlm)
    convs = conversations(photo, receipt)[:4]
    cached.chat(convs[0], max_new_tokens=4)  # stores a prefix

    def broken(cache, length):
        raise RuntimeError("cache API changed")

    monkeypatch.setattr(PromptPrefixCache, "_slice", staticmethod(broken))
    with caplog.at_level(logging.WARNING, logger="vlm"):
        for conv in convs:
            assert cached.chat(conv, max_new_tokens=6) == plain.chat(conv, max_new_tokens=6)
    cache = cached.inference.prefix_cache
    assert cache.disabled and "cache API changed" in cache.disabled
    assert any("switched off" in r.getMessage() for r in caplog.records)


def test_a_wrong_cache_is_caught_by_the_first_reuse_check(tiny_vlm, photo, receipt, monkeypatch):
    cached, plain = cached_and_plain(tiny_vlm)
    right = PromptPrefixCache._slice

    def corrupted(cache, length):
        out = right(cache, length)
        for layer in out.layers:
            layer.keys.mul_(-1.0)  # wrong keys of the right shape
        return out

    monkeypatch.setattr(PromptPrefixCache, "_slice", staticmethod(corrupted))
    for conv in conversations(photo, receipt)[:3]:
        assert cached.chat(conv, max_new_tokens=6) == plain.chat(conv, max_new_tokens=6)
    cache = cached.inference.prefix_cache
    assert cache.disabled and "disagrees" in cache.disabled and not cache.verified


def test_generate_failing_from_the_cache_retries_uncached(tiny_vlm, photo, receipt, monkeypatch):
    cached, plain = cached_and_plain(tiny_vlm)
    model = cached.model
    real_generate = model.generate

    def generate(**kwargs):  # this transformers rejects a cache it is handed, after streaming the prompt
        if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
            if kwargs.get("streamer") is not None:
                kwargs["streamer"].put(kwargs["input_ids"].cpu())
            raise TypeError("unexpected cache layout")
        return real_generate(**kwargs)

    monkeypatch.setattr(model, "generate", generate)
    convs = conversations(photo, receipt)[:4]
    streamed = "".join(cached.chat_stream(convs[0], max_new_tokens=5)).strip()
    assert streamed == plain.chat(convs[0], max_new_tokens=5)  # the failed call's prompt is not streamed
    for conv in convs:
        assert cached.chat(conv, max_new_tokens=5) == plain.chat(conv, max_new_tokens=5)
    assert "unexpected cache layout" in cached.inference.prefix_cache.disabled


@pytest.fixture(scope="module")
def shipped():
    return VLM.load("vlm-tiny")  # as users load it: the default levers (onnx engine, prefix cache included)


@pytest.fixture(scope="module")
def reference(photo, receipt) -> list[str]:
    """The same weights on plain transformers, no levers."""
    plain = VLM.load("vlm-tiny", levers=None)
    return [plain.chat(c, max_new_tokens=8) for c in conversations(photo, receipt)]


@pytest.mark.real
def test_shipped_model_with_default_levers_matches_plain_transformers(shipped, reference, photo, receipt):
    answers = [shipped.chat(c, max_new_tokens=8) for c in conversations(photo, receipt)]
    assert shipped.info()["engine"] == "onnx"
    assert shipped.inference.engine.prefix.hits >= 10  # the onnx engine's prefix KV
    assert answers == reference


def openai_messages(conv: list[dict]) -> list[dict]:
    def part(p):
        if p["type"] == "image":
            return {"type": "image_url", "image_url": {"url": png_data_url(Image.open(p["image"]).convert("RGB"))}}
        return p

    return [m if isinstance(m["content"], str) else {**m, "content": [part(p) for p in m["content"]]} for m in conv]


@pytest.mark.real
def test_one_server_answers_every_prompt_as_the_uncached_model(reference, photo, receipt, tmp_path):
    convs = conversations(photo, receipt)
    srv = Server("vlm-tiny", "--concurrency", "1", "--no-moderation", "--no-ui", log_path=tmp_path / "server.log")
    try:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=120)
        served = [client.chat.completions.create(model="vlm-tiny", messages=openai_messages(c), max_tokens=8,
                                                 temperature=0).choices[0].message.content for c in convs]
        health = srv.health()
    finally:
        srv.stop()
    assert served == reference
    assert health["failed"] == 0
