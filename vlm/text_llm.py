"""The base text LLM answering prompts on its own: greedy, batched, through its own chat template.

Two users: ``vlm prep textonly`` (stage-2 text-only chats whose answers are the base LLM's, so that
fine-tuning keeps its text behaviour) and the ``llm`` system of ``vlm eval vqa`` (the base LLM on the same
prompt as the model, no image: on a text-only dev file it is the reference the fine-tuned model's blind
answers must not fall below).

:meth:`TextLLM.generate` returns each answer with whether it ended by itself (end-of-turn token) within
``max_new_tokens``; the answer is the decoded continuation, special tokens dropped, ends stripped.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_LLM = "smollm2-135m-instruct"


@dataclass
class Answer:
    text: str
    finished: bool  # the model ended its turn within the token limit


class TextLLM:
    """A causal LM and its tokenizer (a registered name, a local folder or a cached hub id)."""

    def __init__(self, llm: str = DEFAULT_LLM, max_new_tokens: int = 96, dtype=None, model=None, tokenizer=None):
        import torch

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if model is None or tokenizer is None:
            from vlm.compose import load_llm

            model, tokenizer = load_llm(llm, dtype or torch.float32)
        self.name = str(llm)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.tokenizer.padding_side = "left"
        self.max_new_tokens = max_new_tokens

    def render(self, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError("empty prompt")
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)

    def _stop_ids(self) -> set[int]:
        from vlm.generation import eos_token_ids

        return set(eos_token_ids(self.model, self.tokenizer))

    def generate(self, prompts: Sequence[str]) -> list[Answer]:
        """Greedy answers to ``prompts`` (one batched ``generate`` call)."""
        import torch

        if not prompts:
            return []
        enc = self.tokenizer([self.render(p) for p in prompts], return_tensors="pt", padding=True,
                             add_special_tokens=False)
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        stops = self._stop_ids()
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False, temperature=None,
                                      top_p=None, top_k=None, pad_token_id=pad, eos_token_id=sorted(stops))
        answers = []
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            finished = any(t in stops for t in row)
            if finished:
                row = row[:min(i for i, t in enumerate(row) if t in stops)]
            answers.append(Answer(tok.decode(row, skip_special_tokens=True).strip(), finished))
        return answers

    def predictor(self, suffix: str | None):
        """``vlm eval`` predictor: each record's ``question`` (with ``suffix`` on a new line), no image."""

        def predict(batch) -> list[str]:
            prompts = [f"{r.data['question']}\n{suffix}" if suffix else r.data["question"] for r in batch]
            return [a.text for a in self.generate(prompts)]

        return predict
