"""Script-made rated libraries for tests and the benchmark (no downloaded text).

Fluent sentences come from a few templates with random slots; each degraded variant has a
fixed score, mirroring how the mixture builder rates originals 5 and corruptions lower:
    5 fluent sentence      3 first half only (cut mid-thought)      2 words shuffled
    1 one word repeated    0 random-letter gibberish
"""

from __future__ import annotations

import random
from typing import Dict, List, Sequence

_SUBJECTS = ["A good teacher", "The city council", "A careful cook", "The new engine",
             "Our research group", "A healthy diet", "The local library", "A strong password",
             "The night sky", "A small garden", "Regular exercise", "The ocean current",
             "A clear contract", "The school nurse", "Fresh bread", "The museum guide"]
_VERBS = ["explains", "improves", "protects", "depends on", "changes", "supports", "reveals",
          "requires", "reduces", "describes", "shapes", "organises"]
_OBJECTS = ["the way people learn new skills", "the quality of everyday decisions",
            "the health of the whole community", "the cost of running a household",
            "how water moves through the soil", "the safety of online accounts",
            "the history of the region", "the amount of energy a machine uses",
            "the taste of a simple meal", "the patterns of the seasons",
            "the trust between neighbours", "the speed of a long journey"]
_REASONS = ["because small habits add up over time", "when it is planned with care",
            "since every part affects the others", "which is why experts study it closely",
            "so it is worth checking the details", "although the effect takes years to show",
            "as long as the basic rules are followed", "even when resources are limited"]
_LETTERS = "bcdfghjklmnpqrstvwxz"


def fluent_sentence(rng: random.Random) -> str:
    return (f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
            f"{rng.choice(_REASONS)}.")


def gibberish(rng: random.Random, words: int = 10) -> str:
    return " ".join("".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 7)))
                    for _ in range(words))


def degrade(sentence: str, score: int, rng: random.Random) -> str:
    """A variant of `sentence` whose quality matches `score` (see the module docstring)."""
    words = sentence.rstrip(".").split()
    if score == 5:
        return sentence
    if score == 3:
        return " ".join(words[: max(2, len(words) // 2)])
    if score == 2:
        rng.shuffle(words)
        return " ".join(words)
    if score == 1:
        return " ".join([rng.choice(words)] * len(words))
    if score == 0:
        return gibberish(rng, len(words))
    raise ValueError(f"no synthetic degradation for score {score}")


def synthetic_rated_rows(n: int, seed: int = 0, scores: Sequence[int] = (5, 3, 2, 1, 0)
                         ) -> List[Dict[str, object]]:
    """n rows {"text", "score"}, scores cycling through `scores` (balanced classes)."""
    rng = random.Random(seed)
    return [{"text": degrade(fluent_sentence(rng), scores[i % len(scores)], rng),
             "score": scores[i % len(scores)]} for i in range(n)]
