"""IFEval is scored by the checker lm-eval ships (lm_eval/tasks/ifeval/utils.py), not ours."""

from lm_eval.tasks.ifeval.utils import agg_inst_level_acc, process_results  # noqa: F401
