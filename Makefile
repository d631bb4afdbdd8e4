# Two commands do everything: `make train` (the main job) and `make test`.
# Both create .venv on first use (scripts/install.sh: CPU torch on machines without CUDA).
PY := .venv/bin/python

.PHONY: install train smoke test bench
install: .venv/.installed
.venv/.installed: pyproject.toml scripts/install.sh scripts/tested-versions.txt
	bash scripts/install.sh

train: install
	$(PY) -m lmmixup.pipeline

smoke: install
	$(PY) train.py experiment=smoke

# One worker per core, a test file per worker (module fixtures run once): most of the suite's
# time is single-threaded interpreter start-up of train.py/distill.py subprocesses, which
# workers overlap. `pytest tests/x.py` alone stays serial.
test: install
	$(PY) -m pytest -q -n auto --dist loadfile

bench: install
	bash scripts/install.sh bench
	$(PY) -m lmmixup.bench
