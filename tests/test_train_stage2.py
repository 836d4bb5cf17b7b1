"""Stage 2 (LoRA, QLoRA, full), adapter folders, export to stock transformers, and the parts format."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from train_fixtures import *  # noqa: F401,F403

from vlm.train.config import stage2_defaults


def stage2_cfg(data, stage1, out, cache, **kw):
    base = dict(data=str(data), model=str(stage1), out=str(out), batch_size=4, cache_dir=str(cache), seed=0,
                max_steps=2)
    base.update(kw)
    cfg = stage2_defaults(**base)
    cfg.lora.r, cfg.lora.alpha = 8, 16
    return cfg


def batch_for(processor, photo):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the photo."}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True)
    return processor(text=[text], images=[Image.open(photo)], return_tensors="pt")


def randomise_lora(model, seed=0):
    """Trained-looking adapters: a few steps leave lora_B near zero, which would make comparisons vacuous."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_lora_stage2_export_reload_with_stock_transformers(tiny_stage1, llava_json, photo, tmp_path, reset_accelerate):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from vlm.train.export import export_llava
    from vlm.train.loop import train
    from vlm import VLM
    from vlm.loading import load_peft

    out = tmp_path / "any-name"  # detection comes from the folder's contents
    summary = train(stage2_cfg(llava_json, tiny_stage1, out, tmp_path / "cache"))
    assert summary["recipe"] == "lora" and summary["steps"] == 2
    assert (out / "adapter_config.json").exists() and (out / "projector.safetensors").exists()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert "lm_head" not in cfg["target_modules"] and "language_model" in cfg["target_modules"]

    peft_model, _ = load_peft(out)
    lora_names = [n for n, _ in peft_model.named_parameters() if "lora_A" in n]
    assert lora_names and all(".language_model." in n for n in lora_names)
    assert {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in lora_names} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    randomise_lora(peft_model)
    peft_model.save_pretrained(out)  # keeps vlm_adapter.json / projector beside it

    unmerged = VLM.load(out)
    assert any("lora_" in n for n, _ in unmerged.model.named_parameters())
    export_llava(out, tmp_path / "merged", torch.float32)
    stock = LlavaForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    stock_proc = AutoProcessor.from_pretrained(tmp_path / "merged")
    assert not any("lora_" in n for n, _ in stock.named_parameters())
    inputs = batch_for(stock_proc, photo)
    with torch.no_grad():
        a = unmerged.model(**inputs).logits
        b = stock(**inputs).logits
        base = LlavaForConditionalGeneration.from_pretrained(tiny_stage1).eval()(**inputs).logits
    # merging W + BA changes only float rounding: logits agree to ~1e-4 of their ~10 scale, same argmax
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-4), (a - b).abs().max()
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert (a - base).abs().max() > 1e-2  # the adapter really changes the model


def test_lora_continues_from_an_adapter_folder(tiny_stage1, llava_json, tmp_path, reset_accelerate):
    from safetensors.torch import load_file

    from vlm.train.loop import train
    from vlm import VLM
    from vlm.adapters import adapter_base

    first, second = tmp_path / "first", tmp_path / "second"
    train(stage2_cfg(llava_json, tiny_stage1, first, tmp_path / "cache"))
    summary = train(stage2_cfg(llava_json, first, second, tmp_path / "cache", lr=1e-2))
    assert summary["steps"] == 2
    # the same adapter trained further: same base (not stacked on the first adapter), same tensors, new values
    assert adapter_base(second) == str(tiny_stage1.resolve())
    a, b = load_file(first / "adapter_model.safetensors"), load_file(second / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert any((a[k] - b[k]).abs().max() > 0 for k in a if "lora_B" in k)
    assert any("lora_" in n for n, _ in VLM.load(second).model.named_parameters())


def test_qlora_runs_on_cpu_with_4bit_llm(tiny_stage1, llava_json, tmp_path, reset_accelerate):
    import bitsandbytes as bnb

    from vlm.train.recipes import qlora

    cfg = stage2_cfg(llava_json, tiny_stage1, tmp_path / "q", tmp_path / "cache", recipe="qlora", max_steps=3)
    model, _ = qlora.load(cfg, torch.float32)
    llm_4bit = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert llm_4bit and all(".language_model." in n for n in llm_4bit)
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.quant_type == "nf4"
    del model

    from vlm.train.loop import train

    summary = train(cfg)
    assert summary["recipe"] == "qlora" and summary["steps"] == 3
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in
               map(json.loads, (tmp_path / "q" / "metrics.jsonl").read_text().splitlines()))
    assert (tmp_path / "q" / "adapter_model.safetensors").exists()


