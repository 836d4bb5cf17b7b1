"""``vlm classify`` and ``vlm index add|search|remove|info`` end to end (tiny random CLIP, real photos)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clip_fixtures import *  # noqa: F401,F403

pytest.importorskip("milvus_lite")


def vlm(*argv) -> int:
    from vlm.cli import main

    return main([str(a) for a in argv])


def test_classify_prints_labels_best_first(tiny_clip_dir, photo, capsys):
    assert vlm("classify", photo, "--labels", "dog, cat,beach", "--clip", tiny_clip_dir, "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(label for label, _ in out) == ["beach", "cat", "dog"]
    assert [p for _, p in out] == sorted((p for _, p in out), reverse=True) and abs(sum(p for _, p in out) - 1) < 1e-4
    assert vlm("classify", photo, "--labels", "dog,cat", "--clip", tiny_clip_dir,
               "--template", "a photo of a {}.", "--template", "{}") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].split()[0] in ("dog", "cat")


def test_errors_are_one_line(tmp_path, tiny_clip_dir, photo, capsys):
    (tmp_path / "no-clip").mkdir()
    assert vlm("classify", photo, "--labels", "a,b", "--clip", tmp_path / "no-clip") == 2
    assert "vlm train clip" in capsys.readouterr().err
    assert vlm("index", "search", "a dog", "--db", tmp_path / "none", "--clip", tiny_clip_dir) == 2
    assert "no image index" in capsys.readouterr().err


def test_index_commands(tiny_clip_dir, data_dir, flickr_records, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for rec in flickr_records[:12]:
        shutil.copyfile(data_dir / "flickr8k" / rec["image"], photos / Path(rec["image"]).name)
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    db = tmp_path / "db"
    assert vlm("index", "add", photos, "--db", db, "--clip", tiny_clip_dir, "--meta", '{"album": "a"}') == 0
    captured = capsys.readouterr()
    assert "12 added, 0 already indexed, 1 unreadable" in captured.out and "broken.jpg" in captured.err
    assert "indexing" in captured.err  # the progress bar
    assert vlm("index", "add", photos, "--db", db) == 0  # the CLIP it was built with, from the manifest
    assert "0 added, 12 already indexed" in capsys.readouterr().out
    assert vlm("index", "search", "a dog on the beach", "--db", db, "-k", "3", "--json") == 0
    hits = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(hits) == 3 and all(h["meta"] == {"album": "a"} for h in hits)
    first = sorted(photos.glob("*.jpg"))[0]
    assert vlm("index", "search", first, "--image", "--db", db, "-k", "1") == 0
    assert capsys.readouterr().out.split()[1] == str(first.resolve())
    assert vlm("index", "remove", first, "--db", db) == 0
    assert "1 removed; 11 images" in capsys.readouterr().out
    assert vlm("index", "info", "--db", db) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 11
