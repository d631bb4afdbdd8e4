"""Benchmarks of lmmixup against HF and TRL; run them with `python -m lmmixup.bench`."""
