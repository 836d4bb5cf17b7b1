"""SROIE baseline (b): OCR + the base text LLM (no image, no training) asked zero-shot for JSON.

The prompt is the one the vlm model is trained on for receipts (:func:`vlm.extract.prompts.fields_prompt`
over :func:`vlm.extract.prompts.format_ocr`), so the comparison isolates what training and the image add.
Decoding is greedy, and the assistant turn is primed with the opening of the JSON object
(``{"company": "``) so that the reply continues in the asked format; no example is shown (zero-shot). The
answer (priming + reply, cut after the first ``}``) is read with :func:`parse_fields`: the first JSON
object, else ``"field": "value"`` / ``"field": 12.30`` pairs found anywhere in it; fields it lacks are null.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence

from ..sroie import FIELDS, clean_prediction

DEFAULT_LLM = "smollm2-135m-instruct"


def _first_object(text: str) -> dict | None:
    start = text.find("{")
    while start >= 0:
        depth, in_str, esc = 0, False, False
        for i in range(start, len(text)):
            ch = text[i]
            if in_str:
                esc = not esc and ch == "\\"
                if ch == '"' and not esc:
                    in_str = False
                elif ch != "\\":
                    esc = False
                continue
            if ch == '"':
                in_str = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    try:
                        obj = json.loads(text[start:i + 1])
                    except json.JSONDecodeError:
                        break
                    return obj if isinstance(obj, dict) else None
        start = text.find("{", start + 1)
    return None


def parse_fields(reply: str, fields: Sequence[str] = FIELDS) -> dict:
    """``{field: str | None}`` from a model reply (JSON object, or loose ``"key": "value"`` pairs)."""
    obj = _first_object(reply) or {}
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    found = {}
    for f in fields:
        value = lowered.get(f.lower())
        if value is None:  # an unclosed object: loose "key": "value" or "key": 12.30 pairs
            m = re.search(rf'"{re.escape(f)}"\s*:\s*(?:"([^"\n]*)"|(-?\d[\d,]*(?:\.\d+)?)\b)', reply, re.I)
            value = (m.group(1) if m.group(1) is not None else m.group(2)) if m else None
        if isinstance(value, (dict, list)):
            value = None
        found[f] = value
    return clean_prediction(found, fields)


class ZeroShotExtractor:
    """The base LLM (transformers, greedy) answering the receipt prompt over our own OCR text."""

    def __init__(self, llm: str = DEFAULT_LLM, fields: Sequence[str] = FIELDS, max_new_tokens: int = 128,
                 ocr=None, dtype=None):
        import torch

        from vlm.compose import load_llm

        self.fields = list(fields)
        self.max_new_tokens = max_new_tokens
        self.model, self.tokenizer = load_llm(llm, dtype or torch.float32)
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if ocr is None:
            from vlm.ocr import run_ocr as ocr
        self.ocr = ocr

    def prompt(self, image) -> str:
        from vlm.extract.prompts import fields_prompt, format_ocr

        user = fields_prompt(self.fields, format_ocr(self.ocr(image)))
        return self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                  add_generation_prompt=True) + self.priming

    @property
    def priming(self) -> str:
        return '{"' + self.fields[0] + '": "'


    def replies(self, images: Sequence) -> list[str]:
        import torch

        prompts = [self.prompt(img) for img in images]
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      temperature=None, top_p=None, top_k=None, pad_token_id=pad,
                                      stop_strings=["}"], tokenizer=self.tokenizer)
        texts = self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return [self.priming + t.split("}")[0] + "}" for t in texts]

    def __call__(self, batch) -> list[dict]:
        replies = self.replies([rec.image for rec in batch])
        return [{**parse_fields(r, self.fields), "_reply": r} for r in replies]  # scoring reads the fields only
