"""JSON-constrained decoding: a character-level state machine for flat JSON objects, and a logits processor
that lets the model pick only tokens the machine accepts.

Why our own: the maintained libraries (outlines, lm-format-enforcer) install here, but none can say "a
string value must be a substring of this OCR text", which is the grounding rule we need, and each adds
dependencies. The supported grammar is small, so the machine is small and tested.

Supported output (exactly the canonical form ``json.dumps(obj, ensure_ascii=False)`` writes, which is also
what ``prompts.fields_answer`` trains on):
- fixed keys: ``{"k1": V, "k2": V, ...}`` with the given keys in the given order;
- free-form: ``{}`` or ``{"key": V, ...}`` with any keys (at most ``max_pairs`` pairs, keys up to 40 chars).
``V`` is ``null`` or a string (extraction's values). A rule may instead type its value (``ValueRule.kind``): a JSON
number (``-12.5``; no exponent), an integer, a ``true``/``false`` literal, or ``any`` of string / number / boolean;
and it may forbid ``null`` (``nullable=False``). Typed values are what ``vlm.extract.structured`` uses to answer
any prompt with JSON that satisfies a JSON Schema. A string value is either one of a closed set of choices (enum / boolean) or
free text that, when ``corpus`` is given, must be a substring of the corpus after whitespace collapsing and
lower-casing, starting and ending at token boundaries of the corpus (grounding): a value never cuts a word
or a number in two (``"DAMANSA"`` from ``"DAMANSARA"``, ``"12.0"`` from ``"12.00"``), while a cut between
letters and digits is a boundary (``"12.00"`` from ``"RM12.00"``). Values are normalised as they are written: no leading/trailing or double spaces,
no control characters or other whitespace; escapes ``\\"`` and ``\\\\`` only. Every state the machine
can reach can still be completed, so decoding never dead-ends; if ``max_new_tokens`` runs out first,
:meth:`JsonObjectMachine.values` treats the unfinished value and the missing fields as ``null``.

The processor checks the ``top_k`` best tokens first (greedy decoding is exact: the best allowed token is
chosen); only when none of them is allowed does it walk a character trie of the vocabulary, pruning at the first
rejected character.
With sampling, it samples among the allowed tokens of the top ``top_k``.
"""
from __future__ import annotations

import json
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

_ESCAPES = {'"': '"', "\\": "\\"}  # the only escapes json.dumps writes for printable text
MAX_KEY_LENGTH = 40


