"""The prompt pools used to build training records, and seeded choice among them.

Every choice is made with :func:`rng_for`, a ``random.Random`` seeded from ``(seed, record key, purpose)``,
so a record's prompts depend only on the seed and the record itself: not on the order of records,
on ``--limit`` or on what else was prepared.
"""
from __future__ import annotations

import random
from typing import Sequence, TypeVar

T = TypeVar("T")

# Stage 1 (alignment): short "describe" requests answered by one human caption.
CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe the image briefly.",
    "Give a short description of this image.",
    "Write a one-sentence caption for this photo.",
    "Summarize the picture in one sentence.",
    "Provide a brief caption for the image.",
    "Describe this photo in a few words.",
    "Give a concise description of what you see.",
    "Caption this image.",
    "Share a brief description of the picture.",
    "What does this image show? Answer in one sentence.",
    "Offer a short summary of the photo.",
    "Write a brief caption for this picture.",
)

# Stage 2: questions whose honest answer is a caption of the whole scene.
QUESTION_PROMPTS: tuple[str, ...] = (
    "What is happening in this picture?",
    "What do you see in this image?",
    "What is going on in this photo?",
    "What is shown in this image?",
    "Can you tell me what this picture shows?",
    "What is in this photo?",
    "What does this photo depict?",
    "What is this image about?",
    "Describe what is happening here.",
    "Tell me what you see.",
)

# Stage 2, second turn of a two-turn record (the image is already in the first turn).
FOLLOWUP_PROMPTS: tuple[str, ...] = (
    "Can you describe it in other words?",
    "Describe the image another way.",
    "How else would you describe this scene?",
    "Say that differently, please.",
    "Give me another short description of the picture.",
    "Can you describe the photo once more, differently?",
)

# Stage 2: "in detail" requests, answered by two or three consistent human captions joined.
DETAIL_PROMPTS: tuple[str, ...] = (
    "Describe the image in detail.",
    "Give a detailed description of this picture.",
    "Describe everything you see in this photo.",
    "Can you describe this scene more fully?",
    "Tell me more about this image.",
    "Provide a detailed description of the image.",
)

# SROIE stage 1: read the whole receipt.
READ_PROMPTS: tuple[str, ...] = (
    "Read all the text in this receipt.",
    "Transcribe the text of this receipt, line by line.",
    "What text is written on this receipt?",
    "Write out the contents of this document.",
    "Extract all of the text from this image.",
    "Transcribe this receipt.",
    "Read the receipt from top to bottom.",
)

# SROIE stage 2, OCR-grounded: "what does it say?" -> the OCR text.
SAY_PROMPTS: tuple[str, ...] = (
    "What does it say?",
    "What is written here?",
    "What does this receipt say?",
    "Read the text in this image.",
    "What text is in the picture?",
)

# SROIE stage 2: one field, one short answer.
FIELD_QUESTIONS: dict[str, tuple[str, ...]] = {
    "company": (
        "What is the name of the company?",
        "Which store issued this receipt?",
        "Who is the vendor on this receipt?",
        "What is the company name on this receipt?",
    ),
    "date": (
        "What is the date of this receipt?",
        "When was this purchase made?",
        "What date is on the receipt?",
        "What is the date?",
    ),
    "address": (
        "What is the address of the store?",
        "Where is this shop located?",
        "What address is printed on this receipt?",
        "What is the address?",
    ),
    "total": (
        "What is the total?",
        "What is the total amount?",
        "How much was paid in total?",
        "What is the grand total on this receipt?",
    ),
}


def rng_for(seed: int, key: str, purpose: str) -> random.Random:
    """A ``random.Random`` fixed by ``seed``, the record ``key`` and the ``purpose`` of the draw."""
    return random.Random(f"{seed}|{key}|{purpose}")


def pick(rng: random.Random, pool: Sequence[T]) -> T:
    return pool[rng.randrange(len(pool))]
