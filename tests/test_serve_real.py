"""``vlm serve`` on the real SmolLM2 weights (with a fresh 112 px tower) and a real Flickr8k photo:
the openai client, the remote-image default, and the browser UI driven by Playwright + Debian's Chromium.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from _serve_server import Server, png_data_url

pytestmark = pytest.mark.real
RUNS = Path("/work/runs/serve")


@pytest.fixture(scope="module")
def server(real_vlm, tmp_path_factory):
    model_dir = real_vlm.save(tmp_path_factory.mktemp("serve-real") / "smol-vlm")
    srv = Server(model_dir, "--concurrency", "1", "--queue-size", "4", "--threads", "1",
                 log_path=tmp_path_factory.mktemp("serve-real-log") / "server.log")
    yield srv
    if srv.proc.poll() is None:
        assert srv.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def photo_message(photo, text):
    url = png_data_url(Image.open(photo).convert("RGB"), "JPEG")
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def test_real_model_chat_with_photo(client, photo):
    msgs = photo_message(photo, "Describe this photo in one sentence.")
    full = client.chat.completions.create(model="smol-vlm", messages=msgs, max_tokens=10)
    answer = full.choices[0].message.content
    assert answer and any(ch.isalpha() for ch in answer)
    assert full.usage.completion_tokens <= 10
    text_only = client.chat.completions.create(model="smol-vlm", messages=[
        {"role": "user", "content": "Describe this photo in one sentence."}], max_tokens=1)
    # 112 px / patch 16 = 49 image tokens, plus the line break after <image>
    assert full.usage.prompt_tokens - text_only.usage.prompt_tokens in (49, 50, 51)

    streamed = client.chat.completions.create(model="smol-vlm", messages=msgs, max_tokens=10, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in streamed if c.choices]
    assert "".join(pieces).strip() == answer  # greedy: the same answer, token by token
    assert sum(1 for p in pieces if p) > 3


def test_decoding_extensions_through_the_openai_client(client, real_vlm):
    """`no_repeat_ngram_size` via extra_body gives the Python API's answer with the same option."""
    question = "List the word 'cat' ten times, separated by spaces."
    msgs = [{"role": "user", "content": question}]
    plain = client.chat.completions.create(model="smol-vlm", messages=msgs, max_tokens=30).choices[0].message.content
    ext = client.chat.completions.create(model="smol-vlm", messages=msgs, max_tokens=30,
                                         extra_body={"no_repeat_ngram_size": 2}).choices[0].message.content
    assert ext == real_vlm.ask(None, question, max_new_tokens=30, no_repeat_ngram_size=2) != plain
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="smol-vlm", messages=msgs, extra_body={"repetition_penalty": 0})


