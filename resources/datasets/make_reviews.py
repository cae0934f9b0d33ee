"""Writes reviews.jsonl: short product and service reviews with a sentiment label.

Written for EdgeTune (Apache-2.0, like the project): every row is composed from the phrase lists
below by a seeded generator, so the file is reproducible and free of third-party text. The rows
mix plain, hedged and negated cues ("not bad at all", "I wanted to love it, but…") so that a
small model guessing from surface words stays near chance and has something to learn.

    python resources/datasets/make_reviews.py   # rewrites reviews.jsonl beside this file
"""

import json
import random
from pathlib import Path

SUBJECTS = [
    "the battery", "the screen", "the keyboard", "the hotel room", "the delivery", "the pasta",
    "the customer service", "the sound", "the camera", "the app", "the checkout", "the chair",
    "the coffee", "the headphones", "the fabric", "the instructions", "the price", "the staff",
    "the update", "the blender", "the mattress", "the tour guide", "the sequel", "the soundtrack",
]
POSITIVE = [
    "works better than I hoped", "is worth every penny", "made my week", "held up for months",
    "exceeded what the box promised", "is a joy to use", "arrived early and well packed",
    "still feels solid after daily use", "fixed the problem on the first try",
    "is the best purchase I made this year", "was friendly and quick", "sounds rich and clear",
]
NEGATIVE = [
    "broke within a week", "is a waste of money", "ruined the evening", "stopped working twice",
    "fell apart after one wash", "is painfully slow", "arrived late and scratched",
    "feels cheap and flimsy", "never answered my emails", "was the worst purchase this year",
    "was rude and careless", "crackles at any volume",
]
NEG_OF_NEG = ["is not bad at all", "never let me down", "was not a disappointment", "had no flaws I could find"]
NEG_OF_POS = ["is not worth it", "never worked properly", "was not what I paid for", "had nothing going for it"]
OPENERS = ["", "Honestly, ", "After a month, ", "To be fair, ", "In short, ", "Well, ", "Frankly, "]
CONTRAST_POS = ["I expected to hate it, but {s} {p}.", "The reviews scared me, yet {s} {p}."]
CONTRAST_NEG = ["I wanted to love it, but {s} {n}.", "It looked great online, but {s} {n}."]


def review(rng: random.Random, positive: bool) -> str:
    subject = rng.choice(SUBJECTS)
    kind = rng.random()
    if kind < 0.45:
        phrase = rng.choice(POSITIVE if positive else NEGATIVE)
        text = f"{rng.choice(OPENERS)}{subject} {phrase}."
    elif kind < 0.75:
        phrase = rng.choice(NEG_OF_NEG if positive else NEG_OF_POS)
        text = f"{rng.choice(OPENERS)}{subject} {phrase}."
    else:
        template = rng.choice(CONTRAST_POS if positive else CONTRAST_NEG)
        text = template.format(s=subject, p=rng.choice(POSITIVE), n=rng.choice(NEGATIVE))
    return text[0].upper() + text[1:]


def main() -> None:
    rng = random.Random(2026)
    rows, seen = [], set()
    while len(rows) < 600:
        positive = len(rows) % 2 == 0
        text = review(rng, positive)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "label": "positive" if positive else "negative"})
    rng.shuffle(rows)
    out = Path(__file__).with_name("reviews.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
