"""The browser UI (Gradio Blocks): Chat, Search (:mod:`vlm.serve.search_ui`), Extract and Model tabs, all
running on the shared Engine."""
from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import gradio as gr
import numpy as np

from vlm.config import GenerationOptions
from vlm.grounding import OCR_MODES

from .config import ServeConfig
from .engine import Completion, Engine, Job
from .errors import ServeError
from .examples import CHAT_EXAMPLES, EXTRACT_EXAMPLES

ERROR_MARK = "**Error:** "
STOPPED_MARK = "\n\n*[stopped]*"
NO_TEMPLATE = "(type fields below)"
ANNOTATED_MAX_SIDE = 1280  # px: the Extract tab's annotated page(s), long side

CSS = """
#stop-btn { min-width: 6em; }
.vlm-status { font-size: 0.85em; opacity: 0.8; }
"""


def theme():
    # System fonts only: the server may run with no internet, so no Google Fonts.
    return gr.themes.Soft(
        font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "Consolas", "monospace"],
    )


# -- conversation conversion -------------------------------------------------------------------------
def _parts(content) -> list:
    return content if isinstance(content, list) else [content]


def _text_of(part) -> str | None:
    if isinstance(part, str):
        return part
    if isinstance(part, dict) and part.get("type") == "text":
        return part.get("text", "")
    return None


def _path_of(part) -> str | None:
    if isinstance(part, dict):
        if part.get("type") == "file" or "file" in part:
            f = part.get("file") or {}
            return f.get("path") if isinstance(f, dict) else getattr(f, "path", None)
        if "path" in part:
            return part["path"]
    return None


def _is_error(message: dict) -> bool:
    return message["role"] == "assistant" and any(
        (_text_of(p) or "").startswith(ERROR_MARK) for p in _parts(message["content"])
    )


def history_to_messages(history: list[dict]) -> list[dict]:
    """Chatbot history -> vlm messages. Failed turns (the error and the user turn before it) are left out."""
    kept: list[dict] = []
    for msg in history:
        if _is_error(msg):
            while kept and kept[-1]["role"] == "user":
                kept.pop()
            continue
        kept.append(msg)
    out: list[dict] = []
    for msg in kept:
        parts = []
        for part in _parts(msg["content"]):
            path, text = _path_of(part), _text_of(part)
            if path is not None and msg["role"] == "user":
                parts.append({"type": "image", "image": path})
            elif text is not None:
                text = text.removesuffix(STOPPED_MARK)
                if text:
                    parts.append({"type": "text", "text": text})
        if not parts:
            continue
        if out and out[-1]["role"] == msg["role"]:  # Gradio may split one turn into several messages
            out[-1]["content"].extend(parts)
        else:
            out.append({"role": msg["role"], "content": parts})
    return out


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def format_info(info: dict) -> str:
    v, p, llm = info["vision_tower"], info["projector"], info["llm"]
    return "\n".join([
        f"### {info['name']}",
        f"- **dtype:** {info['dtype']}  ·  **parameters:** {_count(info['parameters'])}",
        f"- **vision tower:** {v['type']}, {v['image_size']} px images, patch {v['patch_size']}, "
        f"{v['layers']} layers, width {v['hidden_size']} ({_count(v['parameters'])})",
        f"- **projector:** {p['type']} {p['in']} → {p['out']} ({_count(p['parameters'])})",
        f"- **language model:** {llm['type']}, {llm['layers']} layers, width {llm['hidden_size']}, "
        f"context {llm['context_length']} tokens ({_count(llm['parameters'])})",
        f"- **image tokens per image:** {info['image_tokens']}",
    ])


def _jsonable(result):
    if hasattr(result, "to_dict"):
        return result.to_dict()
    if hasattr(result, "model_dump"):
        return result.model_dump()
    if dataclasses.is_dataclass(result):
        return dataclasses.asdict(result)
    return result


