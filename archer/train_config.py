"""Typed, validated configuration of one training run (everything except the algorithm knobs,
which live in :class:`archer.config.AlgoConfig`).

Every field has one comment. Values are checked at construction and a bad one fails naming the
field; :meth:`TrainConfig.from_dict` refuses unknown keys (a typo never passes silently).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.config import AlgoConfig, build_config
from archer.validation import (
    ConfigError,
    check_bools,
    check_choice,
    check_device,
    check_int,
    check_range,
)

REWARD_ON_NONE = ("error", "zero")
LR_SCHEDULES = ("constant", "cosine", "linear")
OVERLONG_PROMPTS = ("error", "drop")
DTYPES = ("float32", "bfloat16", "float16")
DIST_BACKENDS = ("auto", "gloo", "nccl")
MIXED_PRECISION = ("none", "bf16", "fp16")
ROLLOUT_BACKENDS = ("hf", "vllm")
WEIGHT_SYNCS = ("auto", "object_store", "collective")  # rollout_weight_sync


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest of ``path`` and its parents that exists, when it is not a directory."""
    for part in (path, *path.parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def check_out_dir(name: str, value: Any, kind: str = "run directory") -> None:
    """``value`` can be the run directory (or another output directory, ``kind``): a
    non-empty path that is a directory or does not exist yet, with no regular file in the way
    (mkdir would fail after the model loaded)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name}={value!r} is invalid; allowed: a directory path")
    path = Path(value).expanduser()
    part = _file_in_the_way(path)
    if part is not None:
        what = "is" if part == path else f"is inside {str(part)!r}, which is"
        raise ConfigError(f"{name}={value!r} {what} an existing file, not a directory; "
                          f"choose another {kind}")


def check_out_file(name: str, value: Any) -> None:
    """``value`` can be an output file: a non-empty path that is not an existing directory,
    with no regular file in the way of its folder (``open(value, "w")`` cannot fail on the
    kind of path; the file itself may exist and is then replaced)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name}={value!r} is invalid; allowed: a file path")
    path = Path(value).expanduser()
    if path.is_dir():
        raise ConfigError(f"{name}={value!r} is an existing directory, not a file; give a "
                          "file path")
    part = _file_in_the_way(path.parent)
    if part is not None:
        raise ConfigError(f"{name}={value!r} is inside {str(part)!r}, which is an existing "
                          "file, not a directory; choose another file path")


@dataclass(frozen=True)
class DataConfig:
    """Where the training prompts come from: a reasoning-gym task, a registered data file or
    a file of the user's."""

    task: str = "chain_sum"  # reasoning-gym task name (used when `file` is None)
    size: int = 1000  # number of generated gym problems (train + validation)
    seed: int = 0  # seed of the gym generator and of the train/val split
    task_config: dict = field(default_factory=dict)  # extra kwargs of the gym task's config
    file: str | None = None  # instead of `task`: a registered data file's name
    #   (archer.data.datasets.FILES) or the path of your own .json/.jsonl (records with a
    #   `prompt` plus the fields your reward reads; archer.data.datasets.load_data_file)
    skip_bad_records: bool = False  # data file: skip (count, log) malformed records
    answer_format: str = " {answer}"  # how a reference answer is written as a target text
    #   (`archer sft` teaches `prompt + answer_format.format(answer=...)`); must hold {answer}

    def __post_init__(self) -> None:
        check_bools(self, "data.")
        check_int("data.size", self.size, 2)
        check_int("data.seed", self.seed, 0)
        if not isinstance(self.task_config, dict):
            raise ConfigError("data.task_config must be a mapping")
        if not isinstance(self.answer_format, str) or "{answer}" not in self.answer_format:
            raise ConfigError(f"data.answer_format={self.answer_format!r} is invalid; allowed: "
                              "a string containing {answer}")
        if not self.task and not self.file:
            raise ConfigError("data: set `task` (reasoning-gym) or `file` (registered data file)")


