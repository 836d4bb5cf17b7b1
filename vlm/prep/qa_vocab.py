"""The closed word lists behind question generation from Flickr8k captions (:mod:`vlm.prep.qa`).

The parser (spaCy) finds structure: which noun a colour or a number modifies, a sentence's subject and
verb, the object of a preposition. What a word *is* (a person, an animal, a place, a colour) comes from
the lists below. They were written from the most frequent nouns, gerunds and prepositional objects of
the Flickr8k **train** captions (lemmas counted with ``en_core_web_sm`` 3.8: dog 7,646, man 6,224, ...,
every word with 30+ train mentions considered) and were never adjusted by looking at dev.

Every list maps a caption word (a lemma, lower case) to the *kind* it names, so that "puppy", "poodle"
and "dog" are one animal and a question about one is never answered "no" because a caption used another.
"""
from __future__ import annotations

# --- people: subjects of actions, "How many people ...?", "Is there a person ...?" ------------------
# lemma -> the noun a question uses for that person (singular, plural).
PEOPLE: dict[str, tuple[str, str]] = {
    w: (w, p) for w, p in (
        ("man", "men"), ("woman", "women"), ("boy", "boys"), ("girl", "girls"), ("child", "children"),
        ("kid", "kids"), ("person", "people"), ("baby", "babies"), ("toddler", "toddlers"), ("guy", "guys"),
        ("lady", "ladies"), ("gentleman", "gentlemen"), ("adult", "adults"), ("teenager", "teenagers"),
        ("teen", "teens"), ("player", "players"), ("skateboarder", "skateboarders"),
        ("snowboarder", "snowboarders"), ("skier", "skiers"), ("rider", "riders"), ("biker", "bikers"),
        ("surfer", "surfers"), ("climber", "climbers"), ("hiker", "hikers"), ("bicyclist", "bicyclists"),
        ("cyclist", "cyclists"), ("motorcyclist", "motorcyclists"), ("racer", "racers"), ("runner", "runners"),
        ("swimmer", "swimmers"), ("wrestler", "wrestlers"), ("worker", "workers"), ("officer", "officers"),
        ("jockey", "jockeys"), ("bride", "brides"), ("groom", "grooms"), ("mother", "mothers"),
        ("father", "fathers"), ("athlete", "athletes"), ("goalie", "goalies"), ("skater", "skaters"),
        ("dancer", "dancers"), ("cheerleader", "cheerleaders"), ("kayaker", "kayakers"),
        ("spectator", "spectators"), ("student", "students"), ("soldier", "soldiers"),
    )
}
PEOPLE["people"] = ("person", "people")  # spaCy keeps "people" as its own lemma
PEOPLE["men"] = ("man", "men")
PEOPLE["women"] = ("woman", "women")
PEOPLE["children"] = ("child", "children")
# Words that name several people without a number: a caption using one gives no count.
PEOPLE_GROUPS = frozenset("group crowd team family couple bunch band crew audience".split())

# --- animals: "What animal ...?", counts, presence ----------------------------------------------------
# lemma -> kind (the answer to "What animal is this?").
ANIMALS: dict[str, str] = {
    **{w: "dog" for w in ("dog", "puppy", "pup", "greyhound", "poodle", "retriever", "collie", "terrier",
                          "shepherd", "lab", "labrador", "dalmatian", "beagle", "pug", "husky", "spaniel",
                          "bulldog", "boxer", "chihuahua", "dachshund", "rottweiler", "pitbull", "hound")},
    **{w: "cat" for w in ("cat", "kitten", "kitty")},
    **{w: "horse" for w in ("horse", "pony", "foal")},
    **{w: "bird" for w in ("bird", "seagull", "gull", "pigeon", "parrot", "crow")},
    **{w: "cow" for w in ("cow", "calf", "cattle", "bull", "ox")},
    **{w: "sheep" for w in ("sheep", "lamb")},
    "duck": "duck", "goose": "goose", "swan": "swan", "goat": "goat", "pig": "pig", "chicken": "chicken",
    "deer": "deer", "camel": "camel", "elephant": "elephant", "monkey": "monkey", "squirrel": "squirrel",
    "rabbit": "rabbit", "llama": "llama", "donkey": "donkey", "fish": "fish",
}
ANIMAL_PLURALS: dict[str, str] = {
    "dog": "dogs", "cat": "cats", "horse": "horses", "bird": "birds", "cow": "cows", "sheep": "sheep",
    "duck": "ducks", "goose": "geese", "swan": "swans", "goat": "goats", "pig": "pigs", "chicken": "chickens",
    "deer": "deer", "camel": "camels", "elephant": "elephants", "monkey": "monkeys", "squirrel": "squirrels",
    "rabbit": "rabbits", "llama": "llamas", "donkey": "donkeys", "fish": "fish",
}

