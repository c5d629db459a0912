#!/usr/bin/env bash
# The single-GPU math run: train with the archer_math_1gpu recipe, export the best
# validation step as a Hugging Face directory, evaluate it with the recipe's eval spec.
#   MODEL=<dir of Qwen2.5-Math-1.5B-Instruct> bash examples/single_gpu_math/run.sh [key=value ...]
#   bash examples/single_gpu_math/run.sh --cpu     # the CPU-sized form (tiny model, 2 steps)
# OUT (default runs/examples/single_gpu_math) holds the run, the export and the evaluation;
# PYTHON (default python) is the interpreter that has Archer installed.
set -euo pipefail
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/examples/single_gpu_math}
archer() { "$PYTHON" -m archer_cli "$@"; }

if [[ "${1:-}" == "--cpu" ]]; then
  shift
  # the same recipe, cut to the CPU: the tiny random model, HF rollouts in float32, 2 steps
  # of 2 prompts x 2 samples and 16 new tokens (it learns nothing: the commands are the test)
  archer data fetch math_train math500 --dry-run
  archer train recipe=archer_math_1gpu model=tiny rollout_backend=hf dtype=float32 \
    vllm_enable_sleep_mode=false gradient_checkpointing=false total_steps=2 \
    prompts_per_step=2 group_size=2 mini_batch_prompts=1 rollout_batch_size=2 \
    max_new_tokens=16 max_prompt_tokens=512 val_every=2 val_size=4 ckpt_every=2 \
    num_threads=1 tracking=jsonl out_dir="$OUT/train" "$@"
  archer export "$OUT/train" "$OUT/best" --best
  archer eval model="$OUT/best" recipe=archer_math_1gpu engine=hf dtype=float32 \
    benchmarks=math500 limit=2 k=1 max_new_tokens=8 tracking=none progress=false \
    out_dir="$OUT/eval"
  exit 0
fi

: "${MODEL:?set MODEL=<a local HF directory of Qwen2.5-Math-1.5B-Instruct> (or --cpu)}"
archer env
archer data fetch math_train math500 amc23 aime2024
archer train recipe=archer_math_1gpu model="$MODEL" out_dir="$OUT/train" "$@"
archer export "$OUT/train" "$OUT/best" --best
archer eval model="$OUT/best" recipe=archer_math_1gpu out_dir="$OUT/eval"
