import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `make test` (pytest -n auto) each of N workers would default to N torch threads:
    # N*N threads on N cores, where OpenMP's spin-waits slow every job several times over.
    # One thread per worker: the variables for the train.py/distill.py subprocesses it starts,
    # set_num_threads for the worker itself.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from lmmixup.models import ModelConfig, load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path="tiny"))


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    from lmmixup.models import ModelConfig, load_model

    return load_model(ModelConfig(name_or_path="tiny"), tiny_tokenizer)
