"""Structured answers to any prompt: a JSON Schema (or "any JSON object") -> the constrained decoder, with
typed values that need not come from OCR text; and the check that an answer satisfies its schema.

This is OpenAI's ``response_format`` (``json_object`` / ``json_schema``) and Ollama's ``format`` on the decoder
extraction uses (``constrained``): the answer is a flat JSON object spaced as ``json.dumps`` writes it
(``{"k": v, "k2": v2}``), so it parses and, when decoding ends by itself (not by running out of tokens),
satisfies the schema.

- No schema (``json_object``): any flat object; values are strings, numbers, booleans or null.
- A JSON Schema: what :func:`schema.from_json_schema` reads (a flat object of string / number / integer /
  boolean properties, string enums, ``X or null``), with every key written (required or not) in the schema's
  order; a value is null only where the schema allows null. Only keywords the decoder enforces (or that only
  annotate) are accepted: any other (``pattern``, ``format``, ``minimum``, ``minLength``, ``items``...) is refused with a
  :class:`SchemaError` naming it, never silently ignored. Strings are at most ``maxLength`` (default
  ``schema.DEFAULT_MAX_LENGTH``) characters; numbers are plain decimals (no exponent).
"""
from __future__ import annotations

from functools import partial

import json
from typing import Any

from ..generation import eos_token_ids
from .constrained import JsonLogitsProcessor, JsonObjectMachine, ValueRule, token_texts
from .schema import SchemaError, from_json_schema

# Keywords of the object itself and of each property that the decoder guarantees or that only annotate.
OBJECT_KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "title", "description",
                             "$defs", "definitions", "$schema", "$id", "$comment", "examples"})
PROPERTY_KEYWORDS = frozenset({"type", "enum", "maxLength", "description", "title", "anyOf", "oneOf", "$ref",
                               "default", "examples", "$comment"})


def _check_property(where: str, prop: Any, root: dict, seen: frozenset = frozenset()) -> None:
    if not isinstance(prop, dict):
        return  # from_json_schema names the problem
    extra = sorted(set(prop) - PROPERTY_KEYWORDS)
    if extra:
        raise SchemaError(f"{where}: the keyword {extra[0]!r} is not supported in structured answers (vlm's "
                          f"decoder cannot guarantee it); supported: {', '.join(sorted(PROPERTY_KEYWORDS))}")
    for key in ("anyOf", "oneOf"):
        for option in prop.get(key) or []:
            _check_property(where, option, root, seen)
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and ref not in seen:
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        _check_property(f"{where} ({ref})", target, root, seen | {ref})


def check_supported(schema: Any) -> None:
    """Raise :class:`SchemaError` for a schema whose every rule the decoder cannot enforce."""
    if not isinstance(schema, dict):
        raise SchemaError(f"a schema must be a JSON object, got {type(schema).__name__}")
    extra = sorted(set(schema) - OBJECT_KEYWORDS)
    if extra:
        raise SchemaError(f"the keyword {extra[0]!r} is not supported at the schema's top level; supported: "
                          f"{', '.join(sorted(OBJECT_KEYWORDS))}")
    props = schema.get("properties")
    if isinstance(props, dict):
        for name, prop in props.items():
            _check_property(f"property {name!r}", prop, schema)
    required = schema.get("required") or []
    missing = [r for r in required if not isinstance(props, dict) or r not in props]
    if missing:
        raise SchemaError(f"required property {missing[0]!r} is not among the schema's properties")


def answer_machine(schema: dict | None = None) -> JsonObjectMachine:
    """The decoder's acceptor for answers that satisfy ``schema`` (``None``: any flat JSON object)."""
    if schema is None:
        return JsonObjectMachine(None, free_rule=ValueRule(kind="any"))
    doc = from_json_schema(schema)  # its shape first (flat object, known types), then its keywords
    check_supported(schema)
    rules = [ValueRule(choices=f.enum, max_length=f.max_length, kind=f.kind, nullable=f.nullable)
             for f in doc.fields]
    return JsonObjectMachine(doc.names, rules)


def answer_processor(model, tokenizer, machine: JsonObjectMachine, prompt_length: int) -> JsonLogitsProcessor:
    """The logits processor that holds generation to ``machine`` (then ends it at the closing brace)."""
    return JsonLogitsProcessor(machine, token_texts(tokenizer), eos_token_ids(model, tokenizer), prompt_length,
                               encode=partial(tokenizer.encode, add_special_tokens=False))


def parse_answer(text: str, schema: dict | None = None) -> dict:
    """The answer as a dict; raises ``ValueError`` if it is not a JSON object satisfying ``schema``."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"the answer is JSON but not an object: {text[:80]!r}")
    if schema is not None:
        import jsonschema

        jsonschema.validate(value, schema)
    return value
