"""``ServeConfig``: everything ``vlm serve`` can be told, as one typed dataclass."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from vlm.config import InputLimits
from vlm.policy import PolicyConfig
from vlm.video import VideoOptions


@dataclass
class RemoteImagePolicy:
    """When and how http(s) image URLs may be fetched. Off unless ``enabled``."""

    enabled: bool = False
    max_bytes: int = 10 * 1024 * 1024
    timeout_s: float = 10.0
    max_redirects: int = 3
    # Private networks a trusted deployment may still reach (CIDRs). Empty: every loopback, private,
    # link-local, multicast or reserved address is refused.
    allowed_networks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"remote image max_bytes must be positive, got {self.max_bytes}")
        if self.timeout_s <= 0:
            raise ValueError(f"remote image timeout must be positive, got {self.timeout_s}")
        if self.max_redirects < 0:
            raise ValueError(f"max_redirects must be >= 0, got {self.max_redirects}")
        for net in self.allowed_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"not a network in CIDR form: {net!r}") from None


@dataclass
class ServeConfig:
    """How the server runs: where it binds, what it serves, and the limits it enforces."""

    model: str = "vlm-tiny"
    dtype: str | None = None
    model_id: str | None = None  # the name clients pass as "model"; default: the folder / registered name
    host: str = "127.0.0.1"
    port: int = 7860
    api_key: str | None = None
    concurrency: int = 1  # generations running at once
    queue_size: int = 8  # requests waiting beyond those running; more get 429
    request_timeout_s: float = 120.0  # from arrival to last token, queue wait included
    shutdown_grace_s: float = 10.0  # how long in-flight generations may run on after SIGTERM
    retry_after_s: int = 2  # assumed seconds per job for Retry-After until jobs have been timed
    unhealthy_after: int = 3  # consecutive server-side failures that turn /health to 503 (a success resets)
    max_body_bytes: int = 32 * 1024 * 1024
    max_prompt_tokens: int | None = None  # None: the model's context minus the answer
    default_max_tokens: int = 256
    max_tokens_cap: int = 2048
    limits: InputLimits = field(default_factory=InputLimits)
    remote_images: RemoteImagePolicy = field(default_factory=RemoteImagePolicy)
    moderation: bool = True
    moderation_threshold: float = 0.8  # open_nsfw score at or above which an image is refused
    policy: PolicyConfig = field(default_factory=PolicyConfig)  # text policies (vlm.policy); none = off
    video: VideoOptions = field(default_factory=VideoOptions)  # frames per video_url part, bytes per video
    ui: bool = True
    threads: int | None = None  # torch intra-op threads; None: torch's default
    clip: str | None = None  # the CLIP for /v1/embeddings and the Search tab; None: the model folder's clip/
    index: str | None = None  # the image index the UI's Search tab opens by default (an ImageIndex folder)
    max_embedding_inputs: int = 2048  # items per /v1/embeddings request (OpenAI's limit)
    max_embedding_images: int = 64  # images per /v1/embeddings request


    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.queue_size < 0:
            raise ValueError(f"queue size must be >= 0, got {self.queue_size}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request timeout must be positive, got {self.request_timeout_s}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not 0.0 <= self.moderation_threshold <= 1.0:
            raise ValueError(f"moderation threshold must be in [0, 1], got {self.moderation_threshold}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(f"max prompt tokens must be positive, got {self.max_prompt_tokens}")
        if self.unhealthy_after < 1:
            raise ValueError(f"unhealthy_after must be at least 1, got {self.unhealthy_after}")
        if self.retry_after_s < 1:
            raise ValueError(f"retry_after_s must be at least 1, got {self.retry_after_s}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.max_embedding_inputs < 1 or self.max_embedding_images < 0:
            raise ValueError("max_embedding_inputs must be at least 1 and max_embedding_images at least 0, got "
                             f"{self.max_embedding_inputs} and {self.max_embedding_images}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("--api-key must not be empty")

    @property
    def capacity(self) -> int:
        """Requests admitted at once: running plus waiting."""
        return self.concurrency + self.queue_size

    def served_model_id(self) -> str:
        if self.model_id:
            return self.model_id
        from pathlib import PurePath

        return PurePath(str(self.model).rstrip("/")).name or str(self.model)
