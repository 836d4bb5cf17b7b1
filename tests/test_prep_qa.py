"""Stage-2 question-answer records from Flickr8k captions, text-only chats from the base LLM, and the VQA
baselines they are measured against (``vlm prep qa``, ``vlm prep textonly``, ``vlm eval vqa``)."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from vlm.cli import main


def vlm_prep(argv: list[str]) -> int:
    return main(["prep", *argv])


@pytest.fixture(scope="module")
def nlp():
    from vlm.prep.qa_facts import load_parser

    return load_parser()


@pytest.fixture(scope="module")
def dev_by_key(flickr_records) -> dict[str, list[str]]:
    return {Path(r["image"]).stem: r["captions"] for r in flickr_records}


def _facts(nlp, captions):
    from vlm.prep.qa_facts import caption_facts, image_facts

    return image_facts([caption_facts(d) for d in nlp.pipe(captions)])


# --------------------------------------------------------------------------------- hand-checked dev images
def test_counts_animal_and_action_of_three_dogs(nlp, dev_by_key):
    # "A woman crouches near three dogs in a field." / "Three dogs are playing on grassy hill ..." / ...
    f = _facts(nlp, dev_by_key["1032122270_ea6f0beedb"])
    assert f.counts["dog"] == 3
    assert f.counts["people"] == 1  # "a woman", "a person", "a person"; two captions name no one
    assert f.animal == ("dog", [])
    assert f.subject.phrase() == "the dogs" and f.action[0] == "standing"  # 2 of 5 stand, 1 plays


def test_people_are_counted_together_and_vague_plurals_do_not_contradict(nlp, dev_by_key):
    # "A woman and three children stand on a deck ..." and "Woman with three children fishing ..." say four;
    # "A mother and children", "Some people on a pier" say several, which does not contradict four.
    f = _facts(nlp, dev_by_key["1089755335_0bfbfd30e6"])
    assert f.counts["people"] == 4 and f.counts["child"] == 3


def test_conflicting_counts_give_no_count(nlp, dev_by_key):
    # "A child and a woman ..." (2) vs "A little boy at a lake ..." (1) vs "several people" (many)
    f = _facts(nlp, dev_by_key["1022454332_6af2c1449a"])
    assert "people" not in f.counts
    assert f.animal == ("duck", [])


def test_colour_with_its_wearer_and_a_wrong_colour_for_no(nlp, dev_by_key):
    from vlm.prep.qa import YesNoSampler, questions

    # three captions: "a woman in a red costume", "a woman wearing a red costume", "... a red sequined costume"
    f = _facts(nlp, dev_by_key["1088767354_2acee738cf"])
    assert f.colours["costume"][0] == "red" and f.colour_owner["costume"] == "woman"
    qas = questions(f, random.Random(0), YesNoSampler())
    colour = [q for q in qas if q.type == "colour"]
    assert len(colour) == 1 and re.fullmatch(r"What (is the )?colou?r (is|of) the woman's costume\?", colour[0].question)
    assert colour[0].answer == "red"
    checks = {q.answer: q.question for q in qas if q.question.startswith("Is the woman's costume")}
    assert checks["yes"] == "Is the woman's costume red?"
    wrong = checks["no"].removeprefix("Is the woman's costume ").rstrip("?")
    assert wrong != "red" and wrong not in " ".join(dev_by_key["1088767354_2acee738cf"]).lower()


def test_place_sport_and_plural_subject(nlp, dev_by_key):
    from vlm.prep.qa import YesNoSampler, questions

    f = _facts(nlp, dev_by_key["1056249424_ef2a2e041c"])  # "The children are playing in the water." ...
    assert f.place[0] == "water" and f.counts["people"] == 2
    qas = {q.type: q for q in questions(f, random.Random(0), YesNoSampler())}
    assert qas["action"].question == "What are the people doing?" and qas["action"].answer == "playing"
    assert _facts(nlp, dev_by_key["103106960_e8a41d64f8"]).sport == "hockey"  # "street hockey", "hockey rink"


def test_action_with_object_accepts_the_bare_verb(nlp):
    from vlm.prep.qa import YesNoSampler, questions

    f = _facts(nlp, ["A man is riding a bike down the street .", "A man rides a bicycle on a road .",
                     "A man riding a bike .", "A person cycling .", "A man on a bike ."])
    action = next(q for q in questions(f, random.Random(0), YesNoSampler()) if q.type == "action")
    assert action.question == "What is the man doing?" and action.answer == "riding a bike"
    assert "riding" in action.reference().split(" <OR> ")


# --------------------------------------------------------------------------------- files, balance, readers
@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory, data_dir) -> Path:
    out = tmp_path_factory.mktemp("qa")
    assert vlm_prep(["qa", "--src", str(data_dir / "flickr8k"), "--out", str(out), "--limit", "80", "--quiet"]) == 0
    return out


def test_prep_qa_writes_balanced_yes_no_and_negatives_absent_from_captions(qa_dir, data_dir):
    from vlm.prep.qa import TYPES, YES_NO_THINGS

    summary = json.loads((qa_dir / "flickr8k_qa_summary.json").read_text())
    assert summary["bad_total"] == 0 and summary["images"] == {"train": 80, "dev": 80}
    for split in ("train", "dev"):
        assert summary["yes_no_answers"][split]["yes"] == summary["yes_no_answers"][split]["no"] > 0
        assert set(summary["questions_by_type"][split]) <= set(TYPES) | {"total"}
    captions = {Path(json.loads(l)["image"]).name: " ".join(json.loads(l)["captions"]).lower()
                for l in (data_dir / "flickr8k" / "dev.jsonl").read_text().splitlines()[:80]}
    rows = [json.loads(l) for l in (qa_dir / "flickr8k_vqa_dev.jsonl").read_text().splitlines()]
    articles = {v: k for k, v in YES_NO_THINGS.items()}
    negatives = 0
    for row in rows:
        m = re.search(r"(an? \w+)\??$|(an? \w+) in the", row["question"])
        if row["type"] == "yes/no" and row["answer"] == "no" and m and (m.group(1) or m.group(2)) in articles:
            thing = articles[m.group(1) or m.group(2)]
            assert thing not in captions[Path(row["image"]).name], row
            negatives += 1
    assert negatives >= 40
    # round-robin order: the first questions are from distinct images
    first = [r["image"] for r in rows[:40]]
    assert len(set(first)) == 40


def test_qa_records_load_in_the_training_and_eval_readers(qa_dir, tiny_vlm):
    from vlm.prep.io import checked_records
    from vlm.records import load_records
    from vlm.train.data import TrainingSet
    from vlm.eval import vqa
    from vlm.eval.records import load_eval_records

    records = load_records(qa_dir / "flickr8k_qa_stage2_train.json")
    ds = TrainingSet(records, tiny_vlm.processor, 16, root=qa_dir, max_length=512)
    assert len(ds) == len(records) and not ds.skipped
    answers = [r["conversations"][1]["value"] for r in records]
    ex = ds.examples[0]
    labelled = tiny_vlm.processor.tokenizer.decode([t for t in ex.labels if t != -100])
    assert answers[0] in labelled
    assert len(list(checked_records(qa_dir / "flickr8k_qa_stage2_dev.json"))) > 0
    rows = load_eval_records(qa_dir / "flickr8k_vqa_dev.jsonl", ("image", "question", "answer"))
    assert all(r.image.is_file() for r in rows)
    perfect = vqa.score([r.data["answer"].split(" <OR> ")[0] for r in rows], [r.data["answer"] for r in rows],
                        [r.data["question"] for r in rows])
    assert perfect["accuracy"] == 1.0 and {"yes/no", "number"} <= set(perfect["by_type"])


def test_prior_is_fitted_on_train_questions(qa_dir, tmp_path, capsys):
    from vlm.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "vqa", "--data", str(qa_dir / "flickr8k_vqa_dev.jsonl"), "--systems", "prior",
                 "--prior-train", str(qa_dir / "flickr8k_vqa_train.jsonl"), "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    prior = report["systems"]["prior"]
    assert "flickr8k_vqa_train.jsonl" in prior["note"]
    assert prior["by_type"]["yes/no"]["accuracy"] == 0.5  # as many "yes" as "no" answers in every split
    assert 0.1 < prior["accuracy"] < 0.7
    rows = {json.loads(l)["id"]: json.loads(l) for l in (qa_dir / "flickr8k_vqa_dev.jsonl").read_text().splitlines()}
    preds = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
    assert len({p["prediction"] for p in preds if rows[p["id"]]["type"] == "yes/no"}) == 1


def test_answer_prior_unit():
    from vlm.eval.baselines.answer_prior import AnswerPrior

    prior = AnswerPrior.fit([("How many dogs?", "two"), ("How many cats?", "2"), ("How many men?", "one"),
                             ("Is there a cat?", "no <OR> nope"), ("What animal is this?", "dog")])
    assert prior.answer("How many birds are there?") == "2"
    assert prior.answer("Is there a horse?") == "no"
    assert prior.answer("Why?") == "2"  # unseen type: the most common answer overall
    with pytest.raises(ValueError, match="at least one question"):
        AnswerPrior.fit([])


# --------------------------------------------------------------------------------- text-only chats
def test_trim_unfinished():
    from vlm.prep.textonly import trim_unfinished

    assert trim_unfinished("First sentence is here. Second one is cut off in the mid") == "First sentence is here."
    assert trim_unfinished("Line one of the list\n2. and then") == "Line one of the list"
    assert trim_unfinished("no end at all") is None
    assert trim_unfinished("Short. rest") is None


def test_is_loop():
    from vlm.prep.textonly import is_loop

    assert is_loop("Boil an egg:\n\nBoil an egg:\n\nBoil an egg:\n\nBoil an egg:\n\nBoil an egg:")
    assert not is_loop("To make tea, boil water, pour it on the leaves, wait three minutes and pour the tea.")


def test_textonly_with_a_tiny_llm_caches_answers(tmp_path, tiny_llm_dir):
    from vlm.records import load_records
    from vlm.prep.textonly import TextOnlyConfig, prepare_textonly
    from vlm.prep.textonly_prompts import DEV_QUESTIONS, train_prompts
    from vlm.text_llm import TextLLM

    llm = TextLLM(str(tiny_llm_dir), max_new_tokens=12)
    cfg = TextOnlyConfig(model=str(tiny_llm_dir), out=tmp_path, max_new_tokens=12, batch_size=2, limit=3)
    first = prepare_textonly(cfg, llm=llm)
    assert first["generated"] == 3 and first["cached"] == 0
    cache = [json.loads(l) for l in (tmp_path / "textonly_answers.jsonl").read_text().splitlines()]
    assert [c["prompt"] for c in cache] == train_prompts()[:3]
    again = prepare_textonly(cfg, llm=llm)
    assert again["generated"] == 0 and again["cached"] == 3
    records = load_records(tmp_path / "textonly_stage2.json")
    assert len(records) == again["records"] == 3 - again["dropped"] - again["dropped_loops"]
    assert all("image" not in r for r in records)
    dev = [json.loads(l) for l in (tmp_path / "textonly_dev.jsonl").read_text().splitlines()]
    assert len(dev) == len(DEV_QUESTIONS) + 16 and not {d["question"] for d in dev} & set(train_prompts())
    from vlm.eval.records import load_eval_records

    rows = load_eval_records(tmp_path / "textonly_dev.jsonl", ("image", "question", "answer"))  # vlm eval vqa's reader
    assert all(r.image is None for r in rows)
    replies = llm.predictor("Answer the question using a single word or phrase.")(rows[:2])
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)


def test_textonly_real_weights_two_prompts(tmp_path, real_vlm):
    from vlm.records import load_records
    from vlm.prep.textonly import TextOnlyConfig, prepare_textonly
    from vlm.train.data import TrainingSet
    from vlm.text_llm import TextLLM

    llm = TextLLM("smollm2-135m-instruct", max_new_tokens=24)
    capital = llm.generate(["What is the capital of France?\nAnswer the question using a single word or phrase."])
    assert "paris" in capital[0].text.lower() and capital[0].finished
    summary = prepare_textonly(TextOnlyConfig(out=tmp_path, max_new_tokens=24, limit=2), llm=llm)
    records = load_records(tmp_path / "textonly_stage2.json")
    assert summary["generated"] == 2 and len(records) == summary["records"] >= 1
    ds = TrainingSet(records, real_vlm.processor, real_vlm.model.config.image_seq_length, root=tmp_path)
    assert len(ds) == len(records) and not ds.skipped
