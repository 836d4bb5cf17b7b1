"""A persistent, incremental image index searched by text or by image through a CLIP.

Layout: an index is a folder::

    vlm_index.json     {"format": 1, "store": "milvus-lite", "collection": "images", "dim": 256,
                        "clip": "<folder it was built with>", "probe": {...}}
    vectors.db/        the Milvus Lite database (pymilvus + milvus-lite, the ``[index]`` extra)

The vectors live in Milvus through ``pymilvus.MilvusClient``: by default the embedded Milvus Lite file above;
``uri=`` points the same code at a Milvus server or cluster (``http://host:19530``), the folder then holding
only the manifest. The index is exact (Milvus ``FLAT``, inner product of unit vectors = cosine), so its
results equal a brute-force search; docs/clip.md has the measurements behind the choice.

Contract of :class:`ImageIndex`:

* :meth:`add` takes image and video files and folders (searched recursively for image and video extensions)
  with optional metadata (a JSON object stored with each image, filterable). Each image is keyed by the
  SHA-256 of its bytes: content already indexed is never embedded again (under any path), so adding a folder
  twice, or a folder that grew, embeds only what is new. A file vlm cannot read as an image or video is
  reported in :attr:`AddReport.failed` with the reason and skipped; the rest is added.
* A video is indexed as its frames every ``video_every_s`` seconds (``0, k, 2k, ...``; the frame on screen
  then, :mod:`vlm.video`): each frame is an entry with the video's path and ``meta["frame_time_s"]`` (its
  time), keyed by the SHA-256 of the video's bytes and the time, so :meth:`search` returns the video and the
  moment (:attr:`Hit.time`); adding it again embeds only missing frames.
* Images are embedded and inserted in batches, each flushed to a segment file before the next (Milvus Lite
  replaces its manifest atomically and replays only the valid prefix of its write-ahead log), so a crash of
  the process during :meth:`add` leaves what was indexed before intact, plus the batches that completed;
  adding again resumes, embedding only what is missing. (Milvus Lite does not fsync every write, so after a
  power loss the latest batches may be missing, never half there.)
* :meth:`search` takes a text (``str``) or an image (a path as ``pathlib.Path``, ``PIL.Image`` or bytes) and
  returns the ``k`` most similar images as :class:`Hit` (path, cosine score, id, metadata), best first;
  ``filter`` is a Milvus boolean expression over ``path`` and ``meta`` (``meta["album"] == "2024"``,
  ``path like "/photos/trips/%"``).
* :meth:`remove` deletes by file path, folder (everything under it) or content id.
* Opening a folder with no index raises :class:`IndexNotFoundError`; an unreadable or inconsistent one
  :class:`IndexCorruptError`; opening with a CLIP other than the one it was built with (its vectors would not
  compare) raises :class:`IndexCorruptError` naming both. All three are ``ValueError`` subclasses.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ImageError

MANIFEST = "vlm_index.json"
DB = "vectors.db"
FORMAT = 1
COLLECTION = "images"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PROBE_TEXT = "a photo of a dog running on the beach ."
PROBE_MIN_COSINE = 0.99  # the same CLIP reproduces its probe vectors (any dtype); another one does not
MAX_PATH = 4096


_OPEN: dict[str, int] = {}  # embedded stores open in this process (path -> ImageIndex count)


def _locked_elsewhere(db: Path) -> bool:
    """Whether another process holds Milvus Lite's advisory lock on ``db`` (flock is per open file, so a
    store this process has open counts as free; ``_OPEN`` covers that case)."""
    import fcntl

    lock = db / "LOCK"
    if not lock.is_file():
        return False
    with open(lock, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


class IndexNotFoundError(ValueError):
    """No index at the given folder."""


class IndexCorruptError(ValueError):
    """An index folder that cannot be read as written, or that was built with another CLIP."""


FRAME_TIME = "frame_time_s"  # metadata key of a video frame's time (seconds from the start)


@dataclass(frozen=True)
class Hit:
    path: str
    score: float  # cosine similarity
    id: str       # SHA-256 of the image bytes (of a video frame: of the video's bytes and the frame's time)
    metadata: dict = field(default_factory=dict)

    @property
    def time(self) -> float | None:
        """For a video frame: its time in the video (seconds); None for an image."""
        t = self.metadata.get(FRAME_TIME) if isinstance(self.metadata, dict) else None
        return float(t) if t is not None else None

    def label(self) -> str:
        """The path, and for a video frame ``@ 12.0 s``."""
        return self.path if self.time is None else f"{self.path} @ {self.time:.1f} s"


@dataclass
class AddReport:
    added: list[str] = field(default_factory=list)     # paths embedded and inserted
    present: list[str] = field(default_factory=list)   # paths whose content was already indexed
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): not images, unreadable
    frames: int = 0  # video frames embedded and inserted (their videos are in ``added``)

    def summary(self) -> str:
        frames = f" ({self.frames} video frames)" if self.frames else ""
        return (f"{len(self.added)} added{frames}, {len(self.present)} already indexed, "
                f"{len(self.failed)} unreadable")


@dataclass(frozen=True)
class IndexAnswer:
    """What :meth:`vlm.VLM.ask_index` returns: the answer and the images it was given, in the order it saw
    them ("Image 1", "Image 2", ...)."""
    text: str
    sources: list[Hit]

    def __str__(self) -> str:
        cited = "\n".join(f"[{i}] {h.label()}" for i, h in enumerate(self.sources, 1))
        return f"{self.text}\n\nImages used:\n{cited}"


def image_files(sources: Iterable[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Files named directly, plus image and video files (by extension) anywhere under named folders; absolute,
    in order, without repeats. A source that does not exist raises ``FileNotFoundError``."""
    from .video import VIDEO_EXTENSIONS

    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out, seen = [], set()
    for src in sources:
        path = Path(src).expanduser().resolve()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS and p.is_file())
        elif path.exists():
            found = [path]
        else:
            raise FileNotFoundError(f"no such file or folder: {src}")
        for p in found:
            if p not in seen:
                seen.add(p)
                out.append(p)
    return out


