"""Visual question answering: accuracy after VQA answer normalisation, with ``<OR>`` alternatives.

A record is ``{"image", "question", "answer"}``; ``answer`` may list accepted answers joined by ``<OR>``.
A prediction is correct when its normalised form (:func:`vlm.eval.text_norm.normalise_answer`: case,
punctuation, articles, number words -> digits, contractions) equals that of any alternative.

``relaxed_accuracy`` also counts a prediction that *contains* an accepted answer as whole words
("yes, it is" for "yes"): useful for chatty small models, reported beside the strict figure.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from vlm.messages import SHORT_ANSWER

from .records import Record
from .text_norm import normalise_answer, question_type, split_alternatives



def is_correct(prediction: str | None, answer: str) -> bool:
    pred = normalise_answer(prediction)
    return bool(pred) and any(pred == normalise_answer(alt) for alt in split_alternatives(answer))


def is_relaxed_correct(prediction: str | None, answer: str) -> bool:
    pred = normalise_answer(prediction)
    if not pred:
        return False
    for alt in split_alternatives(answer):
        alt = normalise_answer(alt)
        if alt and re.search(rf"(^| ){re.escape(alt)}( |$)", pred):
            return True
    return False


def score(predictions: Sequence[str | None], answers: Sequence[str], questions: Sequence[str] | None = None) -> dict:
    """Accuracy (strict and relaxed) overall and, given ``questions``, per question type."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if not predictions:
        raise ValueError("no predictions to score")
    strict = [is_correct(p, a) for p, a in zip(predictions, answers)]
    relaxed = [is_relaxed_correct(p, a) for p, a in zip(predictions, answers)]
    out = {"accuracy": sum(strict) / len(strict), "relaxed_accuracy": sum(relaxed) / len(relaxed),
           "correct": sum(strict), "examples": len(strict)}
    if questions is not None:
        groups: dict[str, list[bool]] = {}
        for q, ok in zip(questions, strict):
            groups.setdefault(question_type(q), []).append(ok)
        out["by_type"] = {t: {"accuracy": sum(v) / len(v), "examples": len(v)} for t, v in sorted(groups.items())}
    return out


def reference(record: Record) -> str:
    return record.data["answer"]


def model_predictor(vlm, suffix: str = SHORT_ANSWER, use_image: bool = True, **gen):
    """The model answering each question (with ``suffix`` on a new line). ``use_image=False`` is the blind
    baseline: the same model, the same prompt, no image."""

    def predict(batch: Sequence[Record]) -> list[str]:
        pairs = [(rec.image if use_image else None, f"{rec.data['question']}\n{suffix}" if suffix else rec.data["question"])
                 for rec in batch]
        return vlm.ask_batch(pairs, **gen)

    return predict


def prior_predictor(records: Sequence[Record]):
    """Baseline: the most frequent answer of each question type among ``records``
    (:class:`vlm.eval.baselines.answer_prior.AnswerPrior`). Given the evaluated file itself it sees the
    answers it is scored on (an optimistic prior); given training questions it is the honest one."""
    from .baselines.answer_prior import AnswerPrior

    return AnswerPrior.from_records(records).predictor()
