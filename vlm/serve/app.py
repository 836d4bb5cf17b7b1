"""Put it together: one Engine, the OpenAI routes and the Gradio UI on one FastAPI app, run by uvicorn."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from .config import ServeConfig
from .engine import Engine


def build_engine(config: ServeConfig, vlm=None) -> Engine:
    """Load the model (unless given) and the content filter, and start the workers."""
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    if vlm is None:
        from vlm import VLM

        vlm = VLM.load(config.model, dtype=config.dtype, limits=config.limits, clip=config.clip)
    else:
        vlm.limits = config.limits
    vlm.video = config.video
    from .moderation import Moderator, PolicyScreen, Screens

    screens = []
    if config.moderation:
        screens.append(Moderator(config.moderation_threshold))
    if config.policy.policies:
        from vlm.policy import PolicyCheck

        screens.append(PolicyScreen(PolicyCheck(vlm.clip, config.policy)))  # no CLIP: ClipNotFoundError
    return Engine(vlm, config, Screens(*screens) if screens else None)


def build_app(config: ServeConfig, engine: Engine):
    """The FastAPI app: API routes first, then the UI mounted at ``/``, all inside the request-id middleware.
    The API's OpenAPI schema is served at ``/openapi.json``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from fastapi import FastAPI

    from .middleware import RequestIds
    from .openai_api import OpenAIRoutes, http_error, install_error_handlers

    app = FastAPI(title="vlm serve", version=_version(), docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json",
                  description="The OpenAI-compatible API of vlm serve (the chat UI is at /). Errors are OpenAI "
                              "error objects; every response carries x-request-id.")
    install_error_handlers(app)
    routes = OpenAIRoutes(engine, config)
    app.include_router(routes.router)
    _install_openapi(app, routes, config)
    if config.ui:
        import gradio as gr

        from .examples import write_examples
        from .ui import CSS, build_ui, theme

        demo = build_ui(engine, config, write_examples())
        demo.queue(default_concurrency_limit=config.capacity + 1)
        app = gr.mount_gradio_app(app, demo, path="", footer_links=["api"], theme=theme(), css=CSS,
                                  max_file_size=config.limits.max_image_bytes * 4, show_error=True)
        app.state.gradio_apps = [r.app for r in app.routes if hasattr(getattr(r, "app", None), "stop_event")]
    app.add_middleware(RequestIds, on_error=engine.internal_error, routing_error=http_error)
    app.state.engine = engine
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vlm")
    except PackageNotFoundError:
        return "0"


def _install_openapi(app, routes, config: ServeConfig) -> None:
    """The schema of the API routes only (the UI's routes are Gradio's), with the request body the chat
    route validates itself and, when an API key is set, bearer auth on /v1."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=routes.router.routes)
            components = schema.setdefault("components", {})
            schemas = components.setdefault("schemas", {})
            # FastAPI documents a 422 for routes with parameters; this API never sends one
            for item in schema["paths"].values():
                for operation in item.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            schemas.update(routes.openapi_components())
            if config.api_key is not None:
                components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                for path, item in schema["paths"].items():
                    if path.startswith("/v1/"):
                        for operation in item.values():
                            operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, plus: print the URL once bound; on SIGTERM/SIGINT drain (keep answering, /health says
        draining, new work gets 503) until in-flight requests are done or the grace period is over, then stop
        and exit 0 (uvicorn's default re-raises the signal after shutdown). A second signal stops at once."""

        engine: Engine
        announce: str = ""

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started and self.announce:
                port = self.servers[0].sockets[0].getsockname()[1] if self.servers else self.config.port
                print(self.announce.replace("{port}", str(port)), flush=True)

        def handle_exit(self, sig, frame):
            if self.should_exit or getattr(self, "draining", False):  # second signal: stop now
                self.force_exit = self.should_exit = True
                return
            print(f"vlm serve: {signal.Signals(sig).name} received, finishing in-flight requests…", flush=True)
            self.draining = True
            self.engine.begin_shutdown()
            threading.Thread(target=self.drain, name="vlm-drain", daemon=True).start()

        def drain(self):
            """Keep serving (/health says draining, new work gets 503) until the engine has finished its
            in-flight jobs (at most the grace period, then they are stopped), then let uvicorn stop."""
            deadline = time.monotonic() + self.engine.config.shutdown_grace_s + 2
            while not self.engine.idle() and time.monotonic() < deadline and not self.should_exit:
                time.sleep(0.05)
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
                       f"(UI: {url}/  API: {url}/v1/chat/completions, {url}/v1/embeddings)")
    try:
        server.run()
    finally:
        engine.close(timeout=5)
    code = 0 if server.started else 1
    print("vlm serve: stopped", flush=True)
    return code
