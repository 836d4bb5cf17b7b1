"""``vlm serve`` end to end on the tiny random model: the real server in a subprocess, driven with the
official ``openai`` client, raw HTTP for every kind of bad request, ``gradio_client`` on the UI's
endpoints, 20 concurrent requests against a concurrency limit of 2, disconnects and SIGTERM.

One server for the whole module (start-up dominates). The SIGTERM test stops it, so it runs last.
"""
from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import signal
import threading
import time

import httpx
import openai
import pytest
from PIL import Image

from _serve_server import Server, png_data_url

KEY = "sk-test-key"
SKIN = (200, 140, 110)  # open_nsfw scores a flat skin tone ~0.29; real photos score far lower


@pytest.fixture(scope="module")
def model_dir(tiny_vlm, tmp_path_factory):
    return tiny_vlm.save(tmp_path_factory.mktemp("serve-tiny") / "tiny-vlm")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    srv = Server(
        model_dir, "--concurrency", "2", "--queue-size", "3", "--api-key", KEY, "--allow-remote-images",
        "--max-body-bytes", "3000000", "--max-image-bytes", "400000", "--max-image-pixels", "1000000",
        "--max-images", "3", "--max-prompt-tokens", "300", "--moderation-threshold", "0.15",
        "--request-timeout", "60", "--shutdown-grace", "5", "--threads", "1",
        log_path=tmp_path_factory.mktemp("serve-log") / "server.log",
    )
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def image_url():
    img = Image.new("RGB", (64, 48), (30, 60, 200))
    Image.Image.paste(img, (240, 240, 240), (8, 8, 40, 30))
    return png_data_url(img)


def user(text, *urls):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": u}} for u in urls]
             + [{"type": "text", "text": text}]}]


def post(server, body, key=KEY, timeout=60):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{server.url}/v1/chat/completions", content=data, timeout=timeout,
                      headers={**headers, "Content-Type": "application/json"})


def assert_error(resp, status, code=None, words=()):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code, err
    for word in words:
        assert word in err["message"], err
    return err


# -- the happy path with the official client ---------------------------------------------------------
def test_health_and_models(server, client):
    h = server.health()
    assert h["status"] == "ok" and h["model"] == "tiny-vlm" and h["concurrency"] == 2
    assert [m.id for m in client.models.list().data] == ["tiny-vlm"]


