"""OCR-grounded chat end to end: the shipped vlm-tiny behind the real ``vlm serve``, asked about a real SROIE
receipt through the real ``openai`` client and the UI's ``/chat`` endpoint (gradio_client)."""
from __future__ import annotations

import re

import openai
import pytest
from PIL import Image

from _serve_server import Server, png_data_url

pytestmark = pytest.mark.real
NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
QUESTION = "What is the total amount?"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server("vlm-tiny", "--concurrency", "1", "--queue-size", "4", "--threads", "1",
                 log_path=tmp_path_factory.mktemp("grounding-real-log") / "server.log", startup_timeout=600)
    yield srv
    if srv.proc.poll() is None:
        assert srv.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def receipt_numbers(receipt):
    from vlm.ocr import run_ocr

    return {n for line in run_ocr(receipt) for n in NUMBER.findall(line.text)}


def receipt_message(receipt) -> list[dict]:
    url = png_data_url(Image.open(receipt).convert("RGB"), "JPEG")
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": QUESTION}]}]


def test_receipt_total_is_grounded_in_its_ocr(client, receipt, receipt_numbers):
    msgs = receipt_message(receipt)
    grounded = client.chat.completions.create(model="vlm-tiny", messages=msgs, max_tokens=16,
                                              extra_body={"ocr": "auto"})
    answer = grounded.choices[0].message.content
    assert set(NUMBER.findall(answer)) & receipt_numbers, f"{answer!r} has no number from the receipt's OCR"
    plain = client.chat.completions.create(model="vlm-tiny", messages=msgs, max_tokens=16,
                                           extra_body={"ocr": "never"})
    # the OCR text is in the prompt: hundreds of tokens more than the image and the question alone
    assert grounded.usage.prompt_tokens - plain.usage.prompt_tokens > 200
    default = client.chat.completions.create(model="vlm-tiny", messages=msgs, max_tokens=16)
    assert default.choices[0].message.content == answer  # auto is the server's default
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="vlm-tiny", messages=msgs, max_tokens=4, extra_body={"ocr": "yes"})
    assert "'ocr'" in str(e.value)


def test_ui_chat_with_the_ocr_setting(server, receipt, receipt_numbers):
    from gradio_client import Client, handle_file

    ui = Client(server.url + "/", verbose=False)
    history, _ = ui.predict([], {"text": QUESTION, "files": [handle_file(str(receipt))]}, 0.0, 1.0, 16, "always",
                            api_name="/chat")
    answer = history[-1]["content"]
    answer = answer if isinstance(answer, str) else " ".join(p.get("text", "") for p in answer if isinstance(p, dict))
    assert set(NUMBER.findall(answer)) & receipt_numbers, f"{answer!r} has no number from the receipt's OCR"


@pytest.mark.browser
def test_browser_ocr_setting_grounds_the_answer(server, browser, receipt, receipt_numbers):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url + "/", wait_until="domcontentloaded")
    page.wait_for_selector("#chat-input textarea", timeout=60_000)
    setting = page.locator("#ocr-mode")
    assert setting.get_by_label("auto").is_checked()  # the model's default, shown
    setting.get_by_label("always").check()
    page.set_input_files("#chat-input input[type='file']", str(receipt))
    page.wait_for_selector("#chat-input img", timeout=30_000)
    page.locator("#chat-input textarea").fill(QUESTION)
    page.locator("#chat-input textarea").press("Enter")
    page.wait_for_function(
        "() => { const b = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
        " return b.length && /\\d/.test(b[b.length - 1].innerText); }", timeout=300_000)
    server.wait_idle(timeout=300)
    answer = page.locator("#chatbot [data-testid='bot']").last.inner_text()
    page.close()
    assert set(NUMBER.findall(answer)) & receipt_numbers, f"{answer!r} has no number from the receipt's OCR"


@pytest.mark.browser
def test_browser_extract_shows_where_the_values_came_from(server, browser, receipt):
    """The Extract tab on a real receipt: the JSON, and beside it the receipt with the boxes of the values."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.url + "/", wait_until="domcontentloaded")
    page.wait_for_selector("#chat-input textarea", timeout=60_000)  # the app is up (a click before is lost)
    page.get_by_role("tab", name="Extract").click()
    page.wait_for_selector("#extract-btn", state="visible", timeout=30_000)
    page.set_input_files("#extract-doc input[type='file']", str(receipt))
    page.wait_for_function(f"() => document.querySelector('#extract-doc').innerText.includes('{receipt.name}')",
                           timeout=120_000)
    assert page.locator("#extract-template input").input_value() == "receipt"
    page.click("#extract-btn")
    page.wait_for_selector("#extract-boxes .legend-item", timeout=300_000)
    legend = page.locator("#extract-boxes .legend-item").all_inner_texts()
    extracted = page.locator("#extract-json").inner_text()
    # the annotated receipt: a loaded base image with one mask per located field, named in the legend
    sizes = page.locator("#extract-boxes img").evaluate_all("imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")
    width, height = Image.open(receipt).size
    page.close()
    assert "total" in legend and len(legend) == len(set(legend)) >= 2, legend
    assert [width, height] in sizes, sizes  # base and masks: the receipt's size (it is under the UI's 1280 px)
    assert len(sizes) == len(legend) + 1
    assert "9.00" in extracted, extracted
