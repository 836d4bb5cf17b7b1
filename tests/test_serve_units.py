"""Parts of ``vlm serve`` in-process: config, request parsing, remote-image policy (against a real local
HTTP server), open_nsfw moderation on real photos, the engine's queue / timeout / cancel / shutdown, the
UI's history conversion and the example images."""
from __future__ import annotations

import http.server
import io
import threading
import time

import pytest
from PIL import Image

from vlm.serve.config import RemoteImagePolicy, ServeConfig
from vlm.serve.errors import BadRequest, Busy, ContextTooLong, Flagged, ShuttingDown, Timeout, TooLarge
from vlm.config import GenerationOptions, InputLimits


# -- config ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, words", [
    ({"concurrency": 0}, "concurrency"), ({"queue_size": -1}, "queue"), ({"moderation_threshold": 1.5}, "threshold"),
    ({"request_timeout_s": 0}, "timeout"), ({"api_key": " "}, "api-key"), ({"port": 70000}, "port"),
])
def test_config_rejects_bad_values(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ServeConfig(**kwargs)


def test_config_defaults_are_safe():
    cfg = ServeConfig(model="/models/my-vlm/")
    assert cfg.host == "127.0.0.1" and not cfg.remote_images.enabled and cfg.moderation
    assert cfg.served_model_id() == "my-vlm" and cfg.capacity == cfg.concurrency + cfg.queue_size
    with pytest.raises(ValueError, match="CIDR"):
        RemoteImagePolicy(allowed_networks=("not-a-net",))


def test_cli_builds_config():
    from vlm.cli import build_parser
    from vlm.cli.serve import config_from_args

    args = build_parser().parse_args(["serve", "--model", "m", "--concurrency", "2", "--queue-size", "5",
                                      "--allow-remote-images", "--no-moderation", "--max-images", "2"])
    cfg = config_from_args(args)
    assert (cfg.concurrency, cfg.queue_size, cfg.remote_images.enabled, cfg.moderation) == (2, 5, True, False)
    assert cfg.limits.max_images == 2 and cfg.host == "127.0.0.1"


# -- request parsing ------------------------------------------------------------------------------------
def test_parse_chat_request_names_the_field():
    from vlm.serve.schemas import parse_chat_request

    ok = parse_chat_request(b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stop":"x","max_tokens":5,'
                            b'"logit_bias":{}}')
    assert ok.stops == ["x"] and ok.answer_budget == 5
    both = parse_chat_request(b'{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,'
                              b'"max_completion_tokens":7}')
    assert both.answer_budget == 7
    ext = parse_chat_request(b'{"model":"m","messages":[{"role":"user","content":"hi"}],"repetition_penalty":1.1,'
                             b'"no_repeat_ngram_size":3}')
    assert (ext.repetition_penalty, ext.no_repeat_ngram_size) == (1.1, 3)
    with pytest.raises(BadRequest) as e:
        parse_chat_request(b'{"model":"m","messages":[{"role":"user","content":"hi"}],"no_repeat_ngram_size":-1}')
    assert e.value.param == "no_repeat_ngram_size"
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse_chat_request(b"{")
    with pytest.raises(BadRequest) as e:
        parse_chat_request(b'{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}')
    assert e.value.param == "messages.0.content.0.text"
    with pytest.raises(BadRequest) as e:
        parse_chat_request(b'{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio"}]}]}')
    assert "'text', 'image_url'" in str(e.value)


# -- remote images ----------------------------------------------------------------------------------------
def _png(size=(16, 16), color=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802
        status, headers, body, delay = self.routes.get(self.path, (404, {}, b"", 0))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if delay:
                for i in range(0, len(body), 100):
                    self.wfile.write(body[i:i + 100])
                    self.wfile.flush()
                    time.sleep(delay)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (the time-limit test)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def image_host():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    _Handler.routes = {
        "/ok.png": (200, {"Content-Type": "image/png"}, _png(), 0),
        "/big.png": (200, {}, b"\0" * 5000, 0),
        "/slow.png": (200, {}, b"\0" * 2000, 0.2),
        "/hop": (302, {"Location": "/ok.png"}, b"", 0),
        "/to-other-loopback": (302, {"Location": f"http://127.0.0.2:{srv.server_address[1]}/ok.png"}, b"", 0),
        "/to-file": (302, {"Location": "file:///etc/passwd"}, b"", 0),
        "/loop": (302, {"Location": "/loop"}, b"", 0),
        "/missing": (404, {}, b"", 0),
    }
    yield base
    srv.shutdown()


def test_remote_fetch_policy_against_a_real_server(image_host):
    from vlm.serve.remote_images import fetch, image_bytes

    # loopback is refused by default, even with remote images on
    with pytest.raises(BadRequest, match="127.0.0.1.*refused"):
        fetch(f"{image_host}/ok.png", RemoteImagePolicy(enabled=True))
    # a deployment may allow one private network explicitly; everything else stays refused
    policy = RemoteImagePolicy(enabled=True, allowed_networks=("127.0.0.1/32",), max_bytes=4000, timeout_s=1.0)
    assert fetch(f"{image_host}/ok.png", policy) == _png()
    assert fetch(f"{image_host}/hop", policy) == _png()  # a redirect within the allowed network
    with pytest.raises(BadRequest, match="127.0.0.2"):
        fetch(f"{image_host}/to-other-loopback", policy)  # every hop is checked
    with pytest.raises(BadRequest, match="http"):
        fetch(f"{image_host}/to-file", policy)
    with pytest.raises(BadRequest, match="redirected more than"):
        fetch(f"{image_host}/loop", policy)
    with pytest.raises(TooLarge, match="4000"):
        fetch(f"{image_host}/big.png", policy)
    with pytest.raises(BadRequest, match="took over 1s"):
        fetch(f"{image_host}/slow.png", RemoteImagePolicy(enabled=True, allowed_networks=("127.0.0.1/32",),
                                                          timeout_s=1.0))
    with pytest.raises(BadRequest, match="HTTP 404"):
        fetch(f"{image_host}/missing", policy)
    # and through the request-level entry point, with the per-image byte limit on top
    assert image_bytes(f"{image_host}/ok.png", policy, InputLimits()) == _png()
    with pytest.raises(BadRequest, match="disabled"):
        image_bytes(f"{image_host}/ok.png", RemoteImagePolicy(), InputLimits())


@pytest.mark.parametrize("url", ["file:///etc/passwd", "/etc/passwd", "ftp://example.com/a.png",
                                 "gopher://x", "C:\\img.png"])
def test_non_http_image_urls_always_refused(url):
    from vlm.serve.remote_images import image_bytes

    with pytest.raises(BadRequest) as e:
        image_bytes(url, RemoteImagePolicy(enabled=True), InputLimits())
    assert e.value.code == "image_url_forbidden"


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("127.0.0.1", False), ("10.0.0.1", False), ("172.16.5.4", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("::1", False), ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False),
    ("2606:4700:4700::1111", True),
])
def test_address_classification(address, public):
    import ipaddress

    from vlm.serve.remote_images import _address_allowed

    assert _address_allowed(ipaddress.ip_address(address), RemoteImagePolicy(enabled=True)) is public