def test_chat_with_image_non_streamed_and_streamed(client, image_url):
    msgs = user("Describe the picture.", image_url)
    full = client.chat.completions.create(model="tiny-vlm", messages=msgs, max_tokens=12, temperature=1.0, seed=7)
    choice = full.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= full.usage.completion_tokens <= 12
    if choice.finish_reason == "length":
        assert full.usage.completion_tokens == 12
    assert full.usage.prompt_tokens > 16  # the image alone is 16 tokens
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens

    stream = client.chat.completions.create(model="tiny-vlm", messages=msgs, max_tokens=12, temperature=1.0, seed=7,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # streamed in pieces
    assert text.strip() == choice.message.content  # same seed, same answer
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [choice.finish_reason]
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_stop_sequences_and_seed(client, image_url):
    msgs = user("Write something.", image_url)
    full = client.chat.completions.create(model="tiny-vlm", messages=msgs, max_tokens=30, temperature=1.0, seed=11)
    text = full.choices[0].message.content
    words = text.split()
    assert len(words) >= 3, text
    stop = words[2]
    cut = client.chat.completions.create(model="tiny-vlm", messages=msgs, max_tokens=30, temperature=1.0, seed=11,
                                         stop=[stop])
    assert cut.choices[0].message.content == text[:text.find(stop)].strip()
    assert cut.choices[0].finish_reason == "stop"
    other = client.chat.completions.create(model="tiny-vlm", messages=msgs, max_tokens=30, temperature=1.0, seed=12)
    assert other.choices[0].message.content != text  # the seed matters


def test_prompt_tokens_count_image_tokens(client, image_url):
    text_only = client.chat.completions.create(model="tiny-vlm", messages=user("Hi."), max_tokens=1)
    two = client.chat.completions.create(model="tiny-vlm", messages=user("Hi.", image_url, image_url), max_tokens=1)
    # each image adds 16 image tokens plus the "<image>\n" line break the template puts after it
    assert two.usage.prompt_tokens - text_only.usage.prompt_tokens in (32, 33, 34)


def test_openai_client_errors(server, client, image_url):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert "tiny-vlm" in str(e.value)
    bad_key = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.chat.completions.create(model="tiny-vlm", messages=user("hi"))
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-vlm", messages=user("hi", "data:image/png;base64,aGVsbG8="))
    assert "not an image" in str(e.value)


# -- every kind of bad request ---------------------------------------------------------------------------
def _png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


BAD = {
    "malformed json": (b'{"model": "tiny-vlm", "messages": [', 400, None, "not valid JSON"),
    "no messages": ({"model": "tiny-vlm"}, 400, None, "messages"),
    "empty messages": ({"model": "tiny-vlm", "messages": []}, 400, None, "messages"),
    "bad role": ({"model": "tiny-vlm", "messages": [{"role": "robot", "content": "x"}]}, 400, None, "role"),
    "bad part": ({"model": "tiny-vlm", "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
                 400, None, "type"),
    "n=2": ({"model": "tiny-vlm", "messages": user("hi"), "n": 2}, 400, None, "n"),
    "top_p=0": ({"model": "tiny-vlm", "messages": user("hi"), "top_p": 0}, 400, None, "top_p"),
    "temperature=5": ({"model": "tiny-vlm", "messages": user("hi"), "temperature": 5}, 400, None, "temperature"),
    "max_tokens=0": ({"model": "tiny-vlm", "messages": user("hi"), "max_tokens": 0}, 400, None, "max_tokens"),
    "5 stops": ({"model": "tiny-vlm", "messages": user("hi"), "stop": list("abcde")}, 400, None, "stop"),
    "not base64": ({"model": "tiny-vlm", "messages": user("hi", "data:image/png;base64,@@@")}, 400, None, "base64"),
    "not an image": ({"model": "tiny-vlm", "messages": user("hi", "data:image/png;base64,"
                                                               + base64.b64encode(b"plain text, no pixels").decode())},
                     400, None, "not an image"),
    "truncated png": ({"model": "tiny-vlm", "messages": user("hi", "data:image/png;base64," + base64.b64encode(
        _png_bytes(Image.effect_noise((64, 64), 50).convert("RGB"))[:900]).decode())}, 400, None, "truncated"),
    "file url": ({"model": "tiny-vlm", "messages": user("hi", "file:///etc/hostname")}, 400, "image_url_forbidden",
                 "file"),
    "local path": ({"model": "tiny-vlm", "messages": user("hi", "/etc/hostname")}, 400, "image_url_forbidden",
                   "local path"),
    "loopback url": ({"model": "tiny-vlm", "messages": user("hi", "http://127.0.0.1:1/x.png")}, 400,
                     "image_url_forbidden", "127.0.0.1"),
    "localhost url": ({"model": "tiny-vlm", "messages": user("hi", "http://localhost/x.png")}, 400,
                      "image_url_forbidden", "localhost"),
    "metadata url": ({"model": "tiny-vlm", "messages": user("hi", "http://169.254.169.254/latest")}, 400,
                     "image_url_forbidden", "169.254.169.254"),
    "private url": ({"model": "tiny-vlm", "messages": user("hi", "https://10.1.2.3/a.jpg")}, 400,
                    "image_url_forbidden", "10.1.2.3"),
    "ipv6 loopback url": ({"model": "tiny-vlm", "messages": user("hi", "http://[::1]:8080/a.png")}, 400,
                          "image_url_forbidden", "::1"),
    "mapped v4 url": ({"model": "tiny-vlm", "messages": user("hi", "http://[::ffff:127.0.0.1]/a.png")}, 400,
                      "image_url_forbidden", "refused"),
    "too many images": ({"model": "tiny-vlm", "messages": user("hi", *[png_data_url(Image.new("RGB", (8, 8)))] * 4)},
                        400, "too_many_images", "limit is 3"),
    "too many pixels": ({"model": "tiny-vlm", "messages": user("hi", png_data_url(Image.new("RGB", (1200, 1000))))},
                        400, None, "pixels"),
    "image too large": ({"model": "tiny-vlm", "messages": user("hi", png_data_url(
        Image.effect_noise((600, 600), 80).convert("RGB")))}, 413, None, "400000"),
    "prompt too long": ({"model": "tiny-vlm", "messages": user("word " * 400)}, 400, "context_length_exceeded",
                        "300"),
    "answer too long": ({"model": "tiny-vlm", "messages": user("hi"), "max_tokens": 600}, 400,
                        "context_length_exceeded", "context is 512"),
    "flagged image": ({"model": "tiny-vlm", "messages": user("hi", png_data_url(Image.new("RGB", (96, 96), SKIN)))},
                      400, "content_policy_violation", "content filter"),
    "unknown model": ({"model": "llava-13b", "messages": user("hi")}, 404, "model_not_found", "tiny-vlm"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request(server, case):
    body, status, code, words = BAD[case]
    assert_error(post(server, body), status, code, [words])


def test_body_too_large(server):
    big = json.dumps({"model": "tiny-vlm", "messages": user("x" * 3_100_000)})
    assert_error(post(server, big), 413, "request_too_large", ["3000000"])


def test_auth(server):
    assert_error(post(server, {"model": "tiny-vlm", "messages": user("hi")}, key=None), 401, "invalid_api_key",
                 ["Bearer"])
    assert_error(post(server, {"model": "tiny-vlm", "messages": user("hi")}, key="nope"), 401, "invalid_api_key")
    assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 401
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200  # health is open


def test_server_still_answers_after_bad_requests(server, client, image_url):
    h = server.wait_idle()
    assert h["failed"] == 0  # bad requests are refused up front, not failed generations
    r = client.chat.completions.create(model="tiny-vlm", messages=user("Still there?", image_url), max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length")


# -- load, disconnects -----------------------------------------------------------------------------------
def test_20_concurrent_requests_with_limit_2(server, image_url):
    server.wait_idle()
    before = server.health()
    body = {"model": "tiny-vlm", "messages": user("Count.", image_url), "max_tokens": 24, "temperature": 1.0}

    def one(i):
        r = post(server, {**body, "seed": i}, timeout=120)
        return r.status_code, r.headers.get("retry-after"), r.json()

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    ok = [r for r in results if r[0] == 200]
    busy = [r for r in results if r[0] in (429, 503)]
    assert len(ok) + len(busy) == 20, [r[0] for r in results]
    assert len(ok) >= 2
    for _, retry_after, payload in busy:
        assert retry_after is not None and int(retry_after) >= 1
        assert payload["error"]["code"] in ("queue_full", "shutting_down")
    for _, _, payload in ok:
        assert payload["choices"][0]["finish_reason"] in ("stop", "length")
    print(f"20 concurrent requests, limit 2 + queue 3: {len(ok)} answered, {len(busy)} got 429/503")
    after = server.wait_idle()
    assert after["peak_running"] <= 2
    assert after["completed"] - before["completed"] == len(ok)
    assert after["rejected"] - before["rejected"] == len(busy)


def test_client_disconnect_cancels_generation(server):
    server.wait_idle()
    before = server.health()
    body = {"model": "tiny-vlm", "messages": user("Tell a long story."), "max_tokens": 450, "temperature": 1.0,
            "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as resp:
        lines = resp.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert all(line.startswith("data: ") or not line for line in got)
    after = server.wait_idle(timeout=20)
    assert after["cancelled"] == before["cancelled"] + 1


def test_client_timeout_cancels_non_streamed_generation(server):
    server.wait_idle()
    before = server.health()
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}/v1/chat/completions", timeout=1.0, headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "tiny-vlm", "messages": user("A long story, please."), "max_tokens": 450,
                         "temperature": 1.0})
    after = server.wait_idle(timeout=20)
    assert after["cancelled"] == before["cancelled"] + 1


# -- the UI's endpoints with gradio_client ---------------------------------------------------------------
@pytest.fixture(scope="module")
def ui_client(server):
    from gradio_client import Client

    return Client(server.url + "/", verbose=False)


def _answer(history):
    return history[-1]["content"][0]["text"] if history[-1]["content"] else ""


def test_gradio_chat_streams_an_answer(ui_client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "blue.png"
    Image.new("RGB", (64, 48), (30, 60, 200)).save(path)
    job = ui_client.submit([], {"text": "What is this?", "files": [handle_file(str(path))]}, 1.0, 1.0, 16,
                           api_name="/chat")
    outputs = list(job)
    history, box = outputs[-1]
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert any(part.get("type") == "file" for part in history[0]["content"])
    assert _answer(history) and not _answer(history).startswith("**Error:**")
    assert len(outputs) > 3  # partial answers arrived before the final one
    assert box["interactive"] is True

    # a second turn keeps the history (multi-turn); files go back as uploads
    for part in history[0]["content"]:
        if part.get("type") == "file":
            part["file"] = handle_file(part["file"])
    history2, _ = ui_client.predict(history, {"text": "And the colour?", "files": []}, 1.0, 1.0, 8, api_name="/chat")
    assert [m["role"] for m in history2] == ["user", "assistant", "user", "assistant"]


def test_gradio_errors_are_chat_messages(ui_client, tmp_path):
    from gradio_client import handle_file

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    history, _ = ui_client.predict([], {"text": "hi", "files": [handle_file(str(corrupt))]}, 0.0, 1.0, 8,
                                   api_name="/chat")
    assert _answer(history).startswith("**Error:**") and "image" in _answer(history)

    flagged = tmp_path / "skin.png"
    Image.new("RGB", (96, 96), SKIN).save(flagged)
    history, _ = ui_client.predict([], {"text": "hi", "files": [handle_file(str(flagged))]}, 0.0, 1.0, 8,
                                   api_name="/chat")
    assert "content filter" in _answer(history)

    history, _ = ui_client.predict([], {"text": "word " * 400, "files": []}, 0.0, 1.0, 8, api_name="/chat")
    assert "300" in _answer(history)  # prompt over --max-prompt-tokens


def test_gradio_stop_frees_the_worker(server, ui_client):
    server.wait_idle()
    before = server.health()
    job = ui_client.submit([], {"text": "Go on and on.", "files": []}, 1.0, 1.0, 450, api_name="/chat")
    deadline = time.monotonic() + 30
    while server.health()["running"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    ui_client.predict(api_name="/stop")
    history, _ = job.result(timeout=30)
    assert _answer(history).endswith("*[stopped]*")
    after = server.wait_idle(timeout=10)
    assert after["cancelled"] == before["cancelled"] + 1


def test_gradio_regenerate_and_clear(ui_client):
    history, _ = ui_client.predict([], {"text": "Say something.", "files": []}, 1.0, 1.0, 8, api_name="/chat")
    again = ui_client.predict(history, 1.0, 1.0, 8, api_name="/regenerate")
    assert [m["role"] for m in again] == ["user", "assistant"]  # the answer was replaced, not appended
    assert again[0]["content"] == history[0]["content"]
    cleared = ui_client.predict(api_name="/clear")
    assert cleared[0] == []


def test_gradio_extract_tab(ui_client, tmp_path):
    from gradio_client import handle_file

    from vlm.serve.examples import receipt

    path = tmp_path / "receipt.png"
    receipt().save(path)
    result, ocr_text, status, boxes = ui_client.predict(handle_file(str(path)), "receipt", "", api_name="/extract")
    assert set(result) == {"company", "date", "address", "total"}
    assert "TOTAL" in ocr_text.upper() and "OCR lines" in status and "values located" in status
    # the annotated page (an update: the colours follow the fields): the receipt, one annotation per located line
    assert list(boxes["color_map"]) == ["company", "date", "address", "total"]
    assert Image.open(boxes["value"]["image"]).size == receipt().size
    located = {a["label"] for a in boxes["value"]["annotations"]}
    assert located == {k for k, v in result.items() if v is not None}, (result, boxes)
    result, _, _, _ = ui_client.predict(handle_file(str(path)), "receipt", "total, phone", api_name="/extract")
    assert set(result) == {"total", "phone"}  # typed fields override the template
    pdf = tmp_path / "receipt.pdf"
    receipt().save(pdf, "PDF", resolution=100)
    result, ocr_text, _, boxes = ui_client.predict(handle_file(str(pdf)), "(type fields below)", "total",
                                                   api_name="/extract")
    assert list(result) == ["total"] and "TOTAL" in ocr_text.upper()  # a PDF works like an image
    assert Image.open(boxes["value"]["image"]).size[1] > 0  # its page, rendered as extraction saw it
    result, _, status, boxes = ui_client.predict(None, "receipt", "", api_name="/extract")
    assert result is None and status.startswith("**Error:**") and boxes is None


def test_model_panel_info(ui_client, server):
    status = ui_client.predict(api_name="/status")
    assert status["concurrency"] == 2 and status["queue_size"] == 3


# -- shutdown (stops the module's server: keep last) ----------------------------------------------------
def test_sigterm_finishes_or_fails_in_flight_requests_and_exits(server):
    server.wait_idle()
    results: list = []

    def stream_long():
        body = {"model": "tiny-vlm", "messages": user("Keep going."), "max_tokens": 450, "temperature": 1.0,
                "stream": True}
        try:
            with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60,
                              headers={"Authorization": f"Bearer {KEY}"}) as resp:
                results.append([line for line in resp.iter_lines() if line])
        except httpx.HTTPError as exc:  # pragma: no cover - reported by the assertion below
            results.append(exc)

    worker = threading.Thread(target=stream_long)
    worker.start()
    deadline = time.monotonic() + 30
    while server.health()["running"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    rc = server.proc.wait(40)
    worker.join(10)
    assert rc == 0, server.log()
    assert time.monotonic() - started < 30
    assert not worker.is_alive()
    lines = results[0]
    assert isinstance(lines, list), lines
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2][len("data: "):])
    # either it finished within the grace period, or it got a clean error event
    assert ("error" in last and last["error"]["code"] == "shutting_down") or last["choices"][0]["finish_reason"]
    assert "SIGTERM received" in server.log() and "vlm serve: stopped" in server.log()
