"""One shared supervised warm start per (base model, data, warm-start settings).

A random tiny model never samples a correct answer, so a study's trials need a warm start
with some successes (and something left to fix). Every trial of a study that asks for one
(the recipe / study key ``warm_start: {steps: ..., target: ..., seed: 0}``) starts from the
same model: the warm start does not depend on the trial seed, only on what it is trained
from and how.

Identity: :func:`warm_start_hash` is the sha256 of a canonical JSON (sorted keys) of
:func:`warm_start_key`: the base model (a prepared model's name, or the sha256 of a model
directory's files), the data config, the held-out split size, the reward, the template,
the response budget and the :class:`WarmStartSettings` (including their own ``seed``).

Cache: ``<cache>/warm_starts/<hash>/`` under :func:`archer.paths.cache_dir`
(``$ARCHER_CACHE_DIR``), holding ``model/`` (a Hugging Face directory, what a trial's
``model=`` points at), ``manifest.json`` (the key, the held-out accuracy, the sha256 of
every file of ``model/``) and the warm-up's ``sft_log.jsonl`` / ``sft_summary.json``.
It is built by ``archer sft``'s code (:func:`archer.sft.supervised_finetune`).

Concurrency and failures: the build holds ``<hash>.lock`` (``fcntl.flock``), so of several
trials or drivers asking at once one builds and the others wait and reuse it. A build goes
into ``.<hash>.tmp-<pid>`` and is renamed into place after its manifest is written (an
atomic publish). An entry whose manifest is missing or unreadable, or whose files' hashes
differ from it, is never used: it is removed and rebuilt. An interrupted build (Ctrl-C,
SIGTERM, a killed process) leaves only its temporary directory, which the next build
removes; a build never resumes from one.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from archer.validation import ConfigError, check_int, check_range, unknown_keys

MANIFEST = "manifest.json"
MODEL_DIR = "model"
SUBDIR = "warm_starts"
HASH_CHARS = 16  # the directory name: the first 16 hex digits of the sha256


@dataclass(frozen=True)
class WarmStartSettings:
    """How the warm start is trained (``archer sft``'s settings)."""

    steps: int = 300  # at most this many SFT optimizer steps
    target: float | None = 0.35  # stop once held-out greedy accuracy reaches it (None: never)
    lr: float = 3e-3  # AdamW learning rate (constant)
    batch_size: int = 64  # (prompt, answer) pairs per step
    eval_every: int = 25  # held-out evaluation every N steps (the target is checked then)
    seed: int = 0  # the warm start's own seed (model build + batch sampling), not the trial's
    max_seconds: float | None = None  # wall-clock budget; None: none (a budget makes the
    #   result depend on the machine's speed while the hash does not)

    def __post_init__(self) -> None:
        check_int("warm_start.steps", self.steps, 1)
        check_int("warm_start.batch_size", self.batch_size, 1)
        check_int("warm_start.eval_every", self.eval_every, 1)
        check_int("warm_start.seed", self.seed, 0)
        check_range("warm_start.lr", self.lr, 0.0, lo_open=True)
        if self.target is not None:
            check_range("warm_start.target", self.target, 0.0, 1.0)
        if self.max_seconds is not None:
            check_range("warm_start.max_seconds", self.max_seconds, 0.0, lo_open=True)

    @classmethod
    def from_spec(cls, spec: Any, where: str = "warm_start") -> WarmStartSettings | None:
        """A recipe's / study's ``warm_start`` value: null or false -> None (no warm start),
        true or {} -> the defaults, a mapping -> those settings (unknown keys refused)."""
        if spec is None or spec is False:
            return None
        if spec is True:
            return cls()
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be a mapping of warm-start settings or null, "
                              f"got {spec!r}")
        names = list(cls.__dataclass_fields__)
        extra = [k for k in spec if k not in names]
        if extra:
            raise unknown_keys(where, extra, names)
        try:
            return cls(**spec)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None


@dataclass(frozen=True)
class WarmStart:
    """A warm start in the cache (or where it will be once built)."""

    hash: str  # the full sha256 of its key
    dir: Path  # <cache>/warm_starts/<hash[:16]>
    present: bool  # a verified entry is there
    heldout_accuracy: float | None = None  # held-out greedy accuracy (None: not built yet)
    sft_steps: int | None = None  # SFT steps the warm-up took
    stopped: str | None = None  # why the warm-up stopped (archer.sft: steps, target, time)

    @property
    def cut_short(self) -> bool:
        """Stopped on its ``max_seconds`` budget before its steps or target: then it depends on
        how fast the machine that built it was, which its hash does not say."""
        return self.stopped == "time"

    @property
    def model_dir(self) -> Path:
        """What a trial's ``model=`` points at."""
        return self.dir / MODEL_DIR


def warm_start_root(root: str | Path | None = None) -> Path:
    if root is not None:
        return Path(root)
    from archer.paths import cache_dir

    return cache_dir() / SUBDIR