# --- things: colours, "What is the man holding?", presence ----------------------------------------
# lemma -> kind. spaCy lemmatises some plurals oddly ("shorts" -> "short", "jeans" -> "jean").
CLOTHING: dict[str, str] = {
    **{w: w for w in ("shirt", "jacket", "hat", "helmet", "dress", "coat", "suit", "uniform", "sweater",
                      "cap", "outfit", "jersey", "swimsuit", "vest", "skirt", "bikini", "costume", "hoodie",
                      "sweatshirt", "scarf", "wetsuit", "top", "shoe", "boot", "glove", "bandana", "apron")},
    "short": "shorts", "shorts": "shorts", "pant": "pants", "pants": "pants", "jean": "jeans", "jeans": "jeans",
    "t": "shirt",  # "t - shirt" is parsed into "t" and "shirt"; the colour lands on either
    "tshirt": "shirt",
}
OBJECTS: dict[str, str] = {
    **{w: w for w in ("ball", "car", "boat", "toy", "stick", "frisbee", "umbrella", "tent", "kayak", "raft",
                      "surfboard", "skateboard", "snowboard", "bag", "backpack", "truck", "bus", "train",
                      "motorcycle", "guitar", "camera", "kite", "sled", "scooter", "canoe", "balloon", "flag",
                      "bench", "chair", "rope", "bucket", "bottle", "cup", "racket", "bat", "leash", "book",
                      "sign", "fence", "door", "wall", "building", "house", "tree", "flower", "drink",
                      "microphone", "phone", "cellphone", "hose", "tire", "net", "hoop", "box", "blanket",
                      "towel", "newspaper", "paper", "pole", "trampoline", "swing", "slide", "ramp", "jeep",
                      "tractor", "wagon", "stroller", "cart", "carriage", "horn", "sword", "shovel")},
    "bicycle": "bicycle", "motorbike": "motorcycle",
    "bike": "bike",  # annotators call bicycles and motorcycles (dirt bikes) alike: its own kind "tennis racket": "racket",
    "ski": "skis", "skis": "skis",
}

# --- colours ------------------------------------------------------------------------------------------
# word -> the colour an answer uses (British and American spellings of grey are one colour).
COLOURS: dict[str, str] = {
    w: w for w in ("black", "white", "brown", "red", "blue", "green", "yellow", "orange", "pink", "purple",
                   "tan", "silver", "gold")
}
COLOURS.update({"grey": "gray", "gray": "gray", "golden": "gold", "blond": "blond", "blonde": "blond"})
# What a colour question may be asked about: animals, clothing and things (never a person: "a black man").
COLOURED_KINDS = frozenset(ANIMALS.values()) | frozenset(CLOTHING.values()) | frozenset(OBJECTS.values())

# --- numbers ------------------------------------------------------------------------------------------
NUMBER_WORDS: dict[str, int] = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "1": 1, "2": 2, "3": 3, "4": 4, "5": 5, "6": 6, "7": 7, "8": 8, "9": 9, "10": 10,
}
NUMBER_NAMES = {v: k for k, v in NUMBER_WORDS.items() if k.isalpha()}
# Words that make a count vague: "another dog", "several dogs", "many", ...
VAGUE_DETERMINERS = frozenset("another other several many some few lot lots multiple various numerous".split())

# --- places -------------------------------------------------------------------------------------------
# Objects of these prepositions may say where the scene is.
PLACE_PREPOSITIONS = frozenset(
    "in on at near by through along across into down over under inside outside beside onto around up "
    "within towards toward".split()
)
# lemma -> the place an answer names.
PLACES: dict[str, str] = {
    w: w for w in ("water", "grass", "field", "snow", "beach", "street", "pool", "park", "sand", "sidewalk",
                   "hill", "road", "ocean", "path", "lake", "mountain", "yard", "track", "forest", "shore",
                   "river", "playground", "lawn", "city", "court", "trail", "stream", "pond", "backyard",
                   "desert", "stage", "gym", "dirt", "mud", "room", "kitchen", "store", "restaurant", "garden",
                   "slope", "dock", "alley", "racetrack", "rink", "arena", "stadium", "sea", "waterfall",
                   "fountain", "woods", "creek", "swamp", "meadow", "cave", "cliff", "building", "house",
                   "market", "bar", "church", "office", "classroom", "parade", "tunnel", "bridge", "puddle")
}
PLACES.update({"wood": "woods", "sea": "ocean", "surf": "ocean", "wave": "ocean", "seashore": "shore",
               "parking": "parking lot", "lot": "parking lot"})

# --- sports -------------------------------------------------------------------------------------------
SPORTS = frozenset(
    "soccer football basketball baseball tennis volleyball hockey rugby lacrosse golf softball cricket polo".split()
)

# --- verbs --------------------------------------------------------------------------------------------
# Verbs that do not answer "What is the man doing?" ("wearing a hat" describes, "being" says nothing).
NON_ACTIONS = frozenset("be have wear do get try attempt seem appear make let dress".split())
HOLD_VERBS = frozenset({"hold", "carry"})
