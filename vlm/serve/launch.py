"""Start the real ``vlm serve`` in a subprocess on a free 127.0.0.1 port and wait until it is up.

Used by the soak and fuzz commands (``vlm.serve.soak``, ``vlm.serve.fuzz``) and by the tests. The server's output is
kept (``lines``) and written to ``log_path``.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_model(model: str, out_dir: Path) -> str:
    """``"tiny"``: a tiny random model (``vlm.tiny.tiny_vlm``: 2-layer Llama with SmolLM2's tokenizer, tiny
    CLIP tower) saved under ``out_dir``, for runs that exercise the server rather than the model; any other
    name or path is passed to ``vlm serve --model`` as it is."""
    if model != "tiny":
        return model
    from vlm.tiny import tiny_vlm

    return str(tiny_vlm().save(Path(out_dir) / "tiny-vlm"))


def vlm_command() -> list[str]:
    exe = shutil.which("vlm")
    return [exe] if exe else [sys.executable, "-m", "vlm.cli"]


class LocalServer:
    """``vlm serve --model MODEL --port FREE ...``; waits for the start-up line that prints the URL."""

    def __init__(self, model, *extra: str, log_path: Path, startup_timeout: float = 180):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.lines: list[str] = []
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        cmd = vlm_command() + ["serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                               *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + startup_timeout
        while not any("running at" in line for line in self.lines):
            if self.proc.poll() is not None:
                raise RuntimeError(f"vlm serve exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"vlm serve did not start in {startup_timeout}s:\n{self.log()}")
            time.sleep(0.2)

    def _read(self) -> None:
        with open(self.log_path, "w") as log:
            for line in self.proc.stdout:
                self.lines.append(line)
                log.write(line)
                log.flush()

    def log(self, last: int = 60) -> str:
        return "".join(self.lines[-last:])

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def wait_idle(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            if h["running"] == 0 and h["queued"] == 0:
                return h
            if time.monotonic() > deadline:
                raise AssertionError(f"server still busy after {timeout}s: {h}")
            time.sleep(0.2)

    def signal(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 40) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"vlm serve did not exit within {timeout}s of SIGTERM:\n{self.log()}")
