"""vlm.video: frame sampling and times, chat prompts from videos, bad videos named, videos in the image index
(tiny random CLIP). Every video is encoded at test time from real Flickr8k photos (tests/video_fixtures.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_fixtures import *  # noqa: F401,F403
from video_fixtures import write_video

pytest.importorskip("av")


@pytest.fixture(scope="module")
def two_photos(data_dir, flickr_records) -> tuple[Path, Path]:
    return tuple(data_dir / "flickr8k" / r["image"] for r in flickr_records[:2])


@pytest.fixture(scope="module")
def clip_ab(tmp_path_factory, two_photos) -> Path:
    """Photo A for 2 s, then photo B for 2 s, at 5 frames a second."""
    a, b = two_photos
    return write_video(tmp_path_factory.mktemp("videos") / "ab.mp4", [(a, 2), (b, 2)])


def _diff(image: Image.Image, photo: Path) -> float:
    want = np.asarray(Image.open(photo).convert("RGB").resize(image.size), dtype=np.float32)
    return float(np.abs(np.asarray(image, dtype=np.float32) - want).mean())


def test_sample_times_are_uniform_midpoints():
    from vlm.video import interval_times, sample_times

    assert sample_times(4.0, 4) == [0.5, 1.5, 2.5, 3.5]
    assert sample_times(3.0, 1) == [1.5]
    assert sample_times(0.0, 2) == [0.0, 0.0]
    assert interval_times(4.0, 1.0) == [0, 1, 2, 3]
    assert interval_times(4.5, 2.0) == [0, 2, 4]
    assert interval_times(0.2, 1.0) == [0]
    with pytest.raises(ValueError):
        sample_times(4.0, 0)
    with pytest.raises(ValueError):
        interval_times(4.0, 0)


def test_frames_at_times_are_the_frames_on_screen(clip_ab, two_photos):
    from vlm.video import probe, read_frames, sample_frames

    a, b = two_photos
    info = probe(clip_ab)
    assert info.duration == pytest.approx(4.0) and (info.width, info.height) == (224, 224) and info.fps == 5
    frames = read_frames(clip_ab, [3.5, 0.0, 1.9, 2.0, 2.1, 99.0])  # any order; past the end: the last frame
    assert [f.time for f in frames] == [3.5, 0.0, 1.9, 2.0, 2.1, 99.0]
    assert [f.shown for f in frames] == pytest.approx([3.4, 0.0, 1.8, 2.0, 2.0, 3.8])
    shows_a = [_diff(f.image, a) < _diff(f.image, b) for f in frames]
    assert shows_a == [False, True, True, False, False, False]
    info, sampled = sample_frames(clip_ab, 4)
    assert [f.time for f in sampled] == [0.5, 1.5, 2.5, 3.5]
    assert [_diff(f.image, a) < _diff(f.image, b) for f in sampled] == [True, True, False, False]


def test_video_parts_put_frame_times_in_the_prompt(clip_ab):
    from vlm.video import expand_videos, video_parts

    parts = video_parts(clip_ab, 4)
    texts = [p["text"] for p in parts if p["type"] == "text"]
    assert texts[0] == "Video ab.mp4 (4.0 s long), 4 frames sampled uniformly:"
    assert texts[1:] == ["Frame 1 at 0.5 s:", "Frame 2 at 1.5 s:", "Frame 3 at 2.5 s:", "Frame 4 at 3.5 s:"]
    assert [p["type"] for p in parts[1:]] == ["text", "image"] * 4
    messages = [{"role": "user", "content": [{"type": "video", "video": str(clip_ab), "frames": 2},
                                             {"type": "text", "text": "What happens?"}]}]
    expanded = expand_videos(messages)
    assert sum(p["type"] == "image" for p in expanded[0]["content"]) == 2
    assert expanded[0]["content"][-1] == {"type": "text", "text": "What happens?"}
    plain = [{"role": "user", "content": "hi"}]
    assert expand_videos(plain) is plain


def test_vlm_chat_takes_a_video_as_frames(tiny_vlm, clip_ab):
    from vlm.config import GenerationOptions
    from vlm.video import VideoOptions

    tiny_vlm.video = VideoOptions(frames=3)
    try:
        prepared = tiny_vlm.prepare([[{"role": "user", "content": [{"type": "video", "video": str(clip_ab)},
                                                                    {"type": "text", "text": "hi"}]}]],
                                    GenerationOptions(max_new_tokens=2))
        assert prepared.batch["pixel_values"].shape[0] == 3
        answer = tiny_vlm.ask(str(clip_ab), "What happens?", max_new_tokens=3)
        assert isinstance(answer, str)
    finally:
        tiny_vlm.video = VideoOptions()


@pytest.mark.parametrize("kind", ["garbage", "truncated", "empty", "missing", "folder"])
def test_bad_videos_raise_a_clear_error_naming_the_file(kind, tmp_path, clip_ab):
    from vlm.errors import ImageError
    from vlm.video import VideoError, sample_frames

    path = tmp_path / f"{kind}.mp4"
    if kind == "garbage":
        path.write_bytes(b"this is not a video at all " * 50)
    elif kind == "truncated":
        data = clip_ab.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    with pytest.raises(VideoError) as e:
        sample_frames(path, 4)
    assert str(path) in str(e.value) and isinstance(e.value, ImageError)


def test_video_data_urls_and_bytes(clip_ab):
    import base64

    from vlm.video import VideoError, VideoOptions, is_video, probe

    data = clip_ab.read_bytes()
    url = "data:video/mp4;base64," + base64.b64encode(data).decode()
    assert is_video(url) and is_video(clip_ab) and is_video("x.MOV") and not is_video("x.jpg")
    assert probe(url).duration == pytest.approx(4.0) == probe(data).duration
    with pytest.raises(VideoError, match="limit"):
        probe(data, VideoOptions(max_bytes=100))
    with pytest.raises(VideoError, match="the video is not a readable video"):
        probe(b"\x00" * 500)


# -- the image index ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    pytest.importorskip("milvus_lite")
    from vlm.clip import Clip

    return Clip.load(tiny_clip_dir)


def test_index_adds_video_frames_with_their_times(clip, clip_ab, two_photos, tmp_path):
    from vlm.index import FRAME_TIME, ImageIndex

    folder = tmp_path / "media"
    folder.mkdir()
    shutil.copyfile(clip_ab, folder / "ab.mp4")
    shutil.copyfile(two_photos[0], folder / "a.jpg")
    (folder / "broken.mov").write_bytes(b"not a video" * 30)
    with ImageIndex.open(tmp_path / "ix", clip, create=True) as index:
        report = index.add(folder, metadata={"album": "x"}, batch_size=3)
        assert sorted(Path(p).name for p in report.added) == ["a.jpg", "ab.mp4"] and report.frames == 4
        assert [(Path(p).name, "broken.mov" in why) for p, why in report.failed] == [("broken.mov", True)]
        assert len(index) == 5
        frames = sorted((e["meta"][FRAME_TIME], e["path"]) for e in index.entries() if FRAME_TIME in e["meta"])
        assert frames == [(t, str(folder / "ab.mp4")) for t in (0, 1, 2, 3)]
        assert all(e["meta"]["album"] == "x" for e in index.entries())
        # searching by the second photo finds the video at a moment showing it (2-4 s)
        hits = index.search(two_photos[1], k=5, filter=f'meta["{FRAME_TIME}"] >= 0')
        assert hits[0].path == str(folder / "ab.mp4") and 2 <= hits[0].time < 4
        assert hits[0].label() == f"{folder / 'ab.mp4'} @ {hits[0].time:.1f} s"
        assert index.search(two_photos[0], k=1)[0].time is None  # the photo itself
        again = index.add(folder)
        assert not again.added and len(again.present) == 2 and len(index) == 5
        finer = index.add(folder / "ab.mp4", video_every_s=0.5)  # only the new moments are embedded
        assert finer.frames == 4 and len(index) == 9
        assert index.remove([folder / "ab.mp4"]) == 8 and len(index) == 1
