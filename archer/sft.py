"""Supervised warm-up (``archer sft``): teacher-force ``prompt -> reference answer``.

A randomly initialised tiny model never samples a correct answer, so RL has no reward to
learn from; a short supervised phase on the training split's reference answers gives it a
non-zero start. The prompt is the same text the trainer generates from (template + chat
template), the target is ``data.answer_format.format(answer=record["answer"])`` followed by EOS,
and only the target tokens are scored (prompt labels are -100). Held-out greedy accuracy is
measured with the task's reward on the same train/validation split as ``archer train``
(``archer.trainer.load_records``), every ``eval_every`` steps and at the end; training stops
at ``target_accuracy`` (a warm-up should not converge: RL needs something left to fix), after
``max_seconds`` or after ``steps``. The result is a Hugging Face directory
``<out_dir>/model`` that ``archer train model=<out_dir>/model`` loads, plus
``<out_dir>/sft_log.jsonl`` (one row per evaluation) and ``<out_dir>/sft_summary.json``.
Ctrl-C / SIGTERM finish the step, save the model so far and ``<out_dir>/resume.pt``; the same
command goes on from there exactly (``resume=false`` starts over).
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from archer.config import build_config
from archer.train_config import DTYPES, LR_SCHEDULES, DataConfig, TrainConfig, check_out_dir
from archer.validation import (
    ConfigError,
    check_bools,
    check_choice,
    check_device,
    check_int,
    check_range,
)


@dataclass(frozen=True)
class SFTConfig:
    """One supervised warm-up: model, data, budget and optimiser."""

    model: str = "tiny"  # local HF directory or a prepared model name (archer.models.MODELS)
    data: DataConfig = field(default_factory=DataConfig)  # prompts and reference answers
    reward: str = "reasoning_gym"  # reward used as the held-out accuracy
    template: str = "plain_answer"  # prompt template (as in `archer train`)
    out_dir: str = "runs/sft"  # model -> <out_dir>/model, log -> <out_dir>/sft_log.jsonl
    steps: int = 2000  # at most this many optimizer steps
    max_seconds: float | None = 120.0  # wall-clock budget; None = no limit
    target_accuracy: float | None = None  # stop once held-out accuracy reaches it; None = never
    eval_every: int = 25  # held-out evaluation every N steps (and at the end)
    batch_size: int = 64  # (prompt, answer) pairs per step, sampled with replacement
    lr: float = 3e-3  # AdamW peak learning rate
    warmup_steps: int = 0  # linear warm-up over this many steps, then lr_schedule
    lr_schedule: str = "constant"  # after warm-up: constant | cosine | linear decay over the
    #   remaining `steps` (to min_lr_ratio x lr), as `archer train`'s lr_schedule
    min_lr_ratio: float = 0.0  # cosine / linear: the decayed lr's floor, as a fraction of lr
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    val_size: int = 200  # held-out prompts (the same split as `archer train`)
    max_new_tokens: int = 8  # generation budget of the held-out evaluation
    seed: int = 0  # seeds the batch sampling
    dtype: str = "float32"  # parameter dtype: float32 | bfloat16 | float16
    num_threads: int | None = None  # torch intra-op threads; None keeps torch's default
    device: str = "auto"  # auto (CUDA when torch sees a GPU, else CPU) | cpu | cuda | cuda:N
    share_prefix: bool = True  # run the tokens every row of a batch starts with once
    resume: bool = True  # continue a warm-up a signal stopped (<out_dir>/resume.pt); false:
    #   start over

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            object.__setattr__(self, "data", build_config(DataConfig, self.data, "data"))
        if not isinstance(self.data, DataConfig):
            raise ConfigError("data must be a DataConfig or a mapping")
        check_bools(self)
        check_out_dir("out_dir", self.out_dir)
        for name in ("steps", "eval_every", "batch_size", "max_new_tokens"):
            check_int(name, getattr(self, name), 1)
        check_int("val_size", self.val_size, 0)
        check_int("seed", self.seed, 0)
        if self.num_threads is not None:
            check_int("num_threads", self.num_threads, 1)
        check_device("device", self.device)
        if self.max_seconds is not None:
            check_range("max_seconds", self.max_seconds, 0.0, lo_open=True)
        if self.target_accuracy is not None:
            check_range("target_accuracy", self.target_accuracy, 0.0, 1.0)
            if self.val_size < 1:
                raise ConfigError("target_accuracy needs val_size >= 1 (held-out prompts)")
        check_range("lr", self.lr, 0.0, lo_open=True)
        check_int("warmup_steps", self.warmup_steps, 0)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        check_range("weight_decay", self.weight_decay, 0.0)
        check_choice("dtype", self.dtype, DTYPES)

    def records_config(self) -> TrainConfig:
        """The TrainConfig whose ``load_records`` split this warm-up shares."""
        return TrainConfig(model=self.model, data=self.data, reward=self.reward,
                           template=self.template, val_size=self.val_size, seed=self.seed)


RESUME_FILE = "resume.pt"  # what a stopped warm-up needs to go on exactly
# settings a resumed warm-up may change: its budget and how it is run and scored, not what
# is trained
SFT_RESUME_MAY_CHANGE = ("steps", "max_seconds", "target_accuracy", "eval_every",
                         "max_new_tokens", "num_threads", "device", "resume", "reward")


def save_resume_state(path: Path, cfg: SFTConfig, model, opt, gen: torch.Generator,
                      state: dict) -> None:
    """Write ``path`` atomically: parameters, optimizer, the batch sampler's and torch's RNG
    states, the counters in ``state`` and the config (to refuse a resume that changes it)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"config": json.loads(json.dumps(asdict(cfg), default=str)),
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                **state}, tmp)
    tmp.replace(path)


