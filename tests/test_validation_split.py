"""The validation split GRPO's checkpoint is chosen on (lmmixup/data/validation.py): whole seeds
out of grpo_train, so it shares no seed with the test rows, nor with the rows GRPO trains on."""

from __future__ import annotations

import json

import pytest

from lmmixup.data.build_mixture import build_mixture, parse_args
from lmmixup.data.jsonl import read_jsonl
from lmmixup.data.validation import carve_validation, write_validation_split
from lmmixup.errors import LmmixupError


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    out = tmp_path_factory.mktemp("mix") / "mixture"
    # 60 real seeds from two sources, hashed-embedding clusters: a few seconds to build
    build_mixture(parse_args([f"out={out}", "size=60", "sources=sciq,boolq",
                              "cluster.embedder=hash", "progress=false"]))
    return out


def seeds(rows):
    return {r["seed_id"] for r in rows}


def test_validation_is_disjoint_from_test_and_from_training_by_seed(mixture, tmp_path):
    train = read_jsonl(mixture / "grpo_train.jsonl")
    test = read_jsonl(mixture / "grpo_test.jsonl")
    fit_path, val_path = write_validation_split(mixture / "grpo_train.jsonl", tmp_path, 4, seed=0)
    fit, val = read_jsonl(fit_path), read_jsonl(val_path)
    assert len(val) >= 4 and len(fit) + len(val) == len(train)
    assert not seeds(val) & seeds(test)  # never the test rows' seeds
    assert not seeds(val) & seeds(fit)  # whole seeds: no degraded twin of a training cluster
    assert sorted(map(json.dumps, fit + val)) == sorted(map(json.dumps, train))  # nothing lost
    # the same seed draws the same split (a resumed pipeline trains on the same rows) ...
    again_fit, again_val = carve_validation(train, 4, seed=0)
    assert again_val == val and again_fit == fit
    # ... whatever order the rows come in, and another seed draws other seeds
    assert seeds(carve_validation(train[::-1], 4, seed=0)[1]) == seeds(val)
    assert any(seeds(carve_validation(train, 4, seed=s)[1]) != seeds(val) for s in (1, 2, 3))


def test_whole_seeds_move_together():
    # seed a has 3 rows, b 1, c 2: whichever seeds are drawn, all of their rows move
    rows = [{"seed_id": s, "i": i} for i, s in enumerate("aaabcc")]
    for seed in range(5):
        fit, val = carve_validation(rows, 2, seed)
        assert len(val) >= 2 and not seeds(fit) & seeds(val)


def test_a_row_without_seed_id_or_too_few_rows_is_one_error():
    with pytest.raises(LmmixupError, match=r"^f.jsonl: row 2 has no seed_id"):
        carve_validation([{"seed_id": "a"}, {"prompt": "x"}], 1, 0, "f.jsonl")
    with pytest.raises(LmmixupError, match="2 rows cannot spare 2 for validation"):
        carve_validation([{"seed_id": "a"}, {"seed_id": "b"}], 2, 0)
