"""The `custom_dataset` functions the task YAMLs name (lm-eval imports this file by path, so
the loaders and their cache live in lmmixup/eval/packaged.py, a normal module)."""

from lmmixup.eval.packaged import (arc_challenge, arc_easy, gsm8k, hellaswag, ifeval, mmlu,  # noqa: F401
                                     ref_nll_alpaca)
