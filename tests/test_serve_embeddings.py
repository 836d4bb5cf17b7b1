"""``POST /v1/embeddings`` in-process (the real FastAPI app on the tiny random model with a tiny random CLIP,
driven by the official ``openai`` client over Starlette's TestClient), and the conversion of several images
in one request (OpenAI messages, UI history, the engine's prompt). The real-weights checks are in
tests/test_serve_search_real.py."""
from __future__ import annotations

import base64
import json

import numpy as np
import openai
import pytest
import torch
from PIL import Image

from _serve_server import png_data_url
from clip_fixtures import *  # noqa: F403
from vlm.config import GenerationOptions
from vlm.serve.config import ServeConfig
from vlm.serve.errors import BadRequest


def _app(vlm, **kw):
    from vlm.serve.app import build_app
    from vlm.serve.engine import Engine

    config = ServeConfig(model="tiny", ui=False, moderation=False, **kw)
    engine = Engine(vlm, config)
    return build_app(config, engine), engine


@pytest.fixture(scope="module")
def clip_vlm(tiny_vlm, tiny_clip_dir):
    from vlm import VLM

    return VLM(tiny_vlm.model, tiny_vlm.processor, name="tiny", clip=tiny_clip_dir)


@pytest.fixture(scope="module")
def api(clip_vlm):
    from starlette.testclient import TestClient

    app, engine = _app(clip_vlm, max_embedding_images=3, max_embedding_inputs=6)
    http = TestClient(app)
    yield openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0), http
    engine.close()


def _image(colour, size=(40, 30)):
    img = Image.new("RGB", size, colour)
    img.paste((250, 250, 250), (5, 5, 20, 15))
    return img


def test_texts_and_images_in_one_request(api, clip_vlm):
    client, _ = api
    red, blue = _image((200, 20, 20)), _image((20, 20, 200))
    inputs = ["a dog on a beach", png_data_url(red), "a red square",
              {"type": "image_url", "image_url": {"url": png_data_url(blue)}}]
    floats = client.embeddings.create(model="tiny", input=inputs, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1, 2, 3] and floats.object == "list" and floats.model == "tiny"
    vecs = np.array([d.embedding for d in floats.data], dtype=np.float32)
    assert vecs.shape == (4, clip_vlm.clip.dim)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # the same vectors as the Python API gives, in input order
    texts = clip_vlm.embed_texts(["a dog on a beach", "a red square"]).numpy()
    images = clip_vlm.embed_images([red, blue]).numpy()
    assert np.allclose(vecs[[0, 2]], texts, atol=1e-5) and np.allclose(vecs[[1, 3]], images, atol=1e-5)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0

    # the client's default: base64 (float32), decoded by the client to the same numbers
    b64 = client.embeddings.create(model="tiny", input=inputs)
    assert np.allclose(np.array([d.embedding for d in b64.data], dtype=np.float32), vecs, atol=1e-6)
    single = client.embeddings.create(model="tiny", input="a dog on a beach", dimensions=clip_vlm.clip.dim)
    assert len(single.data) == 1 and np.allclose(single.data[0].embedding, texts[0], atol=1e-5)


def test_raw_base64_is_little_endian_float32(api, clip_vlm):
    _, http = api
    resp = http.post("/v1/embeddings", json={"model": "tiny", "input": ["a cat"], "encoding_format": "base64"})
    assert resp.status_code == 200, resp.text
    raw = base64.b64decode(resp.json()["data"][0]["embedding"])
    assert np.allclose(np.frombuffer(raw, dtype="<f4"), clip_vlm.embed_texts(["a cat"]).numpy()[0], atol=1e-6)


