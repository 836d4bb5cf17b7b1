"""``vlm serve``: the chat UI and the OpenAI-compatible API on one port, sharing one model."""
from __future__ import annotations

import os

from .common import add_model_arguments

HELP = "serve a browser chat UI and an OpenAI-compatible API (binds 127.0.0.1 by default)"


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--model-id", default=None, help="model name clients send (default: the model folder name)")
    parser.add_argument("--api-key", default=os.environ.get("VLM_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on the API (default: $VLM_API_KEY if set)")
    parser.add_argument("--concurrency", type=int, default=1, help="generations running at once (default 1)")
    parser.add_argument("--queue-size", type=int, default=8, help="requests waiting beyond those running; "
                        "more get HTTP 429 (default 8)")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request, queue wait "
                        "included (default 120)")
    parser.add_argument("--shutdown-grace", type=float, default=10.0, help="seconds in-flight requests may run "
                        "on after SIGTERM (default 10)")
    parser.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024)
    parser.add_argument("--max-image-bytes", type=int, default=None, help="per image (default 20 MiB)")
    parser.add_argument("--max-image-pixels", type=int, default=None, help="per image (default 40 M)")
    parser.add_argument("--max-images", type=int, default=None, help="per request (default 8)")
    parser.add_argument("--max-prompt-tokens", type=int, default=None,
                        help="prompt tokens incl. image tokens (default: the model's context)")
    parser.add_argument("--max-tokens-cap", type=int, default=2048, help="largest max_tokens a request may ask")
    parser.add_argument("--allow-remote-images", action="store_true",
                        help="let requests use http(s) image URLs (public addresses only, size/time limited)")
    parser.add_argument("--remote-image-max-bytes", type=int, default=10 * 1024 * 1024)
    parser.add_argument("--remote-image-timeout", type=float, default=10.0)
    parser.add_argument("--no-moderation", action="store_true", help="do not screen images with open_nsfw")
    parser.add_argument("--moderation-threshold", type=float, default=0.8,
                        help="open_nsfw score at or above which an image is refused (default 0.8)")
    parser.add_argument("--clip", default=None, help="CLIP folder for /v1/embeddings and the Search tab "
                        "(default: the model folder's clip/, if any)")
    parser.add_argument("--index", default=None, help="image index folder the UI's Search tab opens by default "
                        "(`vlm index add DIR --db PATH` makes one)")
    parser.add_argument("--policy", action="append", default=[], metavar="TEXT[=THRESHOLD]",
                        help="refuse images the CLIP (--clip, else the model's) matches to TEXT, e.g. --policy 'a weapon' or "
                        "--policy 'a credit card=0.7' (repeatable; score: TEXT's probability against neutral "
                        "phrases, vlm.policy)")
    parser.add_argument("--policy-threshold", type=float, default=None,
                        help="threshold of every --policy without its own (default: the calibrated "
                        "vlm.policy.DEFAULT_THRESHOLD)")
    parser.add_argument("--video-frames", type=int, default=4,
                        help="frames sampled uniformly from each video_url part (default 4)")
    parser.add_argument("--no-ui", action="store_true", help="API only")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def config_from_args(args):
    from dataclasses import replace

    from vlm.config import InputLimits
    from vlm.policy import DEFAULT_THRESHOLD, PolicyConfig
    from vlm.serve.config import RemoteImagePolicy, ServeConfig
    from vlm.video import VideoOptions

    limits = InputLimits()
    overrides = {k: v for k, v in (("max_image_bytes", args.max_image_bytes),
                                   ("max_image_pixels", args.max_image_pixels),
                                   ("max_images", args.max_images)) if v is not None}
    for key, value in overrides.items():
        if value < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be positive, got {value}")
    limits = replace(limits, **overrides)
    return ServeConfig(
        model=args.model, dtype=args.dtype, model_id=args.model_id, host=args.host, port=args.port,
        api_key=args.api_key, concurrency=args.concurrency, queue_size=args.queue_size,
        request_timeout_s=args.request_timeout, shutdown_grace_s=args.shutdown_grace,
        max_body_bytes=args.max_body_bytes, max_prompt_tokens=args.max_prompt_tokens,
        max_tokens_cap=args.max_tokens_cap, limits=limits,
        remote_images=RemoteImagePolicy(enabled=args.allow_remote_images, max_bytes=args.remote_image_max_bytes,
                                        timeout_s=args.remote_image_timeout),
        moderation=not args.no_moderation, moderation_threshold=args.moderation_threshold, ui=not args.no_ui,
        policy=PolicyConfig.from_specs(args.policy, DEFAULT_THRESHOLD if args.policy_threshold is None
                                       else args.policy_threshold),
        video=VideoOptions(frames=args.video_frames),
        threads=args.threads, clip=args.clip, index=args.index,
    )


def run(args) -> int:
    from vlm.serve.app import serve

    code = serve(config_from_args(args))
    _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """Finalising an interpreter that holds torch, gradio and a model takes seconds (8+ s measured on a
    loaded 2-core box) after the server has already stopped cleanly. Run the atexit handlers (logging,
    gradio's temp files), flush, and leave, so SIGTERM ends the process promptly."""
    import atexit
    import os
    import sys

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