class ChatUI:
    def __init__(self, engine: Engine, config: ServeConfig, examples: dict[str, Path]):
        self.engine = engine
        self.config = config
        self.examples = examples
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    # -- chat handlers ---------------------------------------------------------------------------------
    def send(self, history: list[dict], message: dict | None, temperature: float, top_p: float,
             max_tokens: float, request: gr.Request, ocr: str | None = None):
        """Add the user's images and text to the chat, then stream the answer (the ``/chat`` endpoint)."""
        message = message or {"text": "", "files": []}
        files, text = message.get("files") or [], (message.get("text") or "").strip()
        history = list(history or [])
        if not files and not text:
            yield history, gr.MultimodalTextbox(value=None, interactive=True)
            return
        content = [{"path": f if isinstance(f, str) else f["path"]} for f in files] + ([text] if text else [])
        history.append({"role": "user", "content": content})
        locked = gr.MultimodalTextbox(value=None, interactive=False)
        for history in self.respond(history, temperature, top_p, max_tokens, request, ocr):
            yield history, locked
        yield history, gr.MultimodalTextbox(value=None, interactive=True)

    def regenerate(self, history: list[dict], temperature: float, top_p: float, max_tokens: float,
                   request: gr.Request, ocr: str | None = None):
        """Drop the last answer and answer the last user turn again."""
        history = list(history or [])
        while history and history[-1]["role"] == "assistant":
            history.pop()
        yield from self.respond(history, temperature, top_p, max_tokens, request, ocr)

    def respond(self, history: list[dict], temperature: float, top_p: float, max_tokens: float,
                request: gr.Request, ocr: str | None = None):
        """``ocr``: the OCR text setting (auto / always / never; None: the model's default, ``vlm.grounding``)."""
        history = list(history or [])
        if not history or history[-1]["role"] != "user":
            yield history
            return
        history.append({"role": "assistant", "content": ""})
        yield history
        session = getattr(request, "session_hash", None) or "anonymous"
        try:
            options = GenerationOptions(max_new_tokens=int(max_tokens), temperature=float(temperature),
                                        top_p=float(top_p))
            prepared = self.engine.prepare_chat(history_to_messages(history[:-1]), options, ocr=ocr or None)
            job = self.engine.submit_chat(prepared)
        except ServeError as err:
            history[-1]["content"] = ERROR_MARK + err.message
            yield history
            return
        with self._lock:
            self._jobs[session] = job
        text = ""
        try:
            for piece in job:
                text += piece
                history[-1]["content"] = text
                yield history
            done: Completion = job.result
            if done.finish_reason in ("cancelled", "timeout", "shutdown"):
                note = {"cancelled": "stopped", "timeout": "timed out", "shutdown": "server shutting down"}
                history[-1]["content"] = (done.text or "") + STOPPED_MARK.replace("stopped", note[done.finish_reason])
            elif not done.text:
                history[-1]["content"] = "*(empty answer)*"
            else:
                history[-1]["content"] = done.text
        except ServeError as err:
            history[-1]["content"] = (text + "\n\n" if text else "") + ERROR_MARK + err.message
        finally:
            job.stop("cancelled")  # no-op when finished; frees the worker if the browser went away
            with self._lock:
                if self._jobs.get(session) is job:
                    del self._jobs[session]
        yield history

    def stop(self, request: gr.Request):
        session = getattr(request, "session_hash", None) or "anonymous"
        with self._lock:
            job = self._jobs.get(session)
        if job is not None:
            job.stop("cancelled")

    def clear(self, request: gr.Request):
        self.stop(request)
        return [], gr.MultimodalTextbox(value=None, interactive=True)

    # -- extract handler ---------------------------------------------------------------------------------
    def extract(self, document, template: str, fields: str):
        """Run VLM.extract (with the values' sources) and VLM.ocr on an uploaded image or PDF. Returns (json, ocr
        text, status, annotated page): the page image(s) holding the values with their OCR line boxes drawn
        (``vlm.extract.sources``); for a PDF every page holding a value, stacked (page 1 when none does)."""
        vlm = self.engine.vlm
        if not document:
            return None, "", ERROR_MARK + "drop an image or PDF first", None
        path = document if isinstance(document, str) else getattr(document, "name", None) or document.get("path")
        names = [f.strip() for f in (fields or "").replace("\n", ",").split(",") if f.strip()]
        if not hasattr(vlm, "extract") or not hasattr(vlm, "ocr"):
            return None, "", ERROR_MARK + "document extraction is not available in this version of vlm", None
        kwargs = {"fields": names} if names else {}
        if not names and template and template != NO_TEMPLATE:
            kwargs = {"template": template}
        if not kwargs:
            return None, "", ERROR_MARK + "pick a template or type the fields to extract", None

        def work(job: Job):
            lines = vlm.ocr(path)  # cached per page: extraction reuses these lines
            result, boxes = vlm.extract(path, sources=True, **kwargs)
            return _jsonable(result), lines, boxes

        try:
            result, lines, boxes = self.engine.submit(work).wait()
            annotated = _annotated_pages(vlm, path, boxes)
        except ServeError as err:
            return None, "", ERROR_MARK + err.message, None
        except ValueError as err:
            return None, "", ERROR_MARK + str(err), None
        ocr_text = "\n".join(getattr(line, "text", str(line)) for line in lines)
        located = sum(bool(b) for b in boxes.values())
        status = f"{len(lines)} OCR lines · {located} of {len(boxes)} values located"
        return result, ocr_text, status, annotated


