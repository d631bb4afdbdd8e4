"""See inside a GRPO run: `python -m lmmixup.inspect RUN_DIR` (terminal report, --plot PNGs,
--html report, --compare, --sweep). `hook.StepInspector` is the trainer's side: attribution
metrics, reward-hacking signals and rollout dumps, once per step.

Only light modules are imported here, so train.py's import of the hook pulls in neither rich nor
matplotlib."""
