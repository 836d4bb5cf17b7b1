"""``vlm bench --sections clip``: the CLIP's throughput where a user feels it.

* **Indexing**: ``ImageIndex.add`` of ``images`` Flickr8k dev photos into a fresh index (reading, hashing,
  decoding, embedding and inserting in batches of 32, flushed): images/s end to end, and the embedding
  alone (``Clip.embed_images`` of the same files) for comparison.
* **Query latency**: ``queries`` dev captions, one at a time, each ``ImageIndex.search(text, k=10)`` (the
  text embedded, then the exact search over the index): p50 / p95 / mean ms; and the search alone
  (``search_vectors`` with the vector already embedded).
* **Video**: a clip of ``video_seconds`` seconds made from dev photos (5 frames/s, in a temporary folder),
  indexed every second: frames/s end to end, decoding included.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path


def _ms(values: list[float]) -> dict:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": round(pick(0.5) * 1e3, 1), "p95": round(pick(0.95) * 1e3, 1),
            "mean": round(statistics.fmean(values) * 1e3, 1), "n": len(values)}


def run(clip, data: Path, images: int = 300, queries: int = 50, video_seconds: int = 20, log=print) -> dict:
    from vlm.index import ImageIndex

    records = [json.loads(x) for x in (data / "dev.jsonl").read_text().splitlines() if x.strip()][:images]
    paths = [(data / r["image"]).resolve() for r in records]
    captions = [r["captions"][0] for r in records][:queries]
    out = {"clip": clip.describe(), "images": len(paths)}
    with tempfile.TemporaryDirectory(prefix="vlm-bench-clip-") as tmp:
        tmp = Path(tmp)
        log(f"clip: embedding {len(paths)} images")
        t = time.perf_counter()
        clip.embed_images(paths)
        out["embed_images_per_s"] = round(len(paths) / (time.perf_counter() - t), 1)
        log(f"clip: indexing {len(paths)} images")
        with ImageIndex.open(tmp / "ix", clip, create=True) as index:
            t = time.perf_counter()
            report = index.add(paths)
            add_s = time.perf_counter() - t
            if report.failed:
                raise RuntimeError(f"unreadable dev images: {report.failed[:3]}")
            out["index_add_images_per_s"] = round(len(paths) / add_s, 1)
            index.search(captions[0], k=10)  # warm-up
            log(f"clip: {len(captions)} text queries")
            full, only = [], []
            for text in captions:
                t = time.perf_counter()
                index.search(text, k=10)
                full.append(time.perf_counter() - t)
                vector = clip.embed_texts([text])
                t = time.perf_counter()
                index.search_vectors(vector, k=10)
                only.append(time.perf_counter() - t)
            out["query_ms"] = _ms(full)
            out["search_only_ms"] = _ms(only)
            if video_seconds:
                from vlm.video import VideoOptions  # noqa: F401 - PyAV present

                video = _make_video(tmp / "clip.mp4", paths, video_seconds)
                log(f"clip: indexing a {video_seconds} s video every 1 s")
                t = time.perf_counter()
                vrep = index.add([video], video_every_s=1.0)
                out["video_index_frames_per_s"] = round(vrep.frames / (time.perf_counter() - t), 1)
                out["video_frames"] = vrep.frames
    return out


def _make_video(path: Path, photos: list[Path], seconds: int, fps: int = 5) -> Path:
    import av
    from PIL import Image

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = 224
        stream.pix_fmt = "yuv420p"
        for i in range(seconds):
            frame = av.VideoFrame.from_image(Image.open(photos[i % len(photos)]).convert("RGB").resize((224, 224)))
            for _ in range(fps):
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def markdown(row: dict) -> list[str]:
    q, s = row["query_ms"], row["search_only_ms"]
    lines = ["", f"CLIP ({row['clip']}; {row['images']} Flickr8k dev photos, one query at a time, k=10):", "",
             "| measure | value |", "|---|---|",
             f"| index add, images/s (read, hash, decode, embed, insert) | {row['index_add_images_per_s']} |",
             f"| embedding alone, images/s | {row['embed_images_per_s']} |",
             f"| text query, ms p50 / p95 / mean (embed + search) | {q['p50']} / {q['p95']} / {q['mean']} |",
             f"| search alone, ms p50 / p95 / mean | {s['p50']} / {s['p95']} / {s['mean']} |"]
    if "video_index_frames_per_s" in row:
        lines.append(f"| video index add, frames/s (decode + embed + insert, 1 frame/s of video) | "
                     f"{row['video_index_frames_per_s']} |")
    return lines
