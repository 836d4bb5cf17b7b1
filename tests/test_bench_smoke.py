"""Smoke run of ``vlm bench`` on a tiny random model: it runs end to end and writes its JSON and table.

No timing assertions: speed figures come from the full benchmark (vlm/bench/README.md), not from tests.
"""
from __future__ import annotations

import json

import pytest

from clip_fixtures import *  # noqa: F401,F403

from vlm.cli import main


def test_bench_tiny_end_to_end(tmp_path, data_dir):
    out, readme = tmp_path / "results", tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nintro stays\n")
    code = main(["bench", "--tiny", "--data", str(data_dir / "flickr8k"), "--levers", "fast,float32",
                 "--batch-sizes", "1,2", "--repeats", "1", "--agreement-samples", "2",
                 "--out", str(out), "--readme", str(readme)])
    assert code == 0
    files = list(out.glob("tiny-*.json"))
    assert len(files) == 1
    result = json.loads(files[0].read_text())
    inf = result["inference"]
    assert set(inf["latency"]) == {"baseline", "int8+reuse_vision+prefix_cache", "float32"}
    for row in inf["latency"].values():
        assert row["ttft_s"] > 0 and row["e2e_s"] > 0
    assert set(inf["batch_images_per_s"]["baseline"]) == {"1", "2"}
    # the float32 vlm path is the baseline's computation: same greedy answers
    assert inf["agreement"]["float32"]["exact_agreement"] == 1.0
    # int8 weights: a quarter of the float32 bytes read per decoded token (plus the same KV cache)
    bpt = inf["bytes_per_token"]
    assert bpt["int8+reuse_vision+prefix_cache"] < 0.4 * bpt["baseline"]
    assert result["machine"]["copy_bandwidth_gbs"] > 0 and result["machine"]["bf16_matmul_tflops"] > 0
    stages = result["training"]["stages"]
    assert set(stages) == {"stage1", "stage2"}
    for row in stages.values():
        assert row["naive"]["samples_per_s"] > 0 and row["vlm"]["samples_per_s"] > 0
    text = readme.read_text()
    assert "intro stays" in text and "| baseline |" in text and "Training:" in text


def test_bench_rejects_unknown_lever(tmp_path, data_dir, capsys):
    code = main(["bench", "--tiny", "--levers", "int8+turbo", "--data", str(data_dir / "flickr8k"),
                 "--out", str(tmp_path)])
    assert code == 2
    assert "unknown lever 'turbo'" in capsys.readouterr().err


def test_machine_measurements_are_positive():
    from vlm import memory
    from vlm.bench import machine

    assert machine.copy_bandwidth(mib=16, repeats=2) > 0
    assert machine.matmul_peak(size=128, repeats=2) > 0
    assert memory.peak_rss_bytes() >= memory.current_rss_bytes() > 0


def test_bench_clip_section(tmp_path, data_dir, tiny_clip_dir):
    """``--sections clip`` alone: no llava model built; indexing images/s and query latency recorded."""
    out = tmp_path / "results"
    code = main(["bench", "--tiny", "--sections", "clip", "--clip", str(tiny_clip_dir), "--clip-images", "12",
                 "--clip-queries", "4", "--data", str(data_dir / "flickr8k"), "--out", str(out)])
    assert code == 0
    (path,) = out.glob("tiny-*.json")
    row = json.loads(path.read_text())["clip"]
    assert row["images"] == 12 and row["index_add_images_per_s"] > 0 and row["embed_images_per_s"] > 0
    assert row["query_ms"]["n"] == 4 and 0 < row["query_ms"]["p50"] <= row["query_ms"]["p95"]
    assert "inference" not in json.loads(path.read_text())


def test_bench_extract_section(tmp_path, data_dir):
    """``--sections extract``: real SROIE receipts through OCR (both engines) and extraction, timed in two parts."""
    out = tmp_path / "results"
    code = main(["bench", "--tiny", "--sections", "extract", "--data", str(data_dir / "flickr8k"),
                 "--out", str(out)])
    assert code == 0
    (path,) = out.glob("tiny-*.json")
    row = json.loads(path.read_text())["extract"]
    assert row["receipts"] == 2 and set(row["engines"]) == {"rapidocr", "tesseract"}
    for r in row["engines"].values():
        assert 0 < r["ocr_s"] and 0 < r["model_s"] and r["end_to_end_s"] <= r["end_to_end_max_s"]
        assert 0 <= r["model_runs"] <= 2 and (r["end_to_end_model_s"] is None) == (r["model_runs"] == 0)
