"""The UI's Search tab: search an image index (:class:`vlm.index.ImageIndex`) by text, see the best images as a
grid of thumbnails with their scores, click one to chat about it.

Contract:

* The index is a folder on the **server's** disk: the tab's path box starts at ``vlm serve --index PATH``
  (empty without it); any index folder may be typed there. Indexes are opened with the served model's CLIP
  (``--clip`` or the model folder's ``clip/``; :func:`vlm.serve.embeddings.served_clip`) and stay open for the
  server's life (Milvus Lite allows one process per index).
* **Search** shows the ``k`` best images, best first, as thumbnails captioned ``score · file name`` (the score
  is the cosine of the query's and the image's CLIP vectors). It runs in the UI's own thread, not on the
  engine's queue (one short CLIP text pass and an exact scan), so a long answer being generated does not hold
  it up; while a folder is being indexed the index is busy and a search says so. An image that can no longer
  be read is left out and counted in the status line.
* **Index a folder** adds every image under a server folder to the index (creating the index if the folder
  has none), with a progress bar; unreadable files are reported (path and reason) and skipped; content already
  indexed is not embedded again. One indexing runs at a time, outside the engine's queue (it may take long).
* **Clicking a thumbnail** copies that image to the server's temp folder and adds it to the Chat tab's input
  (up to the server's images per request), then switches to the Chat tab.
* Every failure (no index there, another CLIP's index, no CLIP, a busy server...) is a status line starting
  with ``**Error:**``, never a traceback.
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from .config import ServeConfig
from .engine import Engine
from .errors import ServeError

ERROR_MARK = "**Error:** "
THUMBNAIL_PX = 256
MAX_K = 48
MAX_FAILED_SHOWN = 20
BUSY_WAIT_S = 5.0


@dataclass(frozen=True)
class Shown:
    """One thumbnail of the grid: the indexed file and its score."""

    path: str
    score: float


class SearchTab:
    def __init__(self, engine: Engine, config: ServeConfig, scratch: Path | None = None):
        self.engine = engine
        self.config = config
        self.scratch = Path(scratch or tempfile.mkdtemp(prefix="vlm-serve-search-"))
        self._indexes: dict[str, object] = {}
        self._lock = threading.Lock()  # the open indexes and their stores: one user at a time
        self._indexing = threading.Lock()

    # -- indexes ----------------------------------------------------------------------------------------
    def _open(self, folder: str, create: bool = False):
        from vlm.index import ImageIndex

        from .embeddings import served_clip

        folder = (folder or "").strip()
        if not folder:
            raise ValueError("type the path of an image index folder first")
        key = str(Path(folder).expanduser().resolve())
        index = self._indexes.get(key)
        if index is None:
            index = ImageIndex.open(key, served_clip(self.engine.vlm), create=create)
            self._indexes[key] = index
        return index

    def close(self) -> None:
        with self._lock:
            for index in self._indexes.values():
                index.close()
            self._indexes.clear()

    # -- handlers ---------------------------------------------------------------------------------------
    def search(self, folder: str, query: str, k: float):
        """Returns (gallery items, shown hits, status)."""
        query = (query or "").strip()
        if not query:
            return [], [], ERROR_MARK + "type what to look for"

        if not self._lock.acquire(timeout=BUSY_WAIT_S):
            return [], [], ERROR_MARK + "the index is busy (a folder is being indexed); try again when it is done"
        try:
            hits = self._open(folder).search(query, k=max(1, min(int(k), MAX_K)))
        except ServeError as err:
            return [], [], ERROR_MARK + err.message
        except (ValueError, OSError) as err:  # no index there, another CLIP's index, a bad path...
            return [], [], ERROR_MARK + str(err)
        finally:
            self._lock.release()
        items, shown, gone = [], [], 0
        for hit in hits:
            thumb = _thumbnail(hit.path)
            if thumb is None:
                gone += 1
                continue
            items.append((thumb, f"{hit.score:.3f} · {Path(hit.path).name}"))
            shown.append(Shown(hit.path, hit.score))
        status = f"{len(shown)} image(s) for “{query}”, best first (score = cosine similarity)"
        if gone:
            status += f"; {gone} indexed file(s) could not be read any more and are left out"
        if not hits:
            status = "the index has no images yet: index a folder below"
        return items, shown, status

    def index_folder(self, folder: str, source: str, progress=gr.Progress()):
        """Add the images under ``source`` to the index at ``folder``; returns the status."""
        source = (source or "").strip()
        if not source:
            return ERROR_MARK + "type the path of a folder of images to index"
        if not Path(source).expanduser().is_dir():
            return ERROR_MARK + f"no such folder on the server: {source}"
        if not self._indexing.acquire(blocking=False):
            return ERROR_MARK + "another folder is being indexed; try again when it is done"
        try:
            progress(0, desc="Opening the index")
            with self._lock:
                index = self._open(folder, create=True)
            from vlm.index import image_files

            total = len(image_files([source]))
            progress((0, total), desc="Indexing", unit="images")

            def on_progress(done: int, total: int) -> None:
                progress((done, total), desc="Indexing", unit="images")

            with self._lock:
                report = index.add([source], batch_size=8, on_progress=on_progress)
                size = len(index)
        except ServeError as err:
            return ERROR_MARK + err.message
        except (ValueError, OSError) as err:
            return ERROR_MARK + str(err)
        finally:
            self._indexing.release()
        lines = [f"Indexed {source}: {report.summary()}; the index now holds {size} image(s)."]
        if report.failed:
            lines.append("")
            lines.append("Unreadable, skipped:")
            lines += [f"- `{Path(p).name}`: {reason}" for p, reason in report.failed[:MAX_FAILED_SHOWN]]
            if len(report.failed) > MAX_FAILED_SHOWN:
                lines.append(f"- … and {len(report.failed) - MAX_FAILED_SHOWN} more")
        return "\n".join(lines)

    def pick(self, shown: list, box: dict | None, evt: gr.SelectData):
        """A thumbnail was clicked: add its image to the chat input and go to the Chat tab."""
        box = dict(box or {})
        files = list(box.get("files") or [])
        index = evt.index if isinstance(evt.index, int) else None
        if index is None or not 0 <= index < len(shown or []):
            return gr.skip(), gr.skip(), ERROR_MARK + "that image is no longer in the results"
        limit = self.engine.vlm.limits.max_images
        if len(files) >= limit:
            return (gr.skip(), gr.skip(),
                    ERROR_MARK + f"the chat input already holds {len(files)} image(s); the limit is {limit}")
        item = shown[index]
        try:
            copy = self._copy(Path(item.path))
        except OSError as err:
            return gr.skip(), gr.skip(), ERROR_MARK + f"cannot read {item.path}: {err.strerror or err}"
        files.append(str(copy))
        value = {"text": box.get("text") or "", "files": [f if isinstance(f, str) else f["path"] for f in files]}
        return gr.Tabs(selected="chat"), gr.MultimodalTextbox(value=value), f"sent {Path(item.path).name} to the chat"

    def _copy(self, path: Path) -> Path:
        """A copy in the server's temp folder (the only place the UI may hand files from), named by content."""
        data = path.read_bytes()
        target = self.scratch / f"{hashlib.sha256(data).hexdigest()[:16]}{path.suffix.lower() or '.img'}"
        if not target.exists():
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_bytes(data)
            shutil.move(tmp, target)
        return target


