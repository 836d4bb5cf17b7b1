"""Flickr8k captions -> short-answer visual questions (COCO-QA style): stage-2 records and a dev VQA file.

Questions come only from what an image's captions agree on (:func:`vlm.prep.qa_facts.image_facts`), so
the captions support every answer. Types (the ``type`` field of each question):

- ``count``: "How many dogs are there?" -> "three" (people together or a person noun, each animal; only
  :data:`KEEP_COUNT_ONE` of the questions whose answer is "one");
- ``colour``: "What colour is the dog?" / "What color is the man's shirt?" -> "black and white";
- ``animal``: "What animal is in the picture?" -> "dog";  ``sport``: "What sport is being played?" -> "hockey";
- ``action``: "What is the man doing?" -> "riding a bike";  ``holding``: "What is the girl holding?" -> "ball";
- ``place``: "Where is the dog?" -> "beach";
- ``yes/no``: "Is there a cat in the picture?" -> "no": per image one "yes" about something 2+ captions
  name and one "no" about something none names (:class:`YesNoSampler`: drawn so that each thing is about
  as often "yes" as "no" over train), never a thing the scene makes likely but the captions may leave out
  (:data:`NEGATIVE_BLOCKERS`: no "Is there a car?" on a street); when a colour is agreed, one pair "Is the
  dog black?" -> "yes" and "Is the dog brown?" -> "no" with a colour no caption says of it.

Answers are short (a word or a few), as in VQA. A question may accept several answers (the dev file joins
them with ``<OR>``, which ``vlm eval vqa`` reads): other colours or places 2+ captions give, the bare verb
of an action. Training uses the first.

Outputs in ``out`` (``{split}`` = ``train``, ``dev``):

- ``flickr8k_qa_stage2_{split}.json``: LLaVA records, one per image and ``turns`` questions (more records
  for more questions), the image in the first turn; the question is followed by LLaVA-1.5's short-answer
  instruction (:data:`vlm.messages.SHORT_ANSWER`) in a ``suffix_share`` of the turns, bare otherwise;
- ``flickr8k_vqa_{split}.jsonl``: ``{"id", "image", "question", "answer", "type"}`` per question in the
  format of ``vlm eval vqa`` (image paths relative to ``out``); each image's questions in a seeded order,
  then round by round (each image's first question, then each image's second, ...), so that ``--limit N``
  covers many images and every type;
- ``flickr8k_qa_summary.json``: counts by type and split, yes/no balance, timings.
"""
from __future__ import annotations

import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .io import image_ref, write_checked, write_json
from .prompts import rng_for
from .qa_facts import PEOPLE_KEY, PERSON, ImageFacts, caption_facts, image_facts, load_parser
from .qa_vocab import ANIMAL_PLURALS, CLOTHING, COLOURS, NUMBER_NAMES, PEOPLE
from vlm.records import EMPTY_CAPTION, MALFORMED, ImageChecker, RecordAccounting, RecordProblem, check_pair, read_jsonl

SPLITS = ("train", "dev")
IMG = "<image>\n"
OR = " <OR> "

# Things asked about in yes/no questions ("Is there a ...?"): annotators name them when they are there.
YES_NO_THINGS: dict[str, str] = {
    "person": "a person", "dog": "a dog", "cat": "a cat", "horse": "a horse", "bird": "a bird", "cow": "a cow",
    "sheep": "a sheep", "duck": "a duck", "goat": "a goat", "bicycle": "a bicycle", "motorcycle": "a motorcycle",
    "car": "a car", "boat": "a boat", "ball": "a ball", "guitar": "a guitar", "umbrella": "an umbrella",
    "skateboard": "a skateboard", "surfboard": "a surfboard", "kite": "a kite", "tent": "a tent",
    "frisbee": "a frisbee", "train": "a train", "bus": "a bus", "truck": "a truck", "snowboard": "a snowboard",
    "camera": "a camera", "balloon": "a balloon", "kayak": "a kayak",
}
_STREET = frozenset("street road city sidewalk traffic parking lot race track highway town building".split())
_WATER = frozenset("water lake river ocean beach shore pond stream sea dock pool surf wave".split())
_GAMES = frozenset("soccer football basketball baseball tennis volleyball hockey rugby lacrosse game play "
                   "kick throw catch bounce field court fetch".split())