def test_data_urls(tmp_path):
    import base64

    from vlm.serve.remote_images import image_bytes

    url = "data:image/png;base64," + base64.b64encode(_png()).decode()
    assert image_bytes(url, RemoteImagePolicy(), InputLimits()) == _png()
    big = "data:image/png;base64," + base64.b64encode(b"\0" * 3000).decode()
    with pytest.raises(TooLarge, match="1000-byte"):
        image_bytes(big, RemoteImagePolicy(), InputLimits(max_image_bytes=1000))


# -- moderation -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moderator():
    from vlm.serve.moderation import Moderator

    return Moderator(threshold=0.8)


@pytest.mark.real
def test_moderation_passes_real_photos(moderator, data_dir, flickr_records):
    scores = [moderator.score(Image.open(data_dir / "flickr8k" / r["image"])).score for r in flickr_records[:8]]
    assert all(0.0 <= s < 0.3 for s in scores), scores
    moderator.check([Image.open(data_dir / "flickr8k" / flickr_records[0]["image"])])  # no exception


def test_moderation_threshold(moderator):
    from vlm.serve.moderation import Moderator

    skin = Image.new("RGB", (96, 96), (200, 140, 110))
    score = moderator.score(skin).score
    assert 0.15 < score < 0.8  # open_nsfw finds a flat skin tone mildly suspicious, far from the default
    moderator.check([skin])
    strict = Moderator(threshold=0.15)
    with pytest.raises(Flagged, match="image 2 was refused by the content filter"):
        strict.check([Image.new("RGB", (96, 96), (20, 40, 200)), skin])


