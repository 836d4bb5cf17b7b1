"""A tiny random VLM (2-layer Llama with SmolLM2's tokenizer, a 3-layer CLIP tower at 32 px) for smoke tests,
``vlm bench --tiny`` and ``vlm serve --model tiny``: same code paths as a real model, seconds to build."""
from __future__ import annotations


def tiny_vlm():
    """A tiny random vlm with SmolLM2's tokenizer (as the test fixtures build it), seeded: the same every call."""
    import tempfile

    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM

    from vlm import VLM
    from vlm.compose import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        LlamaForCausalLM(config).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        vision = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=3, num_attention_heads=4)
        return VLM.build(vision, tmp)
