"""``python -m vlm.serve.soak``: a bounded soak of ``vlm serve`` on 127.0.0.1.

Starts a local server (``vlm.serve.launch``), then sends ``requests`` mixed requests while keeping exactly the
server's ``--concurrency`` in flight: text and image chats, streams, JSON-schema answers, clients that
disconnect mid-stream or while waiting, and bad inputs (corrupt image, malformed JSON, an unsupported
parameter, a prompt over the context, an unknown model, route or method). Each request has an expected
outcome; it is

- ``ok``: the expected status and a well-formed body (a stream ends with ``data: [DONE]``);
- ``unexpected``: an answer, but not the expected one (a 5xx for a client mistake, a wrong shape...);
- ``lost``: no complete answer (connection error, a stream cut short);
- ``hung``: no answer within ``timeout_s`` (the client gives up).

It samples the server's RSS (psutil) throughout and reports the peak growth over the RSS after ``warmup``
requests, latency percentiles of the answered generations, and the server's own counters after the run
(which must balance: every admitted job completed, was cancelled or was refused). The run passes when nothing
is unexpected, lost or hung, the server is healthy and idle afterwards, and RSS grew under ``max_rss_growth``.
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import json
import random
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from vlm.paths import data_dir

from .launch import LocalServer, resolve_model

KINDS = {  # kind: weight
    "chat": 14, "image": 14, "stream": 12, "json": 8, "disconnect_stream": 8, "disconnect_wait": 6,
    "bad_image": 6, "bad_json": 4, "unsupported": 4, "too_long": 4, "wrong_model": 4, "no_route": 3,
    "wrong_method": 3,
}
GENERATING = ("chat", "image", "stream", "json")
DATA = data_dir("flickr8k")


@dataclass
class SoakConfig:
    requests: int = 500
    model: str = "vlm-tiny"
    concurrency: int = 2  # the server's --concurrency; the soak keeps this many requests in flight
    queue_size: int = 4
    max_tokens: int = 24
    timeout_s: float = 120.0  # a request without an answer by then is hung
    warmup: int = 50  # requests before the RSS baseline is taken (the first len(KINDS) are one of each kind)
    seed: int = 0
    images: str | None = None  # a folder of photos (default: the Flickr8k dev photos beside the repo, if any)
    max_rss_growth: float = 0.05
    bad_images: tuple[str, ...] = ("random", "truncated", "png-chunks")  # corrupt images sent, by turns
    server_args: list[str] = field(default_factory=lambda: ["--no-moderation"])

    def __post_init__(self) -> None:
        if self.requests < 1 or self.concurrency < 1:
            raise ValueError("requests and concurrency must be at least 1")
        unknown = set(self.bad_images) - {"random", "truncated", "png-chunks"}
        if unknown or not self.bad_images:
            raise ValueError(f"bad_images must be some of random, truncated, png-chunks; got {self.bad_images}")
        if not 0 <= self.warmup < self.requests:
            raise ValueError(f"warmup must be in [0, requests), got {self.warmup}")


@dataclass
class Outcome:
    kind: str
    result: str  # ok / unexpected / lost / hung
    status: int | None
    seconds: float
    detail: str = ""


def _images(cfg: SoakConfig, rng: random.Random) -> list[str]:
    """Data URLs of up to 8 photos (real ones when there are any), downscaled to at most 320 px."""
    from PIL import Image

    folder = Path(cfg.images) if cfg.images else DATA
    paths = sorted(p for p in folder.glob("**/*.jpg"))[:200] if folder.is_dir() else []
    rng.shuffle(paths)
    imgs = [Image.open(p).convert("RGB") for p in paths[:8]]
    if not imgs:  # no photos here: drawn noise images
        imgs = [Image.effect_noise((160, 120), 40 + 10 * i).convert("RGB") for i in range(8)]
    urls = []
    for img in imgs:
        img.thumbnail((320, 320))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        urls.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode())
    return urls


class Soak:
    def __init__(self, cfg: SoakConfig, url: str, model_id: str, context: int):
        self.cfg = cfg
        self.url = url
        self.model_id = model_id
        self.context = context
        self.rng = random.Random(cfg.seed)
        self.images = _images(cfg, self.rng)
        self.client = httpx.Client(timeout=cfg.timeout_s, limits=httpx.Limits(max_connections=cfg.concurrency + 4))

    def plan(self) -> list[tuple[str, int]]:
        """Every kind once (so the warm-up meets each code path), then kinds drawn by weight."""
        kinds, weights = list(KINDS), list(KINDS.values())
        first = kinds[:self.cfg.requests]
        rest = self.rng.choices(kinds, weights, k=self.cfg.requests - len(first))
        return [(k, i) for i, k in enumerate(first + rest)]

    def body(self, kind: str, i: int) -> dict:
        rng = random.Random(self.cfg.seed * 100003 + i)
        text = rng.choice(["What is in the picture?", "Describe the image.", "Who is there?", "Hello!",
                           "Write one sentence about the sea.", "What colour is it?"])
        content: list = [{"type": "text", "text": text}]
        if kind in ("image", "json", "disconnect_stream") or (kind == "stream" and i % 2):
            content.insert(0, {"type": "image_url", "image_url": {"url": rng.choice(self.images)}})
        body = {"model": self.model_id, "messages": [{"role": "user", "content": content}],
                "max_tokens": self.cfg.max_tokens, "temperature": rng.choice([0.0, 0.7]), "seed": i}
        if kind == "json":
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "photo", "schema": {
                "type": "object", "properties": {"caption": {"type": "string", "maxLength": 60},
                                                 "people": {"type": "integer"}},
                "required": ["caption", "people"], "additionalProperties": False}}}
            body["max_tokens"] = max(self.cfg.max_tokens, 64)
        if kind in ("disconnect_stream", "disconnect_wait"):
            body["max_tokens"] = 200  # long enough that the client leaves first
        return body

    # -- one request ---------------------------------------------------------------------------------
    def run_one(self, kind: str, i: int) -> Outcome:
        t0 = time.monotonic()
        try:
            status, result, detail = getattr(self, f"_{kind}", self._generation)(kind, i)
        except httpx.TimeoutException as exc:
            status, result, detail = None, "hung", f"{type(exc).__name__} after {self.cfg.timeout_s}s"
        except httpx.HTTPError as exc:
            status, result, detail = None, "lost", f"{type(exc).__name__}: {exc}"
        seconds = time.monotonic() - t0
        if result == "ok" and seconds > self.cfg.timeout_s:
            result, detail = "hung", f"answered only after {seconds:.0f}s"
        return Outcome(kind, result, status, seconds, detail)

    def _post(self, body, **kw) -> httpx.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.client.post(f"{self.url}/v1/chat/completions", content=data,
                                headers={"Content-Type": "application/json"}, **kw)

    def _generation(self, kind: str, i: int):
        body = self.body(kind, i)
        if kind == "stream":
            body.update(stream=True, stream_options={"include_usage": True})
            with self.client.stream("POST", f"{self.url}/v1/chat/completions", json=body) as resp:
                if resp.status_code != 200:
                    resp.read()
                    return resp.status_code, _busy_or("unexpected", resp), resp.text[:200]
                lines = [line for line in resp.iter_lines() if line]
            if not lines or lines[-1] != "data: [DONE]":
                return 200, "lost", f"stream ended without [DONE]: {lines[-1:]}"
            events = [json.loads(line[6:]) for line in lines[:-1]]
            if any("error" in e for e in events):
                return 200, "unexpected", json.dumps(events[-1])[:200]
            finals = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
            ok = finals in (["stop"], ["length"]) and "usage" in events[-1]
            return 200, "ok" if ok else "unexpected", "" if ok else f"finish {finals}"
        resp = self._post(body)
        if resp.status_code != 200:
            return resp.status_code, _busy_or("unexpected", resp), resp.text[:200]
        choice = resp.json()["choices"][0]
        if choice["finish_reason"] not in ("stop", "length"):
            return 200, "unexpected", f"finish_reason {choice['finish_reason']}"
        if kind == "json" and choice["finish_reason"] == "stop":
            from vlm.extract.structured import parse_answer

            try:
                parse_answer(choice["message"]["content"], body["response_format"]["json_schema"]["schema"])
            except ValueError as exc:
                return 200, "unexpected", f"invalid JSON answer: {exc}"
        return 200, "ok", ""

    def _disconnect_stream(self, kind: str, i: int):
        body = {**self.body(kind, i), "stream": True}
        with self.client.stream("POST", f"{self.url}/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                resp.read()
                return resp.status_code, _busy_or("unexpected", resp), resp.text[:200]
            for n, _ in enumerate(resp.iter_lines()):
                if n >= 3:
                    break  # leave mid-answer: closing the response drops the connection
        return 200, "ok", ""

    def _disconnect_wait(self, kind: str, i: int):
        try:
            resp = self._post(self.body(kind, i), timeout=0.3)
        except httpx.TimeoutException:
            return None, "ok", ""  # the client left while waiting, as intended
        return resp.status_code, "ok" if resp.status_code in (200, 400) else "unexpected", resp.text[:200]

    def _expect(self, resp: httpx.Response, status: int, code: str | None = None):
        try:
            err = resp.json()["error"]
            shaped = set(err) == {"message", "type", "param", "code"} and (code is None or err["code"] == code)
        except (ValueError, KeyError, TypeError):
            shaped = False
        ok = resp.status_code == status and shaped and "x-request-id" in resp.headers
        return resp.status_code, "ok" if ok else "unexpected", "" if ok else resp.text[:200]

    def _bad_image(self, kind, i):
        """A corrupt image, by turns: random bytes, a real JPEG cut short, a PNG signature with garbage chunks."""
        body = self.body("image", i)
        part = body["messages"][0]["content"][0]["image_url"]
        corruption = self.cfg.bad_images[i % len(self.cfg.bad_images)]
        rng = random.Random(i)
        if corruption == "random":
            data = bytes(rng.randrange(256) for _ in range(200))
        elif corruption == "truncated":
            data = base64.b64decode(part["url"].partition(",")[2])
            data = data[:len(data) // 3]
        else:  # "png-chunks"
            data = b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(64))
        part["url"] = "data:image/png;base64," + base64.b64encode(data).decode()
        return self._expect(self._post(body), 400)

    def _bad_json(self, kind, i):
        return self._expect(self._post(json.dumps(self.body("chat", i))[:-7].encode()), 400)

    def _unsupported(self, kind, i):
        return self._expect(self._post({**self.body("chat", i), "tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object"}}}]}), 400)

    def _too_long(self, kind, i):
        body = self.body("chat", i)
        body["messages"][0]["content"] = "word " * (self.context + 10)
        return self._expect(self._post(body), 400, "context_length_exceeded")

    def _wrong_model(self, kind, i):
        return self._expect(self._post({**self.body("chat", i), "model": "gpt-4o"}), 404, "model_not_found")

    def _no_route(self, kind, i):
        return self._expect(self.client.get(f"{self.url}/v1/completions/nothing"), 404)

    def _wrong_method(self, kind, i):
        return self._expect(self.client.get(f"{self.url}/v1/chat/completions"), 405)

    # -- the run -------------------------------------------------------------------------------------
    def run(self, rss: "RssSampler | None" = None) -> list[Outcome]:
        plan = self.plan()
        outcomes: list[Outcome] = []
        lock = threading.Lock()

        marks = {max(1, round(self.cfg.requests * k / 10)) for k in range(1, 11)}

        def worker(items):
            for kind, i in items:
                out = self.run_one(kind, i)
                with lock:
                    outcomes.append(out)
                    if rss is not None and len(outcomes) == self.cfg.warmup:
                        rss.mark_baseline()
                    if rss is not None and len(outcomes) in marks:
                        rss.mark_progress(len(outcomes))

        it = iter(plan)
        shared = _Locked(it)
        with concurrent.futures.ThreadPoolExecutor(self.cfg.concurrency) as pool:
            for f in [pool.submit(worker, shared) for _ in range(self.cfg.concurrency)]:
                f.result()
        return outcomes


class _Locked:
    """An iterator shared by threads."""

    def __init__(self, it):
        self.it, self.lock = it, threading.Lock()

    def __iter__(self):
        return self

    def __next__(self):
        with self.lock:
            return next(self.it)


def _busy_or(result: str, resp: httpx.Response) -> str:
    return "busy" if resp.status_code in (429, 503) else result


class RssSampler:
    """Samples a process's resident set size every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.25):
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.progress: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.proc.memory_info().rss))
            self._stop.wait(self.interval)

    def start(self):
        self._thread.start()
        return self

    def mark_baseline(self):
        self.baseline_at = time.monotonic()

    def mark_progress(self, done: int):
        """RSS when ``done`` requests have finished (the curve tells a warm-up plateau from a leak)."""
        self.progress[done] = round(self.proc.memory_info().rss / 2 ** 20, 1)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        rss = [r for _, r in self.samples]
        at = getattr(self, "baseline_at", None)
        base_i = next((i for i, (t, _) in enumerate(self.samples) if at is not None and t >= at), 0)
        baseline = rss[base_i]
        peak_after = max(rss[base_i:])
        mib = 1024 * 1024
        return {"start_mib": round(rss[0] / mib, 1), "baseline_mib": round(baseline / mib, 1),
                "peak_mib": round(peak_after / mib, 1), "end_mib": round(rss[-1] / mib, 1),
                "peak_growth": round((peak_after - baseline) / baseline, 4), "samples": len(rss),
                "mib_after_requests": dict(sorted(self.progress.items()))}


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0], "p99": values[0]}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": round(q[49], 3), "p95": round(q[94], 3), "p99": round(q[98], 3)}


