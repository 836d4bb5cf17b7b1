"""The image index (``vlm.index``): a tiny random CLIP over real Flickr8k photos, in Milvus Lite."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from clip_fixtures import *  # noqa: F401,F403
from clip_fixtures import write_tiny_clip

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    from vlm.clip import Clip

    return Clip.load(tiny_clip_dir)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory, data_dir, flickr_records) -> Path:
    """36 real photos in two sub-folders (copies, so tests may add files beside them)."""
    root = tmp_path_factory.mktemp("photos")
    for i, rec in enumerate(flickr_records[:36]):
        sub = root / ("beach" if i % 2 else "city")
        sub.mkdir(exist_ok=True)
        shutil.copyfile(data_dir / "flickr8k" / rec["image"], sub / Path(rec["image"]).name)
    return root


def photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.jpg"))


def test_search_equals_exact_search_and_adds_are_incremental(clip, photo_dir, tmp_path, monkeypatch):
    from vlm.index import ImageIndex

    files = photos(photo_dir)
    with ImageIndex.open(tmp_path / "ix", clip, create=True) as index:
        report = index.add(photo_dir, batch_size=8)
        assert len(report.added) == 36 and not report.present and not report.failed and len(index) == 36
        vectors = clip.embed_images(files)
        for query in ("a dog runs on the beach", files[5]):
            q = clip.embed_texts([query])[0] if isinstance(query, str) else clip.embed_images([query])[0]
            scores = vectors @ q
            want = [str(files[i]) for i in scores.argsort(descending=True)[:10]]
            hits = index.search(query, k=10)
            assert [h.path for h in hits] == want
            assert [h.score for h in hits] == pytest.approx(sorted(scores.tolist(), reverse=True)[:10], abs=1e-5)
        assert index.search(files[5], k=1)[0].path == str(files[5])

        def no_embedding(*a, **k):
            raise AssertionError("an indexed image was embedded again")

        monkeypatch.setattr(clip, "embed_pil", no_embedding)
        again = index.add([photo_dir, files[0]])
        assert len(again.present) == 36 and not again.added
        copy = tmp_path / "renamed.jpg"  # the same content under another name is the same image
        shutil.copyfile(files[3], copy)
        assert index.add(copy).present == [str(copy)]
        monkeypatch.undo()
        calls = []
        real = clip.embed_pil
        monkeypatch.setattr(clip, "embed_pil", lambda ims, *a, **k: calls.append(len(ims)) or real(ims, *a, **k))
        from PIL import Image

        grown = tmp_path / "grown"  # the folder, grown by two pictures
        shutil.copytree(photo_dir, grown)
        Image.new("RGB", (50, 40), (200, 10, 10)).save(grown / "red.png")
        Image.new("RGB", (40, 50), (10, 10, 200)).save(grown / "city" / "blue.jpg")
        added = index.add(grown)
        assert sorted(Path(p).name for p in added.added) == ["blue.jpg", "red.png"] and calls == [2]
        assert len(added.present) == 36 and len(index) == 38


def test_unreadable_images_are_reported_and_skipped(clip, photo_dir, tmp_path):
    from vlm.index import ImageIndex

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in photos(photo_dir)[:4]:
        shutil.copyfile(p, mixed / p.name)
    (mixed / "truncated.jpg").write_bytes(photos(photo_dir)[0].read_bytes()[:200])
    (mixed / "notes.png").write_text("not a picture")
    (mixed / "empty.jpg").write_bytes(b"")
    (mixed / "readme.txt").write_text("ignored: not an image extension")
    with ImageIndex.open(tmp_path / "ix", clip, create=True) as index:
        report = index.add(mixed)
        assert len(report.added) == 4 and len(index) == 4
        failed = dict((Path(p).name, why) for p, why in report.failed)
        assert set(failed) == {"truncated.jpg", "notes.png", "empty.jpg"}
        assert "empty" in failed["empty.jpg"] and "4 added" in report.summary()
        with pytest.raises(FileNotFoundError, match="no such file"):
            index.add(tmp_path / "nowhere")


def test_metadata_filters_and_removal(clip, photo_dir, tmp_path):
    from vlm.index import ImageIndex

    with ImageIndex.open(tmp_path / "ix", clip, create=True) as index:
        index.add(photo_dir / "beach", metadata={"album": "beach", "year": 2024})
        index.add(photo_dir / "city", metadata={"album": "city", "year": 2023})
        hits = index.search("people", k=50, filter='meta["album"] == "beach"')
        assert len(hits) == 18 and all(h.metadata["album"] == "beach" and "/beach/" in h.path for h in hits)
        assert len(index.search("people", k=50, filter='meta["year"] < 2024')) == 18
        assert len(index.search("people", k=50, filter=f'path like "{photo_dir}/city/%"')) == 18
        with pytest.raises(ValueError, match="bad filter"):
            index.search("people", filter='meta["album"] === "x"')
        one = photos(photo_dir / "city")[0]
        assert index.remove(one) == 1 and len(index) == 35
        assert index.remove(photo_dir / "beach") == 18 and len(index) == 17
        victim = index.entries()[0]["id"]
        assert index.remove([victim]) == 1 and len(index) == 16
        assert index.remove(tmp_path / "not-indexed.jpg") == 0
        assert all("/city/" in e["path"] for e in index.entries())


def test_index_persists_and_refuses_another_clip(clip, photo_dir, tmp_path):
    from vlm.clip import Clip
    from vlm.index import ImageIndex, IndexCorruptError

    with ImageIndex.open(tmp_path / "ix", clip, create=True) as index:
        index.add(photos(photo_dir)[:6])
        before = index.search("a dog", k=6)
    with ImageIndex.open(tmp_path / "ix", clip) as index:
        assert len(index) == 6 and index.search("a dog", k=6) == before
    other = Clip.load(write_tiny_clip(tmp_path / "other-clip", seed=5))
    with pytest.raises(IndexCorruptError, match="another CLIP"):
        ImageIndex.open(tmp_path / "ix", other)
    with ImageIndex.open(tmp_path / "ix", clip) as index:  # the failed open released the store
        assert len(index) == 6


def test_missing_and_corrupt_indexes_say_so(clip, photo_dir, tmp_path):
    from vlm.index import MANIFEST, ImageIndex, IndexCorruptError, IndexNotFoundError

    with pytest.raises(IndexNotFoundError, match="vlm index add"):
        ImageIndex.open(tmp_path / "none", clip)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(IndexCorruptError, match="not an image index"):
        ImageIndex.open(tmp_path / "busy", clip, create=True)
    with ImageIndex.open(tmp_path / "ix", clip, create=True) as index:
        index.add(photos(photo_dir)[:3])
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "ix", bad)
    (bad / MANIFEST).write_text("{not json")
    with pytest.raises(IndexCorruptError, match="unreadable"):
        ImageIndex.open(bad, clip)
    (bad / MANIFEST).write_text(json.dumps({"format": 99, "collection": "images", "dim": 16, "probe": {}}))
    with pytest.raises(IndexCorruptError, match="format 99"):
        ImageIndex.open(bad, clip)
    shutil.copyfile(tmp_path / "ix" / MANIFEST, bad / MANIFEST)
    shutil.rmtree(bad / "vectors.db")
    with pytest.raises(IndexCorruptError, match="missing"):
        ImageIndex.open(bad, clip)
    # a creation interrupted before its manifest was written leaves only the store: creating again works
    (bad / MANIFEST).unlink()
    shutil.copytree(tmp_path / "ix" / "vectors.db", bad / "vectors.db")
    with ImageIndex.open(bad, clip, create=True) as index:
        assert len(index) == 0


CRASHING_ADD = textwrap.dedent("""
    import os, sys
    from vlm.clip import Clip
    from vlm.index import ImageIndex
    clip = Clip.load(sys.argv[1])
    real, calls = clip.embed_pil, []
    def embed(images, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            os._exit(9)  # the process dies mid-add: no cleanup, no close
        return real(images, *a, **k)
    index = ImageIndex.open(sys.argv[2], clip)
    clip.embed_pil = embed
    index.add(sys.argv[3:], batch_size=4)
""")


def test_a_crash_during_add_keeps_what_was_there(clip, tiny_clip_dir, photo_dir, tmp_path):
    from vlm.index import ImageIndex

    files = photos(photo_dir)
    with ImageIndex.open(tmp_path / "ix", clip, create=True) as index:
        index.add(files[:8])
        before = {e["id"]: e["path"] for e in index.entries()}
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", CRASHING_ADD, str(tiny_clip_dir), str(tmp_path / "ix"),
                           *map(str, files[8:24])], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr[-2000:]
    with ImageIndex.open(tmp_path / "ix", clip) as index:
        after = {e["id"]: e["path"] for e in index.entries()}
        assert before.items() <= after.items()                       # nothing that was there is lost
        assert len(after) == 16                                        # plus the two batches that completed
        assert index.search(files[2], k=1)[0].path == str(files[2])
        resumed = index.add(files[:24], batch_size=4)                 # adding again embeds only what is missing
        assert len(resumed.added) == 8 and len(resumed.present) == 16 and len(index) == 24


def test_ask_index_shows_the_found_images_and_cites_them(tiny_vlm, tiny_clip_dir, clip, photo_dir, tmp_path):
    from vlm import VLM, InputError
    from vlm.index import ImageIndex

    m = VLM(tiny_vlm.model, tiny_vlm.processor, clip=tiny_clip_dir)
    with ImageIndex.open(tmp_path / "ix", clip, create=True) as index:
        index.add(photos(photo_dir)[:6], metadata={"set": "a"})
        want = index.search("What is the dog doing?", k=2)
        answer = m.ask_index(index, "What is the dog doing?", k=2, max_new_tokens=4)
        assert [h.path for h in answer.sources] == [h.path for h in want]
        assert isinstance(answer.text, str) and "[2] " + want[1].path in str(answer)
        # the same answer as asking with the two images by hand (several images in one chat turn)
        content = [{"type": "text", "text": "Image 1:"}, {"type": "image", "image": want[0].path},
                   {"type": "text", "text": "Image 2:"}, {"type": "image", "image": want[1].path},
                   {"type": "text", "text": "What is the dog doing?"}]
        assert m.chat([{"role": "user", "content": content}], max_new_tokens=4) == answer.text
        with pytest.raises(InputError, match="no images matching"):
            m.ask_index(index, "a dog", filter='meta["set"] == "b"')
        with pytest.raises(InputError, match="k must be"):
            m.ask_index(index, "a dog", k=99)
    again = m.ask_index(tmp_path / "ix", "What is the dog doing?", k=2, max_new_tokens=4)  # a folder works too
    assert again.text == answer.text


HOLDER = textwrap.dedent("""
    import sys, time
    from vlm.index import ImageIndex
    index = ImageIndex.open(sys.argv[2], sys.argv[1])
    print("ready", flush=True)
    time.sleep(120)
""")


def test_an_index_open_in_another_process_is_named(clip, tiny_clip_dir, photo_dir, tmp_path):
    from vlm.index import ImageIndex, IndexCorruptError

    with ImageIndex.open(tmp_path / "ix", clip, create=True) as index:
        index.add(photos(photo_dir)[:2])
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tiny_clip_dir), str(tmp_path / "ix")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(IndexCorruptError, match="open in another process"):
            ImageIndex.open(tmp_path / "ix", clip)
    finally:
        holder.kill()
        holder.wait()
    with ImageIndex.open(tmp_path / "ix", clip) as index:  # free again once that process is gone
        assert len(index) == 2
