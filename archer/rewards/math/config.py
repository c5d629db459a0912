"""Settings of the math grader (:class:`MathGraderConfig`) and what it returns per answer
(:class:`Verdict`)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from archer.rewards.math.extract import FALLBACKS

#: Checkers available by name; any other name must be an importable ``"module:function"``.
BUILTIN_CHECKERS = ("string", "sympy", "math_verify")
#: Every :class:`Verdict` has one of these reasons.
REASONS = ("correct", "wrong", "no_answer", "timeout", "error")


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


# --------------------------------------------------------------------------------------------
# Config and verdict
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MathGraderConfig:
    """Settings of :class:`MathGrader` (validated on construction).

    Attributes:
        checkers: checkers tried in order; the answer is correct when any accepts. Names from
            :data:`BUILTIN_CHECKERS` or ``"package.module:function"``.
        fallbacks: extraction fallbacks tried in order when there is no ``\\boxed{}``
            (names from :data:`FALLBACKS`); empty = boxed only, as in the paper.
        timeout_s: hard wall-clock limit for one checker on one answer, in seconds.
        num_workers: worker processes for the non-string checkers.
        rel_tol: relative tolerance of the sympy checker's numeric comparison.
        cache_size: verdicts kept in the LRU cache (0 disables the cache).
        worker_memory_mb: address-space limit of each worker (None: no limit); a checker that
            runs out of memory gives an ``error`` verdict instead of swapping the machine.
        worker_start_timeout_s: how long a starting worker may take to import its checkers.
    """

    checkers: tuple[str, ...] = BUILTIN_CHECKERS
    fallbacks: tuple[str, ...] = ()
    timeout_s: float = 5.0
    num_workers: int = field(default_factory=_default_workers)
    rel_tol: float = 1e-6
    cache_size: int = 100_000
    worker_memory_mb: int | None = 4096
    worker_start_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        for name in ("checkers", "fallbacks"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        if not self.checkers:
            raise ValueError(
                f"MathGraderConfig.checkers must not be empty; allowed: {list(BUILTIN_CHECKERS)} "
                "or 'package.module:function'"
            )
        for c in self.checkers:
            if c in BUILTIN_CHECKERS:
                continue
            if not isinstance(c, str) or ":" not in c:
                raise ValueError(
                    f"MathGraderConfig.checkers: unknown checker {c!r}; allowed: "
                    f"{list(BUILTIN_CHECKERS)} or an importable 'package.module:function'"
                )
            try:
                _resolve_custom_checker(c)
            except Exception as e:  # noqa: BLE001
                raise ValueError(
                    f"MathGraderConfig.checkers: cannot import checker {c!r} ({e}); allowed: "
                    f"{list(BUILTIN_CHECKERS)} or an importable 'package.module:function'"
                ) from e
        if len(set(self.checkers)) != len(self.checkers):
            raise ValueError(f"MathGraderConfig.checkers has duplicates: {list(self.checkers)}")
        for f in self.fallbacks:
            if f not in FALLBACKS:
                raise ValueError(
                    f"MathGraderConfig.fallbacks: unknown fallback {f!r}; allowed: {list(FALLBACKS)}"
                )
        if len(set(self.fallbacks)) != len(self.fallbacks):
            raise ValueError(f"MathGraderConfig.fallbacks has duplicates: {list(self.fallbacks)}")
        _check_number("timeout_s", self.timeout_s, positive=True)
        _check_number("worker_start_timeout_s", self.worker_start_timeout_s, positive=True)
        _check_number("rel_tol", self.rel_tol, positive=False)
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise ValueError(
                f"MathGraderConfig.num_workers must be an int >= 1, got {self.num_workers!r}"
            )
        if not isinstance(self.cache_size, int) or self.cache_size < 0:
            raise ValueError(
                f"MathGraderConfig.cache_size must be an int >= 0, got {self.cache_size!r}"
            )
        if self.worker_memory_mb is not None and (
            not isinstance(self.worker_memory_mb, int) or self.worker_memory_mb <= 0
        ):
            raise ValueError(
                f"MathGraderConfig.worker_memory_mb must be None or an int > 0, "
                f"got {self.worker_memory_mb!r}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> MathGraderConfig:
        """Build from a plain mapping (e.g. a Hydra/OmegaConf node); unknown keys are an error."""
        d = dict(d or {})
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ValueError(f"MathGraderConfig: unknown field(s) {unknown}; allowed: {allowed}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def cache_key(self) -> tuple:
        """The part of the config that changes a verdict for a fixed extracted answer."""
        return (self.checkers, self.rel_tol)


def _resolve_custom_checker(spec: str) -> Callable[[str, str], Any]:
    module, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj


def _check_number(name: str, value: Any, *, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok:
        ok = value > 0 if positive else value >= 0
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"MathGraderConfig.{name} must be a number {bound}, got {value!r}")


@dataclass(frozen=True)
class Verdict:
    """The grade of one response.

    ``reason`` is one of :data:`REASONS`: ``correct`` (a checker accepted), ``wrong`` (all
    checkers rejected), ``no_answer`` (nothing extracted), ``timeout`` (no checker accepted
    and at least one ran out of time), ``error`` (no checker accepted and one failed, e.g.
    its worker died). ``checker`` names the accepting checker.
    """

    correct: bool
    reason: str
    extracted: str | None
    checker: str | None
    detail: str
    #: time the checkers spent on this (answer, gold) pair when it was first checked (a cached
    #: verdict keeps it); not part of equality
    seconds: float = field(default=0.0, compare=False)

    @property
    def reward(self) -> float:
        return 1.0 if self.correct else 0.0


@dataclass(frozen=True)
class _Outcome:
    """Result of one checker on one (pred, gold): status in accept/reject/timeout/error."""

    status: str
    detail: str = ""
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# Checkers (the sympy and math_verify ones run inside worker processes)
# --------------------------------------------------------------------------------------------

_LATEX_PARSERS: list[Callable[[str], Any]] | None = None
