"""The LiT CLIP as stock transformers classes: ``VisionTextDualEncoderModel`` = a locked pretrained vision tower
(``Dinov2Model``) + a ``CLIPTextModel`` trained from scratch, each with a linear projection, and ``logit_scale``.

Contract:
- the tower is cut to ``image_layer`` layers by :func:`vlm.vision.truncate` (the stock ``pooler_output`` then
  reads that layer; the saved model holds only those layers).
- :func:`text_config` / :func:`build_clip` assemble the model; ``get_image_features``,
  ``get_text_features`` and ``logit_scale`` are CLIP's (unnormalised projections; cosine similarity times
  ``logit_scale.exp()``).
- :func:`smollm2_token_embeddings` gives each entry of a (caption) vocabulary the mean of SmolLM2's input
  embeddings of the same text, reduced by PCA to the text tower's width and scaled to its init std.
"""
from __future__ import annotations

import torch


def text_config(vocab_size: int, hidden: int, layers: int, heads: int, intermediate: int, max_length: int,
                attention_dropout: float = 0.0, eos_token_id: int = 0):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                          num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=max_length,
                          hidden_act="gelu", attention_dropout=attention_dropout, projection_dim=None,
                          pad_token_id=eos_token_id, bos_token_id=eos_token_id, eos_token_id=eos_token_id)


def build_clip(vision_tower, text_cfg, projection_dim: int, logit_scale: float = 2.6592,
               token_embeddings: torch.Tensor | None = None):
    """A ``VisionTextDualEncoderModel`` around ``vision_tower`` (kept as is) and a fresh ``CLIPTextModel``."""
    from transformers import CLIPTextModel, VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    text = CLIPTextModel(text_cfg)
    if token_embeddings is not None:
        table = text.get_input_embeddings().weight
        if token_embeddings.shape != table.shape:
            raise ValueError(f"token embeddings {tuple(token_embeddings.shape)} do not fit the text tower's "
                             f"table {tuple(table.shape)}")
        with torch.no_grad():
            table.copy_(token_embeddings)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision_tower.config, text_cfg,
                                                                  projection_dim=projection_dim,
                                                                  logit_scale_init_value=logit_scale)
    return VisionTextDualEncoderModel(config, vision_model=vision_tower, text_model=text)


@torch.no_grad()
def smollm2_token_embeddings(tokenizer, llm: str, dim: int, std: float = 0.02) -> torch.Tensor:
    """(len(tokenizer), dim) initial token embeddings from an LLM's input embeddings (module docstring)."""
    from vlm.compose import load_llm

    model, llm_tok = load_llm(llm)
    table = model.get_input_embeddings().weight.float()
    if dim > table.shape[1]:
        raise ValueError(f"text width {dim} is wider than {llm}'s embeddings ({table.shape[1]})")
    vectors = torch.empty(len(tokenizer), table.shape[1])
    for i in range(len(tokenizer)):
        piece = tokenizer.convert_ids_to_tokens(i)
        text = piece if piece in tokenizer.all_special_tokens else tokenizer.convert_tokens_to_string([piece])
        ids = llm_tok(text, add_special_tokens=False)["input_ids"] or [llm_tok.eos_token_id]
        vectors[i] = table[ids].mean(0)
    del model
    centred = vectors - vectors.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    reduced = centred @ v[:dim].T
    return reduced * (std / reduced.std())
