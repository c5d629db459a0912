"""Generation step: n samples per problem through a rollout backend, into ``samples.jsonl``.

File format (one JSON object per line)::

    {"type": "header", "contract": {...}, "contract_hash": "...", "model": "...",
     "batch_size": 8, "engine": "hf"}
    {"type": "sample", "problem_id": "gsm8k-0", "problem_index": 0, "sample_index": 0,
     "text": "...", "truncated": false, "n_tokens": 123}
    ...

Resuming: problems are generated in fixed chunks of ``batch_size`` problems (chunk ``c``
sampled with seed ``contract.seed + c``), each chunk appended and fsynced as a whole. Running
again on the same file skips every (problem, sample) already there and regenerates only
unfinished chunks, so an interrupted evaluation ends with the same samples as an
uninterrupted one. A half-written last line (the process was killed mid-write) is dropped.
A file written under another contract is refused (the message lists what differs).
The lm-eval engine (:mod:`evals.lm_eval_adapter`) writes the same format through the same
helpers (:func:`open_samples_file`, :func:`plan_chunks`, :func:`append_samples`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archer.data.templates import format_prompt
from archer.rollout.base import RolloutBackend, SamplingParams
from evals.contracts import ContractMismatch, EvalContract, text_sha256
from evals.registry import EvalProblem

log = logging.getLogger(__name__)


@dataclass
class SamplesFile:
    header: dict
    samples: dict[tuple[str, int], dict]  # (problem_id, sample_index) -> sample record
    dropped_partial_line: bool = False

    @property
    def contract(self) -> EvalContract:
        return EvalContract.from_dict(self.header["contract"])


def read_samples(path: str | Path) -> SamplesFile:
    """Parse a samples file; a malformed line other than a truncated last one is an error
    naming its line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples file {path} does not exist")
    lines = path.read_text(encoding="utf-8").split("\n")
    header: dict | None = None
    samples: dict[tuple[str, int], dict] = {}
    dropped = False
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            if i == last and not lines[i].endswith("}"):
                dropped = True  # killed mid-write: regenerate it
                continue
            raise ValueError(f"{path}: line {i + 1}: invalid JSON ({err.msg})") from None
        kind = rec.get("type")
        if kind == "header":
            if header is not None:
                raise ValueError(f"{path}: line {i + 1}: a second header")
            header = rec
        elif kind == "sample":
            if header is None:
                raise ValueError(f"{path}: line {i + 1}: sample before the header")
            missing = {"problem_id", "sample_index", "text"} - rec.keys()
            if missing:
                raise ValueError(f"{path}: line {i + 1}: sample lacks {sorted(missing)}")
            samples[(str(rec["problem_id"]), int(rec["sample_index"]))] = rec
        else:
            raise ValueError(f"{path}: line {i + 1}: unknown record type {kind!r}")
    if header is None:
        raise ValueError(f"{path}: no header line (not a samples file)")
    return SamplesFile(header, samples, dropped)


def chat_template_id(tokenizer: Any) -> str:
    chat = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    return f"model:{text_sha256(chat)[:12]}" if chat else "plain"


