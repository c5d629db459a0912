#!/usr/bin/env bash
# Evaluate a Hugging Face Hub checkpoint on AIME 2024 and LiveCodeBench v5 under the paper's
# contracts (k samples at temperature 0.8, 32k new tokens), with vLLM in bfloat16.
#   HUB_ID=deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B bash examples/eval_hub_checkpoint/run.sh [key=value ...]
#   bash examples/eval_hub_checkpoint/run.sh --cpu   # a local tiny model, 2 problems each
# OUT (default runs/examples/eval_hub_checkpoint), PYTHON (default python), TP (GPUs to shard
# the model over, default 1).
set -euo pipefail
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/examples/eval_hub_checkpoint}
archer() { "$PYTHON" -m archer_cli "$@"; }

if [[ "${1:-}" == "--cpu" ]]; then
  shift
  # no network: `archer model prepare tiny` writes a local HF directory standing in for the
  # downloaded checkpoint (its last line is the path); the HF engine in float32, 2 problems
  # of each benchmark, 1 sample of 8 new tokens
  MODEL_DIR=$(archer model prepare tiny cache_dir="$OUT/cache" | tail -n 1)
  archer data fetch aime2024 lcb_v5_public --dry-run
  archer eval model="$MODEL_DIR" benchmarks=aime2024,lcb_v5 limit=2 k=1 max_new_tokens=8 \
    engine=hf dtype=float32 tracking=none progress=false out_dir="$OUT/eval" "$@"
  exit 0
fi

: "${HUB_ID:?set HUB_ID=<a Hub model id, e.g. deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B> (or --cpu)}"
MODEL_DIR="$OUT/models/${HUB_ID//\//--}"
# the one network step besides the data: the checkpoint itself (huggingface_hub comes with
# transformers); nothing downloads during the evaluation
"$PYTHON" -c 'import sys; from huggingface_hub import snapshot_download; snapshot_download(sys.argv[1], local_dir=sys.argv[2])' "$HUB_ID" "$MODEL_DIR"
archer data fetch aime2024 lcb_v5_public
archer eval model="$MODEL_DIR" benchmarks=aime2024,lcb_v5 engine=vllm dtype=bfloat16 \
  vllm_tensor_parallel_size="${TP:-1}" out_dir="$OUT/eval" "$@"