def load_resume_state(path: Path, cfg: SFTConfig) -> dict:
    """The state :func:`save_resume_state` wrote; a ConfigError when it cannot be read or
    the config changed what is trained (:data:`SFT_RESUME_MAY_CHANGE` may change)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved = state["config"]
    except Exception as err:  # noqa: BLE001  (a cut or foreign file)
        raise ConfigError(f"{path}: cannot resume from it ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); delete it or "
                          "set resume=false to start over") from None
    from archer.trainer import config_changes

    changed = config_changes(saved, asdict(cfg), SFT_RESUME_MAY_CHANGE)
    if changed:
        raise ConfigError(f"{path} is a warm-up stopped with other settings: "
                          f"{', '.join(changed)}; run it with its own settings to resume, "
                          "or set resume=false to start over")
    return state


@dataclass
class SFTResult:
    model_dir: Path  # the saved HF directory
    steps: int  # optimizer steps taken
    first_loss: float  # loss of the first batch
    last_loss: float  # loss of the last batch
    accuracy: float  # last held-out greedy accuracy (nan without held-out prompts)
    stopped: str  # "target" | "time" | "steps" | "SIGINT" / "SIGTERM" (the model so far saved)
    history: list[dict[str, float]]  # one row per evaluation: step, loss, accuracy, seconds


def sft_batch(tokenizer, prompts: list[str], targets: list[str]):
    """(input_ids, attention_mask, labels), each (B, L), right-padded; labels are -100 on
    the prompt and the padding, so only the target tokens and EOS are scored."""
    rows, labels = [], []
    for p, a in zip(prompts, targets):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p_ids + a_ids)
        labels.append([-100] * len(p_ids) + a_ids)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    lab = torch.full((len(rows), width), -100)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(lb)] = torch.tensor(lb)
        att[i, : len(r)] = 1
    return ids, att, lab


def sft_loss(model, tokenizer, prompts: list[str], targets: list[str],
             share_prefix: bool = True) -> torch.Tensor:
    """Mean token cross-entropy of ``targets`` (+ EOS) given ``prompts``. With
    ``share_prefix``, the tokens every row starts with (a template's instruction, a system
    prompt) run once (:func:`shared_prefix_loss`)."""
    device = next(model.parameters()).device
    ids, att, lab = (t.to(device) for t in sft_batch(tokenizer, prompts, targets))
    if share_prefix:
        loss = shared_prefix_loss(model, ids, att, lab)
        if loss is not None:
            return loss
    return model(input_ids=ids, attention_mask=att, labels=lab).loss


def shared_prefix_length(ids: torch.Tensor, att: torch.Tensor, lab: torch.Tensor) -> int:
    """Leading columns that hold the same real token in every row and whose logits score no
    label (a label in column t is scored by the logits of column t - 1)."""
    same = ((ids == ids[:1]) & (att == 1)).all(0).long()  # (W,)
    common = int(same.cumprod(0).sum())
    scored = (lab != -100).any(0).nonzero()
    first_label = int(scored[0]) if len(scored) else ids.shape[1]
    return min(common, first_label - 1)


def shared_prefix_loss(model, ids: torch.Tensor, att: torch.Tensor, lab: torch.Tensor
                       ) -> torch.Tensor | None:
    """The causal-LM loss of the right-padded batch (what ``model(..., labels=lab).loss``
    gives: mean cross-entropy over the labelled tokens) with the shared prefix run once:
    its KV cache (one row) is repeated for every row and the rest of each row attends to
    it, gradients flowing back through the cache. None where it does not apply (one row,
    a prefix under 2 tokens, a model without a cache argument or one that drops its cache,
    e.g. under gradient checkpointing): the caller runs the plain loss."""
    from archer.models import cache_kwarg, prefill

    n, width = ids.shape
    prefix = shared_prefix_length(ids, att, lab)
    if n < 2 or prefix < 2:
        return None
    prefilled = prefill(model, ids[:1, :prefix])
    if prefilled is None:
        return None
    cache = prefilled[1]
    cache.batch_repeat_interleave(n)
    kwarg = cache_kwarg(type(model))
    positions = torch.arange(prefix, width, device=ids.device).expand(n, -1)
    logits = model(input_ids=ids[:, prefix:], attention_mask=att, position_ids=positions,
                   use_cache=False, **{kwarg: cache}).logits  # column j predicts prefix+j+1
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), lab[:, prefix + 1:].reshape(-1),
        ignore_index=-100)


def data_source(data: DataConfig) -> str:
    """Where the records come from, for messages: the data file (key and path) or the task."""
    if data.file:
        from archer.data.datasets import data_file_path, is_data_path

        if is_data_path(data.file):
            return f"data.file={data.file!r}"
        return f"data.file={data.file!r} ({data_file_path(data.file)})"
    return f"data.task={data.task!r} (reasoning-gym)"


@torch.no_grad()
def heldout_accuracy(model, tokenizer, prompts: list[str], records: list[dict], reward_fn,
                     max_new_tokens: int, batch_size: int = 64) -> float:
    """Fraction of greedy answers to ``prompts`` that score >= 1 (partial credit, e.g.
    reasoning-gym's for a near miss, and None rewards count as wrong), counted as the
    trainer's validation counts it (:func:`archer.trainer.validation.heldout_scores`)."""
    from archer.rollout import HFRollout, SamplingParams
    from archer.trainer.validation import heldout_scores

    rollout = HFRollout(model, tokenizer, batch_size=batch_size)
    batch = rollout.generate(prompts, SamplingParams(temperature=0.0, top_p=1.0, n=1,
                                                     max_new_tokens=max_new_tokens, seed=0))
    return heldout_scores(batch, records, 1, reward_fn, "held-out reward").accuracy


@dataclass
class _Progress:
    """A warm-up's state as it runs (what a resume restores)."""

    start: float  # perf_counter() at the start, less the time before a resumed stop
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    first_loss: float = math.nan
    last_loss: float = math.nan
    accuracy: float = math.nan
    stopped: str = "steps"


@dataclass
class _Parts:
    """What one warm-up trains and scores: the model, its optimiser and sampler, the pairs."""

    model: torch.nn.Module
    tok: Any
    opt: torch.optim.Optimizer
    gen: torch.Generator
    prompts: list[str]
    targets: list[str]
    val_prompts: list[str]
    val: list[dict]
    reward_fn: Callable


def supervised_finetune(cfg: SFTConfig, log: Callable[[str], None] = print) -> SFTResult:
    """Run the warm-up described in the module docstring; returns where the model went."""
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    parts = _build_parts(cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path, resume_path = out / "sft_log.jsonl", out / RESUME_FILE
    resumed = load_resume_state(resume_path, cfg) if cfg.resume and resume_path.is_file() \
        else None
    run = _Progress(start=time.perf_counter())
    if resumed is None:
        log_path.unlink(missing_ok=True)
    else:
        _restore(run, parts, resumed, log_path)
        log(f"resuming the warm-up stopped after step {run.step} ({resume_path}; "
            "resume=false starts over)")

    def evaluate() -> float:
        if not parts.val:
            return math.nan
        return heldout_accuracy(parts.model, parts.tok, parts.val_prompts, parts.val,
                                parts.reward_fn, cfg.max_new_tokens)

    _train(cfg, run, parts, evaluate, log_path, log)
    evaluated, acc_evaluated = list(run.history), run.accuracy  # what a resume goes on from
    if not run.history or run.history[-1]["step"] != run.step:  # (a signal: no evaluation)
        held = math.nan if run.stopped in ("SIGINT", "SIGTERM") else evaluate()
        run.accuracy = _record(run.history, log_path, run.step, run.last_loss, held, run.start,
                               log, parts.opt.param_groups[0]["lr"])
    model_dir = out / "model"
    parts.model.save_pretrained(model_dir)
    parts.tok.save_pretrained(model_dir)
    if run.stopped in ("SIGINT", "SIGTERM"):  # the same command goes on from here
        save_resume_state(resume_path, cfg, parts.model, parts.opt, parts.gen, {
            "step": run.step, "history": evaluated, "first_loss": run.first_loss,
            "last_loss": run.last_loss, "accuracy": acc_evaluated,
            "seconds": time.perf_counter() - run.start})
    else:
        resume_path.unlink(missing_ok=True)
    result = SFTResult(model_dir=model_dir, steps=run.step, first_loss=run.first_loss,
                       last_loss=run.last_loss, accuracy=run.accuracy, stopped=run.stopped,
                       history=run.history)
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
    summary["config"] = asdict(cfg)
    (out / "sft_summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return result


def _build_parts(cfg: SFTConfig) -> _Parts:
    """The records (checked first: data errors are quick), the model, its optimiser and the
    (prompt, target) pairs."""
    from archer.data.templates import format_prompt
    from archer.distributed import resolve_device
    from archer.models import load_policy_and_ref
    from archer.trainer import load_records, resolve_reward

    device = resolve_device(cfg.device)
    train, val = load_records(cfg.records_config())
    # training records need the answer to learn, held-out ones to score the accuracy
    missing = sorted(r.get("index", -1) for r in train + val if r.get("answer") is None)
    if missing:
        raise ValueError(f"{data_source(cfg.data)}: {len(missing)} record(s) have no 'answer' "
                         f"to learn or score (first: index {missing[0]}); `archer sft` needs "
                         "an 'answer' field in every record")
    model, _, tok = load_policy_and_ref(cfg.model, need_ref=False, dtype=cfg.dtype,
                                        device=device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    return _Parts(model=model, tok=tok, opt=opt, gen=torch.Generator().manual_seed(cfg.seed),
                  prompts=[format_prompt(r, cfg.template, tok) for r in train],
                  targets=[cfg.data.answer_format.format(answer=r["answer"]) for r in train],
                  val_prompts=[format_prompt(r, cfg.template, tok) for r in val], val=val,
                  reward_fn=resolve_reward(cfg.reward))


def _restore(run: _Progress, parts: _Parts, resumed: dict, log_path: Path) -> None:
    """A stopped warm-up's state back: weights, optimiser, sampler, RNG, clock and log."""
    parts.model.load_state_dict(resumed["model"])
    parts.opt.load_state_dict(resumed["optimizer"])
    parts.gen.set_state(resumed["generator"])
    torch.set_rng_state(resumed["torch_rng"])
    run.step, run.history = int(resumed["step"]), list(resumed["history"])
    run.first_loss, run.last_loss, run.accuracy = (
        float(resumed[k]) for k in ("first_loss", "last_loss", "accuracy"))
    run.start -= float(resumed["seconds"])  # max_seconds counts the time before the stop
    log_path.unlink(missing_ok=True)  # the log as the run had it, without the stop's row
    for row in run.history:
        _write_row(log_path, row)


def _train(cfg: SFTConfig, run: _Progress, parts: _Parts, evaluate: Callable[[], float],
           log_path: Path, log: Callable[[str], None]) -> None:
    """Optimizer steps until ``steps``, ``max_seconds``, ``target_accuracy`` or a signal
    (Ctrl-C / SIGTERM: stop after this step; the caller saves the model so far)."""
    from archer.trainer import StopOnSignal, lr_factor

    parts.model.train()
    signals = StopOnSignal(say=log, action="saving the model so far")
    with signals:
        while run.step < cfg.steps:
            if signals.received is not None:
                run.stopped = signal.Signals(signals.received).name
                return
            if cfg.max_seconds is not None and \
                    time.perf_counter() - run.start >= cfg.max_seconds:
                run.stopped = "time"
                return
            idx = torch.randint(len(parts.prompts), (cfg.batch_size,),
                                generator=parts.gen).tolist()
            loss = sft_loss(parts.model, parts.tok, [parts.prompts[i] for i in idx],
                            [parts.targets[i] for i in idx], share_prefix=cfg.share_prefix)
            parts.opt.zero_grad(set_to_none=True)
            loss.backward()
            for group in parts.opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(run.step, cfg.warmup_steps, cfg.lr_schedule,
                                                 cfg.steps, cfg.min_lr_ratio)
            parts.opt.step()
            run.step += 1
            run.last_loss = loss.item()
            run.first_loss = run.last_loss if run.step == 1 else run.first_loss
            if run.step % cfg.eval_every == 0:
                run.accuracy = _record(run.history, log_path, run.step, run.last_loss,
                                       evaluate(), run.start, log,
                                       parts.opt.param_groups[0]["lr"])
                if cfg.target_accuracy is not None and run.accuracy >= cfg.target_accuracy:
                    run.stopped = "target"
                    return


def _record(history, log_path: Path, step: int, loss: float, acc: float, start: float,
            log: Callable[[str], None], lr: float) -> float:
    row = {"step": step, "loss": loss, "accuracy": acc, "lr": lr,
           "seconds": round(time.perf_counter() - start, 2)}
    history.append(row)
    _write_row(log_path, row)
    log(f"  sft step {step:5d}  loss {loss:.3f}  held-out acc {acc:.3f}  ({row['seconds']} s)")
    return acc


def _write_row(log_path: Path, row: dict) -> None:
    with log_path.open("a") as f:
        f.write(json.dumps({k: (str(v) if isinstance(v, float) and not math.isfinite(v)
                                else v) for k, v in row.items()}) + "\n")