@pytest.mark.parametrize("body, status, param, words", [
    ({"model": "tiny", "input": [1, 2, 3]}, 400, "input", ["token-id arrays"]),
    ({"model": "tiny", "input": [[1, 2], [3]]}, 400, "input", ["token-id arrays"]),
    ({"model": "tiny", "input": []}, 400, "input", ["empty"]),
    ({"model": "tiny", "input": ""}, 400, "input", ["empty string"]),
    ({"model": "tiny", "input": ["ok", ""]}, 400, "input[1]", ["empty string"]),
    ({"model": "tiny", "input": "x", "dimensions": 8}, 400, "dimensions", ["16-d", "omit dimensions"]),
    ({"model": "tiny", "input": "x", "encoding_format": "int8"}, 400, "encoding_format", []),
    ({"model": "tiny", "input": "x", "temperature": 1}, 400, "temperature", ["unknown parameter"]),
    ({"model": "tiny", "input": ["x", {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%"}}]},
     400, "input[1]", ["base64"]),
    ({"model": "tiny", "input": ["x", "data:image/png;base64," + base64.b64encode(b"not a png").decode()]},
     400, "input[1]", ["input[1]"]),
    ({"model": "tiny", "input": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]},
     400, "input[0]", []),
    ({"model": "tiny", "input": [{"type": "video", "video": "x"}]}, 400, "input.0", []),
    ({"model": "tiny", "input": ["a"] * 7}, 400, "input", ["at most 6"]),
    ({"model": "tiny", "input": ["data:image/png;base64,AAAA"] * 4}, 400, "input", ["at most 3 images"]),
    ({"model": "other", "input": "x"}, 404, "model", ["does not exist"]),
    ({"input": "x"}, 400, "model", []),
])
def test_bad_requests_name_the_field(api, body, status, param, words):
    _, http = api
    resp = http.post("/v1/embeddings", json=body)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["param"] == param, err
    for word in words:
        assert word in err["message"], err
    assert "Traceback" not in err["message"]


def test_not_json_and_wrong_method(api):
    _, http = api
    resp = http.post("/v1/embeddings", content=b"{nope", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]["message"]
    resp = http.get("/v1/embeddings")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"


def test_openai_client_raises_on_bad_input(api):
    client, _ = api
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="tiny", input=[""], encoding_format="float")
    assert "input[0]" in str(e.value)


def test_model_without_clip_is_a_clear_400(tiny_vlm):
    from starlette.testclient import TestClient

    from vlm import VLM

    app, engine = _app(VLM(tiny_vlm.model, tiny_vlm.processor, name="no-clip-model"))
    try:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=TestClient(app),
                               max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            client.embeddings.create(model="tiny", input="a dog")
        body = e.value.body
        assert body["code"] == "no_clip" and body["param"] == "model"
        assert "no CLIP" in body["message"] and "--clip" in body["message"]
        assert engine.snapshot()["failed"] == 0  # the client's problem, not a server failure
    finally:
        engine.close()


def test_server_fault_is_a_logged_500(clip_vlm, tiny_vlm, caplog):
    """A CLIP that breaks inside the server: a 500 naming the request id, its traceback in the log."""
    from starlette.testclient import TestClient

    from vlm import VLM
    from vlm.clip import Clip

    broken = Clip(clip_vlm.clip.model, clip_vlm.clip.tokenizer, folder=clip_vlm.clip.folder)
    broken.embed_texts = None  # not callable: a TypeError inside the worker
    app, engine = _app(VLM(tiny_vlm.model, tiny_vlm.processor, name="tiny", clip=broken))
    try:
        resp = TestClient(app).post("/v1/embeddings", json={"model": "tiny", "input": "x"})
        assert resp.status_code == 500, resp.text
        err = resp.json()["error"]
        rid = resp.headers["x-request-id"]
        assert err["type"] == "server_error" and rid in err["message"]
        assert any(rid in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        engine.close()


def test_openapi_documents_embeddings(api):
    _, http = api
    schema = http.get("/openapi.json").json()
    op = schema["paths"]["/v1/embeddings"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/EmbeddingRequest")
    assert schema["components"]["schemas"]["EmbeddingRequest"]["properties"]["model"]["enum"] == ["tiny"]


# -- several images in one request -------------------------------------------------------------------------
def test_openai_messages_with_several_images(tiny_vlm):
    from vlm.serve.engine import Engine
    from vlm.serve.openai_api import OpenAIRoutes
    from vlm.serve.schemas import parse_chat_request

    config = ServeConfig(model="tiny", ui=False, moderation=False)
    engine = Engine(tiny_vlm, config)
    try:
        routes = OpenAIRoutes(engine, config)
        a, b, c = (png_data_url(_image(col)) for col in ((200, 0, 0), (0, 200, 0), (0, 0, 200)))
        part = lambda url: {"type": "image_url", "image_url": {"url": url}}  # noqa: E731
        body = {"model": "tiny", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Image 1:"}, part(a), {"type": "text", "text":
                                         "Image 2:"}, part(b), {"type": "text", "text": "Compare them."}]},
            {"role": "assistant", "content": "They differ."},
            {"role": "user", "content": [part(c), {"type": "text", "text": "And this one?"}]}]}
        messages = routes.to_vlm_messages(parse_chat_request(json.dumps(body).encode()))
        kinds = [[p["type"] for p in m["content"]] if isinstance(m["content"], list) else "str" for m in messages]
        assert kinds == [["text", "image", "text", "image", "text"], "str", ["image", "text"]]
        assert all(isinstance(p["image"], bytes) for m in messages if isinstance(m["content"], list)
                   for p in m["content"] if p["type"] == "image")
        prepared = engine.prepare_chat(messages, GenerationOptions(max_new_tokens=2))
        assert prepared.images == 3
        image_token = tiny_vlm.model.config.image_token_id
        n_image_tokens = int((prepared.batch["input_ids"] == image_token).sum())
        assert n_image_tokens == 3 * tiny_vlm.model.config.image_seq_length

        # the server's limit, before any image is decoded
        too_many = {"model": "tiny", "messages": [{"role": "user", "content": [part(a)] * 5},
                                                  {"role": "user", "content": [part(b)] * 4}]}
        with pytest.raises(BadRequest, match="9 images given; the limit is 8") as e:
            routes.to_vlm_messages(parse_chat_request(json.dumps(too_many).encode()))
        assert e.value.code == "too_many_images"
    finally:
        engine.close()


