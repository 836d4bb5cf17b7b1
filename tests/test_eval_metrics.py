"""Metrics of `vlm eval` on hand-made cases whose scores are known."""
from __future__ import annotations

import pytest

from vlm.eval import captions, sroie, vqa
from vlm.eval.baselines.nearest_neighbour import consensus_caption
from vlm.eval.text_norm import normalise_answer, normalise_whitespace, simple_caption_tokens, split_alternatives


# --- normalisation -------------------------------------------------------------------------------
def test_whitespace_normalisation_keeps_case_and_punctuation():
    assert normalise_whitespace("  BOOK TA .K\t(TAMAN  DAYA)\nSDN BHD ") == "BOOK TA .K (TAMAN DAYA) SDN BHD"
    assert normalise_whitespace(None) == ""
    assert normalise_whitespace("Sdn Bhd") != normalise_whitespace("SDN BHD")


@pytest.mark.parametrize("raw, norm", [
    ("Yes.", "yes"),
    ("Two dogs!", "2 dogs"),
    ("the red one", "red 1"),  # as the official rules: every number word
    ("An apple", "apple"),
    ("dont", "don't"),
    ("1,000", "1000"),
    ("2.5 meters", "2.5 meters"),
    ("none", "0"),
    ("  Ten ", "10"),
    ("black-and-white", "black and white"),
])
def test_vqa_answer_normalisation(raw, norm):
    assert normalise_answer(raw) == norm


def test_split_alternatives():
    assert split_alternatives("2 <OR> two<OR>  ") == ["2", "two"]
    assert split_alternatives("yes") == ["yes"]


def test_simple_caption_tokens():
    assert simple_caption_tokens("A dog's ball, on the GRASS .") == "a dog's ball on the grass"


# --- VQA accuracy ---------------------------------------------------------------------------------
def test_vqa_exact_near_miss_and_alternatives():
    preds = ["yes", "Two.", "the cat", "blue", "3", "a red car", None]
    answers = ["yes", "2", "dog <OR> cat", "red <OR> crimson", "three <OR> 3", "red car", "yes"]
    # exact; number word -> digit; second alternative after article removal; wrong; alternative; near-miss
    # after article removal; empty prediction
    out = vqa.score(preds, answers)
    assert out["correct"] == 5
    assert out["accuracy"] == pytest.approx(5 / 7)


def test_vqa_relaxed_counts_whole_word_containment_only():
    assert vqa.is_relaxed_correct("Yes, it is.", "yes")
    assert not vqa.is_correct("Yes, it is.", "yes")
    assert not vqa.is_relaxed_correct("yesterday", "yes")


def test_vqa_question_types_and_prior():
    from vlm.eval.records import Record

    recs = [Record(str(i), None, {"question": q, "answer": a}) for i, (q, a) in enumerate([
        ("Is it raining?", "no"), ("Are there people?", "yes"), ("Is the dog white?", "no"),
        ("How many cats?", "2"), ("How many dogs are there?", "two <OR> 2"), ("How many birds?", "1"),
        ("What color is the car?", "red"),
    ])]
    assert vqa.question_type("Is it raining?") == "yes/no"
    assert vqa.question_type("How many cats?") == "number"
    assert vqa.question_type("What color is the sky?") == "color"
    preds = vqa.prior_predictor(recs)(recs)
    assert preds == ["no", "no", "no", "2", "2", "2", "red"]
    assert vqa.score(preds, [r.data["answer"] for r in recs])["correct"] == 5


# --- SROIE P/R/F1 ---------------------------------------------------------------------------------
def test_sroie_prf_on_hand_made_predictions():
    keys = [
        {"company": "ABC SDN BHD", "date": "01/02/2018", "address": "1 JALAN X", "total": "9.00"},
        {"company": "XYZ ENTERPRISE", "date": "03-04-19", "address": "2 JALAN Y", "total": "10.50"},
    ]
    preds = [
        {"company": " ABC  SDN BHD", "date": "01/02/2018", "address": None, "total": "9.0"},  # ws near-miss ok
        {"company": "XYZ", "date": "", "address": "2 JALAN Y", "total": "10.50"},
    ]
    out = sroie.score(preds, keys)
    f = out["fields"]
    assert f["company"]["correct"] == 1 and f["company"]["precision"] == 0.5 and f["company"]["recall"] == 0.5
    # an empty/null prediction is no prediction: precision unaffected, recall lowered
    assert f["date"]["precision"] == 1.0 and f["date"]["recall"] == 0.5
    assert f["date"]["f1"] == pytest.approx(2 / 3)
    assert f["address"]["precision"] == 1.0 and f["address"]["recall"] == 0.5
    assert f["total"]["precision"] == 0.5 and f["total"]["recall"] == 0.5
    overall = out["overall"]  # micro over fields: 4 correct of 6 predicted, 8 gold
    assert (overall["correct"], overall["predicted"], overall["gold"]) == (4, 6, 8)
    assert overall["precision"] == pytest.approx(4 / 6) and overall["recall"] == pytest.approx(4 / 8)
    assert overall["f1"] == pytest.approx(2 * (4 / 6) * (4 / 8) / (4 / 6 + 4 / 8))


def test_sroie_perfect_and_clean_prediction():
    keys = [{"company": "A", "date": "B", "address": "C", "total": "1.00"}]
    assert sroie.score(keys, keys)["overall"]["f1"] == 1.0
    assert sroie.clean_prediction({"total": 9.5, "company": ["x"]}) == \
        {"company": None, "date": None, "address": None, "total": "9.5"}
    assert sroie.clean_prediction("not a dict")["company"] is None


# --- captions -------------------------------------------------------------------------------------
REFS = [
    ["A dog runs across the grass .", "a brown dog running in a field", "The dog is running outside on grass ."],
    ["Two men play chess at a table .", "two people playing a board game", "Men sitting at a table with chess ."],
    ["A little girl climbs the stairs .", "a child going up some steps", "A girl in pink climbing stairs ."],
]


@pytest.mark.parametrize("tok", ["simple", "auto"])
def test_cider_identical_captions_outscore_unrelated(tok):
    same = captions.score([r[0] for r in REFS], REFS, tokenizer=tok)
    unrelated = captions.score(["a plate of food on a kitchen counter"] * 3, REFS, tokenizer=tok)
    assert same["cider"] > 1.0 > unrelated["cider"]
    assert same["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert unrelated["bleu4"] < 0.01
    assert same["mean_length"] == pytest.approx((6 + 7 + 6) / 3)


def test_caption_exact_match_after_tokenisation_and_empty_predictions():
    # case and punctuation differences vanish under tokenisation: still a perfect BLEU
    out = captions.score(["a DOG runs across the grass!!"], [REFS[0]], tokenizer="simple")
    assert out["bleu4"] == pytest.approx(1.0, abs=1e-6)
    empty = captions.score(["", "", ""], REFS, tokenizer="simple")
    assert empty["empty"] == 3 and empty["cider"] == 0.0 and empty["mean_length"] == 0


def test_consensus_caption_picks_the_typical_one():
    caps = ["a dog runs on grass", "a dog running on the grass", "an animal", "the dog runs on grass outside"]
    assert consensus_caption(caps) in caps[:2] + caps[3:]
    assert consensus_caption(caps) != "an animal"
    assert consensus_caption(["only one"]) == "only one"