# A "no" is never asked about a thing when a caption has one of these lemmas: the scene makes the thing
# likely, and annotators may not have named it.
NEGATIVE_BLOCKERS: dict[str, frozenset] = {
    "car": _STREET, "bus": _STREET, "truck": _STREET, "motorcycle": _STREET | {"race", "dirt"},
    "bicycle": _STREET | {"bike", "trail", "ramp"}, "train": _STREET | {"station", "subway"},
    "boat": _WATER, "kayak": _WATER, "surfboard": _WATER, "ball": _GAMES, "frisbee": _GAMES | {"park", "grass"},
    "kite": frozenset({"beach", "sky", "air"}), "bird": frozenset({"sky", "beach", "water", "lake", "ocean"}),
    "camera": frozenset({"photo", "picture", "photograph", "pose", "tourist"}),
    "duck": _WATER, "umbrella": frozenset({"rain", "beach"}), "snowboard": frozenset({"snow", "slope", "ski"}),
}

COUNT_Q = ("How many {noun} are there?", "How many {noun} are in the picture?", "How many {noun} can you see?",
           "How many {noun} are in the image?", "How many {noun} are shown?")
COLOUR_Q = ("What colour is {thing}?", "What color is {thing}?", "What is the colour of {thing}?",
            "What is the color of {thing}?")
COLOUR_PLURAL_Q = ("What colour are {thing}?", "What color are {thing}?")
ANIMAL_Q = ("What animal is in the picture?", "What animal is this?", "What kind of animal is shown?",
            "What animal can you see?", "Which animal is in the image?")
SPORT_Q = ("What sport is being played?", "What sport is this?", "Which sport is shown?",
           "What sport are they playing?")
ACTION_Q = ("What is {subj} doing?",)
ACTION_PLURAL_Q = ("What are {subj} doing?",)
HOLD_Q = {"hold": ("What is {subj} holding?", "What does {subj} hold?"),
          "carry": ("What is {subj} carrying?", "What does {subj} carry?")}
HOLD_PLURAL_Q = {"hold": ("What are {subj} holding?",), "carry": ("What are {subj} carrying?",)}
PLACE_Q = ("Where is {subj}?", "Where is this?", "Where was this picture taken?", "Where is this happening?")
PLACE_PLURAL_Q = ("Where are {subj}?", "Where is this?", "Where was this picture taken?")
THERE_Q = ("Is there {thing} in the picture?", "Is there {thing} in the image?", "Is there {thing}?",
           "Can you see {thing}?", "Does the picture show {thing}?")
IS_COLOUR_Q = ("Is {thing} {colour}?",)
ARE_COLOUR_Q = ("Are {thing} {colour}?",)

# Most Flickr8k photos show one person or one dog: "one" would answer 79% of the count questions. Only this
# share of them is kept, so that "one" answers about half and counting has to look.
KEEP_COUNT_ONE = 0.3

TYPES = ("count", "colour", "animal", "sport", "action", "holding", "place", "yes/no")


@dataclass(frozen=True)
class QA:
    type: str
    question: str
    answer: str
    also: tuple[str, ...] = ()  # other accepted answers

    def reference(self) -> str:
        return OR.join((self.answer, *self.also))


@dataclass
class QAPrepConfig:
    src: Path
    out: Path
    seed: int = 0
    limit: int | None = None  # at most this many images per split
    turns: int = 4  # questions per training record (an image with more gets more records)
    suffix_share: float = 0.75  # share of training questions followed by the short-answer instruction
    absolute_paths: bool = False
    decode_images: bool = True
    strict: bool = False

    def __post_init__(self) -> None:
        self.src, self.out = Path(self.src), Path(self.out)
        if self.turns < 1:
            raise ValueError(f"turns must be at least 1, got {self.turns}")
        if not 0.0 <= self.suffix_share <= 1.0:
            raise ValueError(f"suffix_share must be in [0, 1], got {self.suffix_share}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")


