"""Prompts of the text-only chats (:mod:`vlm.prep.textonly`), written for vlm (no copied text).

- :func:`train_prompts`: a few hundred varied requests (greetings, facts, arithmetic, definitions, short
  writing, how-to, lists, language questions); the base LLM answers them and stage 2 learns its answers.
- :data:`DEV_QUESTIONS`: held-out short-answer questions with reference answers (``<OR>`` alternatives),
  none of them among the training prompts: the text-only dev set on which the fine-tuned model (blind)
  must score at least what the base LLM scores.

Arithmetic prompts are drawn with a fixed seed from disjoint operand ranges for train and dev.
"""
from __future__ import annotations

import random

GREETINGS = (
    "Hi!", "Hello, how are you today?", "Good morning!", "Hey there, what's up?", "Thanks for your help.",
    "Who are you?", "What can you do?", "Can you help me with something?", "Good night!", "Nice to meet you.",
    "How is your day going?", "Tell me a little about yourself.", "Are you a robot?", "Thank you so much!",
    "I'm bored. Any ideas?", "Goodbye!", "What should I call you?", "Can we chat for a bit?",
)
FACTS = (
    "What is the capital of Italy?", "What is the capital of Spain?", "What is the capital of Germany?",
    "What is the capital of Canada?", "What is the largest planet in our solar system?",
    "Why is the sky blue?", "What is photosynthesis?", "How many continents are there?",
    "What is the boiling point of water?", "Who painted the Mona Lisa?", "What is the tallest mountain on Earth?",
    "What do bees make?", "What is the chemical symbol for gold?",
    "What is the longest river in the world?", "How many planets are in the solar system?",
    "What causes rain?", "What is gravity?", "What do plants need to grow?", "Why do leaves change colour in autumn?",
    "What is the moon made of?", "How far is the Sun from the Earth?", "What language is spoken in Brazil?",
    "What is the smallest prime number?", "What is the main ingredient of bread?", "Why do we have seasons?",
    "What is an atom?", "What is the fastest land animal?", "How many bones are in the human body?",
    "What is a rainbow?", "Who invented the telephone?", "What is the speed of light?",
    "What are the three states of matter?", "Why do cats purr?", "What is a volcano?",
    "How do airplanes fly?", "What is the heart's job?", "What is the largest desert in the world?",
    "What is DNA?", "How many strings does a violin have?", "What is the currency of Japan?",
    "What is the capital of Egypt?", "What is the largest animal on Earth?", "What do caterpillars turn into?",
    "What is the hottest planet?", "Why is the ocean salty?", "What is an eclipse?", "What is electricity?",
)
WORDS = (
    "ocean", "library", "friendship", "volcano", "umbrella", "democracy", "gravity", "harvest", "bridge",
    "curiosity", "recipe", "orbit", "forest", "courage", "museum", "island", "calendar", "habit", "planet",
    "glacier", "kindness", "tradition", "engine", "harbor", "patience", "festival", "desert", "compass",
    "honesty", "telescope", "village", "melody", "journey", "puzzle", "garden", "thunder", "lantern",
    "meadow", "budget", "canyon",
)
DEFINE_TEMPLATES = ("What does the word '{w}' mean?", "Define {w}.", "Explain what a {w} is in one sentence.",
                    "What is the meaning of '{w}'?")