def summarise(cfg: SoakConfig, outcomes: list[Outcome], rss: dict | None, health: dict, wall_s: float) -> dict:
    by_result: dict[str, int] = {}
    by_kind: dict[str, dict[str, int]] = {}
    for o in outcomes:
        by_result[o.result] = by_result.get(o.result, 0) + 1
        by_kind.setdefault(o.kind, {}).setdefault(o.result, 0)
        by_kind[o.kind][o.result] += 1
    answered = [o.seconds for o in outcomes if o.kind in GENERATING and o.result == "ok"]
    problems = [asdict(o) for o in outcomes if o.result in ("unexpected", "lost", "hung")]
    # every admitted job ended exactly one way
    balance = health["submitted"] - (health["completed"] + health["cancelled"] + health["timed_out"]
                                     + health["errored"] + health["running"] + health["queued"])
    report = {
        "config": asdict(cfg), "requests": len(outcomes), "wall_s": round(wall_s, 1), "results": by_result,
        "by_kind": by_kind, "latency_s": _percentiles(answered), "answered_generations": len(answered),
        "rss": rss, "server": {k: health[k] for k in ("status", "submitted", "completed", "cancelled",
                                                       "timed_out", "failed", "errored", "rejected",
                                                       "running", "queued", "peak_running", "mean_job_s")},
        "server_counters_balance": balance, "problems": problems[:20],
    }
    report["passed"] = (not problems and len(outcomes) == cfg.requests and health["status"] == "ok"
                        and health["running"] == health["queued"] == 0 and health["failed"] == 0 and balance == 0
                        and (rss is None or rss["peak_growth"] < cfg.max_rss_growth))
    return report


