"""The torch device a `device: auto | cpu | cuda` setting names (train.py, distill.py and the
downstream runner each have that key, and one function resolves it for all three)."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str) -> torch.device:
    """auto -> cuda when a GPU is visible, else cpu; cpu and cuda as named (one device: a rank's
    GPU index is the caller's business)."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)
