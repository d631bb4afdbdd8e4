import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from lmmixup.models import ModelConfig, load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path="tiny"))


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    from lmmixup.models import ModelConfig, load_model

    return load_model(ModelConfig(name_or_path="tiny"), tiny_tokenizer)
