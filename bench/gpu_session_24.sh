#!/usr/bin/env bash
# Issue 24's GPU checks in one go, for the H200 device machine (about 4 minutes). Run from the repository
# root with the wheels folder carried (carry: [".whl"]; see bench/README.md):
#     bash bench/gpu_session_24.sh
# 1. TRL 1.16 and datasets (absent from the machine's image) from the carried wheels into /tmp/site;
# 2. the CUDA-only tests of the static decode path and of what it touches (CUDA graph log-probs vs the
#    teacher-forced forward in bf16; LoRA GRPO and the precision tests on CUDA);
# 3. bench/gpu_grpo_vs_trl.py: aha vs TRL on the 308M workload; results JSON and docs/benchmarks.md.
# Everything worth keeping is copied to $OUT (or ./gpu-out when $OUT is unset).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-gpu-out}"
mkdir -p "$OUT_DIR"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -c "import torch, transformers, trl, datasets; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'trl', trl.__version__, 'datasets', datasets.__version__, torch.cuda.get_device_name())" \
  2>&1 | tee "$OUT_DIR/versions.txt"
timeout 240 python3 -m pytest -q -x -p no:cacheprovider -k "cuda" tests/test_rollout_static.py \
  tests/test_train_lora.py tests/test_train_precision.py 2>&1 | tee "$OUT_DIR/cuda_tests.log"
timeout 420 python3 bench/gpu_grpo_vs_trl.py 2>&1 | tee "$OUT_DIR/gpu_grpo_vs_trl.log"
cp bench/results/gpu_grpo_vs_trl.json docs/benchmarks.md "$OUT_DIR/" 2>/dev/null
echo "done: $OUT_DIR"