def _annotated_pages(vlm, path, boxes: dict):
    """The AnnotatedImage update: the pages holding a value (page 1 when none), boxes drawn and listed."""
    from vlm.documents import iter_pages
    from vlm.extract.sources import annotate_pages, field_colours

    numbers = sorted({b.page for found in boxes.values() for b in found}) or [1]
    pages = {page.number: page.image for page in iter_pages(path, numbers, limits=vlm.limits)}
    colours = field_colours(boxes)
    image, annotations = annotate_pages(pages, boxes, max_side=ANNOTATED_MAX_SIDE, colours=colours)
    # one translucent mask per field (its legend entry lights up all its lines); the outlines and labels are drawn
    masks: dict[str, np.ndarray] = {}
    for (x0, y0, x1, y1), label in annotations:
        masks.setdefault(label, np.zeros((image.height, image.width), dtype=np.float32))[y0:y1, x0:x1] = 0.3
    return gr.AnnotatedImage(value=(image, list(zip(masks.values(), masks))), color_map=colours)


def _template_names() -> list[str]:
    try:
        from vlm.extract.prompts import TEMPLATES
    except ImportError:
        return []
    return list(TEMPLATES)


def build_ui(engine: Engine, config: ServeConfig, examples: dict[str, Path]) -> gr.Blocks:
    ui = ChatUI(engine, config, examples)
    info = engine.vlm.info()
    model_id = config.served_model_id()
    with gr.Blocks(title=f"vlm · {model_id}") as demo:
        gr.Markdown(f"## vlm — {model_id}\nA LLaVA-style vision-language assistant. "
                    "The same model answers the OpenAI-compatible API at `/v1/chat/completions` "
                    "(and `/v1/embeddings` with its CLIP).")
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat"):
                with gr.Row():
                    with gr.Column(scale=4):
                        chatbot = gr.Chatbot(elem_id="chatbot", height=460, label="Chat", layout="bubble",
                                             buttons=["copy"], feedback_options=None,
                                             placeholder="Upload, drop or paste an image and ask about it.")
                        box = gr.MultimodalTextbox(
                            elem_id="chat-input", file_types=["image"], file_count="multiple", sources=["upload"],
                            placeholder="Ask about an image (upload, drag-and-drop or paste one or more)…",
                            show_label=False, autofocus=True,
                        )
                        with gr.Row():
                            stop_btn = gr.Button("Stop", elem_id="stop-btn", variant="stop")
                            regen_btn = gr.Button("Regenerate", elem_id="regen-btn")
                            clear_btn = gr.Button("Clear", elem_id="clear-btn")
                    with gr.Column(scale=1, min_width=220):
                        with gr.Accordion("Settings", open=True):
                            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature",
                                                    info="0 = greedy", elem_id="temperature")
                            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p", elem_id="top-p")
                            max_tokens = gr.Slider(1, config.max_tokens_cap, value=min(256, config.max_tokens_cap),
                                                   step=1, label="Max new tokens", elem_id="max-tokens")
                            ocr = gr.Radio(list(OCR_MODES), value=engine.vlm.grounding.ocr, label="OCR text",
                                           info="put each image's OCR text in the prompt (auto: when it has text)",
                                           elem_id="ocr-mode")
                gr.Examples(
                    examples=[{"text": ex.question, "files": [str(examples[ex.name])]} for ex in CHAT_EXAMPLES],
                    inputs=box, label="Examples",
                )
                settings = [temperature, top_p, max_tokens, ocr]
                box.submit(ui.send, [chatbot, box, *settings], [chatbot, box], api_name="chat",
                           concurrency_limit=None)
                stop_btn.click(ui.stop, None, None, queue=False, api_name="stop")
                regen_btn.click(ui.regenerate, [chatbot, *settings], chatbot, api_name="regenerate",
                                concurrency_limit=None)
                clear_btn.click(ui.clear, None, [chatbot, box], queue=False, api_name="clear")

            with gr.Tab("Search", id="search"):
                from .search_ui import build_search_tab

                demo_search = build_search_tab(engine, config, tabs, box)

            with gr.Tab("Extract", id="extract"):
                gr.Markdown("Drop a receipt, invoice or form (image or PDF). Pick a template or type the fields; "
                            "the answer is JSON, beside the document with the OCR boxes each value was read from "
                            "(a PDF shows the pages that hold values) and the OCR lines.")
                with gr.Row():
                    with gr.Column(scale=1):
                        doc = gr.File(label="Document (image or PDF)", file_types=["image", ".pdf"],
                                      elem_id="extract-doc", type="filepath")
                        names = _template_names()
                        template = gr.Dropdown([NO_TEMPLATE] + names, value=names[0] if names else NO_TEMPLATE,
                                               label="Template", elem_id="extract-template")
                        fields = gr.Textbox(label="Fields (comma-separated; overrides the template)",
                                            placeholder="company, date, total", elem_id="extract-fields")
                        extract_btn = gr.Button("Extract", variant="primary", elem_id="extract-btn")
                        status = gr.Markdown(elem_classes=["vlm-status"])
                    with gr.Column(scale=1):
                        result = gr.JSON(label="Extracted JSON", elem_id="extract-json")
                        ocr_lines = gr.Textbox(label="OCR lines", lines=10, max_lines=14, elem_id="extract-ocr")
                    with gr.Column(scale=1):
                        boxes = gr.AnnotatedImage(label="Where the values came from", elem_id="extract-boxes",
                                                  height=600)
                gr.Examples(examples=[[str(examples[ex.name]), "receipt" if "receipt" in names else NO_TEMPLATE, ""]
                                      for ex in EXTRACT_EXAMPLES], inputs=[doc, template, fields])
                extract_btn.click(ui.extract, [doc, template, fields], [result, ocr_lines, status, boxes],
                                  api_name="extract", concurrency_limit=None)

            with gr.Tab("Model", id="model"):
                gr.Markdown(format_info(info))
                gr.JSON(value=info, label="VLM.info()")
                health = gr.JSON(label="Server status", value=engine.snapshot)
                gr.Button("Refresh status").click(engine.snapshot, None, health, queue=False, api_name="status")
    demo.ui = ui  # handy for tests and introspection
    demo.search = demo_search
    return demo
