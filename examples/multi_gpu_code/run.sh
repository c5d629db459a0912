#!/usr/bin/env bash
# The paper's code run on one 8-GPU node: torchrun runs `archer train` data-parallel (FSDP2,
# NCCL) with the archer_code_1p5b recipe on the LeetCode training problems, then the run's
# best validation step is exported and evaluated on LiveCodeBench v5 with the recipe's spec.
#   MODEL=<dir of DeepSeek-R1-Distill-Qwen-1.5B> bash examples/multi_gpu_code/run.sh [key=value ...]
#   bash examples/multi_gpu_code/run.sh --cpu      # 2 gloo processes, the tiny model, 2 steps
# OUT (default runs/examples/multi_gpu_code), PYTHON (default python), NPROC (default 8).
set -euo pipefail
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/examples/multi_gpu_code}
archer() { "$PYTHON" -m archer_cli "$@"; }
torchrun() { "$PYTHON" -m torch.distributed.run --standalone "$@"; }

if [[ "${1:-}" == "--cpu" ]]; then
  shift
  # the same recipe on 2 CPU processes (gloo, no mixed precision), HF rollouts in float32;
  # prompts that do not fit the tiny model's 1024-token context are dropped; the code reward
  # runs every response's tests in the sandbox. rollout_batch_size covers each rank's share
  # of the held-out prompts in one generate call.
  # the model prepared once before torchrun, as a downloaded checkpoint would be (ranks
  # that each prepare a named model into a cold cache race on its files)
  MODEL_DIR=$(archer model prepare tiny | tail -n 1)
  torchrun --nproc_per_node=2 -m archer_cli train recipe=archer_code_1p5b model="$MODEL_DIR" \
    rollout_backend=hf dtype=float32 vllm_enable_sleep_mode=false \
    distributed.backend=gloo distributed.mixed_precision=none gradient_checkpointing=false \
    max_prompt_tokens=1000 overlong_prompts=drop total_steps=2 prompts_per_step=2 \
    group_size=2 mini_batch_prompts=2 micro_batch_size=2 rollout_batch_size=16 \
    max_new_tokens=16 val_every=2 val_size=6 ckpt_every=2 num_threads=1 tracking=jsonl \
    out_dir="$OUT/train" "$@"
  archer export "$OUT/train" "$OUT/best" --best
  archer eval model="$OUT/best" recipe=archer_code_1p5b engine=hf dtype=float32 \
    benchmarks=lcb_v5 limit=2 k=1 max_new_tokens=8 tracking=none progress=false \
    out_dir="$OUT/eval"
  exit 0
fi

: "${MODEL:?set MODEL=<a local HF directory of DeepSeek-R1-Distill-Qwen-1.5B> (or --cpu)}"
archer env
archer data fetch leetcode_train lcb_v5_public
torchrun --nproc_per_node="${NPROC:-8}" -m archer_cli train recipe=archer_code_1p5b \
  model="$MODEL" out_dir="$OUT/train" "$@"
archer export "$OUT/train" "$OUT/best" --best
archer eval model="$OUT/best" recipe=archer_code_1p5b out_dir="$OUT/eval"
