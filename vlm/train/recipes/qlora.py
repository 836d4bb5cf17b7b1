"""QLoRA: the LLM's linear layers loaded as 4-bit NF4 (bitsandbytes; runs on CPU too), LoRA on top.

The tower, projector and ``lm_head`` stay in full precision. The saved adapter applies to the
full-precision base, like any QLoRA adapter.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import lora
from .common import freeze_all, projector_params


def bnb_config():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=["model.vision_tower", "model.multi_modal_projector", "lm_head"],  # module-name prefixes
    )


def load(cfg, dtype):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from vlm.compose import is_llava_folder

    path = Path(cfg.model).expanduser()
    if not is_llava_folder(path):
        raise ValueError(f"--qlora needs a llava folder as --model (a stage-1 output), got {cfg.model}")
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "right"
    model = LlavaForConditionalGeneration.from_pretrained(
        path, dtype=dtype, quantization_config=bnb_config(), device_map={"": "cuda" if torch.cuda.is_available() else "cpu"},
        use_safetensors=True,
    )
    return model, processor


def prepare(model, cfg):
    from peft import get_peft_model, prepare_model_for_kbit_training

    freeze_all(model)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    freeze_all(model)
    peft_model = get_peft_model(model, lora.lora_config(model, cfg))
    for p in projector_params(peft_model):
        p.requires_grad_(True)
    return peft_model


param_groups = lora.param_groups
save = lora.save
