"""Where vlm looks for the datasets it was built on (Flickr8k, SROIE) when a command is not told.

``data_dir()`` is ``$VLM_DATA`` when set, else ``../shared/data`` beside the repository (the layout of a
source checkout, and of CI). Every default data path in vlm goes through here.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data_dir(*parts: str) -> Path:
    """``$VLM_DATA/<parts>`` or ``<repo>/../shared/data/<parts>``."""
    root = os.environ.get("VLM_DATA")
    return (Path(root) if root else REPO.parent / "shared" / "data").joinpath(*parts)