@dataclass
class YesNoSampler:
    """Chooses the things of an image's "Is there ...?" pair so that each thing is about as often "yes" as
    "no" over the train split (a blind model then learns nothing from which thing is asked).

    The "yes" thing is drawn among the things the captions name, weighted by ``1 / present[k]`` (rare things
    first). A thing that fewer train images could take as a "no" than are expected to take it as a "yes"
    (a person: only images where no one is named) keeps its pair only ``eligible[k] / yes[k]`` of the time.
    The "no" thing is drawn among the things no caption names and no blocker rules out, weighted by
    ``yes[k] * keep[k] / eligible[k]``. Every table is fitted on train images only.
    """

    present: dict[str, int] = field(default_factory=dict)
    no_weight: dict[str, float] = field(default_factory=dict)
    keep: dict[str, float] = field(default_factory=dict)  # chance a pair whose "yes" is this thing is asked

    @classmethod
    def fit(cls, facts: list[ImageFacts]) -> "YesNoSampler":
        present = Counter(k for f in facts for k in _present_things(f))
        sampler = cls(dict(present), {}, {})
        expected_yes: Counter = Counter()
        eligible: Counter = Counter()
        for f in facts:
            things = sorted(_present_things(f))
            total = sum(1 / present[k] for k in things)
            for k in things:
                expected_yes[k] += (1 / present[k]) / total
            eligible.update(sampler._negatives(f, all_things=present))
        # a thing that can be a "no" on fewer images than it is a "yes" (people) is asked as a "yes" less often
        sampler.keep = {k: min(1.0, eligible[k] / expected_yes[k]) for k in expected_yes}
        sampler.no_weight = {k: expected_yes[k] * sampler.keep[k] / eligible[k]
                             for k in present if eligible[k] and expected_yes[k]}
        return sampler

    def _negatives(self, facts: ImageFacts, all_things=None) -> list[str]:
        things = self.no_weight if all_things is None else all_things
        return [k for k in sorted(things)
                if k not in facts.mentions and not (NEGATIVE_BLOCKERS.get(k, frozenset()) & facts.lemmas)]

    def draw(self, facts: ImageFacts, rng: random.Random) -> tuple[str, str] | None:
        """``(yes thing, no thing)`` for one image, or ``None`` when either cannot be drawn (or the pair is
        skipped to keep its "yes" thing balanced)."""
        here = sorted(k for k in _present_things(facts) if k in self.present)
        negatives = self._negatives(facts)
        if not here or not negatives:
            return None
        yes = rng.choices(here, weights=[1 / self.present[k] for k in here])[0]
        if rng.random() >= self.keep.get(yes, 1.0):
            return None
        no = rng.choices(negatives, weights=[self.no_weight[k] for k in negatives])[0]
        return yes, no


def _present_things(facts: ImageFacts) -> set[str]:
    """Things a "yes" may be about: named by 2+ captions (one caption's "balloon" may be the others' "ball")."""
    return {k for k in facts.mentions if k in YES_NO_THINGS and facts.support[k] >= 2}


def _plural_noun(key: str) -> str:
    if key == PEOPLE_KEY:
        return "people"
    if key in ANIMAL_PLURALS:
        return ANIMAL_PLURALS[key]
    return PEOPLE.get(key, (key, key + "s"))[1]


def _thing(kind: str, owner: str | None) -> tuple[str, bool]:
    """``("the man's shirt", False)``; the bool says the noun is plural (shorts, pants, jeans)."""
    plural = kind in ("shorts", "pants", "jeans", "skis")
    return (f"the {owner}'s {kind}" if owner else f"the {kind}"), plural