def _thumbnail(path: str):
    from PIL import Image

    from vlm.errors import ImageError
    from vlm.images import load_image

    try:
        img = load_image(path)
    except (ImageError, OSError):
        return None
    img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.BICUBIC)
    return img


def build_search_tab(engine: Engine, config: ServeConfig, tabs: gr.Tabs, chat_box: gr.MultimodalTextbox) -> SearchTab:
    """The tab's components and events (call inside ``with gr.Tab(...)``)."""
    tab = SearchTab(engine, config)
    gr.Markdown("Search an image index by text; click a picture to chat about it. The index and the folders are "
                "paths on the server (`vlm index add DIR --db PATH` builds one too).")
    with gr.Row():
        folder = gr.Textbox(label="Index folder", value=config.index or "", placeholder="/path/to/photos.idx",
                            elem_id="search-index", scale=3)
        k = gr.Slider(1, MAX_K, value=12, step=1, label="Results", elem_id="search-k", scale=1)
    with gr.Row():
        query = gr.Textbox(label="Search", placeholder="a dog running on the beach", elem_id="search-query", scale=4)
        search_btn = gr.Button("Search", variant="primary", elem_id="search-btn", scale=1)
    status = gr.Markdown(elem_id="search-status", elem_classes=["vlm-status"])
    gallery = gr.Gallery(label="Results (score · file)", elem_id="search-gallery", columns=6, height="auto",
                         allow_preview=False, object_fit="cover", interactive=False)
    shown = gr.State([])
    from vlm.index import MANIFEST

    has_index = bool(config.index) and (Path(config.index).expanduser() / MANIFEST).is_file()
    with gr.Accordion("Index a folder", open=not has_index, elem_id="search-indexing"):
        with gr.Row():
            source = gr.Textbox(label="Folder of images (on the server)", placeholder="/path/to/photos",
                                elem_id="search-source", scale=4)
            index_btn = gr.Button("Index folder", elem_id="search-index-btn", scale=1)
        index_status = gr.Markdown(elem_id="search-index-status")
    outputs = [gallery, shown, status]
    search_btn.click(tab.search, [folder, query, k], outputs, api_name="search", concurrency_limit=None)
    query.submit(tab.search, [folder, query, k], outputs, api_name=False, concurrency_limit=None)
    index_btn.click(tab.index_folder, [folder, source], index_status, api_name="index_folder")
    gallery.select(tab.pick, [shown, chat_box], [tabs, chat_box, status], api_name=False, queue=False)
    return tab