@dataclass(frozen=True)
class DistributedConfig:
    """Data-parallel training with torch FSDP2 when launched by ``torchrun`` (WORLD_SIZE > 1);
    ignored in a single process. See :mod:`archer.distributed`."""

    backend: str = "auto"  # process-group backend: auto (nccl on CUDA, else gloo) | gloo | nccl
    mixed_precision: str = "none"  # FSDP2 param dtype in forward/backward: none | bf16 | fp16
    reshard_after_forward: bool = True  # free gathered layer params after forward (ZeRO-3)
    timeout_s: int = 1800  # collective timeout in seconds (a rank that dies stops the others)

    def __post_init__(self) -> None:
        check_choice("distributed.backend", self.backend, DIST_BACKENDS)
        check_choice("distributed.mixed_precision", self.mixed_precision, MIXED_PRECISION)
        check_bools(self, "distributed.")
        check_int("distributed.timeout_s", self.timeout_s, 1)


@dataclass(frozen=True)
class TrainConfig:
    """One RL run: model, data, rollout, optimisation, validation, checkpoints."""

    # --- what is trained on what --------------------------------------------------------------
    model: str = "tiny"  # local HF directory or a prepared model name (archer.models.MODELS)
    algo: AlgoConfig = field(default_factory=AlgoConfig)  # the algorithm (loss, split, ...)
    reward: str = "reasoning_gym"  # a registered reward (archer.rewards.REWARDS) or your own
    #   function: "package.module:function" or "path/to/file.py:function"
    reward_on_none: str = "error"  # a reward of None: "error" stops the run, "zero" scores 0
    data: DataConfig = field(default_factory=DataConfig)  # the prompt source
    template: str = "plain_answer"  # prompt template name (archer.data.templates.TEMPLATES)
    # --- rollout --------------------------------------------------------------------------------
    prompts_per_step: int = 4  # prompts (groups) per training step, after refill
    group_size: int = 4  # G: sampled responses per prompt; >= 2 (1 only with
    #   algo.group_filter=none: the advantage is then the raw reward)
    max_new_tokens: int = 8  # response budget in tokens
    max_prompt_tokens: int | None = None  # prompts longer than this (tokens, after the template)
    #   are an error or dropped at start-up (overlong_prompts); None = no limit. Either way a
    #   kept prompt + max_new_tokens over the model's context length is an error at start-up
    overlong_prompts: str = "error"  # a prompt over max_prompt_tokens: error (naming it) | drop
    #   (train and held-out records; counted and logged)
    temperature: float | None = None  # rollout temperature; None = algo.temperature (must match)
    top_p: float = 1.0  # nucleus sampling; 1.0 disables it
    rollout_batch_size: int = 8  # prompts per generate() call
    refill_max_rounds: int = 3  # DAPO refill: at most this many rollout rounds per step (>= 1)
    rollout_backend: str = "hf"  # hf (shares the policy module) | vllm (the `vllm` extra; weights
    #   pushed in place after every update, sampler log-probs compared with the trainer's)
    vllm_gpu_memory_utilization: float = 0.5  # vllm: fraction of GPU memory for weights + KV
    #   cache, shared with training (on CPU: fraction of host memory for the KV cache)
    vllm_enable_sleep_mode: bool = False  # vllm: offload weights / free the KV cache while
    #   training, wake up before the weight push (GPU only; ignored with a log line on CPU)
    vllm_max_model_len: int | None = None  # vllm: context length; None = the model's own
    vllm_tensor_parallel_size: int = 1  # vllm: GPUs the sampler is sharded over
    vllm_enforce_eager: bool = False  # vllm: no CUDA graphs / compilation (faster start-up)
    max_staleness: int = 0  # k: asynchronous rollouts, a batch generated by a policy at most k
    #   steps behind while the trainer updates (archer.trainer.pipeline); 0 = today's
    #   synchronous loop. k >= 1 sets algo.tis_cap to 2 when it is unset; the rollout worker
    #   samples with rollout_backend (vllm: an engine on GPUs other than the trainer's)
    rollout_weight_sync: str = "auto"  # k >= 1: how policy versions reach the rollout worker:
    #   object_store (Ray's object store) | collective (a gloo/NCCL weight channel, into the
    #   vLLM engine's worker process) | auto (collective for vllm, object_store for hf)
    # --- update ---------------------------------------------------------------------------------
    ppo_epochs: int = 1  # passes over the rollout batch per step
    mini_batch_prompts: int = 4  # prompts per optimizer step (x G responses)
    micro_batch_size: int = 16  # responses per forward/backward (gradient accumulation)
    shuffle_minibatches: bool = True  # shuffle the groups before cutting mini-batches each epoch
    lr: float = 1e-4  # AdamW peak learning rate
    weight_decay: float = 0.1  # AdamW decoupled weight decay
    warmup_steps: int = 0  # linear warm-up over this many training steps, then lr_schedule
    lr_schedule: str = "constant"  # after warm-up: constant | cosine | linear decay over the
    #   remaining training steps (to min_lr_ratio x lr), as verl's and HF's schedulers
    min_lr_ratio: float = 0.0  # cosine / linear: the decayed lr's floor, as a fraction of lr
    grad_clip: float = 1.0  # max global grad norm; a non-finite norm skips the optimizer step
    entropy_chunk_size: int = 256  # positions per chunk in the entropy computation
    prompt_cache: bool = True  # run each distinct prompt once and reuse its KV cache for the
    #   group's G responses: in the HF rollout's prefill, the no-grad passes (reference / old
    #   log-probs, entropy pre-pass) and, single-process, the update's forward and backward
    gradient_checkpointing: bool = False  # recompute layer activations in backward (memory)
    length_bucketing: bool = False  # micro-batches of similar response length, padding trimmed
    distributed: DistributedConfig = field(default_factory=DistributedConfig)  # FSDP2 (torchrun)
    # --- run ------------------------------------------------------------------------------------
    total_steps: int = 10  # training steps (rollout + update) in the whole run
    seed: int = 0  # seeds sampling, shuffling, the prompt order and torch
    val_every: int = 0  # validate every N steps (and at the end); 0 disables validation
    val_size: int = 16  # held-out prompts for validation (taken out of the data)
    val_temperature: float = 0.0  # validation sampling temperature; 0 = greedy
    val_samples: int = 1  # k samples per held-out prompt; val/reward_mean is avg@k
    ckpt_every: int = 0  # checkpoint every N steps (and at the end); 0 = only at the end
    keep_checkpoints: int = 2  # keep the last K checkpoints
    resume: bool = True  # continue from the latest checkpoint in out_dir when there is one
    out_dir: str = "runs/default"  # run directory: metrics, checkpoints, final export
    export_final: bool = True  # save the final policy + tokenizer as an HF dir in out_dir/final
    dtype: str = "float32"  # parameter dtype: float32 | bfloat16 | float16
    # the frozen reference model's dtype (None: ``dtype``). bfloat16 halves its memory and,
    # where the hardware has bf16 matmuls, its forward time, as verl keeps its reference
    ref_dtype: str | None = None
    num_threads: int | None = None  # torch intra-op threads; None keeps torch's default
    device: str = "auto"  # auto (CUDA when torch sees a GPU, else CPU) | cpu | cuda | cuda:N;
    #   under torchrun each rank uses cuda:LOCAL_RANK (auto/cuda) or the CPU (cpu)
    deterministic: bool = False  # torch.use_deterministic_algorithms (warn-only) for exact resume

    def __post_init__(self) -> None:
        if isinstance(self.algo, dict):
            object.__setattr__(self, "algo", AlgoConfig.from_dict(self.algo))
        if isinstance(self.data, dict):
            object.__setattr__(self, "data", build_config(DataConfig, self.data, "data"))
        if isinstance(self.distributed, dict):
            object.__setattr__(self, "distributed",
                               build_config(DistributedConfig, self.distributed, "distributed"))
        if not isinstance(self.algo, AlgoConfig) or not isinstance(self.data, DataConfig) or \
                not isinstance(self.distributed, DistributedConfig):
            raise ConfigError("algo, data and distributed must be their config classes or "
                              "mappings")
        check_bools(self)
        if self.temperature is not None and self.temperature != self.algo.temperature:
            raise ConfigError(
                f"temperature={self.temperature} differs from algo.temperature="
                f"{self.algo.temperature}; the loss scores tokens at the sampling temperature"
            )
        check_choice("overlong_prompts", self.overlong_prompts, OVERLONG_PROMPTS)
        if self.max_prompt_tokens is not None:
            check_int("max_prompt_tokens", self.max_prompt_tokens, 1)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        check_choice("reward_on_none", self.reward_on_none, REWARD_ON_NONE)
        check_choice("rollout_backend", self.rollout_backend, ROLLOUT_BACKENDS)
        check_range("vllm_gpu_memory_utilization", self.vllm_gpu_memory_utilization, 0.0, 1.0,
                     lo_open=True)
        check_int("vllm_tensor_parallel_size", self.vllm_tensor_parallel_size, 1)
        if self.vllm_max_model_len is not None:
            check_int("vllm_max_model_len", self.vllm_max_model_len, 1)
        check_int("max_staleness", self.max_staleness, 0)
        check_choice("rollout_weight_sync", self.rollout_weight_sync, WEIGHT_SYNCS)
        if self.max_staleness and self.algo.tis_cap is None:  # off-policy: correct by default
            object.__setattr__(self, "algo", dataclasses.replace(self.algo, tis_cap=2.0))
        check_choice("dtype", self.dtype, DTYPES)
        if self.ref_dtype is not None:
            check_choice("ref_dtype", self.ref_dtype, DTYPES)  # null: the policy's dtype
        for name in ("prompts_per_step", "group_size", "max_new_tokens", "rollout_batch_size",
                     "refill_max_rounds", "ppo_epochs", "mini_batch_prompts",
                     "micro_batch_size", "total_steps", "keep_checkpoints",
                     "entropy_chunk_size", "val_samples"):
            check_int(name, getattr(self, name), 1)
        if self.group_size < 2 and self.algo.group_filter != "none":
            # A group of one response is always "all-equal", so drop/refill would discard
            # every group and no step would train. With group_filter=none a group of one is
            # kept and every estimator gives A = reward (no baseline: plain REINFORCE).
            raise ConfigError(
                f"group_size={self.group_size} is invalid with algo.group_filter="
                f"{self.algo.group_filter!r}: group-relative advantages need at least 2 "
                "samples per prompt (a group of 1 always has all-equal rewards, so every group "
                "would be dropped and nothing would train); use group_size >= 2, or "
                "algo.group_filter=none to train on the raw reward (advantage = reward, no "
                "baseline)")
        if self.val_samples > 1 and self.val_temperature == 0:
            raise ConfigError(f"val_samples={self.val_samples} needs val_temperature > 0 "
                              "(greedy samples are all the same)")
        for name in ("warmup_steps", "seed", "val_every", "ckpt_every", "val_size"):
            check_int(name, getattr(self, name), 0)
        if self.num_threads is not None:
            check_int("num_threads", self.num_threads, 1)
        check_device("device", self.device)
        check_out_dir("out_dir", self.out_dir)
        check_range("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        check_range("lr", self.lr, 0.0, lo_open=True)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_range("grad_clip", self.grad_clip, 0.0, lo_open=True)
        check_range("val_temperature", self.val_temperature, 0.0)
        if self.mini_batch_prompts > self.prompts_per_step:
            raise ConfigError(
                f"mini_batch_prompts={self.mini_batch_prompts} exceeds prompts_per_step="
                f"{self.prompts_per_step}"
            )
        if self.val_every and self.val_size < 1:
            raise ConfigError("val_every > 0 needs val_size >= 1")

    @property
    def sampling_temperature(self) -> float:
        return self.algo.temperature

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a plain mapping (YAML/JSON); unknown keys fail naming the key."""
        return build_config(cls, dict(data), "train")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
