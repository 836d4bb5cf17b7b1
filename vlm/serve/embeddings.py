"""``POST /v1/embeddings``: OpenAI's embeddings request and response, through the served model's CLIP.

Contract:

* **Request** (:class:`EmbeddingRequest`, strict like the chat request: an unknown field is a 400 naming it):
  ``model`` (the served model's name), ``input``: a string or a non-empty list of items, ``encoding_format``
  ``"float"`` (default) or ``"base64"`` (little-endian float32, as OpenAI sends it and its client decodes it),
  ``dimensions`` (only the CLIP's own width; vlm does not shorten vectors: any other value is a 400), ``user``
  (accepted and ignored). Token-id arrays (OpenAI's ``list[int]`` inputs) are refused with a 400: the CLIP
  has its own tokenizer.
* **Images, an extension**: an item that is a string starting with ``data:image/``, or an object
  ``{"type": "image_url", "image_url": {"url": ...}}`` (the chat API's image part; ``data:`` always, ``http(s)``
  only under the server's remote-image policy), is embedded by the CLIP's image tower. ``{"type": "text",
  "text": ...}`` is a text item. Texts and images land in the same space: the dot product of two unit vectors
  is their cosine. Images obey the server's image limits (bytes, pixels) and at most
  ``ServeConfig.max_embedding_images`` per request; all items at most ``max_embedding_inputs``.
* **Response**: ``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...] | "b64"}],
  "model", "usage": {"prompt_tokens", "total_tokens"}}``, in input order; every vector is L2-normalised.
  ``prompt_tokens`` counts text tokens as the CLIP's tokenizer does (after its truncation) plus, per image,
  the image tower's patch tokens.
* **Errors**: bad input is a 400 naming the field (``input[2]``, ``dimensions``...); a model served without a
  CLIP a 400 ``no_clip`` saying how to serve one; the work runs on the engine's queue (429 when full, the
  request timeout, a logged 500 naming the request id for a failure inside the server).
"""
from __future__ import annotations

import base64
import json
import threading
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from vlm.config import InputLimits
from vlm.errors import InputError

from .config import RemoteImagePolicy
from .errors import BadRequest, ServeError
from .schemas import ImageURL, _Strict

IMAGE_PREFIX = "data:image/"


class TextItem(_Strict):
    type: Literal["text"]
    text: str


class ImageItem(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


Item = Annotated[Union[TextItem, ImageItem], Field(discriminator="type")]


class EmbeddingRequest(_Strict):
    model: str
    input: Union[str, list[Union[str, Item]]] = Field(
        description="a text, or a list of texts and images; a string starting with `data:image/` or an "
                    "`image_url` item is an image (vlm's extension), embedded into the same space as texts")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, description="only the CLIP's own width is accepted")
    user: str | None = Field(default=None, description="accepted and ignored")


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: Union[list[float], str]


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


def _is_token_array(value: Any) -> bool:
    def ints(v):
        return isinstance(v, list) and bool(v) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)

    return ints(value) or (isinstance(value, list) and bool(value) and all(ints(v) for v in value))


def parse_embedding_request(body: bytes) -> EmbeddingRequest:
    """Validate a JSON body; any problem becomes one :class:`BadRequest` naming the field."""
    from .schemas import _UNION_BRANCH

    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BadRequest("the request body must be a JSON object")
    if _is_token_array(raw.get("input")):
        raise BadRequest("input: token-id arrays are not supported; send text (the CLIP tokenizes it itself) "
                         "or images", param="input", code="unsupported_input")
    try:
        req = EmbeddingRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        err = max(errors, key=lambda e: (len(e["loc"]), not e["type"].endswith("_type")))
        loc = [str(p) for p in err["loc"] if not _UNION_BRANCH.match(str(p).lower())]
        loc = [p for i, p in enumerate(loc) if not (0 < i and loc[i - 1].isdigit() and p in ("text", "image_url")
                                                     and i < len(loc) - 1)]
        param = ".".join(loc) or None
        if err["type"] == "extra_forbidden":
            what = "parameter" if len(loc) == 1 else "field"
            raise BadRequest(f"unknown {what} '{param}': vlm's embeddings API does not accept it",
                             param=param) from None
        where = f"'{param}': " if param else ""
        raise BadRequest(f"invalid request: {where}{err['msg']}", param=param) from None
    items = [req.input] if isinstance(req.input, str) else req.input
    if not items:
        raise BadRequest("input must not be empty", param="input")
    for i, item in enumerate(items):
        if (item if isinstance(item, str) else getattr(item, "text", None)) == "":
            param = "input" if isinstance(req.input, str) else f"input[{i}]"
            raise BadRequest(f"{param} is an empty string: there is nothing to embed", param=param)
    return req