VALUE_KINDS = ("string", "number", "integer", "boolean", "any")
MAX_NUMBER_LENGTH = 24
_NUMBER = {  # (prefix that can still become a number, complete number); plain decimals, no exponent
    "number": (re.compile(r"-?(?:(?:0|[1-9]\d*)(?:\.\d*)?)?"), re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?")),
    "integer": (re.compile(r"-?(?:0|[1-9]\d*)?"), re.compile(r"-?(?:0|[1-9]\d*)")),
}
_WORDS = {"null": None, "true": True, "false": False}


@dataclass(frozen=True)
class ValueRule:
    """What a value may be: one of ``choices``, or free text up to ``max_length`` chars (grounded if corpus).

    ``kind`` other than ``"string"`` types the value: ``number`` / ``integer`` (a JSON number literal of at most
    ``MAX_NUMBER_LENGTH`` chars), ``boolean`` (``true`` / ``false``), ``any`` (a string, a number or a boolean).
    ``nullable=False`` forbids ``null``."""

    choices: tuple[str, ...] | None = None
    max_length: int = 200
    kind: str = "string"
    nullable: bool = True

    def __post_init__(self) -> None:
        if self.kind not in VALUE_KINDS:
            raise ValueError(f"value kind must be one of {', '.join(VALUE_KINDS)}, got {self.kind!r}")
        if self.choices is not None and self.kind != "string":
            raise ValueError("choices apply to string values only")
        if self.max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {self.max_length}")


def normalise_corpus(text: str) -> str:
    return " ".join(text.split()).lower()


def _joined(a: str, b: str) -> bool:
    """Two adjacent characters of one token: both letters or both digits."""
    return (a.isalpha() and b.isalpha()) or (a.isdigit() and b.isdigit())


class Grounding:
    """Where a value may come from: its occurrences in the (normalised) corpus that start at a token boundary,
    memoised by prefix, since decoding extends a value one character at a time."""

    def __init__(self, corpus: str):
        self.corpus = normalise_corpus(corpus)
        self._starts: dict[str, tuple[int, ...]] = {}

    def starts(self, text: str) -> tuple[int, ...]:
        """Start offsets of ``text`` (lower-cased) in the corpus that do not cut a token."""
        hit = self._starts.get(text)
        if hit is not None:
            return hit
        c = self.corpus
        if len(text) <= 1:
            hit = tuple(i for i in range(len(c)) if c[i] == text and (i == 0 or not _joined(c[i - 1], text)))
        else:
            n, ch = len(text) - 1, text[-1]
            hit = tuple(i for i in self.starts(text[:-1]) if i + n < len(c) and c[i + n] == ch)
        self._starts[text] = hit
        return hit

    def allows(self, text: str) -> bool:
        return bool(text) and bool(self.starts(text.lower()))

    def closes(self, text: str) -> bool:
        """Some occurrence of ``text`` also ends at a token boundary."""
        low, c = text.lower(), self.corpus
        end = len(low)
        return any(i + end == len(c) or not _joined(low[-1], c[i + end]) for i in self.starts(low))


class JsonObjectMachine:
    """Character-level acceptor of a flat JSON object. States are hashable tuples; ``None`` means rejected.

    ``keys``: the fixed keys in order with one rule each, or ``None`` for free-form key-value pairs
    (all values then follow ``free_rule``).
    """

    def __init__(self, keys: list[str] | None, rules: list[ValueRule] | None = None, corpus: str | None = None,
                 free_rule: ValueRule = ValueRule(), max_pairs: int = 32):
        if keys is not None:
            if not keys:
                raise ValueError("a fixed-key object needs at least one key")
            rules = list(rules) if rules is not None else [ValueRule()] * len(keys)
            if len(rules) != len(keys):
                raise ValueError("one rule per key")
        if corpus is not None and not all(r.nullable for r in (rules or []) + [free_rule]):
            raise ValueError("grounded values must be nullable: the corpus may hold no allowed value")
        self.keys = list(keys) if keys is not None else None
        self.rules = rules
        self.free_rule = free_rule
        self.max_pairs = max_pairs
        self.grounding = Grounding(corpus) if corpus is not None else None

    # -- states ------------------------------------------------------------------------------------
    # ("lit", text, i, next)      writing a fixed literal; ``next`` follows it
    # ("vstart", ctx)             a value starts: n(ull), ", t(rue), f(alse), - or a digit, as its rule allows
    # ("word", word, i, ctx)      inside null / true / false
    # ("num", buf, ctx)           inside a number; it ends at the first character that cannot extend it
    # ("str", buf, esc, ctx)      inside a string value; buf is the decoded text so far
    # ("key", buf, esc, pairs)    free-form: inside a key
    # ("open", pairs)             free-form: after {, expecting " or }
    # ("next", pairs)             free-form: after a value, expecting , or }
    # ("done", result)            the object is closed
    # ctx: ("fixed", index, values) or ("free", pairs, key)

    def _lit(self, text: str, nxt: tuple) -> tuple:
        return ("lit", text, 0, nxt) if text else nxt

    def _key_literal(self, index: int) -> str:
        return ("{" if index == 0 else ", ") + json.dumps(self.keys[index], ensure_ascii=False) + ": "

    def start(self) -> tuple:
        if self.keys is None:
            return self._lit("{", ("open", ()))
        return self._lit(self._key_literal(0), ("vstart", ("fixed", 0, ())))

    def _rule(self, ctx: tuple) -> ValueRule:
        return self.rules[ctx[1]] if ctx[0] == "fixed" else self.free_rule

    def _after_value(self, ctx: tuple, value) -> tuple:
        if ctx[0] == "fixed":
            values = ctx[2] + (value,)
            nxt = ctx[1] + 1
            if nxt < len(self.keys):
                return self._lit(self._key_literal(nxt), ("vstart", ("fixed", nxt, values)))
            return self._lit("}", ("done", values))
        return ("next", ctx[1] + ((ctx[2], value),))

    def _can_open(self, rule: ValueRule) -> bool:
        if rule.kind not in ("string", "any"):
            return False
        if rule.choices is not None:
            return any(rule.choices)
        return self.grounding is None or bool(self.grounding.corpus)

    def _value_start(self, ctx: tuple, ch: str) -> tuple | None:
        rule = self._rule(ctx)
        if ch == "n":
            return ("word", "null", 1, ctx) if rule.nullable else None
        if ch == '"':
            return ("str", "", False, ctx) if self._can_open(rule) else None
        if ch in "tf":
            return ("word", "true" if ch == "t" else "false", 1, ctx) if rule.kind in ("boolean", "any") else None
        if ch == "-" or ch.isdigit():
            return self._number(ctx, rule, "", ch)
        return None

    def _number(self, ctx: tuple, rule: ValueRule, buf: str, ch: str) -> tuple | None:
        """Extend a number by ``ch``; if ``ch`` cannot extend it, close the number and pass ``ch`` on."""
        kind = "number" if rule.kind == "any" else rule.kind
        if kind not in _NUMBER:
            return None
        prefix, complete = _NUMBER[kind]
        text = buf + ch
        if ch.isascii() and prefix.fullmatch(text):
            done = complete.fullmatch(text) is not None
            # an unfinished number needs one more character: keep room for it (no dead ends)
            if len(text) < MAX_NUMBER_LENGTH or (done and len(text) == MAX_NUMBER_LENGTH):
                return ("num", text, ctx)
        if buf and complete.fullmatch(buf):
            value = float(buf) if "." in buf else int(buf)  # as json.loads reads it
            return self.step(self._after_value(ctx, value), ch)
        return None

    def _value_ok(self, buf: str, rule: ValueRule) -> bool:
        if rule.choices is not None:
            return any(c.startswith(buf) for c in rule.choices)
        if len(buf) > rule.max_length or buf[0] == " " or "  " in buf[-2:]:
            return False
        if buf[-1] == " " and len(buf) >= rule.max_length:
            return False  # a trailing space that could never be followed: a dead end
        return self.grounding is None or self.grounding.allows(buf)

    def _closable(self, buf: str, rule: ValueRule) -> bool:
        if rule.choices is not None:
            return buf in rule.choices
        if not buf or buf[-1] == " ":
            return False
        # a value cut at max_length may end inside a token: it must still be closable (no dead ends)
        return self.grounding is None or len(buf) >= rule.max_length or self.grounding.closes(buf)

    @staticmethod
    def _plain(ch: str) -> bool:
        return ch == " " or (ord(ch) >= 32 and not ch.isspace() and ch not in "\x7f\u2028\u2029")

    def step(self, state: tuple | None, ch: str) -> tuple | None:
        if state is None:
            return None
        kind = state[0]
        if kind == "lit":
            _, text, i, nxt = state
            if text[i] != ch:
                return None
            return ("lit", text, i + 1, nxt) if i + 1 < len(text) else nxt
        if kind == "vstart":
            return self._value_start(state[1], ch)
        if kind == "word":
            _, word, i, ctx = state
            if word[i] != ch:
                return None
            return ("word", word, i + 1, ctx) if i + 1 < len(word) else self._after_value(ctx, _WORDS[word])
        if kind == "num":
            _, buf, ctx = state
            return self._number(ctx, self._rule(ctx), buf, ch)
        if kind == "str":
            _, buf, esc, ctx = state
            rule = self._rule(ctx)
            if esc:
                real = _ESCAPES.get(ch)
                if real is None or not self._value_ok(buf + real, rule):
                    return None
                return ("str", buf + real, False, ctx)
            if ch == '"':
                return self._after_value(ctx, buf) if self._closable(buf, rule) else None
            if ch == "\\":
                if any(self._value_ok(buf + r, rule) for r in _ESCAPES.values()):
                    return ("str", buf, True, ctx)
                return None
            if not self._plain(ch) or not self._value_ok(buf + ch, rule):
                return None
            return ("str", buf + ch, False, ctx)
        if kind == "open":
            if ch == '"':
                return ("key", "", False, state[1])
            if ch == "}":
                return ("done", state[1])
            return None
        if kind == "next":
            pairs = state[1]
            if ch == "}":
                return ("done", pairs)
            if ch == "," and len(pairs) < self.max_pairs:
                return self._lit(' "', ("key", "", False, pairs))
            return None
        if kind == "key":
            _, buf, esc, pairs = state
            if esc:
                real = _ESCAPES.get(ch)
                return ("key", buf + real, False, pairs) if real and len(buf) < MAX_KEY_LENGTH else None
            if ch == '"':
                if buf and buf[-1] != " ":
                    return self._lit(": ", ("vstart", ("free", pairs, buf)))
                return None
            if ch == "\\":
                return ("key", buf, True, pairs) if len(buf) < MAX_KEY_LENGTH else None
            if not self._plain(ch) or len(buf) >= MAX_KEY_LENGTH - (ch == " "):
                return None
            if ch == " " and (not buf or buf[-1] == " "):
                return None
            return ("key", buf + ch, False, pairs)
        return None  # "done": nothing may follow

    def feed(self, state: tuple | None, text: str) -> tuple | None:
        for ch in text:
            state = self.step(state, ch)
            if state is None:
                return None
        return state

    def forced(self, state: tuple | None, limit: int = 64) -> str:
        """The text every accepted continuation of ``state`` starts with (at most ``limit`` characters): the rest
        of a literal (keys, separators, ``null``), and the part of a string value its choices all share. Free
        text, numbers and a choice that may end or go on force nothing."""
        out: list[str] = []
        while state is not None and len(out) < limit:
            ch = self._forced_char(state)
            state = self.step(state, ch) if ch is not None else None
            if state is None:
                break
            out.append(ch)
        return "".join(out)

    def _forced_char(self, state: tuple) -> str | None:
        kind = state[0]
        if kind in ("lit", "word"):
            return state[1][state[2]]
        if kind == "vstart":
            rule = self._rule(state[1])
            if rule.kind != "string":
                return None
            opens = self._can_open(rule)
            return '"' if opens and not rule.nullable else "n" if rule.nullable and not opens else None
        if kind == "str" and not state[2] and self._rule(state[3]).choices is not None:
            buf, choices = state[1], self._rule(state[3]).choices
            nexts = {c[len(buf)] for c in choices if len(c) > len(buf) and c.startswith(buf)}
            if buf in choices:
                nexts.add('"')  # the value may close here
            if len(nexts) == 1 and (buf in choices or not nexts & set(_ESCAPES)):
                return nexts.pop()  # a quote or backslash inside the value would be written escaped: not forced
        return None

    @staticmethod
    def is_done(state: tuple | None) -> bool:
        return state is not None and state[0] == "done"

    def values(self, state: tuple | None) -> dict:
        """The completed values in ``state`` (unfinished and missing ones are ``None``)."""
        while state is not None and state[0] == "lit":
            state = state[3]
        collected: tuple = ()
        if state is not None:
            kind = state[0]
            if kind in ("vstart", "word", "num", "str"):
                ctx = state[-1]
                collected = ctx[2] if ctx[0] == "fixed" else ctx[1]
            elif kind in ("done", "open", "next"):
                collected = state[1]
            elif kind == "key":
                collected = state[3]
        if self.keys is not None:
            out = dict.fromkeys(self.keys)
            out.update(zip(self.keys, collected))
            return out
        out: dict = {}
        for key, value in collected:
            out.setdefault(key, value)
        return out


# -- tokens ----------------------------------------------------------------------------------------
class TokenTexts:
    """The text each token id adds when decoded after other text (``None`` for special/partial tokens)."""

    def __init__(self, tokenizer):
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        anchor = tokenizer.encode("a", add_special_tokens=False)[:1]
        head = tokenizer.decode(anchor, clean_up_tokenization_spaces=False) if anchor else ""
        n = len(tokenizer)
        decoded = tokenizer.batch_decode([anchor + [i] for i in range(n)], clean_up_tokenization_spaces=False)
        self.texts: list[str | None] = []
        for i, text in enumerate(decoded):
            if i in special or not text.startswith(head):
                self.texts.append(None)
                continue
            piece = text[len(head):]
            self.texts.append(piece if piece and "\ufffd" not in piece else None)
        # A character trie of the token texts: node = (children by char, ids of tokens ending here).
        self.trie: tuple[dict, list[int]] = ({}, [])
        for i, piece in enumerate(self.texts):
            if piece:
                node = self.trie
                for ch in piece:
                    nxt = node[0].get(ch)
                    if nxt is None:
                        nxt = node[0][ch] = ({}, [])
                    node = nxt
                node[1].append(i)

    def __len__(self) -> int:
        return len(self.texts)

    def longest_match(self, text: str) -> list[int]:
        """``text`` as token ids, each the longest token text that starts the rest (a draft of how the model
        writes it; ``[]`` if some character has no token)."""
        ids: list[int] = []
        i = 0
        while i < len(text):
            node, best, j = self.trie, None, i
            while j < len(text) and (node := node[0].get(text[j])) is not None:
                j += 1
                if node[1]:
                    best = (j, node[1][0])
            if best is None:
                return []
            i, token = best
            ids.append(token)
        return ids


_token_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def token_texts(tokenizer) -> TokenTexts:
    """Cached per tokenizer object (building it decodes the whole vocabulary once, about a second)."""
    try:
        return _token_cache[tokenizer]
    except (KeyError, TypeError):
        pass
    out = TokenTexts(tokenizer)
    try:
        _token_cache[tokenizer] = out
    except TypeError:
        pass
    return out


class JsonLogitsProcessor(LogitsProcessor):
    """Masks every token the machine would reject; after the closing ``}`` only end-of-sequence is allowed."""

    def __init__(self, machine: JsonObjectMachine, tokens: TokenTexts, eos_ids: list[int], prompt_length: int,
                 top_k: int = 64, encode: Callable[[str], list[int]] | None = None):
        if not eos_ids:
            raise ValueError("constrained decoding needs an end-of-sequence token id")
        self.machine = machine
        self.tokens = tokens
        self.eos_ids = list(eos_ids)
        self.prompt_length = prompt_length
        self.top_k = top_k
        self.encode = encode or tokens.longest_match  # text -> ids, for drafts (the tokenizer's own is better)
        self._states: list[tuple | None] = []
        self._fed: list[int] = []
        self._ended: list[bool] = []
        self.full_scans = 0  # how often the top-k shortcut found nothing (for tests and tuning)

    def state_after(self, token_ids: list[int]) -> tuple | None:
        state = self.machine.start()
        for t in token_ids:
            if t in self.eos_ids:
                break
            text = self.tokens.texts[t] if t < len(self.tokens) else None
            if text is None:
                return None
            state = self.machine.feed(state, text)
            if state is None:
                return None
        return state

    def values(self, token_ids: list[int]) -> dict:
        """The extracted values of one row's generated ids (incomplete -> null)."""
        return self.machine.values(self.state_after(token_ids))

    def _advance(self, row: int, ids: list[int]) -> None:
        for t in ids[self._fed[row]:]:
            self._fed[row] += 1
            if self._ended[row]:
                continue
            if t in self.eos_ids:
                self._ended[row] = True
                continue
            text = self.tokens.texts[t] if t < len(self.tokens) else None
            state = self.machine.feed(self._states[row], text) if text is not None else None
            if state is None:
                raise RuntimeError(f"constrained decoding produced a rejected token {t!r} ({text!r})")
            self._states[row] = state

    def _accepts(self, state: tuple, token: int) -> bool:
        text = self.tokens.texts[token] if token < len(self.tokens) else None
        return text is not None and self.machine.feed(state, text) is not None

    def _scan(self, state: tuple) -> list[int]:
        """Every allowed token: a walk of the token trie that prunes at the first rejected character."""
        self.full_scans += 1
        allowed: list[int] = []
        stack = [(self.tokens.trie, state)]
        step = self.machine.step
        while stack:
            node, st = stack.pop()
            for ch, child in node[0].items():
                nxt = step(st, ch)
                if nxt is None:
                    continue
                allowed.extend(child[1])
                if child[0]:
                    stack.append((child, nxt))
        return allowed

    def allowed(self, state: tuple, row_scores: torch.Tensor) -> list[int]:
        if self.machine.is_done(state):
            return self.eos_ids
        k = min(self.top_k, row_scores.shape[-1])
        top = torch.topk(row_scores, k).indices.tolist()
        allowed = [t for t in top if self._accepts(state, t)]
        if not allowed:
            allowed = self._scan(state)
        if not allowed:  # cannot happen for a machine without dead ends; fail loudly if it does
            raise RuntimeError("constrained decoding reached a state with no allowed token")
        return allowed

    def draft(self, input_ids: torch.LongTensor) -> list[int]:
        """Token ids the grammar forces after ``input_ids`` (one row; ``[]`` when nothing is forced), for
        :func:`vlm.engines.loop.run` to feed at once and verify."""
        if input_ids.shape[0] != 1 or not self._states:
            return []
        self._advance(0, input_ids[0, self.prompt_length:].tolist())
        if self._ended[0]:
            return []
        state = self._states[0]
        if self.machine.is_done(state):
            return self.eos_ids[:1]
        text = self.machine.forced(state)
        return list(self.encode(text)) if text else []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch = input_ids.shape[0]
        if not self._states:
            self._states = [self.machine.start()] * batch
            self._fed = [0] * batch
            self._ended = [False] * batch
        out = torch.full_like(scores, float("-inf"))
        for row in range(batch):
            self._advance(row, input_ids[row, self.prompt_length:].tolist())
            if self._ended[row]:
                out[row, self.eos_ids[0]] = 0.0
                continue
            allowed = torch.tensor(self.allowed(self._states[row], scores[row]), dtype=torch.long)
            out[row, allowed] = scores[row, allowed]
        return out