def run_soak(cfg: SoakConfig, log_dir: Path | None = None) -> dict:
    """Start a server, soak it, stop it; returns the report (see the module docstring)."""
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="vlm-soak-"))
    server = LocalServer(resolve_model(cfg.model, log_dir), "--concurrency", str(cfg.concurrency),
                         "--queue-size", str(cfg.queue_size), "--request-timeout", str(cfg.timeout_s),
                         *cfg.server_args,
                         log_path=log_dir / "server.log")
    try:
        health = server.health()
        soak = Soak(cfg, server.url, health["model"], health["context_length"])
        rss = RssSampler(server.proc.pid).start()
        t0 = time.monotonic()
        outcomes = soak.run(rss)
        wall = time.monotonic() - t0
        health = server.wait_idle(timeout=60)
        rss_report = rss.stop()
        report = summarise(cfg, outcomes, rss_report, health, wall)
        report["server_log"] = str(server.log_path)
        return report
    finally:
        rc = server.stop()
        if rc != 0:
            raise RuntimeError(f"the server exited with {rc} after the soak:\n{server.log()}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vlm.serve.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--model", default="vlm-tiny", help="a model name or folder, or 'tiny' (a tiny random model)")
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--queue-size", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--warmup", type=int, default=50, help="requests before the RSS baseline (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", default=None)
    p.add_argument("--out", default=None, help="write the JSON report here")
    args = p.parse_args(argv)
    cfg = SoakConfig(requests=args.requests, model=args.model, concurrency=args.concurrency,
                     queue_size=args.queue_size, max_tokens=args.max_tokens, timeout_s=args.timeout,
                     warmup=args.warmup, seed=args.seed, images=args.images)
    report = run_soak(cfg)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
