"""OCR engines: selection, the Tesseract engine on real receipts, the "both" merge, missing-engine errors,
per-engine caching and ``vlm eval ocr``."""
from __future__ import annotations

import json
import sys

import pytest
from PIL import Image, ImageDraw, ImageFont

from vlm.cli import main
from vlm.errors import OcrEngineError
from vlm.eval.ocr_ceiling import field_hits, summarise
from vlm.extract.prompts import format_ocr
from vlm.ocr import DEFAULT_ENGINE, ENGINES, OcrLine, check_engine, clear_memory_cache, ocr_stats, run_ocr
from vlm.ocr_merge import MergeConfig, box_overlap, classify, merge_lines, text_similarity
from vlm.ocr_tesseract import TesseractConfig, find_tessdata, otsu_threshold, split_at_gaps


def norm(s: str) -> str:
    return " ".join(s.split())


def line(text, x0, y0, x1, y1, score=0.9):
    return OcrLine(text, (x0, y0, x1, y1), score)


@pytest.fixture(scope="module")
def sroie_first(data_dir) -> dict:
    return json.loads((data_dir / "sroie" / "train.jsonl").read_text().splitlines()[0])


@pytest.fixture(scope="module")
def printed() -> Image.Image:
    font = ImageFont.load_default(size=28)
    img = Image.new("RGB", (640, 150), "white")
    d = ImageDraw.Draw(img)
    d.text((20, 20), "GARDEN SUPPLIES SDN BHD", font=font, fill="black")
    d.text((20, 80), "TOTAL", font=font, fill="black")
    d.text((480, 80), "33.92", font=font, fill="black")
    return img


# -- engine selection ------------------------------------------------------------------------------
def test_engine_names_and_default():
    assert ENGINES == ("rapidocr", "tesseract", "both")
    assert check_engine(None) == DEFAULT_ENGINE in ENGINES
    assert [check_engine(e) for e in ENGINES] == list(ENGINES)
    with pytest.raises(ValueError, match="unknown OCR engine 'easyocr'; choose from rapidocr, tesseract, both"):
        check_engine("easyocr")
    with pytest.raises(ValueError, match="unknown OCR engine"):
        run_ocr(Image.new("RGB", (32, 32), "white"), engine="paddle")


