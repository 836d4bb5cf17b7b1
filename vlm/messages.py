"""Normalise chat messages: pull images out of content parts and check them against placeholders."""
from __future__ import annotations

from typing import Any

from .config import InputLimits
from .errors import InputError
from .images import ImageInput, load_image
from .records import IMAGE_TOKEN

SHORT_ANSWER = "Answer the question using a single word or phrase."  # LLaVA-1.5's short-answer prompt suffix

_ROLES = {"system", "user", "assistant"}


def _image_source(part: dict) -> Any:
    if part["type"] == "image_url":
        url = part.get("image_url")
        return url.get("url") if isinstance(url, dict) else url
    for key in ("image", "url", "path"):
        if part.get(key) is not None:
            return part[key]
    raise InputError("image part has no image (expected an 'image', 'url' or 'path' key)")


def normalise(messages: list[dict], limits: InputLimits) -> tuple[list[dict], list]:
    """Return ``(template_messages, images)``.

    ``template_messages`` keep content lists, with image parts reduced to ``{"type": "image"}`` so the
    processor's chat template renders one ``<image>`` per image. ``images`` are loaded ``PIL.Image``s in
    order of appearance.
    """
    if not isinstance(messages, list) or not messages:
        raise InputError("messages must be a non-empty list of {'role', 'content'} dicts")
    out, images = [], []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise InputError(f"message {i} must be a dict with 'role' and 'content'")
        role, content = msg["role"], msg["content"]
        if role not in _ROLES:
            raise InputError(f"message {i} has unknown role {role!r}; expected one of {sorted(_ROLES)}")
        if isinstance(content, str):
            out.append({"role": role, "content": [{"type": "text", "text": content}]})
            continue
        if not isinstance(content, list):
            raise InputError(f"message {i} content must be a string or a list of parts")
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise InputError(f"message {i} has a text part without a 'text' string")
                parts.append({"type": "text", "text": part["text"]})
            elif kind in ("image", "image_url"):
                images.append(load_image(_image_source(part), limits))
                parts.append({"type": "image"})
            else:
                raise InputError(f"message {i} has a part of unknown type {kind!r}; use 'text' or 'image'")
        out.append({"role": role, "content": parts})
    if len(images) > limits.max_images:
        raise InputError(f"{len(images)} images given; the limit is {limits.max_images} per request")
    return out, images


def user_turn(image: ImageInput | None, question: str) -> list[dict]:
    """One user message; the image goes first, as in LLaVA's training data."""
    if not isinstance(question, str):
        raise InputError(f"question must be a string, got {type(question).__name__}")
    parts = [] if image is None else [{"type": "image", "image": image}]
    return [{"role": "user", "content": parts + [{"type": "text", "text": question}]}]


def check_placeholders(prompt: str, n_images: int) -> None:
    found = prompt.count(IMAGE_TOKEN)
    if found != n_images:
        raise InputError(
            f"the prompt has {found} {IMAGE_TOKEN} placeholder(s) but {n_images} image(s) were given; "
            "each image needs exactly one placeholder"
        )
