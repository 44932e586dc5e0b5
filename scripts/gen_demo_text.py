#!/usr/bin/env python3
"""Deterministic generator of the demo corpus (English-like children's prose).

All text produced here is written by the bitconv project itself (a small
hand-made grammar and vocabulary of a few hundred words), so it carries no
third-party licence.  It produces short stories with dialogue, little
descriptions of animals and places, and counting stories.  Characters,
pronouns and objects are kept consistent inside each story, so a model has to
use its context (names, numbers) to predict well.

The training text and the held-out evaluation text come from the same grammar
but from disjoint random streams (different seeds); any eval document that
also occurs verbatim in the training text is dropped.

Usage:
    python scripts/gen_demo_text.py                     # writes both files
    python scripts/gen_demo_text.py --train-bytes 1500000 --eval-bytes 24000
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------
# vocabulary
# --------------------------------------------------------------------------
GIRLS = ["Anna", "Lily", "Mia", "Rosa", "Ella", "Nora", "Lucy", "Sara", "Ivy",
         "Clara", "Maya", "Zoe", "Ruby", "Hana", "Eva"]
BOYS = ["Tom", "Ben", "Max", "Leo", "Sam", "Finn", "Jack", "Omar", "Hugo",
        "Theo", "Ravi", "Noah", "Eli", "Paul", "Kai"]
PRON = {"f": ("she", "her", "her", "herself"), "m": ("he", "him", "his", "himself")}

ANIMALS = {  # name: (habitat, food, sound-verb, ability)
    "cat": ("house", "fish", "purred", "climb trees"),
    "dog": ("yard", "bones", "barked", "run very fast"),
    "rabbit": ("meadow", "carrots", "squeaked", "hop over logs"),
    "fox": ("forest", "berries", "yipped", "hide in the grass"),
    "owl": ("old oak tree", "mice", "hooted", "see in the dark"),
    "duck": ("pond", "bread", "quacked", "swim and fly"),
    "bear": ("mountains", "honey", "growled", "catch fish"),
    "mouse": ("barn", "cheese", "squeaked", "fit through tiny holes"),
    "frog": ("river", "flies", "croaked", "jump very high"),
    "horse": ("farm", "hay", "neighed", "pull a cart"),
    "goat": ("hills", "grass", "bleated", "climb steep rocks"),
    "bird": ("garden", "seeds", "sang", "fly over the town"),
    "turtle": ("lake", "leaves", "hissed", "carry its home on its back"),
    "squirrel": ("park", "nuts", "chattered", "jump from branch to branch"),
    "sheep": ("field", "clover", "bleated", "stay warm in the snow"),
}

PLACES = ["in a village", "in a small town", "in a big city",
          "in a quiet valley", "in a green forest", "on a sunny island",
          "on a little farm", "in a house by the sea", "in a land of hills",
          "in a cottage near the river"]
SPOTS = ["under the bed", "behind the barn", "in the garden", "near the pond",
         "on the hill", "by the old bridge", "in the kitchen", "at the park",
         "next to the big tree", "inside a box", "on the beach", "in the attic"]
OBJECTS = ["ball", "kite", "book", "hat", "box", "key", "map", "shell",
           "lamp", "drum", "cup", "bell", "stone", "ring", "boat", "basket",
           "flower", "feather", "coin", "blanket"]
COUNTABLE = ["apples", "pears", "cookies", "shells", "stones", "eggs", "cards",
             "marbles", "flowers", "buttons", "plums", "stars"]
COLORS = ["red", "blue", "green", "yellow", "white", "black", "brown",
          "orange", "purple", "pink", "golden", "silver"]
SIZE = ["big", "small", "tiny", "huge", "little", "long", "round", "heavy"]
QUALITY = ["shiny", "old", "new", "soft", "strange", "pretty", "broken",
           "magic", "funny", "warm", "bright", "wet"]
TRAITS = ["kind", "brave", "curious", "shy", "happy", "clever", "gentle",
          "quiet", "cheerful", "careful", "friendly", "lazy", "silly", "wise"]
FEEL_GOOD = ["happy", "glad", "proud", "excited", "calm", "thankful"]
FEEL_BAD = ["sad", "scared", "worried", "angry", "lonely", "tired", "upset"]
TIMES = ["morning", "afternoon", "evening", "night"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
        "Sunday"]
SEASONS = ["spring", "summer", "autumn", "winter"]
WEATHER = {
    "spring": ["the flowers were opening", "a soft rain was falling",
               "the birds were building nests"],
    "summer": ["the sun was hot", "the sky was clear and blue",
               "the air smelled of grass"],
    "autumn": ["the leaves were turning red", "a cold wind was blowing",
               "the trees were full of apples"],
    "winter": ["snow covered the ground", "the pond was frozen",
               "the nights were long and cold"],
}
ACTIVITIES = [  # (present, past)
    ("play", "played"), ("read", "read"), ("sing", "sang"), ("dance", "danced"),
    ("paint", "painted"), ("swim", "swam"), ("run", "ran"), ("draw", "drew"),
    ("bake", "baked"), ("climb", "climbed"), ("walk", "walked"),
    ("jump", "jumped"), ("fish", "fished"), ("build", "built"),
]
PLAY_WITH = [  # (present phrase, past phrase)
    ("play with the {o}", "played with the {o}"),
    ("look at the {o}", "looked at the {o}"),
    ("carry the {o} home", "carried the {o} home"),
    ("show the {o} to everyone", "showed the {o} to everyone"),
    ("keep the {o} safe", "kept the {o} safe"),
    ("clean the {o}", "cleaned the {o}"),
]
PROBLEMS = [
    "the {o} fell into the river",
    "a strong wind took the {o} away",
    "the {o} was lost in the tall grass",
    "the {o} rolled down the hill",
    "a big dog ran off with the {o}",
    "the {o} got stuck in a tree",
]
FIXES = [
    "{a} found a long stick and pulled the {o} back",
    "{a} and {b} looked everywhere until they found the {o}",
    "{b} climbed up carefully and brought the {o} down",
    "{a} asked a kind old man for help, and he got the {o} back",
    "{b} had a clever idea, and soon the {o} was safe again",
]
LESSONS = [
    "It is good to help your friends.",
    "Sharing makes everyone happy.",
    "Friends can fix any problem together.",
    "Being brave is not the same as never being scared.",
    "It is better to ask for help than to give up.",
    "A kind word can change a whole day.",
]
GREET = ["Hello", "Hi", "Good morning", "Hey", "Good day"]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven",
           "eight", "nine", "ten", "eleven", "twelve", "thirteen", "fourteen",
           "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]


def a_an(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def cap(s: str) -> str:
    return s[0].upper() + s[1:]


class Gen:
    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def c(self, seq):
        return self.r.choice(seq)

    # ---- entities -------------------------------------------------------
    def person(self, exclude=()):
        while True:
            g = self.c("fm")
            name = self.c(GIRLS if g == "f" else BOYS)
            if name not in exclude:
                return name, g

    def thing(self):
        kind = self.r.random()
        o = self.c(OBJECTS)
        if kind < 0.4:
            return self.c(COLORS) + " " + o, o
        if kind < 0.7:
            return self.c(SIZE) + " " + o, o
        return self.c(QUALITY) + " " + o, o

    # ---- documents -------------------------------------------------------
    def story(self) -> str:
        a, ga = self.person()
        b, gb = self.person(exclude=(a,))
        he, him, his, _ = PRON[ga]
        bhe, bhim, bhis, _ = PRON[gb]
        trait = self.c(TRAITS)
        place = self.c(PLACES)
        pet = self.c(list(ANIMALS))
        full, obj = self.thing()
        season = self.c(SEASONS)
        act, act_past = self.c(ACTIVITIES)
        p = []
        opening = self.c([
            f"Once upon a time, {place}, there lived {a_an(trait)} "
            f"{'girl' if ga == 'f' else 'boy'} named {a}.",
            f"{a} was {a_an(trait)} {'girl' if ga == 'f' else 'boy'} who "
            f"lived {place}.",
            f"There was once a {trait} child called {a}. {cap(he)} lived "
            f"{place} with {his} family.",
        ])
        p.append(opening)
        p.append(self.c([
            f"{cap(he)} had a {self.c(COLORS)} {pet} and loved to {act} "
            f"every {self.c(TIMES)}.",
            f"{cap(his)} best friend was {b}, and together they liked to "
            f"{act}.",
            f"Every {self.c(DAYS)}, {he} went to see {his} friend {b}.",
        ]))
        p.append(self.c([
            f"It was {season}, and {self.c(WEATHER[season])}.",
            f"One {self.c(TIMES)} in {season}, {a} went outside to {act}.",
            f"One {self.c(DAYS)} {self.c(TIMES)}, the sky was "
            f"{self.c(['grey', 'blue', 'pink', 'dark'])}.",
        ]))
        p.append(f"{cap(self.c(['suddenly', 'then', 'after a while']))}, "
                 f"{a} found {a_an(full)} {self.c(SPOTS)}.")
        verb, verb_past = self.c(PLAY_WITH)
        p.append(self.c([
            f'"Look, {b}!" said {a}. "I found {a_an(full)}!"',
            f'"{self.c(GREET)}, {b}," said {a}. "Do you want to see what '
            f'I found?"',
            f"{a} ran to {b} and showed {bhim} the {obj}.",
        ]))
        p.append(self.c([
            f'"Wow," said {b}. "Can we {verb.format(o=obj)}?"',
            f'{b} smiled. "That is the best {obj} I have ever seen."',
            f'"Where did you find it?" asked {b}. "{self.c(SPOTS).capitalize()}," '
            f'said {a}.',
        ]))
        p.append(f"So {a} and {b} {verb_past.format(o=obj)}. They were very "
                 f"{self.c(FEEL_GOOD)}.")
        if self.r.random() < 0.8:
            bad = self.c(FEEL_BAD)
            p.append(f"But then {self.c(PROBLEMS).format(o=obj)}. "
                     f"{a} felt {bad}.")
            p.append(self.c([
                f'"Do not be {bad}," said {b}. "We will get it back."',
                f'"What can we do?" asked {a}. {b} thought for a moment.',
                f"{b} held {a}'s hand. \"I will help you,\" {bhe} said.",
            ]))
            p.append(cap(self.c(FIXES).format(a=a, b=b, o=obj)) + ".")
            p.append(f"{a} was {self.c(FEEL_GOOD)} again. "
                     f'"Thank you, {b}," {he} said.')
        p.append(self.c([
            f"From that day on, {a} and {b} were best friends.",
            f"That night, {a} went to bed with a big smile.",
            f"When the sun went down, {a} and {b} walked home together.",
            f"{a} kept the {obj} in {his} room for many years.",
        ]))
        if self.r.random() < 0.5:
            p.append(self.c(LESSONS))
        return " ".join(p)

    def animal_fact(self) -> str:
        an = self.c(list(ANIMALS))
        hab, food, sound, skill = ANIMALS[an]
        an2 = self.c([x for x in ANIMALS if x != an])
        hab2, food2, _, skill2 = ANIMALS[an2]
        col = self.c(COLORS)
        p = [self.c([
            f"The {an} is {a_an(self.c(TRAITS))} animal.",
            f"Have you ever seen {a_an(an)}?",
            f"Let us learn about the {an}.",
        ])]
        p.append(f"Most of the time, {a_an(an)} lives in the {hab} and "
                 f"eats {food}.")
        p.append(f"{cap(a_an(an))} can {skill}.")
        p.append(self.c([
            f"This one was {col}, and it {sound} when it saw us.",
            f"When it is happy, the {an} {sound} softly.",
            f"In {self.c(SEASONS)}, the {an} likes to rest in the {hab}.",
        ]))
        p.append(f"The {an2} is different. It lives in the {hab2}, eats "
                 f"{food2}, and can {skill2}.")
        p.append(self.c([
            f"Both the {an} and the {an2} need food, water and a safe home.",
            f"Which do you like more, the {an} or the {an2}?",
            f"The {an} and the {an2} are not friends, but they are not "
            f"enemies either.",
        ]))
        return " ".join(p)

    def counting(self) -> str:
        a, ga = self.person()
        b, gb = self.person(exclude=(a,))
        he, him, his, _ = PRON[ga]
        thing = self.c(COUNTABLE)
        n = self.r.randint(1, 10)
        m = self.r.randint(1, 10)
        p = [f"{a} had {NUMBERS[n]} {thing if n != 1 else thing[:-1]}."]
        if self.r.random() < 0.5:
            p.append(f"{b} gave {him} {NUMBERS[m]} more.")
            p.append(f"Now {a} had {NUMBERS[n + m]} {thing}.")
            p.append(f'"{NUMBERS[n].capitalize()} and {NUMBERS[m]} make '
                     f'{NUMBERS[n + m]}," said {a}.')
        else:
            n = n + m
            p[0] = f"{a} had {NUMBERS[n]} {thing}."
            p.append(f"{cap(he)} gave {NUMBERS[m]} to {b}.")
            left = n - m
            word = thing if left != 1 else thing[:-1]
            p.append(f"Now {a} had {NUMBERS[left]} {word} left.")
            p.append(f'"{NUMBERS[n].capitalize()} take away {NUMBERS[m]} is '
                     f'{NUMBERS[left]}," said {b}.')
        p.append(self.c([
            f"{a} put the {thing} in a basket.",
            f"They counted the {thing} again to be sure.",
            f"{b} clapped {PRON[gb][2]} hands.",
        ]))
        return " ".join(p)

    def dialogue(self) -> str:
        a, ga = self.person()
        b, gb = self.person(exclude=(a,))
        act, act_past = self.c(ACTIVITIES)
        act2, act2_past = self.c([x for x in ACTIVITIES if x[0] != act])
        day = self.c(DAYS)
        lines = [
            f'"{self.c(GREET)}, {b}. What did you do on {day}?" asked {a}.',
            f'"I {act_past} all {self.c(TIMES)}," said {b}. "And you?"',
            f'"I {act2_past} with my {self.c(list(ANIMALS))}," said {a}.',
        ]
        if self.r.random() < 0.5:
            lines.append(f'"Do you want to {act} with me tomorrow?" asked {b}.')
            lines.append(self.c([
                f'"Yes, I would like that very much," said {a}.',
                f'"I cannot, I have to help my mother," said {a}. '
                f'"Maybe on {self.c(DAYS)}?"',
            ]))
        else:
            feel = self.c(FEEL_BAD)
            lines.append(f'"You look {feel}," said {b}. "What is wrong?"')
            full, obj = self.thing()
            lines.append(f'"I lost my {full}," said {a}. "I looked '
                         f'{self.c(SPOTS)}, but it was not there."')
            lines.append(f'"Let us look {self.c(SPOTS)}," said {b}.')
            lines.append(f"They looked together, and soon they found the "
                         f"{obj}.")
        return " ".join(lines)

    def document(self) -> str:
        x = self.r.random()
        if x < 0.55:
            return self.story()
        if x < 0.7:
            return self.animal_fact()
        if x < 0.85:
            return self.counting()
        return self.dialogue()

    def text(self, nbytes: int, exclude: set[str] | None = None) -> str:
        docs, size = [], 0
        while size < nbytes:
            d = self.document()
            if exclude is not None and d in exclude:
                continue
            docs.append(d)
            size += len(d) + 2
        return "\n\n".join(docs) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-bytes", type=int, default=1_500_000)
    ap.add_argument("--eval-bytes", type=int, default=24_000)
    ap.add_argument("--train-seed", type=int, default=1234)
    ap.add_argument("--eval-seed", type=int, default=98765)
    ap.add_argument("--train-out", default=str(ROOT / "scripts/data/train.txt"))
    ap.add_argument("--eval-out", default=str(ROOT / "bitconv/data/eval.txt"))
    args = ap.parse_args()

    train = Gen(args.train_seed).text(args.train_bytes)
    seen = set(train.split("\n\n"))
    seen = {d.strip() for d in seen}
    ev = Gen(args.eval_seed).text(args.eval_bytes, exclude=seen)
    for path, text in ((args.train_out, train), (args.eval_out, ev)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
        print(f"wrote {path}: {len(text.encode())} bytes, "
              f"{len(text.split())} words, {text.count(chr(10) + chr(10)) + 1} docs")
    ev_docs = [d.strip() for d in ev.split("\n\n")]
    dup = sum(d in seen for d in ev_docs)
    print(f"eval documents also in train: {dup} of {len(ev_docs)}")


if __name__ == "__main__":
    main()