def _probe_image():
    """A fixed synthetic picture (a colour gradient), the image half of the CLIP fingerprint."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype("uint8")
    return Image.fromarray(rgb, "RGB")


def _probe(clip) -> dict:
    return {"text": [round(v, 6) for v in clip.embed_texts([PROBE_TEXT])[0].tolist()],
            "image": [round(v, 6) for v in clip.embed_pil([_probe_image()])[0].tolist()]}


def _as_clip(clip):
    from .clip import Clip

    if isinstance(clip, Clip):
        return clip
    if hasattr(clip, "clip") and not isinstance(clip, (str, os.PathLike)):  # a VLM
        return clip.clip
    return Clip.load(clip)


def _quote(text: str) -> str:
    return json.dumps(text)  # a Milvus string literal: double quotes, backslash escapes


class ImageIndex:
    """A folder of image vectors searched by text or image (see the module docstring)."""

    def __init__(self, folder: Path, clip, client, manifest: dict):
        self.folder, self.clip, self._client, self.manifest = folder, clip, client, manifest

    # -- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | os.PathLike, clip, *, create: bool = False, uri: str | None = None) -> "ImageIndex":
        """Open the index in ``folder`` (``create``: make a new, empty one when there is none). ``clip``: a
        :class:`vlm.clip.Clip`, a CLIP folder, or a ``VLM`` (its CLIP). ``uri``: a Milvus server instead of
        the embedded file (kept in the manifest)."""
        folder = Path(folder).expanduser()
        manifest_file = folder / MANIFEST
        if not manifest_file.is_file():
            if not create:
                raise IndexNotFoundError(f"no image index at {folder} ({MANIFEST} missing); make one with "
                                         f"`vlm index add DIR --db {folder}` or ImageIndex.open(..., create=True)")
            leftovers = {p.name for p in folder.iterdir()} - {DB, MANIFEST + ".tmp"} if folder.is_dir() else set()
            if leftovers or (folder.exists() and not folder.is_dir()):  # (DB alone: an interrupted creation)
                raise IndexCorruptError(f"{folder} exists and is not an image index (no {MANIFEST}); "
                                        "choose an empty or new folder")
            return cls._create(folder, _as_clip(clip), uri)
        clip = _as_clip(clip)
        manifest = cls._read_manifest(folder)
        index = cls(folder, clip, cls._connect(folder, manifest), manifest)
        try:
            if not index._client.has_collection(manifest["collection"]):
                raise IndexCorruptError(f"{folder}: the vector store holds no collection {manifest['collection']!r}; "
                                        "rebuild the index")
            index._client.load_collection(manifest["collection"])  # a reopened store starts released
            index._check_clip()
        except BaseException:
            index.close()  # release the store (and its lock) before reporting
            raise
        return index

    @classmethod
    def _create(cls, folder: Path, clip, uri: str | None) -> "ImageIndex":
        from pymilvus import DataType

        folder.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "store": "milvus" if uri else "milvus-lite", "uri": uri,
                    "collection": COLLECTION, "dim": clip.dim, "metric": "IP", "index_type": "FLAT",
                    "clip": str(clip.folder.resolve()) if clip.folder else None, "probe": _probe(clip)}
        client = cls._connect(folder, manifest, creating=True)
        if client.has_collection(COLLECTION):
            if uri:
                raise IndexCorruptError(f"{uri} already holds a collection {COLLECTION!r} not made by this index")
            client.drop_collection(COLLECTION)  # left by a creation interrupted before the manifest was written
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH)
        schema.add_field("meta", DataType.JSON)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=clip.dim)
        params = client.prepare_index_params()
        params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        client.create_collection(COLLECTION, schema=schema, index_params=params)
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, folder / MANIFEST)  # the manifest appears last: a folder without it is no index
        return cls(folder, clip, client, manifest)

    @staticmethod
    def _read_manifest(folder: Path) -> dict:
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IndexCorruptError(f"{folder / MANIFEST} is unreadable ({exc}); rebuild the index") from None
        missing = [k for k in ("format", "collection", "dim", "probe") if k not in manifest] \
            if isinstance(manifest, dict) else ["everything"]
        if missing:
            raise IndexCorruptError(f"{folder / MANIFEST} lacks {', '.join(missing)}; rebuild the index")
        if manifest["format"] != FORMAT:
            raise IndexCorruptError(f"{folder}: index format {manifest['format']!r} is not readable here (reads {FORMAT})")
        return manifest

    @staticmethod
    def _connect(folder: Path, manifest: dict, creating: bool = False):
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise ImportError("the image index needs pymilvus and milvus-lite: pip install 'vlm[index]'") from None
        uri = manifest.get("uri") or str((folder / DB).resolve())
        if not manifest.get("uri"):
            if not creating and not (folder / DB).is_dir():
                raise IndexCorruptError(f"{folder}: the vector store {DB} is missing; rebuild the index")
            if uri not in _OPEN and _locked_elsewhere(folder / DB):
                raise IndexCorruptError(f"{folder} is open in another process; close it there first")
        try:
            client = MilvusClient(uri)
            if not manifest.get("uri"):
                _OPEN[uri] = _OPEN.get(uri, 0) + 1
            return client
        except IndexCorruptError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the store raises, name the folder
            raise IndexCorruptError(f"{folder}: the vector store cannot be opened ({type(exc).__name__}: "
                                    f"{str(exc)[:300]}); rebuild the index") from None

    def _check_clip(self) -> None:
        if self.manifest["dim"] != self.clip.dim:
            raise IndexCorruptError(f"{self.folder} holds {self.manifest['dim']}-d vectors, but the CLIP "
                                    f"({self.clip.folder}) makes {self.clip.dim}-d ones; use the CLIP it was built "
                                    f"with ({self.manifest.get('clip')})")
        now, was = _probe(self.clip), self.manifest["probe"]
        for side in ("text", "image"):
            cos = float(torch.tensor(now[side]) @ torch.tensor(was[side]))
            if cos < PROBE_MIN_COSINE:
                raise IndexCorruptError(
                    f"{self.folder} was built with another CLIP ({self.manifest.get('clip')}; the {side} probe "
                    f"agrees only to cosine {cos:.3f} with {self.clip.folder}): its vectors would not compare")

    def close(self) -> None:
        """Close the connection; the embedded store is released (its lock too) when no index of this process
        uses it any more."""
        if self._client is None:
            return
        self._client.close()
        self._client = None
        if not self.manifest.get("uri"):
            uri = str((self.folder / DB).resolve())
            _OPEN[uri] = _OPEN.get(uri, 1) - 1
            if _OPEN[uri] <= 0:
                del _OPEN[uri]
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(uri)

    def __enter__(self) -> "ImageIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- contents -----------------------------------------------------------------------------------
    @property
    def collection(self) -> str:
        return self.manifest["collection"]

    def __len__(self) -> int:
        rows = self._client.query(self.collection, output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def _existing(self, ids: Sequence[str]) -> set[str]:
        if not ids:
            return set()
        return {r["id"] for r in self._client.get(self.collection, ids=list(ids), output_fields=["id"])}

    def entries(self, limit: int = 16384) -> list[dict]:
        """Every indexed image as ``{"id", "path", "meta"}`` (up to ``limit``)."""
        return [dict(r) for r in self._client.query(self.collection, filter='id != ""',
                                                    output_fields=["id", "path", "meta"], limit=limit)]

    # -- adding -------------------------------------------------------------------------------------
    def add(self, sources, metadata: dict | None = None, batch_size: int = 32,
            on_progress: Callable[[int, int], None] | None = None, video_every_s: float = 1.0) -> AddReport:
        """Index image and video files and folders (see the module docstring). ``metadata``: a JSON object
        stored with every image of this call. ``on_progress(done, total)`` is called as files are processed.
        ``video_every_s``: seconds between the indexed frames of a video."""
        from .images import load_image
        from .video import is_video

        if video_every_s <= 0:
            raise ValueError(f"video_every_s must be positive, got {video_every_s}")

        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError(f"metadata must be a JSON object (dict), got {type(metadata).__name__}")
        meta = json.loads(json.dumps(metadata or {}))  # must be JSON; a copy
        files = image_files(sources)
        report = AddReport()
        seen: set[str] = set()
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            hashed = []
            for path in chunk:
                if is_video(path):
                    self._add_video(path, meta, video_every_s, batch_size, report, seen)
                    continue
                data = _read_source(path, report)
                if data is None:
                    continue
                hashed.append((path, hashlib.sha256(data).hexdigest(), data))
            present = self._existing([h for _, h, _ in hashed])
            rows, images = [], []
            for path, digest, data in hashed:
                if digest in present or digest in seen:
                    report.present.append(str(path))
                    continue
                try:
                    images.append(load_image(data))
                except ImageError as exc:
                    report.failed.append((str(path), str(exc)))
                    continue
                seen.add(digest)
                rows.append({"id": digest, "path": str(path), "meta": meta})
            if rows:
                vectors = self.clip.embed_pil(images)
                for row, vec in zip(rows, vectors.tolist()):
                    row["vector"] = vec
                self._client.insert(self.collection, rows)
                self._client.flush(self.collection)  # to a segment file: a completed batch survives a crash
                report.added.extend(r["path"] for r in rows)
            if on_progress is not None:
                on_progress(min(start + batch_size, len(files)), len(files))
        return report

    def _add_video(self, path: Path, meta: dict, every: float, batch_size: int, report: AddReport,
                   seen: set[str]) -> None:
        """The frames of one video every ``every`` seconds, as entries with their times (module docstring)."""
        from .video import VideoError, interval_times, iter_frames, probe

        data = _read_source(path, report)
        if data is None:
            return
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            report.present.append(str(path))
            return
        name = f"video {path}"
        try:
            times = interval_times(probe(data, name=name).duration, every)
        except VideoError as exc:
            report.failed.append((str(path), str(exc)))
            return
        ids = {t: hashlib.sha256(f"{digest}@{t:.3f}".encode()).hexdigest() for t in times}
        present = self._existing(list(ids.values()))
        missing = [t for t in times if ids[t] not in present]
        seen.add(digest)
        if not missing:
            report.present.append(str(path))
            return
        rows, images, added = [], [], 0

        def insert() -> None:
            for row, vec in zip(rows, self.clip.embed_pil(images).tolist()):
                row["vector"] = vec
            self._client.insert(self.collection, rows)
            self._client.flush(self.collection)  # a completed batch survives a crash; the rest is redone
            rows.clear()
            images.clear()

        try:
            for frame in iter_frames(data, missing, name=name):
                rows.append({"id": ids[frame.time], "path": str(path), "meta": {**meta, FRAME_TIME: frame.time}})
                images.append(frame.image)
                if len(rows) == batch_size:
                    added += len(rows)
                    insert()
        except VideoError as exc:
            report.failed.append((str(path), str(exc)))
            return  # the frames inserted before the damage stay; adding again retries the rest
        if rows:
            added += len(rows)
            insert()
        report.added.append(str(path))
        report.frames += added

    # -- searching ----------------------------------------------------------------------------------
    def _query_vector(self, query) -> list[float]:
        if isinstance(query, str):
            if not query.strip():
                raise ValueError("empty search text")
            return self.clip.embed_texts([query])[0].tolist()
        return self.clip.embed_images([query])[0].tolist()

    def search(self, query, k: int = 10, filter: str | None = None) -> list[Hit]:
        """The ``k`` images most similar to ``query`` (text ``str``, or an image: ``Path``, ``PIL.Image``,
        bytes), best first; ``filter``: a Milvus expression over ``path`` and ``meta``."""
        return self.search_vectors([self._query_vector(query)], k, filter)[0]

    def search_vectors(self, vectors, k: int = 10, filter: str | None = None) -> list[list[Hit]]:
        """The ``k`` best images for each of several unit query vectors (rows of a tensor or lists)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        data = vectors.tolist() if isinstance(vectors, torch.Tensor) else [list(v) for v in vectors]
        kwargs = {"filter": filter} if filter else {}
        try:
            results = self._client.search(self.collection, data=data, limit=k, output_fields=["path", "meta"],
                                          **kwargs)
        except Exception as exc:  # noqa: BLE001
            if filter:
                raise ValueError(f"bad filter {filter!r}: {str(exc)[:300]}") from None
            raise
        return [[Hit(path=h["entity"]["path"], score=float(h["distance"]), id=h["id"],
                     metadata=h["entity"].get("meta") or {}) for h in hits] for hits in results]

    # -- removing -----------------------------------------------------------------------------------
    def remove(self, items) -> int:
        """Delete images by file path, folder (everything indexed under it) or content id; returns how many."""
        if isinstance(items, (str, os.PathLike)):
            items = [items]
        before = len(self)
        for item in items:
            text = str(item)
            if len(text) == 64 and all(c in "0123456789abcdef" for c in text) and not Path(text).exists():
                self._client.delete(self.collection, ids=[text])
                continue
            path = str(Path(text).expanduser().resolve())
            expr = f"path == {_quote(path)} or path like {_quote(path.rstrip('/') + '/%')}"
            self._client.delete(self.collection, filter=expr)
        self._client.flush(self.collection)
        return before - len(self)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.entries())


def _read_source(path: Path, report: AddReport) -> bytes | None:
    """The bytes of an image or video to index, or None with the reason put in ``report.failed``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        report.failed.append((str(path), f"cannot read: {exc.strerror or exc}"))
        return None
    if len(str(path)) > MAX_PATH:
        report.failed.append((str(path), f"path longer than {MAX_PATH} characters"))
        return None
    return data
