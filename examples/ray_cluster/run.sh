#!/usr/bin/env bash
# A study on a multi-node Ray cluster: the driver (this script, on the head node) schedules
# the trials of `archer ablate baselines` onto any node with the GPUs a trial asks for.
#   MODEL=<dir> bash examples/ray_cluster/run.sh [key=value ...]   # on the head node of a
#       running cluster (RAY_ADDRESS, default auto); OUT must be on a shared file system
#   bash examples/ray_cluster/run.sh --cpu    # starts its own 2-CPU Ray head, 1 trial, 2 steps
# OUT (default runs/examples/ray_cluster), PYTHON (default python), RECIPE (default
# archer_code_1p5b: 8 GPUs a trial).
set -euo pipefail
PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/examples/ray_cluster}
HERE=$(cd "$(dirname "$0")" && pwd)
archer() { "$PYTHON" -m archer_cli "$@"; }

if [[ "${1:-}" == "--cpu" ]]; then
  shift
  # a Ray head of our own (its temp dir under /tmp: Ray's socket paths must stay short),
  # stopped on exit whatever happens; the study connects to it as to any cluster
  RAY_TMP=$(mktemp -d /tmp/archer-ray-XXXXXX)
  trap '"$PYTHON" "$HERE/local_head.py" stop "$RAY_TMP"' EXIT
  # token authentication, as a cluster on a shared network should have: the head and the
  # driver (and its trials) read the same token
  "$PYTHON" -c 'import secrets, sys; print(secrets.token_hex(32))' > "$RAY_TMP/auth_token"
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$RAY_TMP/auth_token"
  ADDRESS=$("$PYTHON" "$HERE/local_head.py" start "$RAY_TMP" 2)
  echo "ray head: $ADDRESS"
  # the baselines study cut to one trial (archer, seed 0) of 2 steps on the random tiny
  # model (warm_start=null skips the ~80 s warm start), evaluated as every trial is
  archer ablate baselines 'study.axes.algo=[archer]' 'study.seeds=[0]' total_steps=2 \
    warm_start=null ray.address="$ADDRESS" out_dir="$OUT/studies" \
    tracking.uri="sqlite:///$OUT/mlflow.db" progress=false "$@"
  archer study status baselines out_dir="$OUT/studies"
  exit 0
fi

: "${MODEL:?set MODEL=<a local HF directory, the same path on every node> (or --cpu)}"
archer ablate baselines recipe="${RECIPE:-archer_code_1p5b}" model="$MODEL" \
  ray.address="${RAY_ADDRESS:-auto}" out_dir="$OUT/studies" "$@"
archer study status baselines out_dir="$OUT/studies"
