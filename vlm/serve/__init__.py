"""``vlm serve``: a Gradio chat UI and an OpenAI-compatible HTTP API sharing one model in one process.

Modules: ``config`` (ServeConfig), ``engine`` (shared model, bounded queue, cancellation), ``schemas``
(request models), ``openai_api`` (routes), ``remote_images`` (fetch policy), ``moderation`` (open_nsfw),
``ui`` (Gradio Blocks), ``examples`` (drawn example images), ``app`` (assembly, uvicorn, signals).
"""
from .config import RemoteImagePolicy, ServeConfig

__all__ = ["RemoteImagePolicy", "ServeConfig"]
