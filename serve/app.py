"""Put it together: one Engine, the OpenAI routes and the Gradio UI on one FastAPI app, run by uvicorn."""
from __future__ import annotations

import logging
import os
import signal
import sys

from .config import ServeConfig
from .engine import Engine


def build_engine(config: ServeConfig, vlm=None) -> Engine:
    """Load the model (unless given) and the content filter, and start the workers."""
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    if vlm is None:
        from vlm import VLM

        vlm = VLM.load(config.model, dtype=config.dtype, limits=config.limits)
    else:
        vlm.limits = config.limits
    moderator = None
    if config.moderation:
        from .moderation import Moderator

        moderator = Moderator(config.moderation_threshold)
    return Engine(vlm, config, moderator)


def build_app(config: ServeConfig, engine: Engine):
    """The FastAPI app: API routes first, then the UI mounted at ``/``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from fastapi import FastAPI

    from .openai_api import OpenAIRoutes, install_error_handlers

    app = FastAPI(title="vlm serve", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    app.include_router(OpenAIRoutes(engine, config).router)
    if config.ui:
        import gradio as gr

        from .examples import write_examples
        from .ui import CSS, build_ui, theme

        demo = build_ui(engine, config, write_examples())
        demo.queue(default_concurrency_limit=config.capacity + 1)
        app = gr.mount_gradio_app(app, demo, path="", footer_links=["api"], theme=theme(), css=CSS,
                                  max_file_size=config.limits.max_image_bytes * 4, show_error=True)
        app.state.gradio_apps = [r.app for r in app.routes if hasattr(getattr(r, "app", None), "stop_event")]
    app.state.engine = engine
    return app


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, plus: print the URL once bound; on SIGTERM/SIGINT stop the engine gracefully and
        exit 0 (uvicorn's default re-raises the signal after shutdown)."""

        engine: Engine
        announce: str = ""

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started and self.announce:
                port = self.servers[0].sockets[0].getsockname()[1] if self.servers else self.config.port
                print(self.announce.replace("{port}", str(port)), flush=True)

        def handle_exit(self, sig, frame):
            if self.should_exit:  # second signal: stop now
                self.force_exit = True
                return
            print(f"vlm serve: {signal.Signals(sig).name} received, finishing in-flight requests…", flush=True)
            self.engine.begin_shutdown()
            # End the UI's idle heartbeat streams (open browser tabs), as gradio's own launch() does, so
            # they do not hold the shutdown for the whole graceful timeout.
            for gradio_app in getattr(self.config.app.state, "gradio_apps", []):
                gradio_app.stop_event.set()
            self.should_exit = True

    return Server


def serve(config: ServeConfig, vlm=None) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    engine = build_engine(config, vlm)
    app = build_app(config, engine)
    uv_config = uvicorn.Config(
        app, host=config.host, port=config.port, log_level="warning", access_log=False,
        timeout_graceful_shutdown=max(1, int(config.shutdown_grace_s + 2)), lifespan="on",
    )
    server = _server_class()(uv_config)
    server.engine = engine
    host = f"[{config.host}]" if ":" in config.host else config.host
    url = f"http://{host}:{{port}}"
    server.announce = (f"vlm serve: {config.served_model_id()} running at {url}  "
                       f"(UI: {url}/  API: {url}/v1/chat/completions)")
    try:
        server.run()
    finally:
        engine.close(timeout=5)
    code = 0 if server.started else 1
    print("vlm serve: stopped", flush=True)
    return code
