"""vlm.optimize: each inference lever changes what it should and keeps answers well-formed."""
from __future__ import annotations

import copy

import pytest
import torch

from vlm import VLM
from vlm.optimize import InferenceOptions, apply, kv_bytes_per_token, weight_bytes_per_token


def twin(vlm) -> VLM:
    return VLM(copy.deepcopy(vlm.model), copy.deepcopy(vlm.processor))


def stock_answer(vlm, image, question, n):
    """Stock transformers: processor + generate, greedy, float32."""
    proc = vlm.processor
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    from PIL import Image

    with Image.open(image) as im:
        batch = proc(text=[proc.apply_chat_template(msgs, add_generation_prompt=True)], images=[im.convert("RGB")],
                     return_tensors="pt")
    with torch.inference_mode():
        out = vlm.model.generate(**batch, max_new_tokens=n, do_sample=False, pad_token_id=proc.tokenizer.pad_token_id)
    return proc.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_options_validate():
    with pytest.raises(ValueError, match="int8"):
        InferenceOptions(dtype="bfloat16", int8=True)
    with pytest.raises(ValueError, match="dtype"):
        InferenceOptions(dtype="float16")
    with pytest.raises(ValueError, match="threads"):
        InferenceOptions(threads=0)
    assert InferenceOptions(int8=True, reuse_vision=True).label() == "int8+reuse_vision"
    assert InferenceOptions().label() == "float32"


def test_weight_changing_levers_are_applied_once(tiny_vlm):
    m = apply(twin(tiny_vlm), InferenceOptions(int8=True))
    with pytest.raises(ValueError, match="already applied"):
        apply(m, InferenceOptions(reuse_vision=True))


def test_int8_quantises_llm_linears_and_head(tiny_vlm, photo):
    m = apply(twin(tiny_vlm), InferenceOptions(int8=True))
    qlinear = torch.ao.nn.quantized.dynamic.Linear
    llm = m.model.model.language_model
    assert isinstance(m.model.lm_head, qlinear)
    assert not any(isinstance(mod, torch.nn.Linear) for mod in llm.modules())
    assert isinstance(m.model.model.multi_modal_projector.linear_1, torch.nn.Linear)  # projector untouched
    assert weight_bytes_per_token(m.model) < 0.3 * weight_bytes_per_token(tiny_vlm.model)
    assert isinstance(m.ask(photo, "What is this?", max_new_tokens=4), str)
    assert kv_bytes_per_token(m.model, 100) == kv_bytes_per_token(tiny_vlm.model, 100) > 0


def test_float32_path_matches_stock_generate(tiny_vlm, photo):
    m = apply(twin(tiny_vlm), InferenceOptions())
    assert m.ask(photo, "Describe the image.", max_new_tokens=8) == stock_answer(tiny_vlm, photo, "Describe the image.", 8)


def test_reuse_vision_runs_tower_once_per_image(tiny_vlm, photo, receipt):
    m = apply(twin(tiny_vlm), InferenceOptions(reuse_vision=True))
    calls = []
    tower = m.model.model.vision_tower
    handle = tower.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    first = m.ask(photo, "What is this?", max_new_tokens=4)
    again = m.ask(photo, "What is this?", max_new_tokens=4)
    m.ask_batch([(photo, "a?"), (receipt, "b?")], max_new_tokens=2)  # only the receipt is new
    handle.remove()
    assert first == again
    assert calls == [1, 1]
    clone = copy.deepcopy(m.model)  # the hook follows the copy, with its own cache
    assert clone.model.get_image_features.inner is clone.model
    assert clone.model.get_image_features is not m.model.model.get_image_features
    cache = m.inference.vision_cache
    assert (cache.hits, cache.misses) == (2, 2)
    # cached features give the same answer as a fresh tower run
    plain = apply(twin(tiny_vlm), InferenceOptions())
    assert plain.ask(photo, "What is this?", max_new_tokens=4) == first