def generate_samples(
    contract: EvalContract,
    problems: Sequence[EvalProblem],
    backend: RolloutBackend,
    path: str | Path,
    *,
    tokenizer: Any = None,
    batch_size: int = 8,
    model: str = "",
    engine: str = "hf",
    progress: bool | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Generate the missing samples of ``problems`` under ``contract`` into ``path``.

    Returns counts: ``generated`` (new samples written), ``reused`` (already in the file),
    ``chunks_run``. ``on_chunk(c)`` is called after chunk ``c`` is safely on disk.
    """
    if len(problems) != contract.n_problems:
        raise ValueError(f"{len(problems)} problems but the contract covers "
                         f"{contract.n_problems}")
    if chat_template_id(tokenizer) != contract.chat_template:
        raise ContractMismatch(
            f"the tokenizer's chat template ({chat_template_id(tokenizer)}) is not the "
            f"contract's ({contract.chat_template})")
    path = Path(path)
    existing, batch_size = open_samples_file(path, contract, model=model,
                                             batch_size=batch_size, engine=engine)
    k = contract.k
    chunks, todo, reused = plan_chunks(problems, k, batch_size, existing)
    bar = _bar(len(problems) * k, reused, contract.benchmark, progress)
    generated = 0
    try:
        for c in todo:
            idx = chunks[c]
            prompts = [format_prompt(problems[i].record, contract.template, tokenizer)
                       for i in idx]
            params = SamplingParams(temperature=contract.temperature, top_p=contract.top_p,
                                    max_new_tokens=contract.max_new_tokens, n=k,
                                    seed=contract.seed + c)
            batch = backend.generate(prompts, params)
            lengths = batch.response_lengths.tolist()
            truncated = batch.truncated.tolist()
            rows = []
            for a, i in enumerate(idx):
                for j in range(k):
                    key = (problems[i].problem_id, j)
                    if key in existing:
                        continue
                    r = a * k + j
                    rows.append({"type": "sample", "problem_id": problems[i].problem_id,
                                 "problem_index": i, "sample_index": j,
                                 "text": batch.texts[r], "truncated": bool(truncated[r]),
                                 "n_tokens": int(lengths[r])})
            append_samples(path, rows)
            for row in rows:
                existing[(row["problem_id"], row["sample_index"])] = row
            generated += len(rows)
            if bar is not None:
                bar.update(len(rows))
            if on_chunk is not None:
                on_chunk(c)
    finally:
        if bar is not None:
            bar.close()
    return {"generated": generated, "reused": reused, "chunks_run": len(todo)}


def open_samples_file(path: Path, contract: EvalContract, *, model: str, batch_size: int,
                      engine: str) -> tuple[dict[tuple[str, int], dict], int]:
    """Make ``path`` ready to receive the samples of ``contract``.

    A new (or empty) file gets its header. An existing file must hold the same contract
    (else :class:`ContractMismatch` listing every differing field), model and engine family
    (lm-eval builds its own prompts, so its samples do not mix with the hf/vllm engines');
    a half-written last line is dropped. Returns the samples already there and the chunk
    size to use: the file's ``batch_size``, so a resumed run keeps the chunk layout (and
    with it the per-chunk seeds) of the run that started the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (path.is_file() and path.stat().st_size > 0):
        header = {"type": "header", "contract": contract.to_dict(),
                  "contract_hash": contract.hash, "model": model, "batch_size": batch_size,
                  "engine": engine}
        write_samples_file(path, header, [])
        return {}, batch_size
    sf = read_samples(path)
    old = sf.contract
    if old.hash != contract.hash:
        diffs = "; ".join(f"{k}: {a!r} != {b!r}" for k, (a, b) in old.diff(contract).items())
        raise ContractMismatch(
            f"{path} holds samples of contract {old.hash}, this run is {contract.hash} "
            f"({diffs}); use another output directory or delete the file")
    if sf.header.get("model") != model:
        raise ContractMismatch(f"{path} holds samples of model {sf.header.get('model')!r}, "
                               f"not {model!r}")
    old_engine = sf.header.get("engine", "hf")
    if (old_engine == "lm-eval") != (engine == "lm-eval"):
        raise ContractMismatch(f"{path} holds samples of engine {old_engine!r}, this run is "
                               f"{engine!r}; use another output directory or delete the file")
    if sf.dropped_partial_line:
        write_samples_file(path, sf.header, sf.samples.values())
        log.warning("%s: dropped a half-written last line; its chunk is regenerated", path)
    return sf.samples, int(sf.header.get("batch_size", batch_size))


def plan_chunks(problems: Sequence[EvalProblem], k: int, batch_size: int,
                existing: dict[tuple[str, int], dict]) -> tuple[list[list[int]], list[int], int]:
    """``(chunks, todo, reused)``: the problem indices of each chunk of ``batch_size``
    problems, the chunks that lack some of their ``k`` samples per problem in ``existing``,
    and how many samples ``existing`` already holds."""
    chunks = [list(range(s, min(s + batch_size, len(problems))))
              for s in range(0, len(problems), batch_size)]
    todo = [c for c, idx in enumerate(chunks)
            if any((problems[i].problem_id, j) not in existing for i in idx for j in range(k))]
    reused = sum(1 for p in problems for j in range(k) if (p.problem_id, j) in existing)
    return chunks, todo, reused


def _bar(total: int, initial: int, desc: str, progress: bool | None):
    import sys

    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    if not show:
        return None
    return tqdm(total=total, initial=initial, desc=f"generate {desc}", unit="sample",
                dynamic_ncols=True)


def append_samples(path: Path, rows: list[dict]) -> None:
    """Append sample lines to ``path`` as one write, then fsync."""
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def write_samples_file(path: Path, header: dict, rows) -> None:
    """Write ``header`` and ``rows`` to ``path`` atomically (a fsynced temporary file, then
    renamed over it)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(header, ensure_ascii=False) + "\n")
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class HFEvalRollout(RolloutBackend):
    """Hugging Face ``generate`` for evaluation:
    :meth:`archer.rollout.hf.HFRollout.generate_texts` (the sampling of training rollouts,
    without per-step scores) on the full prompt for each sample (no shared-prompt prefill).
    ``generate`` returns a :class:`~archer.rollout.hf.GeneratedTexts` (texts,
    response_lengths, truncated), all the runner needs."""

    def __init__(self, model, tokenizer, batch_size: int = 8) -> None:
        from archer.rollout.hf import HFRollout

        self._hf = HFRollout(model, tokenizer, batch_size=batch_size, share_prompts=False)

    def update_weights(self, weights) -> None:
        self._hf.update_weights(weights)

    def generate(self, prompts: list[str], params: SamplingParams):
        return self._hf.generate_texts(prompts, params)


def __getattr__(name: str):
    if name == "Generations":  # the old name of what HFEvalRollout.generate returns
        from archer.rollout.hf import GeneratedTexts

        return GeneratedTexts
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_backend(engine: str, model_path: str | Path, *, batch_size: int = 8,
                 device: str = "cpu", dtype: str = "float32",
                 gpu_memory_utilization: float = 0.9, tensor_parallel_size: int = 1,
                 max_model_len: int | None = None):
    """``(backend, tokenizer)`` for ``engine``: ``hf`` (Hugging Face generate on ``device``)
    or ``vllm`` (:class:`archer.rollout.vllm.VLLMRollout`, the ``vllm`` extra; vLLM picks the
    device itself and batches internally, ``gpu_memory_utilization`` is its memory share,
    ``tensor_parallel_size`` the GPUs it shards the model over and ``max_model_len`` its
    context length, None = the model's own: the trainer's ``vllm_*`` settings)."""
    if engine == "hf":
        from archer.models import load_policy_and_ref
        policy, _, tokenizer = load_policy_and_ref(model_path, need_ref=False, dtype=dtype,
                                                   device=device)
        return HFEvalRollout(policy, tokenizer, batch_size=batch_size), tokenizer
    if engine == "vllm":
        from archer.models import load_tokenizer, resolve_model_path
        from archer.rollout.vllm import VLLMRollout, require_vllm

        require_vllm()  # before resolving (and maybe preparing) the model
        path = resolve_model_path(model_path)
        tokenizer = load_tokenizer(path)
        backend = VLLMRollout(path, dtype=dtype, tokenizer=tokenizer,
                              gpu_memory_utilization=gpu_memory_utilization,
                              tensor_parallel_size=tensor_parallel_size,
                              max_model_len=max_model_len)
        return backend, tokenizer
    raise ValueError(f"unknown engine {engine!r}; allowed: hf, vllm, lm-eval")