# -- engine -----------------------------------------------------------------------------------------------
def _engine(vlm, **kw):
    from vlm.serve.engine import Engine

    return Engine(vlm, ServeConfig(**kw))


def test_engine_prepare_checks_limits(tiny_vlm):
    eng = _engine(tiny_vlm, max_prompt_tokens=80)
    try:
        img = Image.new("RGB", (40, 30), (200, 10, 10))
        prep = eng.prepare_chat([{"role": "user", "content": [{"type": "image", "image": img},
                                                               {"type": "text", "text": "hi"}]}], GenerationOptions(max_new_tokens=5))
        assert prep.images == 1 and prep.prompt_tokens > 16 and prep.options.max_new_tokens == 5
        with pytest.raises(ContextTooLong, match="allows 80"):
            eng.prepare_chat([{"role": "user", "content": "word " * 100}])
        with pytest.raises(ContextTooLong, match="context is 512"):
            eng.prepare_chat([{"role": "user", "content": "hi"}], GenerationOptions(max_new_tokens=510))
        with pytest.raises(BadRequest, match="placeholder"):
            eng.prepare_chat([{"role": "user", "content": "<image> where is it?"}])
        default = eng.prepare_chat([{"role": "user", "content": "hi"}])
        assert default.options.max_new_tokens == eng.config.default_max_tokens
    finally:
        eng.close()


def test_engine_queue_full_and_shutdown(tiny_vlm):
    eng = _engine(tiny_vlm, concurrency=1, queue_size=1)
    gate = threading.Event()
    try:
        first = eng.submit(lambda job: gate.wait(10) and "first")
        while eng.snapshot()["running"] == 0:
            time.sleep(0.01)
        second = eng.submit(lambda job: "second")
        with pytest.raises(Busy) as e:
            eng.submit(lambda job: "third")
        assert e.value.status == 429 and e.value.retry_after >= 1
        eng.begin_shutdown(grace_s=5)
        with pytest.raises(ShuttingDown):
            eng.submit(lambda job: "late")
        gate.set()
        assert first.wait() == "first"  # running work finishes within the grace period
        with pytest.raises(ShuttingDown):
            second.wait()  # waiting work is failed cleanly
        snap = eng.snapshot()
        assert snap["rejected"] == 2 and snap["completed"] == 1 and snap["running"] == snap["queued"] == 0
    finally:
        eng.close()


def test_engine_stream_cancel_and_timeout(tiny_vlm):
    eng = _engine(tiny_vlm, request_timeout_s=30)
    try:
        prep = eng.prepare_chat([{"role": "user", "content": "Tell me a story."}],
                                GenerationOptions(max_new_tokens=400, temperature=1.0, seed=3))
        job = eng.submit_chat(prep)
        pieces = []
        for piece in job:
            pieces.append(piece)
            if len(pieces) == 3:
                job.stop()
        done = job.result
        assert done.finish_reason == "cancelled" and done.completion_tokens < 400
        assert len(pieces) < 50

        prep = eng.prepare_chat([{"role": "user", "content": "Tell me a story."}],
                                GenerationOptions(max_new_tokens=400, temperature=1.0))
        job = eng.submit(lambda j: eng._generate(j, prep), timeout_s=0.3)
        list(job)
        assert job.result.finish_reason == "timeout"

        prep = eng.prepare_chat([{"role": "user", "content": "Hi"}], GenerationOptions(max_new_tokens=6, temperature=1.0, seed=1))
        done = eng.submit_chat(prep).wait()
        assert done.completion_tokens <= 6
        assert done.finish_reason == ("length" if done.completion_tokens == 6 else "stop")
        snap = eng.snapshot()
        assert (snap["cancelled"], snap["timed_out"], snap["completed"]) == (1, 1, 1)
    finally:
        eng.close()