def test_full_recipe_trains_the_llm(tiny_stage1, llava_json, tmp_path, reset_accelerate):
    from safetensors.torch import load_file

    from vlm.train.loop import train

    out = tmp_path / "full"
    train(stage2_cfg(llava_json, tiny_stage1, out, tmp_path / "cache", recipe="full", lr=1e-3))
    before, after = load_file(tiny_stage1 / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert any("language_model" in k for k in changed) and any("multi_modal_projector" in k for k in changed)
    assert not any("vision_tower" in k for k in changed)


def test_parts_round_trip_identical_logits(tiny_llm_dir, tiny_vision_config, photo, tmp_path):
    from peft import LoraConfig, get_peft_model

    from vlm.train.recipes.common import llm_linear_regex
    from vlm import VLM
    from vlm.parts import load_parts, save_parts

    torch.manual_seed(0)
    vlm = VLM.build(tiny_vision_config, tiny_llm_dir, dtype="bfloat16")
    base_vocab = vlm.processor.tokenizer.vocab_size  # rows from here on were added for <image>
    peft_model = get_peft_model(vlm.model, LoraConfig(r=4, lora_alpha=8, target_modules=llm_linear_regex(vlm.model)))
    randomise_lora(peft_model)
    with torch.no_grad():  # round everything to the shipping dtype first: then the trip must be exact
        for p in peft_model.parameters():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))
        vlm.model.get_input_embeddings().weight[base_vocab:] += 0.25
    save_parts(peft_model, vlm.processor, tmp_path / "parts", str(tiny_llm_dir), base_vocab)
    files = {p.name for p in (tmp_path / "parts").iterdir()}
    assert {"vlm_parts.json", "vision", "projector.safetensors", "adapter", "embeddings.safetensors",
            "processor"} <= files

    loaded, proc = load_parts(tmp_path / "parts", torch.bfloat16)
    inputs = batch_for(proc, photo)
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        want = peft_model(**inputs).logits
        got = loaded(**inputs).logits
        inputs["pixel_values"] = inputs["pixel_values"].float()
        unmerged32 = load_parts(tmp_path / "parts", torch.float32)[0](**inputs).logits
        merged32 = load_parts(tmp_path / "parts", torch.float32, merge=True)[0](**inputs).logits
    assert torch.equal(want, got)
    assert torch.allclose(unmerged32, merged32, atol=1e-3, rtol=1e-4)
    assert VLM.load(tmp_path / "parts").info()["image_tokens"] == vlm.model.config.image_seq_length


def test_stage2_continues_a_parts_folder_and_saves_parts(tiny_llm_dir, tiny_vision_config, llava_json, photo,
                                                         tmp_path, reset_accelerate):
    """Fine-tuning a shipped model: stage 2 started from a parts folder trains its adapter and projector further
    and writes a parts folder over the same base, keeping the folder's ``clip/``."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    from vlm import VLM
    from vlm.parts import save_parts
    from vlm.train.loop import train
    from vlm.train.recipes.common import llm_linear_regex

    torch.manual_seed(0)
    vlm = VLM.build(tiny_vision_config, tiny_llm_dir, dtype="float32")
    peft_model = get_peft_model(vlm.model, LoraConfig(r=4, lora_alpha=8, target_modules=llm_linear_regex(vlm.model)))
    randomise_lora(peft_model)
    start = save_parts(peft_model, vlm.processor, tmp_path / "start", str(tiny_llm_dir),
                       vlm.processor.tokenizer.vocab_size)
    (start / "clip").mkdir()
    (start / "clip" / "marker.json").write_text("{}")

    out = tmp_path / "tuned"
    cfg = stage2_cfg(llava_json, start, out, tmp_path / "cache", lr=1e-2)
    cfg.lora.r = 16  # ignored: the folder's adapter (r=4) is trained further
    train(cfg)
    before, after = json.loads((start / "vlm_parts.json").read_text()), json.loads((out / "vlm_parts.json").read_text())
    assert after["base_llm"] == before["base_llm"] and after["base_vocab_size"] == before["base_vocab_size"]
    assert (out / "clip" / "marker.json").exists()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4
    a0, a1 = load_file(start / "adapter" / "adapter_model.safetensors"), load_file(out / "adapter" / "adapter_model.safetensors")
    assert a0.keys() == a1.keys() and any(not torch.equal(a0[k], a1[k]) for k in a0)
    p0, p1 = load_file(start / "projector.safetensors"), load_file(out / "projector.safetensors")
    assert any(not torch.equal(p0[k], p1[k]) for k in p0)
    assert VLM.load(out).ask(photo, "What is it?", max_new_tokens=3) is not None


def test_export_rejects_a_plain_llava_folder(tiny_stage1, tmp_path):
    from vlm.cli import main

    assert main(["export", "--model", str(tiny_stage1), "--out", str(tmp_path / "x")]) == 2


@pytest.mark.real
def test_real_parts_over_registered_smollm2(photo, tmp_path):
    """Parts over the registered SmolLM2: the base comes from vlm.registry by name, the rest from the folder."""
    from peft import LoraConfig, get_peft_model

    from vlm.train.recipes.common import llm_linear_regex
    from vlm.parts import load_parts, save_parts

    from vlm import VLM, TowerPreset

    # built in bf16 from the start (``.to(bf16)`` on an fp32 model would also round the rotary buffers)
    torch.manual_seed(0)
    real = VLM.build(TowerPreset().to_config(), "smollm2-135m-instruct", dtype="bfloat16")
    model = real.model
    base_vocab = real.processor.tokenizer.vocab_size
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=llm_linear_regex(model)))
    randomise_lora(peft_model)
    with torch.no_grad():
        for p in peft_model.parameters():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))
    save_parts(peft_model, real.processor, tmp_path / "p", "smollm2-135m-instruct", base_vocab)
    manifest = json.loads((tmp_path / "p" / "vlm_parts.json").read_text())
    assert manifest["base_llm"] == "smollm2-135m-instruct"
    size = sum(f.stat().st_size for f in (tmp_path / "p").rglob("*") if f.is_file())
    assert size < 60e6  # the 135M-parameter LLM is not in the folder
    loaded, proc = load_parts(tmp_path / "p", torch.bfloat16)
    inputs = batch_for(proc, photo)
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(peft_model(**inputs).logits, loaded(**inputs).logits)
