"""Evaluation helpers shared by every command that reports a number: confidence intervals."""
