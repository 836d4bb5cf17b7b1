"""``vlm serve`` on the shipped vlm-tiny (real weights, its real CLIP in ``clip/``) and real Flickr8k photos:
``/v1/embeddings`` and a two-image chat through the official ``openai`` client, and the UI's Search tab driven
by Playwright + Debian's Chromium (index a folder, search "a dog", click a thumbnail, chat about it).

One server for the module (start-up dominates); its ``--index`` is a fresh folder the browser test fills.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image

from _serve_server import Server, png_data_url

pytestmark = pytest.mark.real
RUNS = Path("/work/runs/serve")
OTHER_ANIMALS = ("dog", "puppy", "animal", "cat", "horse", "cow", "sheep", "bird")


def _mentions(record, words) -> int:
    return sum(any(w in c.lower() for w in words) for c in record["captions"])


@pytest.fixture(scope="module")
def dog_records(flickr_records):
    """Dev photos all five of whose captions mention a dog."""
    return [r for r in flickr_records if _mentions(r, ("dog",)) == 5][:6]


@pytest.fixture(scope="module")
def other_records(flickr_records):
    """Dev photos none of whose captions mentions a dog (or another animal)."""
    return [r for r in flickr_records if _mentions(r, OTHER_ANIMALS) == 0][:6]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, data_dir, dog_records, other_records):
    """12 real photos (6 of dogs) and one broken file, as a user's folder."""
    folder = tmp_path_factory.mktemp("photos")
    for r in dog_records + other_records:
        shutil.copy(data_dir / "flickr8k" / r["image"], folder / Path(r["image"]).name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)  # a JPEG header, then nothing
    return folder


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("search") / "photos.idx"


@pytest.fixture(scope="module")
def server(tmp_path_factory, index_dir):
    srv = Server("vlm-tiny", "--concurrency", "1", "--queue-size", "4", "--threads", "1", "--index", str(index_dir),
                 log_path=tmp_path_factory.mktemp("serve-search-log") / "server.log", startup_timeout=300)
    yield srv
    if srv.proc.poll() is None:
        assert srv.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=180)


def _url(path) -> str:
    return png_data_url(Image.open(path).convert("RGB"), "JPEG")


def test_embeddings_on_the_real_clip(client, data_dir, dog_records):
    from vlm.clip import Clip

    clip = Clip.load("vlm-tiny")
    texts = client.embeddings.create(model="vlm-tiny", input=["a dog", "a plate of food"])
    t = np.array([d.embedding for d in texts.data], dtype=np.float32)
    assert t.shape == (2, clip.dim)
    assert np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-4)
    assert np.allclose(t, clip.embed_texts(["a dog", "a plate of food"]).numpy(), atol=1e-4)  # the same CLIP
    assert texts.usage.prompt_tokens > 2

    photos = [data_dir / "flickr8k" / r["image"] for r in dog_records[:3]]
    images = client.embeddings.create(model="vlm-tiny", input=[_url(p) for p in photos], encoding_format="float")
    v = np.array([d.embedding for d in images.data], dtype=np.float32)
    assert v.shape == (3, clip.dim) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    sims = v @ t.T  # text and images in one space: cosine by dot product
    for photo, (dog, food) in zip(photos, sims):
        assert dog > food, f"{photo.name}: cos(a dog) {dog:.3f} <= cos(a plate of food) {food:.3f}"


def test_two_images_in_one_message(client, data_dir, dog_records, other_records):
    dog, other = (_url(data_dir / "flickr8k" / r["image"]) for r in (dog_records[0], other_records[0]))

    def ask(*urls, max_tokens=1):
        parts = []
        for n, url in enumerate(urls, 1):
            parts += [{"type": "text", "text": f"Photo {n}:"}, {"type": "image_url", "image_url": {"url": url}}]
        parts.append({"type": "text", "text": "What is in each photo?"})
        return client.chat.completions.create(model="vlm-tiny", max_tokens=max_tokens,
                                              messages=[{"role": "user", "content": parts}])

    two = ask(dog, other, max_tokens=16)
    answer = two.choices[0].message.content
    assert answer and any(ch.isalpha() for ch in answer)
    one, none = ask(dog), ask()
    # each image (with its "Photo n:" label) adds the same prompt tokens: its <image> expanded to the tower's tokens
    assert two.usage.prompt_tokens - one.usage.prompt_tokens == one.usage.prompt_tokens - none.usage.prompt_tokens > 16

    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="vlm-tiny", max_tokens=1, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": dog}}] * 9 + [{"type": "text", "text": "hi"}]}])
    assert e.value.body["code"] == "too_many_images" and "limit is 8" in e.value.body["message"]