def test_cli_ocr_engine_flag(printed, tmp_path, capsys):
    path = tmp_path / "printed.png"
    printed.save(path)
    assert main(["ocr", str(path), "--ocr-engine", "tesseract", "--text"]) == 0
    text = capsys.readouterr().out
    assert "GARDEN SUPPLIES SDN BHD" in text and "TOTAL\t33.92" in text
    with pytest.raises(SystemExit):
        main(["ocr", str(path), "--ocr-engine", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_tesseract_cached_per_engine_and_settings(printed, tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_CACHE", str(tmp_path))
    clear_memory_cache()  # earlier tests OCR'd the same image
    runs = ocr_stats()["tesseract_runs"]
    first = run_ocr(printed, engine="tesseract")
    assert ocr_stats()["tesseract_runs"] == runs + 1
    assert run_ocr(printed.copy(), engine="tesseract") == first  # memory
    clear_memory_cache()
    from_disk = run_ocr(printed, engine="tesseract")  # disk (scores stored to 4 decimals)
    assert [(ln.text, ln.box) for ln in from_disk] == [(ln.text, ln.box) for ln in first]
    assert ocr_stats()["tesseract_runs"] == runs + 1
    run_ocr(printed, engine="tesseract", tesseract=TesseractConfig(psm=6))  # other settings: another entry
    assert ocr_stats()["tesseract_runs"] == runs + 2
    assert len(list((tmp_path / "ocr").rglob("*.json"))) == 2


# -- the Tesseract engine --------------------------------------------------------------------------
def test_tesseract_lines_boxes_and_cells(printed):
    lines = run_ocr(printed, engine="tesseract", cache=False)
    assert [ln.text for ln in lines] == ["GARDEN SUPPLIES SDN BHD", "TOTAL", "33.92"]  # gap splits the row
    for ln in lines:
        x0, y0, x1, y1 = ln.box
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 150 and 0.5 < ln.score <= 1
    assert lines[2].box[0] > 450
    # upscaling maps boxes back onto the given image
    scaled = run_ocr(printed, engine="tesseract", cache=False, tesseract=TesseractConfig(scale=2.0, binarise=True))
    assert [ln.text for ln in scaled] == [ln.text for ln in lines]
    for a, b in zip(lines, scaled):
        assert all(abs(u - v) <= 6 for u, v in zip(a.box, b.box))


def test_tesseract_on_real_receipt(receipt, sroie_first):
    lines = run_ocr(receipt, engine="tesseract", cache=False)
    text = norm(format_ocr(lines))
    assert len(lines) > 15
    assert norm(sroie_first["entities"]["total"]) in text  # 9.00
    assert "TAMAN DAYA" in text and "JOHOR" in text
    ys = [ln.box[1] for ln in lines]
    assert ys[0] <= min(ys) + 5  # reading order: top first
    with Image.open(receipt) as img:
        w, h = img.size
    assert all(0 <= ln.box[0] < ln.box[2] <= w + 1 and 0 <= ln.box[1] < ln.box[3] <= h + 1 for ln in lines)


def test_empty_image_gives_no_lines():
    assert run_ocr(Image.new("RGB", (200, 120), "white"), engine="tesseract", cache=False) == []


def test_split_at_gaps_and_otsu():
    import numpy as np

    words = [("TOTAL", (10, 0, 60, 10), 90.0), ("RM", (66, 0, 80, 10), 90.0), ("9.00", (200, 0, 240, 10), 80.0)]
    assert [[w[0] for w in g] for g in split_at_gaps(words[::-1], gap=1.5)] == [["TOTAL", "RM"], ["9.00"]]
    assert len(split_at_gaps(words, gap=20)) == 1 and split_at_gaps([], 1.5) == []
    grey = np.array([[20] * 50 + [230] * 50], dtype=np.uint8)
    assert 20 <= otsu_threshold(grey) < 230


def test_config_checks():
    with pytest.raises(ValueError, match="psm"):
        TesseractConfig(psm=14)
    with pytest.raises(ValueError, match="scale"):
        TesseractConfig(scale=10)
    assert TesseractConfig().key() != TesseractConfig(psm=6).key()
    with pytest.raises(ValueError, match="primary"):
        MergeConfig(primary="easyocr")
    with pytest.raises(ValueError, match="overlap"):
        MergeConfig(overlap=0)


# -- missing engine: a clear error -------------------------------------------------------------------
def test_missing_language_data_is_clear_error(tmp_path, printed):
    with pytest.raises(OcrEngineError, match=r"eng\.traineddata not found .*apt-get install tesseract-ocr"):
        run_ocr(printed, engine="tesseract", cache=False, tesseract=TesseractConfig(tessdata=str(tmp_path)))
    with pytest.raises(OcrEngineError, match=str(tmp_path)):
        find_tessdata(TesseractConfig(tessdata=str(tmp_path)))


def test_missing_binding_is_clear_error(monkeypatch, printed):
    monkeypatch.setitem(sys.modules, "tesserocr", None)  # import tesserocr -> ImportError
    with pytest.raises(OcrEngineError, match="needs the Python package tesserocr"):
        run_ocr(printed, engine="tesseract", cache=False)


def test_cli_names_missing_engine(monkeypatch, tmp_path, printed, capsys):
    import vlm.ocr_tesseract as tess

    monkeypatch.setattr(tess, "TESSDATA_DIRS", ())
    monkeypatch.setenv("TESSDATA_PREFIX", str(tmp_path / "nowhere"))
    path = tmp_path / "p.png"
    printed.save(path)
    clear_memory_cache()
    monkeypatch.setenv("VLM_CACHE", str(tmp_path / "cache"))
    assert main(["ocr", str(path), "--ocr-engine", "tesseract"]) == 2
    err = capsys.readouterr().err
    assert "eng.traineddata not found" in err and "nowhere" in err and "Traceback" not in err


# -- the "both" merge --------------------------------------------------------------------------------
def test_box_overlap_and_similarity():
    assert box_overlap((0, 0, 10, 10), (2, 2, 8, 8)) == 1.0
    assert box_overlap((0, 0, 10, 10), (5, 0, 15, 10)) == 0.5
    assert box_overlap((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert text_similarity("TOTAL 9.00", "total  9.00") == 1.0
    assert text_similarity("TAMAN DAYA", "TAMAN DAVA") > 0.8
    assert text_similarity("CASH", "81100 JOHOR") < 0.3


def test_merge_keeps_primary_adds_missing_drops_duplicates():
    primary = [line("BOOK TA .K SDN BHD", 70, 95, 420, 112), line("TOTAL", 10, 300, 80, 320),
               line("9.00", 400, 300, 450, 320)]
    secondary = [line("BOOK TA -K SDN BHD", 72, 94, 418, 113),   # same region, same reading: duplicate
                 line("TOTAL 9.00", 10, 299, 452, 321),          # one box over two primary cells: duplicate
                 line("81100 JOHOR BAHRU", 60, 140, 330, 158),   # missed by the primary: added
                 line("CASH", 400, 301, 449, 319)]               # same place, other text: a conflict
    cfg = MergeConfig()
    assert [classify(s, primary, cfg) for s in secondary] == ["duplicate", "duplicate", "new", "conflict"]
    merged = merge_lines(primary, secondary, cfg)
    assert merged[:3] == primary and [ln.text for ln in merged[3:]] == ["81100 JOHOR BAHRU"]
    with_conflicts = merge_lines(primary, secondary, MergeConfig(keep_conflicts=True))
    assert [ln.text for ln in with_conflicts[3:]] == ["81100 JOHOR BAHRU", "CASH"]
    assert merge_lines([], secondary) == secondary and merge_lines(primary, []) == primary
    other_page = OcrLine("BOOK TA -K SDN BHD", (72, 94, 418, 113), 0.9, page=2)
    assert classify(other_page, primary, cfg) == "new"


def test_both_engines_on_real_receipt(receipt, sroie_first):
    both = run_ocr(receipt, engine="both")
    rapid = run_ocr(receipt, engine="rapidocr")
    tess = run_ocr(receipt, engine="tesseract")
    assert len(rapid) <= len(both) < len(rapid) + len(tess)  # duplicates dropped
    assert {ln.text for ln in rapid} <= {ln.text for ln in both}  # the primary engine's lines all kept
    assert norm(sroie_first["entities"]["total"]) in norm(format_ocr(both))


# -- vlm eval ocr ---------------------------------------------------------------------------------------
def test_field_hits_and_summary():
    text = "BOOK TA .K\tSDN BHD\nTotal\t9.00\nDate 25/12/2018"
    hits = field_hits(text, {"company": "book ta .k sdn bhd", "date": "25/12/2018", "address": "", "total": "9.00"})
    assert hits == {"company": (False, True), "date": (True, True), "address": None, "total": (True, True)}
    report = summarise([hits, {**hits, "date": (False, False)}], [1.0, 3.0], [100, 300])
    assert report["fields"]["date"] == {"ceiling": 0.5, "hits": 1, "gold": 2, "ceiling_casefold": 0.5}
    assert report["fields"]["address"]["gold"] == 0
    assert report["overall"] == 3 / 6 and report["overall_casefold"] == 5 / 6
    assert report["median_s_per_receipt"] == 2.0 and report["chars_per_s"] == 100.0


def test_eval_ocr_command(data_dir, tmp_path, capsys):
    lines = (data_dir / "sroie" / "train.jsonl").read_text().splitlines()[:2]
    data = tmp_path / "two.jsonl"
    data.write_text("\n".join(json.dumps({**json.loads(x), "image": str(data_dir / "sroie" / json.loads(x)["image"])})
                              for x in lines) + "\n")
    out = tmp_path / "out"
    assert main(["eval", "ocr", "--data", str(data), "--engines", "tesseract", "--timed", "1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| tesseract |" in printed and "median s/receipt" in printed
    report = json.loads((out / "report.json").read_text())
    m = report["engines"]["tesseract"]
    assert m["receipts"] == 2 and m["timed_receipts"] == 1 and m["median_s_per_receipt"] > 0
    assert m["fields"]["total"]["gold"] == 2 and 0 <= m["overall"] <= 1
    assert report["settings"]["tesseract"]["psm"] == TesseractConfig().psm
    assert main(["eval", "ocr", "--data", str(data), "--engines", "rapidocr,easyocr"]) == 2
    assert "unknown OCR engine 'easyocr'" in capsys.readouterr().err
