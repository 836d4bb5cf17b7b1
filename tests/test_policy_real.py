"""Policy routing with real weights: vlm-tiny's CLIP on real Flickr8k dev photos (picked by their captions,
tests/photo_picks.py), in the core and through the real ``vlm serve --policy`` with the real ``openai`` client and
the UI's ``/chat`` endpoint (gradio_client)."""
from __future__ import annotations

import base64

import openai
import pytest

from _serve_server import Server
from photo_picks import beach_records, dog_records

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def check():
    from vlm.clip import Clip
    from vlm.policy import PolicyCheck

    return PolicyCheck(Clip.load("vlm-tiny"), ["a dog"])


@pytest.fixture(scope="module")
def dogs(data_dir, flickr_records):
    return [data_dir / "flickr8k" / r["image"] for r in dog_records(flickr_records)[:12]]


@pytest.fixture(scope="module")
def beaches(data_dir, flickr_records):
    return [data_dir / "flickr8k" / r["image"] for r in beach_records(flickr_records)[:12]]


def test_policy_a_dog_on_real_photos_at_the_default_threshold(check, dogs, beaches):
    """Dog photos are mostly blocked, beach photos without a dog are not (default, train-calibrated threshold)."""
    dog_blocked = [v.blocked for v in check.check_many(dogs)]
    beach_blocked = [v.blocked for v in check.check_many(beaches)]
    assert sum(dog_blocked) >= 6, dog_blocked
    assert sum(beach_blocked) <= 1, beach_blocked


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server("vlm-tiny", "--policy", "a dog", "--concurrency", "1", "--threads", "1",
                 log_path=tmp_path_factory.mktemp("policy-real-log") / "server.log")
    yield srv
    if srv.proc.poll() is None:
        assert srv.stop() == 0


def _url(path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def _ask(client, path, question="What is in the picture?"):
    return client.chat.completions.create(model="vlm-tiny", max_tokens=8, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _url(path)}}, {"type": "text", "text": question}]}])


def test_server_refuses_a_dog_photo_naming_the_policy_and_keeps_serving(server, check, dogs, beaches, tmp_path):
    from gradio_client import Client, handle_file

    dog = next(p for p in dogs if check.check(p).blocked)  # a dog photo the core blocks: the server must too
    beach = beaches[0]
    score = check.check(dog).scores["a dog"]
    assert not check.check(beach).blocked
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError) as e:
        _ask(client, dog)
    err = e.value.body if isinstance(e.value.body, dict) else {}
    assert err.get("code") == "content_policy_violation"
    assert "policy 'a dog'" in err["message"] and f"score {score:.2f}" in err["message"]
    answer = _ask(client, beach).choices[0].message.content  # the server keeps serving
    assert answer and any(ch.isalpha() for ch in answer)
    assert server.health()["status"] == "ok"

    ui = Client(server.url + "/", verbose=False)
    history, _ = ui.predict([], {"text": "What is this?", "files": [handle_file(str(dog))]}, 0.0, 1.0, 8,
                            api_name="/chat")
    text = history[-1]["content"][0]["text"]
    assert text.startswith("**Error:**") and "policy 'a dog'" in text and f"score {score:.2f}" in text
    history, _ = ui.predict([], {"text": "What is this?", "files": [handle_file(str(beach))]}, 0.0, 1.0, 8,
                            api_name="/chat")
    assert not history[-1]["content"][0]["text"].startswith("**Error:**")