# -- the browser ---------------------------------------------------------------------------------------------
_WATCH_PROGRESS = """() => { window.__sawProgress = false;
    new MutationObserver(() => { if (document.body.innerText.includes('Indexing')) window.__sawProgress = true; })
        .observe(document.body, {subtree: true, childList: true, characterData: true}); }"""
CAPTION = re.compile(r"^(-?\d+\.\d{3}) · (.+)$")


@pytest.mark.browser
def test_browser_search_tab(server, browser, photo_folder, index_dir, dog_records, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(server.url + "/", wait_until="domcontentloaded")
    page.wait_for_selector("#chat-input textarea", timeout=60_000)
    page.get_by_role("tab", name="Search").click()

    # the index box starts at the server's --index; index the folder from the tab, with progress
    index_box = page.locator("#search-index textarea, #search-index input").first
    index_box.wait_for(timeout=10_000)
    assert index_box.input_value() == str(index_dir)
    page.locator("#search-source textarea, #search-source input").first.fill(str(photo_folder))
    page.evaluate(_WATCH_PROGRESS)
    page.click("#search-index-btn")
    status = page.locator("#search-index-status")
    status.get_by_text("added").wait_for(timeout=180_000)
    text = status.inner_text()
    assert "12 added" in text and "1 unreadable" in text and "broken.jpg" in text, text
    assert page.evaluate("window.__sawProgress"), "no progress was shown while indexing"

    # search: a grid of thumbnails captioned with scores, best first
    page.locator("#search-query textarea, #search-query input").first.fill("a dog")
    page.click("#search-btn")
    thumbs = page.locator("#search-gallery button.thumbnail-item")
    page.wait_for_function("() => document.querySelectorAll('#search-gallery button.thumbnail-item').length === 12",
                           timeout=60_000)
    captions = [c.inner_text().strip() for c in page.locator("#search-gallery .caption-label").all()]
    parsed = [CAPTION.match(c) for c in captions]
    assert len(parsed) == 12 and all(parsed), captions
    scores = [float(m.group(1)) for m in parsed]
    names = [m.group(2) for m in parsed]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    dogs = {Path(r["image"]).name for r in dog_records}
    assert sorted(names) == sorted(p.name for p in photo_folder.iterdir() if p.name != "broken.jpg")
    assert sum(n in dogs for n in names[:6]) > sum(n in dogs for n in names[6:]), names  # dogs rank higher
    assert "best first" in page.locator("#search-status").inner_text()
    shot = tmp_path / "search.png"
    page.screenshot(path=str(shot), full_page=True)
    if RUNS.is_dir():
        shutil.copy(shot, RUNS / "ui_search.png")

    # click the best one: the Chat tab opens with that image in its input; ask about it
    thumbs.first.click()
    page.wait_for_function("() => document.querySelectorAll('#chat-input img').length === 1", timeout=20_000)
    assert page.locator("#chat-input").is_visible()
    sent = page.locator("#chat-input img").first.get_attribute("src")
    assert sent and Path(names[0]).suffix.lstrip(".") in sent.lower()
    max_tokens = page.locator("#max-tokens input[type='number']")
    max_tokens.fill("8")
    max_tokens.press("Enter")
    page.locator("#chat-input textarea").fill("What is the dog doing?")
    page.locator("#chat-input textarea").press("Enter")
    page.wait_for_function(
        "() => { const b = document.querySelectorAll('#chatbot [data-testid=\"bot\"]');"
        " return b.length && b[b.length - 1].innerText.trim().length > 0; }", timeout=90_000)
    server.wait_idle(timeout=90)
    assert page.locator("#chatbot [data-testid='user'] img").count() == 1
    assert "Error" not in page.locator("#chatbot [data-testid='bot']").last.inner_text()
    page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
    if RUNS.is_dir():
        shutil.copy(tmp_path / "chat.png", RUNS / "ui_search_chat.png")
    page.close()
