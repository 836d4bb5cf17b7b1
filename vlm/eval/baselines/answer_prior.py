"""VQA baseline: the most common answer of the question's type, with no image and no language model.

:class:`AnswerPrior` counts, per question type (:func:`vlm.eval.vqa.question_type`: "yes/no", "number",
"color", else the question's first two words: "what animal", "where is", ...), the normalised first-listed
answers of the questions it is fitted on, and answers each question with its type's most common one (ties
broken alphabetically; a type it never saw gets the most common answer overall).

Fitted on training questions (``vlm eval vqa --prior-train flickr8k_vqa_train.jsonl``) it is the honest
"answer prior" a model must beat to show that it looks at the image. Fitted on the evaluated file itself
(the default when no training file is given) it is an optimistic upper bound of that prior.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass
class AnswerPrior:
    table: dict[str, str]
    fallback: str
    fitted_on: int  # questions

    @classmethod
    def fit(cls, pairs: Iterable[tuple[str, str]]) -> "AnswerPrior":
        """From ``(question, answer)`` pairs; ``answer`` may list alternatives joined by ``<OR>``."""
        from ..text_norm import normalise_answer, question_type, split_alternatives

        counts: dict[str, Counter] = {}
        n = 0
        for question, answer in pairs:
            alts = split_alternatives(answer)
            if not alts:
                continue
            counts.setdefault(question_type(question), Counter())[normalise_answer(alts[0])] += 1
            n += 1
        if not n:
            raise ValueError("the answer prior needs at least one question with an answer")
        overall: Counter = Counter()
        for c in counts.values():
            overall.update(c)

        def best(c: Counter) -> str:
            return min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0]

        return cls({t: best(c) for t, c in counts.items()}, best(overall), n)

    @classmethod
    def from_records(cls, records: Sequence) -> "AnswerPrior":
        """From ``vlm.eval.records.Record`` objects with ``question`` and ``answer``."""
        return cls.fit((r.data["question"], r.data["answer"]) for r in records)

    def answer(self, question: str) -> str:
        from ..text_norm import question_type

        return self.table.get(question_type(question), self.fallback)

    def predictor(self):
        def predict(batch) -> list[str]:
            return [self.answer(r.data["question"]) for r in batch]

        return predict
