"""Text normalisation used by the metrics: SROIE whitespace rules, VQA answer rules and question types, caption tokens.

All functions are pure and documented with the exact rules, so a score can be reproduced by hand.
"""
from __future__ import annotations

import re
import string

OR = "<OR>"

_WS = re.compile(r"\s+")


def normalise_whitespace(text: str | None) -> str:
    """SROIE task 3 comparison form: runs of whitespace become one space, ends stripped.

    Case and punctuation are kept: the SROIE keys are compared as exact strings. ``None`` becomes ``""``.
    """
    if text is None:
        return ""
    return _WS.sub(" ", str(text)).strip()


# --- VQA answers -------------------------------------------------------------------------------
# The rules of the official VQA evaluation (Antol et al. 2015; "vqaEval.py"), written afresh:
# lower case; contractions written without an apostrophe get it back ("dont" -> "don't");
# punctuation removed (a comma between digits is dropped, "1,000" -> "1000"; a period is kept only
# inside a number, "2.5"); number words zero..ten and "none" become digits; the articles a/an/the go.

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "couldve": "could've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "im": "i'm", "ive": "i've", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "lets": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "shant": "shan't", "shed": "she'd", "shes": "she's", "shouldnt": "shouldn't",
    "shouldve": "should've", "thats": "that's", "thered": "there'd", "theres": "there's", "theyd": "they'd",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "wasnt": "wasn't", "wed": "we'd",
    "weve": "we've", "werent": "weren't", "whats": "what's", "whered": "where'd", "wheres": "where's",
    "whod": "who'd", "wholl": "who'll", "whos": "who's", "whove": "who've", "wont": "won't",
    "wouldnt": "wouldn't", "wouldve": "would've", "yall": "y'all", "youd": "you'd", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_INNER_PERIOD = re.compile(r"(?<=\d)\.(?=\d)")
_PUNCT = re.compile("[" + re.escape(string.punctuation.replace("'", "")) + "]")


def normalise_answer(text: str | None) -> str:
    """Canonical form of a short answer (VQA rules above). ``"Two dogs."`` -> ``"2 dogs"``."""
    if text is None:
        return ""
    text = _WS.sub(" ", str(text)).strip().lower()
    text = _DIGIT_COMMA.sub("", text)
    text = _INNER_PERIOD.sub("\0", text)  # protect decimal points
    text = _PUNCT.sub(" ", text).replace("\0", ".")
    words = []
    for word in text.split():
        word = word.strip("'")  # quotes, not apostrophes inside a word
        if not word:
            continue
        word = _CONTRACTIONS.get(word, word)
        word = _NUMBER_WORDS.get(word, word)
        if word in _ARTICLES:
            continue
        words.append(word)
    return " ".join(words)


def split_alternatives(answer: str) -> list[str]:
    """``"2 <OR> two"`` -> ``["2", "two"]``: every accepted answer, empty ones dropped."""
    return [a.strip() for a in str(answer).split(OR) if a.strip()]


# --- captions -----------------------------------------------------------------------------------
_CAPTION_DROP = re.compile(r"[^\w\s']|_")


def simple_caption_tokens(text: str) -> str:
    """Fallback caption tokenisation when Java (for the PTB tokenizer) is missing.

    Lower case, every character that is not a letter, digit, apostrophe or whitespace becomes a space,
    whitespace collapsed. Close to what the PTB tokenizer + punctuation removal of coco-caption gives on
    plain English captions (it differs on clitics: PTB splits "dog's" into "dog 's").
    """
    return _WS.sub(" ", _CAPTION_DROP.sub(" ", str(text).lower())).strip()


def question_type(question: str) -> str:
    """A coarse question type: "yes/no", "number", "color", or the question's first two words."""
    q = normalise_answer(question)
    words = q.split()
    if not words:
        return "other"
    if q.startswith(("how many", "how much")) or words[0] == "number":
        return "number"
    if "color" in words or "colour" in words:
        return "color"
    if words[0] in {"is", "are", "was", "were", "do", "does", "did", "can", "could", "will", "would",
                    "should", "has", "have", "had", "may", "might", "must", "shall", "isn't", "aren't",
                    "don't", "doesn't"}:
        return "yes/no"
    return " ".join(words[:2])