def questions(facts: ImageFacts, rng: random.Random, yes_no: YesNoSampler) -> list[QA]:
    """Every question of one image (see the module docstring), phrased with seeded choices."""
    out: list[QA] = []
    pick = rng.choice
    # counts: people (all of them, or those a person noun names) and each animal with an agreed count
    people = ([PEOPLE_KEY] if PEOPLE_KEY in facts.counts else []) + sorted(
        k for k in facts.counts if k in {v[0] for v in PEOPLE.values()} and k != PERSON)
    count_keys = [rng.choice(people)] if people else []
    count_keys += sorted(k for k in facts.counts if k in ANIMAL_PLURALS)
    for key in count_keys:
        n = facts.counts[key]
        if n == 1 and rng.random() >= KEEP_COUNT_ONE:
            continue
        if n in NUMBER_NAMES:
            out.append(QA("count", pick(COUNT_Q).format(noun=_plural_noun(key)), NUMBER_NAMES[n], (str(n),)))
    # colours
    subject_plural = facts.subject.plural if facts.subject else False
    colour_checks = []
    for kind in sorted(facts.colours):
        answer, also = facts.colours[kind]
        owner = facts.colour_owner.get(kind) if kind in CLOTHING.values() else None
        thing, plural = _thing(kind, owner)
        if kind in ANIMAL_PLURALS and kind in facts.several:
            if facts.counts.get(kind, 0) < 2:
                continue  # some caption says several and no count is agreed: which one?
            thing, plural = f"the {ANIMAL_PLURALS[kind]}", True
        if owner and subject_plural:
            continue
        out.append(QA("colour", pick(COLOUR_PLURAL_Q if plural else COLOUR_Q).format(thing=thing), answer, tuple(also)))
        said = facts.all_colours.get(kind, set())
        wrong = sorted(set(COLOURS.values()) - said - {"blond", "gold", "silver", "tan"})
        if wrong:
            template = ARE_COLOUR_Q if plural else IS_COLOUR_Q
            colour_checks.append([QA("yes/no", pick(template).format(thing=thing, colour=answer.split(" and ")[0]), "yes"),
                                  QA("yes/no", pick(template).format(thing=thing, colour=rng.choice(wrong)), "no")])
    if colour_checks:  # one "Is the dog black?" pair per image
        out.extend(rng.choice(colour_checks))
    if facts.animal:
        out.append(QA("animal", pick(ANIMAL_Q), facts.animal[0], tuple(facts.animal[1])))
    if facts.sport:
        out.append(QA("sport", pick(SPORT_Q), facts.sport))
    subj = facts.subject
    if subj is not None:
        if facts.action:
            template = ACTION_PLURAL_Q if subj.plural else ACTION_Q
            out.append(QA("action", pick(template).format(subj=subj.phrase()), facts.action[0], tuple(facts.action[1])))
        if facts.held:
            verb, answer, also = facts.held
            template = (HOLD_PLURAL_Q if subj.plural else HOLD_Q)[verb]
            out.append(QA("holding", pick(template).format(subj=subj.phrase()), answer, tuple(also)))
    if facts.place:
        template = PLACE_PLURAL_Q if subj is not None and subj.plural else PLACE_Q
        if subj is None:
            template = tuple(t for t in template if "{subj}" not in t)
        out.append(QA("place", pick(template).format(subj=subj.phrase() if subj else ""), facts.place[0],
                      tuple(facts.place[1])))
    pair = yes_no.draw(facts, rng)
    if pair is not None:
        out.append(QA("yes/no", pick(THERE_Q).format(thing=YES_NO_THINGS[pair[0]]), "yes"))
        out.append(QA("yes/no", pick(THERE_Q).format(thing=YES_NO_THINGS[pair[1]]), "no"))
    return out


def training_records(key: str, image: str, qas: list[QA], seed: int, turns: int, suffix_share: float) -> list[dict]:
    """LLaVA records of one image: its questions in a seeded order, ``turns`` to a record, the image in each
    record's first turn; a ``suffix_share`` of the questions carry the short-answer instruction."""
    from vlm.messages import SHORT_ANSWER

    rng = rng_for(seed, key, "qa-records")
    order = list(qas)
    rng.shuffle(order)
    out = []
    for r, start in enumerate(range(0, len(order), turns)):
        conversation = []
        for j, qa in enumerate(order[start:start + turns]):
            prompt = f"{qa.question}\n{SHORT_ANSWER}" if rng.random() < suffix_share else qa.question
            conversation.append({"from": "human", "value": (IMG if j == 0 else "") + prompt})
            conversation.append({"from": "gpt", "value": qa.answer})
        out.append({"id": f"flickr8k-{key}-qa-{r}", "image": image, "conversations": conversation})
    return out


def _read_split(src: Path, split: str, limit: int | None, acc: RecordAccounting, images: ImageChecker) -> list[tuple]:
    """``(key, image path, captions)`` of the good rows of a split; bad rows are counted."""
    path = src / f"{split}.jsonl"
    out = []
    for lineno, row in read_jsonl(path, strict=False, lines=limit, missing="is --src the flickr8k folder?"):
        i = lineno - 1
        try:
            if row is None:
                raise ValueError("the line is not valid JSON")
            image, captions = row["image"], row["captions"]
            if not isinstance(image, str) or not isinstance(captions, list):
                raise TypeError("not an {image, captions} object")
        except (KeyError, TypeError, ValueError) as exc:
            acc.reject(RecordProblem(MALFORMED, f"line {i + 1}: {exc}"), f"#{i}", str(path))
            continue
        key = Path(image).stem
        good = [c for c in captions if isinstance(c, str) and c.strip()]
        if len(good) < len(captions):
            acc.reject(RecordProblem(EMPTY_CAPTION, f"{len(captions) - len(good)} empty caption(s) dropped"), key, str(path))
        problem = check_pair({"image": image, "captions": good}, src, images=images)
        if problem:
            acc.reject(problem, key, str(path))
            continue
        out.append((key, src / image, good))
    return out