def test_remote_images_off_by_default(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smol-vlm", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            {"type": "text", "text": "hi"}]}])
    assert "--allow-remote-images" in str(e.value)


def test_extract_tab_on_a_real_receipt(server, receipt):
    from gradio_client import Client, handle_file

    ui = Client(server.url + "/", verbose=False)
    result, ocr_text, status, boxes = ui.predict(handle_file(str(receipt)), "receipt", "total", api_name="/extract")
    assert list(result) == ["total"]
    assert len(ocr_text.splitlines()) > 5 and "OCR lines" in status
    assert Image.open(boxes["value"]["image"]).size == Image.open(receipt).size  # the receipt, boxes drawn


def _bot_text(page) -> str:
    bots = page.locator("#chatbot [data-testid='bot']")
    return bots.last.inner_text() if bots.count() else ""


@pytest.mark.browser
def test_browser_chat_stream_and_stop(server, browser, photo, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url + "/", wait_until="domcontentloaded")
    page.wait_for_selector("#chat-input textarea", timeout=60_000)

    # a long answer, so there is time to press Stop
    max_tokens = page.locator("#max-tokens input[type='number']")
    max_tokens.fill("1500")
    max_tokens.press("Enter")

    page.set_input_files("#chat-input input[type='file']", str(photo))
    page.wait_for_selector("#chat-input img", timeout=30_000)  # the upload's thumbnail
    page.locator("#chat-input textarea").fill("Tell me a long story about this picture.")
    page.locator("#chat-input textarea").press("Enter")

    # the answer streams in: it is seen growing before it is finished
    page.wait_for_function(
        "() => { const b = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
        " return b.length && b[b.length - 1].innerText.trim().length > 10; }", timeout=90_000)
    first = _bot_text(page)
    page.wait_for_function(
        f"() => {{ const b = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
        f" return b[b.length - 1].innerText.trim().length > {len(first.strip()) + 5}; }}", timeout=30_000)
    assert server.health()["running"] == 1

    page.click("#stop-btn")
    page.wait_for_function(
        "() => { const b = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
        " return b[b.length - 1].innerText.includes('[stopped]'); }", timeout=20_000)
    stopped = _bot_text(page)
    health = server.wait_idle(timeout=10)  # the worker is free again
    assert health["cancelled"] >= 1
    time.sleep(1.0)
    assert _bot_text(page) == stopped  # nothing more arrives after Stop
    assert len(stopped) < 1500 * 3  # far short of the 1500-token budget

    # the user's image is shown in the chat
    assert page.locator("#chatbot [data-testid='user'] img").count() >= 1
    shot = tmp_path / "vlm-serve-ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if RUNS.is_dir():
        shutil.copy(shot, RUNS / "ui_stop.png")

    # the model panel shows VLM.info()
    page.get_by_role("tab", name="Model").click()
    item = page.locator("li", has_text="image tokens per image").first
    item.wait_for(timeout=10_000)
    assert item.inner_text().strip().endswith("49")
    page.close()


_MAKE_TRANSFER = """([b64, name]) => {
    const bin = atob(b64); const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const dt = new DataTransfer(); dt.items.add(new File([bytes], name, {type: 'image/jpeg'})); return dt; }"""


@pytest.mark.browser
def test_browser_drag_drop_and_paste_two_images(server, browser, photo, flickr_records, data_dir):
    import base64

    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(server.url + "/", wait_until="domcontentloaded")
    page.wait_for_selector("#chat-input textarea", timeout=60_000)
    max_tokens = page.locator("#max-tokens input[type='number']")
    max_tokens.fill("6")
    max_tokens.press("Enter")

    dropped = base64.b64encode(Path(photo).read_bytes()).decode()
    transfer = page.evaluate_handle(_MAKE_TRANSFER, [dropped, "dropped.jpg"])
    for event in ("dragenter", "dragover", "drop"):
        page.dispatch_event("#chat-input textarea", event, {"dataTransfer": transfer})
    page.wait_for_function("() => document.querySelectorAll('#chat-input img').length === 1", timeout=20_000)

    pasted = base64.b64encode((data_dir / "flickr8k" / flickr_records[1]["image"]).read_bytes()).decode()
    page.evaluate("""([b64, name, make]) => {
        const dt = eval(make)([b64, name]);
        const ta = document.querySelector('#chat-input textarea'); ta.focus();
        ta.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true})); }""",
                  [pasted, "pasted.jpg", _MAKE_TRANSFER])
    page.wait_for_function("() => document.querySelectorAll('#chat-input img').length === 2", timeout=20_000)

    page.locator("#chat-input textarea").fill("What differs between these two photos?")
    page.locator("#chat-input textarea").press("Enter")
    page.wait_for_function(
        "() => { const b = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
        " return b.length && b[b.length - 1].innerText.trim().length > 0; }", timeout=60_000)
    server.wait_idle(timeout=60)
    assert page.locator("#chatbot [data-testid='user'] img").count() == 2
    assert "Error" not in _bot_text(page)
    page.close()


@pytest.mark.browser
def test_browser_shows_errors_in_chat(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    page.goto(server.url + "/", wait_until="domcontentloaded")
    page.wait_for_selector("#chat-input textarea", timeout=60_000)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    page.set_input_files("#chat-input input[type='file']", str(broken))
    time.sleep(1.0)
    page.locator("#chat-input textarea").fill("What is this?")
    page.locator("#chat-input textarea").press("Enter")
    page.wait_for_function(
        "() => { const b = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
        " return b.length && b[b.length - 1].innerText.includes('Error:'); }", timeout=30_000)
    text = _bot_text(page)
    assert "image" in text and "Traceback" not in text
    assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"
    page.close()
