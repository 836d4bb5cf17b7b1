"""The llava processor: image preprocessing, ``<image>`` expansion and the chat template.

The chat template is the LLM's own, behind a small model-agnostic prelude that turns LLaVA-style content
lists (``[{"type": "image"}, {"type": "text", "text": ...}]``) into the plain strings LLM templates expect,
with one ``<image>`` placeholder per image part.
"""
from __future__ import annotations

from transformers import LlavaProcessor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from .records import IMAGE_TOKEN

_PRELUDE = (
    "{%- set vlm_ns = namespace(messages=[]) -%}"
    "{%- for m in messages -%}"
    "{%- if m['content'] is string -%}"
    "{%- set vlm_ns.messages = vlm_ns.messages + [m] -%}"
    "{%- else -%}"
    "{%- set vlm_text = namespace(value='') -%}"
    "{%- for part in m['content'] -%}"
    "{%- if part['type'] in ['image', 'image_url'] -%}"
    "{%- set vlm_text.value = vlm_text.value + '" + IMAGE_TOKEN + "\\n' -%}"
    "{%- elif part['type'] == 'text' -%}"
    "{%- set vlm_text.value = vlm_text.value + part['text'] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set vlm_ns.messages = vlm_ns.messages + [{'role': m['role'], 'content': vlm_text.value}] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = vlm_ns.messages %}"
)


def multimodal_chat_template(llm_template: str) -> str:
    """Wrap an LLM chat template so it accepts multimodal content lists."""
    if not llm_template:
        raise ValueError("the LLM's tokenizer has no chat template; vlm needs an instruct/chat model")
    if llm_template.startswith(_PRELUDE):
        return llm_template
    return _PRELUDE + llm_template


def ensure_image_token(tokenizer) -> int:
    """Add ``<image>`` as a special token if missing; return its id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def build_processor(
    tokenizer,
    vision_config,
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
    strategy: str | None = None,
) -> LlavaProcessor:
    """A ``LlavaProcessor`` for a vision tower: pad to square with the mean colour, resize to the tower's
    ``image_size``, normalise (CLIP's statistics unless given). The ``<image>`` expansion counts one token
    per patch plus the tower's extra tokens, less the class token under the ``"default"`` strategy
    (:mod:`vlm.vision`), which is what llava feeds the projector."""
    from .vision import extra_tokens, feature_strategy

    ensure_image_token(tokenizer)
    size = vision_config.image_size
    image_processor = LlavaImageProcessorPil(
        do_pad=True,
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(image_mean or OPENAI_CLIP_MEAN),
        image_std=list(image_std or OPENAI_CLIP_STD),
    )
    tokenizer.padding_side = "left"  # generation pads on the left; training pads itself
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=strategy or feature_strategy(vision_config),
        num_additional_image_tokens=extra_tokens(vision_config),
        chat_template=multimodal_chat_template(tokenizer.chat_template),
        image_token=IMAGE_TOKEN,
    )
