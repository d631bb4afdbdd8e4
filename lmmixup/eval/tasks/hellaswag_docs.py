"""HellaSwag's query/choices preprocessing is lm-eval's own (lm_eval/tasks/hellaswag/utils.py)."""

from lm_eval.tasks.hellaswag.utils import process_docs  # noqa: F401