def file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory``, by its relative path (sorted)."""
    out = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        out[path.relative_to(directory).as_posix()] = digest.hexdigest()
    return out


def base_model_identity(model: str) -> dict[str, str]:
    """A prepared model by its name; a directory by the sha256 of its files (so the same
    weights anywhere give the same warm start, and changed weights another)."""
    from archer.models import MODELS

    path = Path(model).expanduser()
    if path.is_dir():
        stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                      for p in sorted(path.rglob("*")) if p.is_file())
        return {"sha256": _directory_sha256(str(path.resolve()), stats)}
    if model in MODELS:
        return {"name": model}
    raise ConfigError(f"warm start: model={model!r} is neither a directory nor a model name "
                      f"{MODELS.names()}")


@functools.lru_cache(maxsize=32)
def _directory_sha256(path: str, stats: tuple) -> str:
    """sha256 of a directory's file hashes; cached by the files' names, sizes and mtimes, so a
    study's trials hash a large base model once."""
    text = json.dumps(file_hashes(Path(path)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# the TrainConfig keys a warm start depends on (a sweep may not vary them)
WARM_START_INPUTS = ("model", "data", "val_size", "reward", "template", "max_new_tokens")


def warm_start_key(train: dict[str, Any], settings: WarmStartSettings) -> dict[str, Any]:
    """What the warm start depends on, from a trial's TrainConfig dict (its seed is not in
    it: the warm start is the same for every trial seed)."""
    key = {k: train[k] for k in WARM_START_INPUTS}
    key["model"] = base_model_identity(str(train["model"]))
    return key | {"settings": asdict(settings)}


def warm_start_hash(key: dict[str, Any]) -> str:
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def read_manifest(entry: Path) -> dict[str, Any] | None:
    """The entry's manifest when every file it lists has its hash and ``model/`` has no
    other file; None for a missing, unreadable or corrupt entry."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    model = entry / MODEL_DIR
    if not isinstance(files, dict) or not files or not model.is_dir():
        return None
    return manifest if file_hashes(model) == files else None


def locate(train: dict[str, Any], settings: WarmStartSettings,
           root: str | Path | None = None) -> WarmStart:
    """Where the warm start of ``train`` + ``settings`` is (or would be); builds nothing."""
    digest = warm_start_hash(warm_start_key(train, settings))
    entry = warm_start_root(root) / digest[:HASH_CHARS]
    manifest = read_manifest(entry) if entry.is_dir() else None
    if manifest is None or manifest.get("hash") != digest:
        return WarmStart(digest, entry, False)
    return WarmStart(digest, entry, True, manifest.get("heldout_accuracy"),
                     manifest.get("sft_steps"), manifest.get("stopped"))


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released by the kernel if this process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare_warm_start(train: dict[str, Any], settings: WarmStartSettings,
                       root: str | Path | None = None,
                       log: Callable[[str], None] = print) -> WarmStart:
    """The warm start of ``train`` (a trial's TrainConfig dict) + ``settings``: reused when
    a verified entry exists, else built (see the module docstring)."""
    found = locate(train, settings, root)
    if found.present:
        log(f"reusing the warm start {found.hash[:HASH_CHARS]} in {found.dir}")
        _warn_if_cut_short(found, settings, log)
        return found
    with _locked(found.dir.with_name(found.dir.name + ".lock")):
        again = locate(train, settings, root)  # built by another process meanwhile?
        if again.present:
            log(f"reusing the warm start {again.hash[:HASH_CHARS]} in {again.dir} (built by "
                "another process)")
            return again
        for stale in found.dir.parent.glob(f".{found.dir.name}.tmp-*"):
            log(f"removing an interrupted warm-start build: {stale}")
            shutil.rmtree(stale, ignore_errors=True)
        if found.dir.exists():
            log(f"the warm start in {found.dir} is corrupt (manifest missing or a file's hash "
                "differs): rebuilding it")
            shutil.rmtree(found.dir)
        return _build(train, settings, found, log)


def _warn_if_cut_short(warm: WarmStart, settings: WarmStartSettings,
                       log: Callable[[str], None]) -> None:
    if warm.cut_short:
        log(f"WARNING: the warm start {warm.hash[:HASH_CHARS]} stopped on its time budget "
            f"(max_seconds={settings.max_seconds:g}) after {warm.sft_steps} of "
            f"{settings.steps} steps (held-out greedy accuracy {warm.heldout_accuracy}): a "
            "slower or busier machine gives a weaker warm start under the same hash; delete "
            f"{warm.dir} to build it again")


def _build(train: dict[str, Any], settings: WarmStartSettings, target: WarmStart,
           log: Callable[[str], None]) -> WarmStart:
    from archer.models import resolve_model_path
    from archer.sft import SFTConfig, supervised_finetune

    tmp = target.dir.with_name(f".{target.dir.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    log(f"building the warm start {target.hash[:HASH_CHARS]} ({settings.steps} SFT steps at "
        f"most, target {settings.target}, seed {settings.seed}) in {target.dir}")
    sft = SFTConfig(
        model=str(resolve_model_path(str(train["model"]))), data=train["data"],
        reward=train["reward"], template=train["template"], out_dir=str(tmp),
        steps=settings.steps, max_seconds=settings.max_seconds,
        target_accuracy=settings.target, eval_every=settings.eval_every,
        batch_size=settings.batch_size, lr=settings.lr, weight_decay=0.0,
        val_size=train["val_size"], max_new_tokens=train["max_new_tokens"],
        seed=settings.seed, num_threads=train.get("num_threads"), resume=False)
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        result = supervised_finetune(sft, log=log)
    if result.stopped in ("SIGINT", "SIGTERM"):
        shutil.rmtree(tmp, ignore_errors=True)
        raise KeyboardInterrupt(f"the warm-start build was stopped by {result.stopped}; "
                                "nothing was published (the next call rebuilds it)")
    accuracy = None if math.isnan(result.accuracy) else float(result.accuracy)
    manifest = {"hash": target.hash, "key": warm_start_key(train, settings),
                "heldout_accuracy": accuracy, "sft_steps": result.steps,
                "stopped": result.stopped, "files": file_hashes(tmp / MODEL_DIR)}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    os.replace(tmp, target.dir)  # the atomic publish
    log(f"warm start {target.hash[:HASH_CHARS]}: {result.steps} SFT steps, held-out greedy "
        f"accuracy {accuracy}")
    built = WarmStart(target.hash, target.dir, True, accuracy, result.steps, result.stopped)
    _warn_if_cut_short(built, settings, log)
    return built