TOPICS = (
    "the sea", "a rainy day", "a lost cat", "friendship", "autumn leaves", "a busy city", "the moon",
    "a mountain hike", "breakfast", "a birthday party", "snow", "a small village", "the first day of school",
    "a garden", "a train journey", "the stars", "a lighthouse", "a summer afternoon", "a dog at the park",
    "an old tree", "a river", "a thunderstorm", "a bakery", "a kite", "the desert at night",
)
WRITE_TEMPLATES = (
    "Write a short poem about {t}.", "Write one sentence about {t}.", "Write a haiku about {t}.",
    "Give me a title for a story about {t}.", "Write a two-sentence story about {t}.",
    "Describe {t} in a few words.",
)
HOW_TO = (
    "How do I boil an egg?", "How can I learn to swim?", "How do I make a cup of tea?",
    "How can I sleep better?", "How do I plant a tree?", "How do I tie my shoes?",
    "How can I save money?", "How do I write a good email?", "How can I learn a new language?",
    "How do I make a paper airplane?", "How do I clean a window?", "How can I stay focused while studying?",
    "How do I start running?", "How do I bake cookies?", "How can I be more organised?",
    "How do I change a light bulb?", "How do I care for a houseplant?", "How can I make new friends?",
    "How do I prepare for a job interview?", "How do I keep my phone battery healthy?",
    "How do I make a sandwich?", "How can I reduce stress?", "How do I ride a bicycle?",
    "How do I wash my hands properly?", "How do I read a map?", "How can I improve my handwriting?",
    "How do I cook rice?", "How can I drink more water during the day?",
)
LISTS = (
    "Name three fruits.", "List four colours.", "Give me three tips for studying.", "Name five animals.",
    "List three things you can do on a rainy day.", "Name three musical instruments.",
    "Give me two ideas for a healthy breakfast.", "List the days of the week.", "Name three sports.",
    "What are some good habits?", "Name three vegetables.", "List three ways to exercise at home.",
    "Give me three names for a pet dog.", "Name four things you find in a kitchen.",
    "List three birds.", "Suggest three books for children.", "Name three jobs.",
    "Give me three ideas for a weekend trip.",
)
LANGUAGE = (
    "Correct this sentence: 'She go to school every day.'", "What is the plural of 'mouse'?",
    "What is the opposite of 'hot'?", "What is a synonym for 'happy'?", "Translate 'hello' into Spanish.",
    "What is the past tense of 'run'?", "Is 'their' or 'there' correct in: '___ car is red'?",
    "What is a noun?", "What is a verb?", "Use the word 'bright' in a sentence.",
    "What is the opposite of 'early'?", "Fix the spelling: 'recieve'.", "What is the plural of 'child'?",
    "What rhymes with 'cat'?", "Translate 'thank you' into French.", "What is an adjective?",
    "Make this sentence shorter: 'At this point in time we are going to start the meeting now.'",
    "What is the past tense of 'swim'?", "Give me a word that starts with 'z'.",
)
REASONING = (
    "If I have three apples and eat one, how many are left?", "Which is heavier, a kilogram of feathers or a "
    "kilogram of iron?", "What comes next: 2, 4, 6, 8?", "If today is Monday, what day is tomorrow?",
    "Is a tomato a fruit or a vegetable?", "What is half of 50?", "Which is bigger, 0.5 or 0.25?",
    "How many minutes are in two hours?", "If a train leaves at 3 pm and the trip takes 2 hours, when does it "
    "arrive?", "What is 10 percent of 200?", "Sort these numbers: 9, 2, 7, 4.",
    "Which month comes after March?",
)

# Held-out short-answer questions with references (scored by ``vlm eval vqa``; several answers joined with <OR>).
DEV_QUESTIONS: tuple[tuple[str, str, str], ...] = (
    # (type, question, answer)
    ("fact", "What is the capital of France?", "Paris"),
    ("fact", "What is the capital of Japan?", "Tokyo"),
    ("fact", "What is the capital of the United Kingdom?", "London"),
    ("fact", "What is the capital of Russia?", "Moscow"),
    ("fact", "What is the capital of China?", "Beijing"),
    ("fact", "What planet do we live on?", "Earth"),
    ("fact", "How many days are in a week?", "7"),
    ("fact", "How many legs does a spider have?", "8"),
    ("fact", "How many legs does a dog have?", "4"),
    ("fact", "How many months are in a year?", "12"),
    ("fact", "What is the largest ocean on Earth?", "Pacific <OR> Pacific Ocean"),
    ("fact", "Who wrote Romeo and Juliet?", "Shakespeare <OR> William Shakespeare"),
    ("fact", "What gas do humans breathe in to live?", "oxygen"),
    ("fact", "What is frozen water called?", "ice"),
    ("fact", "What star is at the centre of our solar system?", "Sun <OR> the Sun"),
    ("fact", "What do cows drink?", "water"),
    ("fact", "What colour is grass?", "green"),
    ("fact", "What colour is the sky on a clear day?", "blue"),
    ("fact", "What colour is snow?", "white"),
    ("fact", "What colour are bananas when they are ripe?", "yellow"),
    ("fact", "What animal says moo?", "cow <OR> a cow"),
    ("fact", "What animal barks?", "dog <OR> a dog"),
    ("fact", "Which animal is known as the king of the jungle?", "lion <OR> the lion"),
    ("fact", "What is the freezing point of water in degrees Celsius?", "0 <OR> 0 degrees <OR> 0 degrees Celsius"),
    ("fact", "How many sides does a triangle have?", "3"),
    ("fact", "How many sides does a square have?", "4"),
    ("fact", "What is the first month of the year?", "January"),
    ("fact", "What is the opposite of up?", "down"),
    ("fact", "What do you call a baby cat?", "kitten"),
    ("fact", "What do you call a baby dog?", "puppy"),
    ("fact", "In which continent is Egypt?", "Africa"),
    ("fact", "What is the largest country in the world by area?", "Russia"),
    ("fact", "What language is spoken in Germany?", "German"),
    ("fact", "How many hours are in a day?", "24"),
    ("fact", "Which planet is known as the Red Planet?", "Mars"),
    ("language", "What is the plural of 'foot'?", "feet"),
    ("language", "What is the opposite of 'big'?", "small <OR> little"),
    ("language", "What is the opposite of 'happy'?", "sad <OR> unhappy"),
    ("language", "What is the opposite of 'day'?", "night"),
    ("language", "What is the past tense of 'go'?", "went"),
    ("language", "What is the past tense of 'eat'?", "ate"),
    ("language", "What is the plural of 'tooth'?", "teeth"),
    ("language", "What is the opposite of 'cold'?", "hot <OR> warm"),
    ("language", "Translate 'cat' into Spanish.", "gato"),
    ("reasoning", "If today is Friday, what day is tomorrow?", "Saturday"),
    ("reasoning", "What comes next: 1, 2, 3, 4?", "5"),
    ("reasoning", "Which is bigger, 10 or 3?", "10"),
    ("reasoning", "Is the sun hot or cold?", "hot"),
    ("reasoning", "Can fish live out of water for a long time? Answer yes or no.", "no"),
    ("reasoning", "Is ice cold? Answer yes or no.", "yes"),
    ("reasoning", "Do birds have feathers? Answer yes or no.", "yes"),
    ("reasoning", "Is a cat a plant? Answer yes or no.", "no"),
)


