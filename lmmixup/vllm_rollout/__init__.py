"""EXPERIMENTAL: a vLLM rollout engine (`rollout.engine=vllm`, `pip install lmmixup[vllm]`).

Not run in this project's CI: vLLM needs a GPU. What is tested (tests/test_vllm_rollout.py, on
fakes): the policy -> vLLM weight-name mapping and the conversion of vLLM's outputs and
log-probs into a `Rollout`. The engine itself (`engine.vllm_generate`) has not been run.
"""

from lmmixup.vllm_rollout.convert import rollout_from_vllm, vllm_weight_items  # noqa: F401
