"""Writes conversions.json: a chat dataset (OpenAI `messages`) of unit conversions.

Written for EdgeTune (Apache-2.0): a seeded generator composes every question and computes
every answer, so the file is reproducible and the answers are right. The assistant answers in
one fixed, terse style, which a model picks up quickly in supervised fine-tuning.

    python resources/datasets/make_conversions.py   # rewrites conversions.json beside this file
"""

import json
import random
from pathlib import Path

UNITS = [
    ("kilometres", "miles", 0.621371), ("miles", "kilometres", 1.609344),
    ("kilograms", "pounds", 2.204623), ("pounds", "kilograms", 0.453592),
    ("litres", "US gallons", 0.264172), ("metres", "feet", 3.280840),
    ("feet", "metres", 0.3048), ("inches", "centimetres", 2.54),
]
ASK = ["How many {to} is {n} {src}?", "Convert {n} {src} to {to}.", "{n} {src} in {to}, please.",
       "What is {n} {src} in {to}?"]
SYSTEM = "You convert units. Answer in one sentence with two decimals."


def main() -> None:
    rng = random.Random(7)
    rows = []
    for _ in range(300):
        src, to, factor = rng.choice(UNITS)
        n = rng.choice([rng.randint(1, 100), round(rng.uniform(0.5, 50), 1)])
        question = rng.choice(ASK).format(n=n, src=src, to=to)
        answer = f"{n} {src} is {n * factor:.2f} {to}."
        rows.append({"messages": [{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": question},
                                  {"role": "assistant", "content": answer}]})
    out = Path(__file__).with_name("conversions.json")
    out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
