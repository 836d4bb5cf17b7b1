"""Videos made at test time from real photos (never committed): ``write_video(path, [(photo, seconds), ...])``
encodes each photo as the frames of its span with PyAV (mpeg4 in mp4, 5 frames a second by default)."""
from __future__ import annotations

from pathlib import Path

__all__ = ["write_video"]


def write_video(path: Path, spans, fps: int = 5, size: int = 224, codec: str = "mpeg4") -> Path:
    """An mp4 showing each ``(image path or PIL image, seconds)`` of ``spans`` in turn."""
    import av
    from PIL import Image

    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for image, seconds in spans:
            picture = (image if isinstance(image, Image.Image) else Image.open(image)).convert("RGB")
            frame = av.VideoFrame.from_image(picture.resize((size, size)))
            for _ in range(round(seconds * fps)):
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