def test_ui_history_with_several_uploads():
    from vlm.serve.ui import history_to_messages

    history = [
        {"role": "user", "content": [{"path": "/tmp/a.png"}, {"path": "/tmp/b.png"}, "What differs?"]},
        {"role": "assistant", "content": "The colour."},
        {"role": "user", "content": [{"type": "file", "file": {"path": "/tmp/c.png"}}]},
        {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
    ]
    assert history_to_messages(history) == [
        {"role": "user", "content": [{"type": "image", "image": "/tmp/a.png"}, {"type": "image", "image": "/tmp/b.png"},
                                     {"type": "text", "text": "What differs?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The colour."}]},
        {"role": "user", "content": [{"type": "image", "image": "/tmp/c.png"}, {"type": "text", "text": "And now?"}]},
    ]


def test_ui_too_many_images_is_a_chat_error(tiny_vlm, tmp_path):
    from vlm.serve.engine import Engine
    from vlm.serve.ui import ERROR_MARK, ChatUI

    engine = Engine(tiny_vlm, ServeConfig(model="tiny", ui=False, moderation=False))
    try:
        ui = ChatUI(engine, engine.config, {})
        paths = []
        for i in range(engine.vlm.limits.max_images + 1):
            paths.append(tmp_path / f"{i}.png")
            _image((20 * i, 100, 100)).save(paths[-1])
        *_, (history, _) = ui.send([], {"text": "Compare", "files": [str(p) for p in paths]}, 0.0, 1.0, 4, None)
        assert history[-1]["content"].startswith(ERROR_MARK)
        assert f"the limit is {engine.vlm.limits.max_images}" in history[-1]["content"]
        *_, (history, _) = ui.send([], {"text": "Compare", "files": [str(p) for p in paths[:2]]}, 0.0, 1.0, 4, None)
        assert not history[-1]["content"].startswith(ERROR_MARK)
    finally:
        engine.close()


def test_python_api_several_images_in_and_across_messages(tiny_vlm):
    """VLM.chat: one <image> per image part, in order, in one turn and across turns (greedy: reproducible)."""
    from vlm.messages import normalise

    red, green, blue = _image((200, 0, 0)), _image((0, 200, 0)), _image((0, 0, 200))
    conversation = [
        {"role": "user", "content": [{"type": "image", "image": red}, {"type": "image", "image": green},
                                     {"type": "text", "text": "Compare."}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "image", "image": blue}, {"type": "text", "text": "And this?"}]},
    ]
    normed, images = normalise(conversation, tiny_vlm.limits)
    assert len(images) == 3 and [im.getpixel((30, 25)) for im in images] == [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    prompt = tiny_vlm.processor.apply_chat_template(normed, tokenize=False, add_generation_prompt=True)
    assert prompt.count("<image>") == 3
    torch.manual_seed(0)
    first = tiny_vlm.chat(conversation, max_new_tokens=3)
    assert first == tiny_vlm.chat(conversation, max_new_tokens=3)
    swapped = [dict(conversation[0], content=[conversation[0]["content"][1], conversation[0]["content"][0],
                                              conversation[0]["content"][2]])] + conversation[1:]
    enc = tiny_vlm.prepare([conversation], _opts()).batch
    enc_swapped = tiny_vlm.prepare([swapped], _opts()).batch
    assert not torch.equal(enc["pixel_values"], enc_swapped["pixel_values"])  # order is kept
    assert torch.equal(enc["pixel_values"][0], enc_swapped["pixel_values"][1])


def _opts():
    return GenerationOptions(max_new_tokens=1)


# -- the Search tab's handlers (the browser test on real weights is in test_serve_search_real.py) -------------
def test_search_tab_handlers(clip_vlm, tmp_path, data_dir, flickr_records):
    import gradio as gr

    from vlm.serve.engine import Engine
    from vlm.serve.search_ui import ERROR_MARK, SearchTab

    photos = tmp_path / "photos"
    photos.mkdir()
    for r in flickr_records[:5]:
        (photos / r["image"].split("/")[-1]).write_bytes((data_dir / "flickr8k" / r["image"]).read_bytes())
    (photos / "empty.png").write_bytes(b"")
    (photos / "notes.jpg").write_text("not an image")
    engine = Engine(clip_vlm, ServeConfig(model="tiny", ui=False, moderation=False))
    tab = SearchTab(engine, engine.config, scratch=tmp_path / "scratch")
    (tmp_path / "scratch").mkdir()
    index = str(tmp_path / "photos.idx")
    try:
        items, shown, status = tab.search(index, "a dog", 5)
        assert status.startswith(ERROR_MARK) and "no image index" in status and not items
        assert tab.search(index, "  ", 5)[2].startswith(ERROR_MARK)
        assert tab.index_folder(index, str(tmp_path / "nowhere"), progress=lambda *a, **k: None).startswith(ERROR_MARK)

        seen = []
        report = tab.index_folder(index, str(photos), progress=lambda *a, **k: seen.append(a[0] if a else None))
        assert "5 added" in report and "2 unreadable" in report and "empty.png" in report and "notes.jpg" in report
        assert seen and seen[-1] == (7, 7)  # (done, total) image files (by extension), the last update: all
        again = tab.index_folder(index, str(photos), progress=lambda *a, **k: None)
        assert "0 added, 5 already indexed" in again

        items, shown, status = tab.search(index, "a dog", 3)
        assert len(items) == len(shown) == 3 and "best first" in status
        scores = [s.score for s in shown]
        assert scores == sorted(scores, reverse=True)
        assert all(caption.startswith(f"{s.score:.3f} · ") for (_, caption), s in zip(items, shown))
        assert all(max(img.size) <= 256 for img, _ in items)

        evt = gr.SelectData(None, {"index": 1, "value": None, "selected": True})
        tabs, box, note = tab.pick(shown, {"text": "hi", "files": []}, evt)
        assert tabs.selected == "chat" and box.value["text"] == "hi" and len(box.value["files"]) == 1
        copied = box.value["files"][0]
        copied = copied if isinstance(copied, str) else copied["path"]  # the component's own file form
        assert open(copied, "rb").read() == open(shown[1].path, "rb").read()  # (gradio serves it from its cache)
        full = {"text": "", "files": [copied] * clip_vlm.limits.max_images}
        assert tab.pick(shown, full, evt)[2].startswith(ERROR_MARK)
        out_of_range = gr.SelectData(None, {"index": 9, "value": None, "selected": True})
        assert tab.pick(shown, None, out_of_range)[2].startswith(ERROR_MARK)
    finally:
        tab.close()
        engine.close()