def split_facts(rows: list[tuple], nlp, progress: bool = False, desc: str = "") -> list[ImageFacts]:
    """The agreed facts of each ``(key, image, captions)`` row (captions parsed in one batched pass)."""
    flat = [c for _, _, captions in rows for c in captions]
    docs = nlp.pipe(flat, batch_size=256)
    if progress:
        from tqdm import tqdm

        docs = tqdm(docs, total=len(flat), desc=f"parsing {desc} captions", unit="caption")
    parsed = [caption_facts(d) for d in docs]
    out, pos = [], 0
    for _, _, captions in rows:
        out.append(image_facts(parsed[pos:pos + len(captions)]))
        pos += len(captions)
    return out


def _round_robin(per_image: list[list[dict]]) -> list[dict]:
    rounds = max((len(q) for q in per_image), default=0)
    return [q[r] for r in range(rounds) for q in per_image if r < len(q)]


def prepare_qa(cfg: QAPrepConfig, progress: bool = False) -> dict:
    """Writes the QA training records and VQA files of train and dev into ``cfg.out``; returns the summary."""
    t0 = time.perf_counter()
    acc = RecordAccounting(strict=cfg.strict)
    images = ImageChecker(decode=cfg.decode_images)
    cfg.out.mkdir(parents=True, exist_ok=True)
    nlp = load_parser()
    rows = {split: _read_split(cfg.src, split, cfg.limit, acc, images) for split in SPLITS}
    facts = {split: split_facts(rows[split], nlp, progress, split) for split in SPLITS}
    parse_seconds = time.perf_counter() - t0
    yes_no = YesNoSampler.fit(facts["train"])  # never fitted on dev
    files: dict[str, str] = {}
    by_type: dict[str, dict[str, int]] = {}
    answers: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        records, vqa_rows = [], []
        types, answered = Counter(), Counter()
        for (key, path, _), f in zip(rows[split], facts[split]):
            qas = questions(f, rng_for(cfg.seed, key, "qa"), yes_no)
            image = image_ref(path, cfg.out, absolute=cfg.absolute_paths)
            records.extend(training_records(key, image, qas, cfg.seed, cfg.turns, cfg.suffix_share))
            rows_of_image = [{"id": f"{key}-q{i}", "image": image, "question": qa.question,
                              "answer": qa.reference(), "type": qa.type} for i, qa in enumerate(qas)]
            rng_for(cfg.seed, key, "qa-order").shuffle(rows_of_image)  # a --limit prefix mixes the types
            vqa_rows.append(rows_of_image)
            types.update(qa.type for qa in qas)
            answered.update(qa.answer for qa in qas if qa.type == "yes/no")
        files[f"stage2_{split}"] = str(write_checked(cfg.out, f"flickr8k_qa_stage2_{split}.json", records, images, acc))
        vqa_file = cfg.out / f"flickr8k_vqa_{split}.jsonl"
        ordered = _round_robin(vqa_rows)
        vqa_file.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ordered), encoding="utf-8")
        files[f"vqa_{split}"] = str(vqa_file)
        by_type[split] = {t: types[t] for t in TYPES if types[t]}
        by_type[split]["total"] = sum(types.values())
        answers[split] = dict(answered)
    summary = {
        "source": str(cfg.src),
        "out": str(cfg.out),
        "config": {"seed": cfg.seed, "limit": cfg.limit, "turns": cfg.turns, "suffix_share": cfg.suffix_share,
                   "absolute_paths": cfg.absolute_paths},
        "images": {split: len(rows[split]) for split in SPLITS},
        "questions_by_type": by_type,
        "yes_no_answers": answers,
        "yes_no_weights": {"present": yes_no.present, "keep": {k: round(v, 4) for k, v in yes_no.keep.items()},
                           "no": {k: round(v, 4) for k, v in yes_no.no_weight.items()}},
        "files": files,
        **acc.summary(),
        "parse_seconds": round(parse_seconds, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json(cfg.out / "flickr8k_qa_summary.json", summary)
    return summary
