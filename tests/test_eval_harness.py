"""The `vlm eval` harness: data files, predictions log, resume, run checks, and the CLI end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm.cli import main
from vlm.eval.harness import System, evaluate
from vlm.eval.records import Record, load_eval_records
from vlm.eval.report import PredictionLog, RunInfo, open_run
from vlm.eval.runner import run_system


def _write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_records_resolves_paths_and_reports_bad_lines(tmp_path):
    f = _write(tmp_path / "d.jsonl", [{"image": "img/a.jpg", "answer": "x"}, {"id": "k", "image": "b.jpg", "answer": "y"}])
    recs = load_eval_records(f, ("image", "answer"))
    assert [r.id for r in recs] == ["1", "k"]
    assert recs[0].image == tmp_path / "img" / "a.jpg"
    assert len(load_eval_records(f, limit=1)) == 1
    with pytest.raises(ValueError, match=r"d.jsonl:1: record has no 'question'"):
        load_eval_records(f, ("question",))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_eval_records(bad)
    dup = _write(tmp_path / "dup.jsonl", [{"id": 1}, {"id": 1}])
    with pytest.raises(ValueError, match="duplicate id '1'"):
        load_eval_records(dup)
    with pytest.raises(FileNotFoundError):
        load_eval_records(tmp_path / "missing.jsonl")


class Interrupt(Exception):
    pass


def test_resume_after_interrupt_redoes_nothing(tmp_path):
    records = [Record(str(i), None, {"x": i}) for i in range(10)]
    seen: list[str] = []

    def predictor(fail_after=None):
        def predict(batch):
            if fail_after is not None and len(seen) >= fail_after:
                raise Interrupt  # stands in for Ctrl-C / a kill between batches
            seen.extend(r.id for r in batch)
            return [r.data["x"] * 10 for r in batch]
        return predict

    log = PredictionLog(tmp_path / "p.jsonl")
    with pytest.raises(Interrupt):
        run_system("sys", records, predictor(fail_after=4), log, batch_size=2, progress=False)
    assert seen == ["0", "1", "2", "3"]
    # a torn last line (killed mid-write) is ignored and that example redone
    with (tmp_path / "p.jsonl").open("a") as fh:
        fh.write('{"system": "sys", "id": "4", "predi')
    seen.clear()
    log = PredictionLog(tmp_path / "p.jsonl")
    run = run_system("sys", records, predictor(), log, batch_size=3, progress=False)
    assert seen == [str(i) for i in range(4, 10)]  # no finished example redone
    assert run.predictions == [i * 10 for i in range(10)] and run.computed == 6
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines() if x.endswith("}")]
    assert sorted(int(x["id"]) for x in lines) == list(range(10))
    seen.clear()
    assert run_system("sys", records, predictor(), PredictionLog(tmp_path / "p.jsonl"), progress=False).computed == 0
    assert seen == []


def test_open_run_refuses_to_mix_runs_and_fresh_restarts(tmp_path):
    info = RunInfo("vqa", "/data/a.jsonl", "m1", {"suffix": "x"})
    open_run(tmp_path, info).append("model", "1", "yes")
    assert open_run(tmp_path, info).done("model") == {"1"}
    with pytest.raises(ValueError, match="another run.*model: 'm1' -> 'm2'.*--fresh"):
        open_run(tmp_path, RunInfo("vqa", "/data/a.jsonl", "m2", {"suffix": "x"}))
    assert open_run(tmp_path, RunInfo("vqa", "/data/a.jsonl", "m2", {"suffix": "x"}), fresh=True).done("model") == set()


def test_evaluate_writes_report_side_by_side(tmp_path):
    records = [Record(str(i), None, {"answer": a}) for i, a in enumerate(["yes", "no", "2"])]
    from vlm.eval import vqa

    systems = [System("always-yes", lambda: (lambda b: ["yes"] * len(b))),
               System("echo", lambda: (lambda b: [r.data["answer"] for r in b]), limit=2)]
    report = evaluate(RunInfo("vqa", "d", None), records, systems, tmp_path,
                      score=lambda p, rs: vqa.score(p, [r.data["answer"] for r in rs]), progress=False)
    assert report["systems"]["always-yes"]["accuracy"] == pytest.approx(1 / 3)
    assert report["systems"]["echo"]["accuracy"] == 1.0 and report["systems"]["echo"]["examples"] == 2
    assert report["time"]["always-yes"]["computed"] == 3
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["systems"] == report["systems"]
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 5


# --- CLI end to end with the tiny random model on real Flickr8k images ---------------------------------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_vlm):
    return tiny_vlm.save(tmp_path_factory.mktemp("tiny-model"))


@pytest.mark.real
def test_cli_captions_model_and_nearest_neighbour_on_real_images(tmp_path, tiny_model_dir, data_dir, capsys):
    flickr = data_dir / "flickr8k"
    train = tmp_path / "train.jsonl"  # a small training pool, paths made absolute to keep the real images
    rows = [json.loads(x) for x in (flickr / "train.jsonl").read_text().splitlines()[:40]]
    _write(train, [{**r, "image": str(flickr / r["image"])} for r in rows])
    out = tmp_path / "out"
    args = ["eval", "captions", "--data", str(flickr / "dev.jsonl"), "--model", str(tiny_model_dir),
            "--train", str(train), "--out", str(out), "--max-new-tokens", "6", "--no-progress", "--batch-size", "2"]
    assert main(args + ["--limit", "3"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["systems"]) == {"model", "nearest-neighbour"}
    nn = report["systems"]["nearest-neighbour"]
    assert 0 <= nn["bleu4"] <= 1 and nn["cider"] >= 0 and nn["mean_length"] > 3  # real human captions
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6
    train_caps = {c for r in rows for c in r["captions"]}
    assert all(p["prediction"] in train_caps for p in preds if p["system"] == "nearest-neighbour")
    # rerun with a larger limit: only the new examples are predicted
    assert main(args + ["--limit", "4"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["time"]["model"]["computed"] == 1 and report["time"]["model"]["resumed"] == 3
    assert "bleu4=" in capsys.readouterr().out


@pytest.mark.real
def test_cli_vqa_on_real_images(tmp_path, tiny_model_dir, data_dir):
    flickr = data_dir / "flickr8k"
    recs = [json.loads(x) for x in (flickr / "dev.jsonl").read_text().splitlines()[:3]]
    data = _write(tmp_path / "vqa.jsonl", [
        {"image": str(flickr / recs[0]["image"]), "question": "Is there a person?", "answer": "yes"},
        {"image": str(flickr / recs[1]["image"]), "question": "How many kids?", "answer": "one <OR> 1"},
        {"image": str(flickr / recs[2]["image"]), "question": "Is it indoors?", "answer": "no"},
    ])
    out = tmp_path / "out"
    args = ["eval", "vqa", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(out),
            "--max-new-tokens", "3", "--no-progress"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["systems"]) == {"model", "blind", "prior"}
    assert report["settings"]["ocr"] == "auto" and report["settings"]["key_fields"] is True
    assert main(args + ["--no-key-fields"]) == 2  # other grounding settings: refused, never mixed into this run
    # prior: "no" for yes/no questions (a 1-1 tie, broken alphabetically), "1" for the count
    assert report["systems"]["prior"]["accuracy"] == pytest.approx(2 / 3)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "vqa", "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "data file not found" in capsys.readouterr().err
    data = _write(tmp_path / "d.jsonl", [{"image": "a.jpg", "question": "q?", "answer": "a"}])
    assert main(["eval", "vqa", "--data", str(data), "--systems", "oracle"]) == 2
    assert "unknown system(s) oracle" in capsys.readouterr().err
    caps = _write(tmp_path / "c.jsonl", [{"image": "a.jpg", "captions": ["a cat"]}])
    assert main(["eval", "retrieval", "--data", str(caps), "--vision", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "holds no CLIP" in capsys.readouterr().err