def split_inputs(req: EmbeddingRequest, limits: InputLimits, policy: RemoteImagePolicy, max_inputs: int,
                 max_images: int) -> tuple[list[tuple[int, str]], list[tuple[int, Any]]]:
    """``(texts, images)``: each ``(index, text)`` / ``(index, PIL image)``, images fetched or decoded and
    checked against ``limits``. Raises :class:`BadRequest` naming the item."""
    from vlm.images import load_image

    from .remote_images import image_bytes

    items = [req.input] if isinstance(req.input, str) else req.input
    if len(items) > max_inputs:
        raise BadRequest(f"{len(items)} inputs given; this server embeds at most {max_inputs} per request",
                         param="input", code="too_many_inputs")
    urls = [(i, it) if isinstance(it, str) else (i, it.image_url.url) for i, it in enumerate(items)
            if (isinstance(it, str) and it.startswith(IMAGE_PREFIX)) or isinstance(it, ImageItem)]
    if len(urls) > max_images:
        raise BadRequest(f"{len(urls)} images given; this server embeds at most {max_images} images per request",
                         param="input", code="too_many_images")
    image_at = dict(urls)
    texts = [(i, it if isinstance(it, str) else it.text) for i, it in enumerate(items) if i not in image_at]
    images = []
    for i, url in urls:
        try:
            images.append((i, load_image(image_bytes(url, policy, limits), limits)))
        except ServeError as exc:
            exc.param = f"input[{i}]"
            exc.message = f"input[{i}]: {exc.message}"
            exc.args = (exc.message,)
            raise
        except InputError as exc:  # vlm's ImageError: bad base64, not an image, too large...
            raise BadRequest(f"input[{i}]: {exc}", param=f"input[{i}]") from None
    return texts, images


_clip_lock = threading.Lock()


def served_clip(vlm):
    """The served model's CLIP (loaded once, on first use), or a 400 ``no_clip`` saying how to serve one."""
    from vlm.clip import ClipNotFoundError

    with _clip_lock:
        try:
            return vlm.clip
        except ClipNotFoundError as exc:
            raise BadRequest(f"the served model {vlm.name!r} has no CLIP, so it makes no embeddings ({exc}); "
                             "serve a model folder that carries clip/, or add `vlm serve --clip PATH`",
                             param="model", code="no_clip") from None


def _tokens(clip, texts: list[str], n_images: int) -> int:
    text_tokens = 0
    if texts:
        limit = getattr(clip.model.config.text_config, "max_position_embeddings", None) or 10 ** 9
        text_tokens = sum(min(len(ids), limit) for ids in clip.tokenizer(texts)["input_ids"])
    patch = getattr(clip.model.config.vision_config, "patch_size", None)
    per_image = (clip.size // patch) ** 2 if patch else 0
    return text_tokens + n_images * per_image


def embed(vlm, req: EmbeddingRequest, texts: list[tuple[int, str]], images: list[tuple[int, Any]],
          model_id: str) -> dict:
    """Run the CLIP (``VLM.embed_texts`` / ``VLM.embed_images``) and build the OpenAI response body."""
    clip = served_clip(vlm)
    if req.dimensions is not None and req.dimensions != clip.dim:
        raise BadRequest(f"dimensions is {req.dimensions}, but this model's CLIP makes {clip.dim}-d embeddings and "
                         f"vlm does not shorten them: omit dimensions or send {clip.dim}", param="dimensions")
    vectors: dict[int, np.ndarray] = {}
    if texts:
        for (i, _), v in zip(texts, vlm.embed_texts([t for _, t in texts]).numpy()):
            vectors[i] = v
    if images:
        for (i, _), v in zip(images, vlm.embed_images([im for _, im in images]).numpy()):
            vectors[i] = v
    data = []
    for i in range(len(vectors)):
        v = vectors[i].astype("<f4")
        value = base64.b64encode(v.tobytes()).decode() if req.encoding_format == "base64" else v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = _tokens(clip, [t for _, t in texts], len(images))
    return {"object": "list", "data": data, "model": model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