def test_image_pool_shrinks_image_tokens(tiny_vlm, photo):
    m = apply(twin(tiny_vlm), InferenceOptions(image_pool=2))
    msgs = [[{"role": "user", "content": [{"type": "image", "image": photo}, {"type": "text", "text": "hi"}]}]]
    from vlm.config import GenerationOptions

    ids = m.prepare(msgs, GenerationOptions(max_new_tokens=1)).batch["input_ids"]
    assert int((ids == m.model.config.image_token_id).sum()) == 4  # 4x4 grid pooled to 2x2
    assert isinstance(m.ask(photo, "What is this?", max_new_tokens=3), str)
    with pytest.raises(ValueError, match="image_pool"):
        apply(twin(tiny_vlm), InferenceOptions(image_pool=5))


def test_prefix_cache_reuses_the_system_prompt_and_keeps_answers(tiny_vlm, photo, receipt):
    m = apply(twin(tiny_vlm), InferenceOptions(prefix_cache=True))
    plain = apply(twin(tiny_vlm), InferenceOptions())
    asks = [(photo, "Describe the image."), (receipt, "What is this?"), (None, "Hello there, who are you?")]
    for image, question in asks:
        assert m.ask(image, question, max_new_tokens=6) == plain.ask(image, question, max_new_tokens=6)
    streamed = "".join(m.stream(photo, "Describe the image.", max_new_tokens=6)).strip()
    assert streamed == plain.ask(photo, "Describe the image.", max_new_tokens=6)
    cache = m.inference.prefix_cache
    assert cache.misses == 1 and cache.hits == 3  # one system-prompt prefix, reused by every later prompt
    ids, past = cache.entry
    assert m.model.config.image_token_id not in ids and past.get_seq_length() == len(ids)
    # batches are left-padded, so they run without it (and still agree)
    pairs = [(photo, "Describe the image."), (receipt, "What is this?")]
    assert m.ask_batch(pairs, max_new_tokens=4) == plain.ask_batch(pairs, max_new_tokens=4)


@pytest.mark.real
def test_real_float32_path_identical_and_int8_agrees_in_shape(real_vlm, photo):
    """Real SmolLM2 weights + a real Flickr8k photo: the float32 vlm path reproduces stock greedy output."""
    q = "What is in this picture?"
    ref = stock_answer(real_vlm, photo, q, 12)
    fp32 = apply(twin(real_vlm), InferenceOptions(reuse_vision=True))
    assert fp32.ask(photo, q, max_new_tokens=12) == ref
    int8 = apply(twin(real_vlm), InferenceOptions(int8=True))
    answer = int8.ask(photo, q, max_new_tokens=12)
    assert answer.strip() and all(c.isprintable() or c.isspace() for c in answer)
    ratio = weight_bytes_per_token(int8.model) / weight_bytes_per_token(real_vlm.model)
    assert 0.24 < ratio < 0.27


def test_levers_compose_on_top_of_the_output_preserving_ones(tiny_vlm, photo):
    m = apply(twin(tiny_vlm), InferenceOptions(reuse_vision=True, prefix_cache=True))  # what VLM.load applies
    first = m.ask(photo, "What is this?", max_new_tokens=4)
    apply(m, InferenceOptions(int8=True))  # weight-changing lever on top: caches are emptied, hooks kept
    opts = m.inference.options
    assert opts.int8 and opts.reuse_vision and opts.prefix_cache
    assert m.inference.prefix_cache.entry is None and not m.inference.vision_cache.entries
    assert isinstance(m.ask(photo, "What is this?", max_new_tokens=4), str) and first
    with pytest.raises(ValueError, match="change the weights"):
        apply(m, InferenceOptions(dtype="bfloat16"))


def test_load_applies_the_default_levers(tiny_vlm, tmp_path):
    from vlm.optimize import DEFAULT

    folder = tiny_vlm.save(tmp_path / "m")
    assert VLM.load(folder).inference.options == DEFAULT
    assert VLM.load(folder, levers=None).inference.options is None
    assert VLM.load(folder, levers="int8").inference.options.int8
