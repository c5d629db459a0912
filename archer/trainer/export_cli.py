"""``archer export <run dir | checkpoint dir> <out dir> [--step N | --best]``: a checkpoint as
a Hugging Face model directory (safetensors weights, config, generation config, tokenizer),
loadable by ``transformers`` unchanged, written by the same function as a run's ``final/``
(:func:`archer.trainer.checkpointing.write_policy`).

Which checkpoint of a run directory: ``--step N`` that step's; ``--best`` the best validation
step's, i.e. the checkpoint whose step logged the highest ``val/reward_mean`` (read from the
checkpoint's ``state.json``, which holds the metrics its step logged, whatever the tracking
backend), the latest of equal ones; by default the latest. Pruning (``keep_checkpoints``)
never removes the best one, so ``--best`` finds it. A checkpoint holds the full state dict
(gathered when an FSDP run saves it): nothing is resharded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from archer.checkpoint import (
    BEST_METRIC,
    PREFIX,
    best_checkpoint,
    checkpoint_root,
    checkpoint_step,
    list_checkpoints,
    validation_metric,
)
from archer.validation import ConfigError


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """``archer export``, its arguments and ``func`` (:func:`run`)."""
    p = subparsers.add_parser(
        "export", help="write a run's checkpoint as a Hugging Face model directory",
        description="Write a checkpoint as a Hugging Face model directory (safetensors, "
                    "config, generation config, tokenizer), as the run's final/ is written. "
                    "Example: archer export runs/train/archer-math_train-model runs/best "
                    "--best")
    p.add_argument("source", help="a run directory (its checkpoints/) or one checkpoint "
                                  "directory (<run>/checkpoints/step_000042)")
    p.add_argument("out_dir", help="the model directory to write (new or empty)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, default=None,
                       help="the checkpoint of this step (default: the latest)")
    which.add_argument("--best", action="store_true",
                       help=f"the checkpoint whose step logged the highest {BEST_METRIC} "
                            "(the latest of equal ones)")
    p.set_defaults(func=run)
    return p


def is_checkpoint_dir(path: Path) -> bool:
    return path.name.startswith(PREFIX) and (path / "state.json").is_file()


def pick_checkpoint(source: str | Path, step: int | None = None, best: bool = False) -> Path:
    """The checkpoint ``source`` names: itself (a checkpoint directory) or, of a run
    directory, that of ``step``, the best (``best``) or the latest. ConfigError saying what
    is there otherwise."""
    source = Path(source).expanduser()
    if is_checkpoint_dir(source):
        if step is not None or best:
            raise ConfigError(f"{source} is one checkpoint: --step/--best choose among a run's "
                              f"checkpoints; give the run directory {source.parent.parent}")
        return source
    if not source.is_dir():
        raise ConfigError(f"{source} is neither a run directory nor a checkpoint directory "
                          "(it does not exist)" if not source.exists() else
                          f"{source} is a file, not a run or checkpoint directory")
    found = list_checkpoints(source)
    if not found:
        raise ConfigError(f"run {source} has no checkpoint ({checkpoint_root(source)} "
                          + ("holds no complete step_* directory)" if checkpoint_root(
                              source).is_dir() else "does not exist)")
                          + "; a run saves one every ckpt_every steps and at its end")
    steps = [checkpoint_step(p) for p in found]
    if step is not None:
        if step not in steps:
            raise ConfigError(f"run {source} has no checkpoint of step {step}; its "
                              f"checkpoints are of steps {steps}")
        return found[steps.index(step)]
    if best:
        chosen = best_checkpoint(source)
        if chosen is None:
            raise ConfigError(f"no checkpoint of run {source} (steps {steps}) records "
                              f"{BEST_METRIC}: none of their steps was validated (val_every "
                              "a divisor of ckpt_every validates every checkpointed step)")
        return chosen
    return found[-1]


def check_out(out_dir: str | Path) -> Path:
    """The export's directory: new, or an empty directory; a file (or a file in its path)
    or a directory with files in it is refused."""
    out = Path(out_dir).expanduser()
    for part in (out, *out.parents):
        if part.exists() and not part.is_dir():
            raise ConfigError(f"out dir {str(out)!r}: {str(part)!r} is a file, not a directory; "
                              "choose another out dir")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"out dir {str(out)!r} is not empty; choose a new directory (an "
                          "export never mixes its files with others)")
    return out


def run(args: argparse.Namespace) -> int:
    """``archer export``; 0 on success (a bad argument raises ConfigError, which the CLI
    prints as ``archer: error: ...``)."""
    from archer.trainer.checkpointing import export_checkpoint

    checkpoint = pick_checkpoint(args.source, args.step, args.best)
    out = check_out(args.out_dir)
    try:
        export_checkpoint(checkpoint, out)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(str(err)) from None
    metric = validation_metric(checkpoint)
    shown = f", {BEST_METRIC} {metric:.4g}" if metric is not None else ""
    print(f"archer export: step {checkpoint_step(checkpoint)} ({checkpoint}{shown}) -> {out} "
          f"(AutoModelForCausalLM.from_pretrained({str(out)!r}))", file=sys.stdout)
    return 0