def arithmetic(seed: int, n: int, lo: int, hi: int) -> list[tuple[str, str]]:
    """``n`` distinct ``(question, answer)`` sums, differences and products of operands in ``[lo, hi]``."""
    rng = random.Random(seed)
    out: dict[str, str] = {}
    forms = (("What is {a} + {b}?", lambda a, b: a + b), ("What is {a} plus {b}?", lambda a, b: a + b),
             ("What is {a} - {b}?", lambda a, b: a - b), ("What is {a} times {b}?", lambda a, b: a * b),
             ("Add {a} and {b}.", lambda a, b: a + b), ("Subtract {b} from {a}.", lambda a, b: a - b))
    while len(out) < n:
        a, b = sorted((rng.randint(lo, hi), rng.randint(lo, hi)), reverse=True)
        text, fn = forms[rng.randrange(len(forms))]
        out.setdefault(text.format(a=a, b=b), str(fn(a, b)))
    return list(out.items())


def train_prompts(seed: int = 0) -> list[str]:
    """The training prompts in a fixed order (every category, then the shuffled whole)."""
    rng = random.Random(f"{seed}|textonly-train")
    prompts = list(GREETINGS) + list(FACTS) + list(HOW_TO) + list(LISTS) + list(LANGUAGE) + list(REASONING)
    prompts += [rng.choice(DEFINE_TEMPLATES).format(w=w) for w in WORDS]
    prompts += [WRITE_TEMPLATES[i % len(WRITE_TEMPLATES)].format(t=t) for i, t in enumerate(TOPICS)]
    prompts += [WRITE_TEMPLATES[(i + 3) % len(WRITE_TEMPLATES)].format(t=t) for i, t in enumerate(TOPICS)]
    prompts += [q for q, _ in arithmetic(seed, 40, 11, 60)]
    prompts = list(dict.fromkeys(prompts))
    rng.shuffle(prompts)
    return prompts


def dev_questions(seed: int = 0) -> list[dict]:
    """The text-only dev set: ``{"id", "image": null, "question", "answer", "type"}`` rows (the VQA format
    without an image)."""
    rows = [{"id": f"text-{i}", "image": None, "question": q, "answer": a, "type": t}
            for i, (t, q, a) in enumerate(DEV_QUESTIONS)]
    for j, (q, a) in enumerate(arithmetic(seed + 1, 16, 2, 9)):
        rows.append({"id": f"text-arith-{j}", "image": None, "question": q, "answer": a, "type": "arithmetic"})
    return rows