def test_engine_times_out_queued_work(tiny_vlm):
    eng = _engine(tiny_vlm, concurrency=1, queue_size=2)
    gate = threading.Event()
    try:
        eng.submit(lambda job: gate.wait(5))
        late = eng.submit(lambda job: "never", timeout_s=0.2)
        time.sleep(0.4)
        gate.set()
        with pytest.raises(Timeout, match="timed out"):
            late.wait()
    finally:
        eng.close()


# -- UI helpers and examples -----------------------------------------------------------------------------
def test_history_to_messages():
    from vlm.serve.ui import ERROR_MARK, STOPPED_MARK, history_to_messages

    history = [
        {"role": "user", "content": [{"type": "file", "file": {"path": "/tmp/a.png"}}, {"type": "text", "text": "Q1"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A1" + STOPPED_MARK}]},
        {"role": "user", "content": [{"type": "file", "file": {"path": "/tmp/bad.png"}}, {"type": "text", "text": "Q2"}]},
        {"role": "assistant", "content": [{"type": "text", "text": ERROR_MARK + "not an image"}]},
        {"role": "user", "content": [{"type": "text", "text": "Q3"}]},
    ]
    assert history_to_messages(history) == [
        {"role": "user", "content": [{"type": "image", "image": "/tmp/a.png"}, {"type": "text", "text": "Q1"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
        {"role": "user", "content": [{"type": "text", "text": "Q3"}]},
    ]


def test_ui_shows_busy_and_bad_images_as_chat_messages(tiny_vlm, tmp_path):
    from vlm.serve.engine import Engine
    from vlm.serve.ui import ERROR_MARK, ChatUI

    eng = Engine(tiny_vlm, ServeConfig(concurrency=1, queue_size=0))
    ui = ChatUI(eng, eng.config, {})
    gate = threading.Event()
    try:
        eng.submit(lambda job: gate.wait(10))
        *_, (history, box) = ui.send([], {"text": "hello", "files": []}, 0.0, 1.0, 8, None)
        assert history[-1]["content"].startswith(ERROR_MARK) and "busy" in history[-1]["content"]
        gate.set()
        while eng.snapshot()["running"]:
            time.sleep(0.01)
        bad = tmp_path / "empty.png"
        bad.write_bytes(b"")
        *_, (history, box) = ui.send([], {"text": "hello", "files": [str(bad)]}, 0.0, 1.0, 8, None)
        assert history[-1]["content"].startswith(ERROR_MARK) and "empty" in history[-1]["content"]
        assert "Traceback" not in history[-1]["content"]
    finally:
        gate.set()
        eng.close()


def test_examples_are_drawn(tmp_path):
    from vlm.serve.examples import CHAT_EXAMPLES, EXTRACT_EXAMPLES, write_examples

    paths = write_examples(tmp_path)
    for ex in CHAT_EXAMPLES + EXTRACT_EXAMPLES:
        img = Image.open(paths[ex.name])
        assert img.size[0] >= 200 and len(img.convert("L").getcolors(256) or []) > 2


def test_engine_survives_jobs_that_finish_before_submit_returns(tiny_vlm):
    """Regression: a job that finished before ``submit`` started its timeout timer used to kill its worker
    (the timer did not exist yet), and the server then hung. Hundreds of instant jobs on two workers."""
    eng = _engine(tiny_vlm, concurrency=2, queue_size=1000)
    try:
        jobs = [eng.submit(lambda job, i=i: i) for i in range(300)]
        assert [job.wait() for job in jobs] == list(range(300))
        assert eng.submit(lambda job: "still serving").wait() == "still serving"
        snap = eng.snapshot()
        assert snap["running"] == 0 and snap["queued"] == 0
    finally:
        eng.close()
