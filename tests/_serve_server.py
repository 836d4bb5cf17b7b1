"""Start the real ``vlm serve`` in a subprocess on a free loopback port (shared by tests/test_serve_*.py);
the launcher itself is ``vlm.serve.launch.LocalServer`` (the soak and fuzz commands use it too)."""
from __future__ import annotations

import base64
import io

from PIL import Image

from vlm.serve.launch import LocalServer as Server, free_port, vlm_command  # noqa: F401


def png_data_url(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, fmt)
    mime = "jpeg" if fmt == "JPEG" else fmt.lower()
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode()
