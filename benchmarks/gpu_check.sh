#!/usr/bin/env bash
# One prepared check for a lent GPU machine (one H200 or A100 80GB), at most 8 minutes:
#   bash benchmarks/gpu_check.sh [--out FILE] [--repeats N]
# lora step at the paper's shapes in bf16 (random weights), ours vs transformers' LLaVA + MFU; CUDA peak vs
# `medvqa plan`; generation tokens/s vs LLaVA; 4-bit weight memory; image-prefix reuse; one JSON file of results.
#   bash benchmarks/gpu_check.sh --dry-run [--out FILE]   # the same sections on a CPU at tiny shapes (a test runs it)
# Run from anywhere; uses the repository's .venv when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
case " $* " in
  *" --dry-run "*) exec "$PYTHON" -m benchmarks.gpu_check "$@" ;;  # CPU check: no time limit on a busy machine
  *) exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PYTHON" -m benchmarks.gpu_check "$@" ;;
esac
