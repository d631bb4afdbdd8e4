"""Writes lmmixup/data/starter_prompts.jsonl: a small, self-made distillation prompt set.

It lets `python train.py` run before a MIXTURE build exists. Each row is a cluster of three
noisy restatements of one hand-written fact, in the LM-Mixup prompt layout, with the clean pair
as the reference. Deterministic: re-running it rewrites the same bytes.

    python scripts/make_starter_prompts.py
"""

import json
import os
import random
import tempfile
from pathlib import Path

FACTS = [  # (question, answer, task); written for this project
    ("What gas do plants take in for photosynthesis?", "Carbon dioxide.", "qa"),
    ("What is the boiling point of water at sea level in Celsius?", "100 degrees Celsius.", "qa"),
    ("Which planet is closest to the Sun?", "Mercury.", "qa"),
    ("How many sides does a hexagon have?", "Six.", "qa"),
    ("What organ pumps blood through the human body?", "The heart.", "qa"),
    ("What is the chemical symbol for sodium?", "Na.", "qa"),
    ("Which layer of the atmosphere contains the ozone layer?", "The stratosphere.", "qa"),
    ("What is the largest ocean on Earth?", "The Pacific Ocean.", "qa"),
    ("What force keeps the planets in orbit around the Sun?", "Gravity.", "qa"),
    ("What is the freezing point of water in Fahrenheit?", "32 degrees Fahrenheit.", "qa"),
    ("Which blood cells carry oxygen?", "Red blood cells.", "qa"),
    ("What is the square root of 81?", "9.", "qa"),
    ("Sound travels faster in water than in air.", "True", "tfq"),
    ("The Moon produces its own light.", "False", "tfq"),
    ("Diamonds are made of carbon.", "True", "tfq"),
    ("Bats are a kind of bird.", "False", "tfq"),
    ("An insect has six legs.", "True", "tfq"),
    ("Mount Everest is in South America.", "False", "tfq"),
]

SYSTEM = ("You are a data mix-up expert. First think about the pairs inside <think> </think>, "
          "then write one coherent, high-quality pair inside <answer> </answer>.")
USER_HEAD = ("Merge the following related question-answer pairs into one coherent, "
             "high-quality question-answer pair.\n\n")


def add_typos(text: str, rng: random.Random, rate: float) -> str:
    chars = list(text)
    for i in range(len(chars)):
        if chars[i].isalpha() and rng.random() < rate:
            chars[i] = rng.choice("abcdefghijklmnopqrstuvwxyz")
    return "".join(chars)


def variant(question: str, answer: str, rng: random.Random):
    q = add_typos(question, rng, 0.06)
    if rng.random() < 0.5:
        q = q.lower().rstrip("?.") + " ??"
    a = answer if rng.random() < 0.6 else answer.rstrip(".") + " i think, not sure"
    return q, add_typos(a, rng, 0.04)


def pair_text(question: str, answer: str, task: str) -> str:
    return f"Q: {question} A: {answer}" if task == "qa" else f"{question} Answer: {answer}"


def main() -> None:
    rng = random.Random(1234)
    rows = []
    for question, answer, task in FACTS:
        members = [variant(question, answer, rng) for _ in range(3)]
        listing = "\n".join(f"Q: {q}\nA: {a}" for q, a in members)
        pair = pair_text(question, answer, task)
        rows.append({
            "prompt": [{"role": "system", "content": SYSTEM},
                       {"role": "user", "content": USER_HEAD + listing}],
            "reference": pair,
            "task": task,
            "target": f"<think>\n\n</think>\n\n<answer>\n{pair}\n</answer>",
        })
    out = Path(__file__).resolve().parent.parent / "lmmixup" / "data" / "starter_prompts.jsonl"
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, out)
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
