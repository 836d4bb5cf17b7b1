"""Videos with real weights (vlm-tiny and its CLIP): ``vlm ask VIDEO``, the index finding the moment of a video,
``vlm ask --db``, and ``video_url`` through the real server and ``openai`` client. Videos are encoded at test
time from real Flickr8k dev photos picked by their captions (a dog photo for 2 s, then a beach photo for 2 s)."""
from __future__ import annotations

import base64
import shutil

import openai
import pytest

from _serve_server import Server
from photo_picks import beach_records, dog_records
from video_fixtures import write_video

pytestmark = pytest.mark.real
pytest.importorskip("av")


@pytest.fixture(scope="module")
def dog_then_beach(tmp_path_factory, data_dir, flickr_records):
    dog = data_dir / "flickr8k" / dog_records(flickr_records)[0]["image"]
    beach = data_dir / "flickr8k" / beach_records(flickr_records)[0]["image"]
    return write_video(tmp_path_factory.mktemp("real-video") / "dog-beach.mp4", [(dog, 2), (beach, 2)])


@pytest.fixture(scope="module")
def model():
    from vlm import VLM

    return VLM.load("vlm-tiny")


def test_vlm_ask_video_cli(dog_then_beach, model, capsys):
    from vlm.cli import main

    assert main(["ask", str(dog_then_beach), "What is happening in the video?", "--no-stream",
                 "--max-new-tokens", "16"]) == 0
    answer = capsys.readouterr().out.strip()
    assert answer and any(ch.isalpha() for ch in answer)
    assert answer == model.ask(str(dog_then_beach), "What is happening in the video?", max_new_tokens=16)
    assert main(["ask", str(dog_then_beach), "What is happening?", "--frames", "2", "--no-stream",
                 "--max-new-tokens", "4"]) == 0
    capsys.readouterr()
    broken = dog_then_beach.with_name("broken.mp4")
    broken.write_bytes(dog_then_beach.read_bytes()[:500])
    assert main(["ask", str(broken), "What is happening?"]) == 2
    assert str(broken) in capsys.readouterr().err


def test_index_search_returns_the_video_and_the_moment(dog_then_beach, model, tmp_path, capsys):
    from vlm.cli import main
    from vlm.index import ImageIndex

    with ImageIndex.open(tmp_path / "ix", model, create=True) as index:
        report = index.add([dog_then_beach])
        assert report.frames == 4
        beach = index.search("a beach", k=1)[0]
        assert beach.path == str(dog_then_beach) and 2 <= beach.time < 4
        dog = index.search("a dog", k=1)[0]
        assert dog.path == str(dog_then_beach) and 0 <= dog.time < 2
    assert main(["index", "search", "a beach", "--db", str(tmp_path / "ix"), "-k", "1"]) == 0
    assert f"{dog_then_beach} @ {beach.time:.1f} s" in capsys.readouterr().out


def test_vlm_ask_db_answers_from_the_index_and_cites_images(dog_then_beach, data_dir, flickr_records, tmp_path,
                                                            capsys):
    from vlm.cli import main

    media = tmp_path / "media"
    media.mkdir()
    shutil.copyfile(dog_then_beach, media / "dog-beach.mp4")
    for rec in dog_records(flickr_records)[1:7]:  # six more photos, none of water or a beach
        shutil.copyfile(data_dir / "flickr8k" / rec["image"], media / rec["image"].split("/")[-1])
    assert main(["index", "add", str(media), "--db", str(tmp_path / "db")]) == 0
    out = capsys.readouterr()
    assert "7 added (4 video frames)" in out.out and "indexing" in out.err
    question = "What is on the beach?"
    assert main(["ask", "--db", str(tmp_path / "db"), question, "-k", "2", "--no-stream",
                 "--max-new-tokens", "12"]) == 0
    answer, _, cited = capsys.readouterr().out.partition("Images used:")
    from vlm.clip import Clip
    from vlm.index import ImageIndex

    with ImageIndex.open(tmp_path / "db", Clip.load("vlm-tiny")) as index:  # the CLI cites what the index finds
        want = [h.label() for h in index.search(question, k=2)]
    assert answer.strip() and [line.split("] ", 1)[1] for line in cited.strip().splitlines()] == want
    # only video frames (a filter): the model is shown the frames, cited with their moments
    assert main(["ask", "--db", str(tmp_path / "db"), question, "-k", "2", "--no-stream", "--max-new-tokens", "8",
                 "--filter", 'meta["frame_time_s"] >= 0']) == 0
    answer, _, cited = capsys.readouterr().out.partition("Images used:")
    lines = cited.strip().splitlines()
    assert answer.strip() and len(lines) == 2 and all(f"{media / 'dog-beach.mp4'} @ " in line for line in lines)
    assert main(["ask", "--db", str(tmp_path / "nothing"), "hi"]) == 2


def test_video_url_through_the_real_server(dog_then_beach, tmp_path):
    srv = Server("vlm-tiny", "--no-ui", "--concurrency", "1", "--threads", "1", "--video-frames", "2",
                 log_path=tmp_path / "server.log")
    try:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0, timeout=120)
        url = "data:video/mp4;base64," + base64.b64encode(dog_then_beach.read_bytes()).decode()

        def ask(video_url: dict):
            return client.chat.completions.create(model="vlm-tiny", max_tokens=6, messages=[{"role": "user", "content": [
                {"type": "video_url", "video_url": video_url}, {"type": "text", "text": "What happens?"}]}])

        two, three = ask({"url": url}), ask({"url": url, "frames": 3})
        assert two.choices[0].message.content
        per_image = 64  # vlm-tiny: 64 image tokens per frame (plus a frame line each)
        assert three.usage.prompt_tokens - two.usage.prompt_tokens > per_image
        bad = "data:video/mp4;base64," + base64.b64encode(b"not a video" * 40).decode()
        with pytest.raises(openai.BadRequestError, match="not a readable video"):
            ask({"url": bad})
        with pytest.raises(openai.BadRequestError, match="not allowed"):
            ask({"url": f"file://{dog_then_beach}"})
        with pytest.raises(openai.BadRequestError, match="limit is 8"):
            ask({"url": url, "frames": 9})
        assert srv.health()["status"] == "ok"
    finally:
        assert srv.stop() == 0
