"""The math grader: :class:`MathGrader` extracts each answer, runs the configured checkers
(the string checker here, the others in the worker pool) and caches the verdicts."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from archer.rewards.math.checkers import _call_checker, _string_checker
from archer.rewards.math.config import BUILTIN_CHECKERS, MathGraderConfig, Verdict, _Outcome
from archer.rewards.math.extract import extract_answer
from archer.rewards.math.normalize import normalize_answer, plain_number, split_compound
from archer.rewards.math.pool import _CheckerPool, _PoolHolder

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# The grader
# --------------------------------------------------------------------------------------------


class MathGrader:
    """Grades responses against gold answers; see :mod:`archer.rewards.math`.

    >>> grader = MathGrader(MathGraderConfig(checkers=("string",)))
    >>> grader.grade(r"<think>...</think> The answer is $\\boxed{\\dfrac{1}{2}}$.", "0.5").reason
    'correct'
    >>> grader.close()

    Use as a context manager or call :meth:`close` to stop the workers (they are also
    stopped at interpreter exit). Thread-safe; a grader copied into a forked process starts
    its own workers there.
    """

    def __init__(self, config: MathGraderConfig | dict | None = None) -> None:
        if config is None:
            config = MathGraderConfig()
        elif isinstance(config, dict):
            config = MathGraderConfig.from_dict(config)
        elif not isinstance(config, MathGraderConfig):
            raise TypeError(
                f"config must be a MathGraderConfig or dict, got {type(config).__name__}"
            )
        self.config = config
        self._cache: OrderedDict[tuple, Verdict] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._holder = _PoolHolder()
        self._lock = threading.RLock()
        # stops the workers when the grader is garbage-collected or at interpreter exit
        self._finalizer = weakref.finalize(self, self._holder.close)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        with self._lock:
            self._holder.close()

    def __enter__(self) -> MathGrader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def _pool(self) -> _CheckerPool | None:
        return self._holder.pool

    def _get_pool(self) -> _CheckerPool:
        h = self._holder
        if h.pool is None or h.pool.owner_pid != os.getpid():
            h.pool = _CheckerPool(
                self.config, tuple(c for c in self.config.checkers if c != "string")
            )
        return h.pool

    def worker_pids(self) -> list[int | None]:
        """PIDs of the current worker processes (empty before the first pooled check)."""
        return [] if self._pool is None else self._pool.worker_pids()

    # -- cache -------------------------------------------------------------------------------

    def cache_info(self) -> dict[str, int]:
        """``{"hits", "misses", "size", "tasks_run", "workers_replaced"}``."""
        pool = self._pool
        return {
            "hits": self._hits,
            "misses": self._misses,
            "size": len(self._cache),
            "tasks_run": pool.tasks_run if pool else 0,
            "workers_replaced": pool.workers_replaced if pool else 0,
        }

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._hits = self._misses = 0

    def _cache_get(self, key: tuple) -> Verdict | None:
        v = self._cache.get(key)
        if v is not None:
            self._cache.move_to_end(key)
        return v

    def _cache_put(self, key: tuple, v: Verdict) -> None:
        if self.config.cache_size <= 0 or v.reason == "error":
            return
        self._cache[key] = v
        self._cache.move_to_end(key)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)

    # -- checking ----------------------------------------------------------------------------

    def run_checkers(
        self,
        pairs: Sequence[tuple[str, str]],
        checkers: Iterable[str] | None = None,
        *,
        short_circuit: bool = False,
    ) -> list[dict[str, _Outcome]]:
        """Run checkers on ``(extracted, gold)`` pairs; one ``{checker: outcome}`` per pair.

        With ``short_circuit`` a pair stops at the first accepting checker (grading); without
        it every checker runs on every pair (auditing).
        """
        checkers = tuple(self.config.checkers if checkers is None else checkers)
        unknown = [c for c in checkers if c not in self.config.checkers]
        if unknown:
            raise ValueError(
                f"checkers {unknown} are not enabled in the config {self.config.checkers}"
            )
        results: list[dict[str, _Outcome]] = [{} for _ in pairs]
        with self._lock:
            for name in checkers:
                todo = [
                    i
                    for i, r in enumerate(results)
                    if not (short_circuit and any(o.status == "accept" for o in r.values()))
                ]
                if not todo:
                    break
                if name == "string":
                    for i in todo:
                        t0 = time.perf_counter()
                        try:
                            out = _call_checker(_string_checker, *pairs[i])
                        except Exception as e:  # noqa: BLE001
                            out = _Outcome("error", f"{type(e).__name__}: {e}")
                        results[i][name] = replace(out, seconds=time.perf_counter() - t0)
                    continue
                outs = self._get_pool().run(
                    [(name, pairs[i][0], pairs[i][1]) for i in todo], self.config.timeout_s
                )
                for i, out in zip(todo, outs):
                    results[i][name] = out
        return results

    @staticmethod
    def _verdict(extracted: str, outcomes: dict[str, _Outcome]) -> Verdict:
        detail = "; ".join(f"{c}: {o.status} ({o.detail})" for c, o in outcomes.items())
        seconds = sum(o.seconds for o in outcomes.values())
        for c, o in outcomes.items():
            if o.status == "accept":
                return Verdict(True, "correct", extracted, c, f"{c}: {o.detail}", seconds)
        statuses = {o.status for o in outcomes.values()}
        reason = "timeout" if "timeout" in statuses else "error" if "error" in statuses else "wrong"
        return Verdict(False, reason, extracted, None, detail, seconds)

    def _numbers_differ(self, extracted: str, gold: str) -> Verdict | None:
        """A ``wrong`` verdict when no builtin checker can accept: two plain numbers
        (:func:`plain_number`) that differ exactly (integers, fractions) or beyond every
        checker's tolerance, or a plain number against a tuple/interval/set/list of two or more
        elements. None when the checkers must decide.
        """
        a = plain_number(extracted)
        b = plain_number(gold)
        if (a is None) != (b is None):
            # a number never equals a tuple, interval, set or list of two or more elements
            other = normalize_answer(gold if a is not None else extracted)
            if split_compound(other) is not None:
                return Verdict(
                    False, "wrong", extracted, None, "a number vs a compound answer (no checker run)"
                )
            return None
        if a is None or b is None or a[0] == b[0]:
            return None
        (x, x_exact), (y, y_exact) = a, b
        if not (x_exact and y_exact):
            # sympy accepts within rel_tol; Math-Verify rounds to 6 decimals
            tol = max(self.config.rel_tol, 1e-4) * max(1, abs(x), abs(y))
            if abs(x - y) <= tol:
                return None
        return Verdict(
            False, "wrong", extracted, None, f"plain numbers differ: {x} != {y} (no checker run)"
        )

    def grade_batch(self, responses: Sequence[str], golds: Sequence[Any]) -> list[Verdict]:
        """One :class:`Verdict` per response; identical (answer, gold) pairs are checked once.

        When only builtin checkers are enabled, two plain numbers that differ (exactly, or
        beyond every checker's tolerance) are ``wrong`` without a round trip to the workers;
        all other pairs go through the checkers in order.

        Verdicts are cached, timeouts included (a hung answer is not retried); ``error``
        verdicts (e.g. a worker that died) are not cached. A missing gold gives ``error``.
        """
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        cfg = self.config
        verdicts: list[Verdict | None] = [None] * len(responses)
        todo: dict[tuple, list[int]] = {}
        fast_reject = all(c in BUILTIN_CHECKERS for c in cfg.checkers)
        with self._lock:
            for i, (resp, gold) in enumerate(zip(responses, golds)):
                if gold is None or (isinstance(gold, str) and not gold.strip()):
                    verdicts[i] = Verdict(False, "error", None, None, "missing gold answer")
                    continue
                extracted, how = extract_answer(resp, cfg.fallbacks)
                if extracted is None:
                    verdicts[i] = Verdict(False, "no_answer", None, None, how)
                    continue
                gold_s = _gold_str(gold)
                if fast_reject:
                    v = self._numbers_differ(extracted, gold_s)
                    if v is not None:
                        verdicts[i] = v
                        continue
                key = (extracted, gold_s, cfg.cache_key)
                cached = self._cache_get(key)
                if cached is not None:
                    self._hits += 1
                    verdicts[i] = cached
                    continue
                self._misses += 1
                todo.setdefault(key, []).append(i)
            keys = list(todo)
            outcomes = self.run_checkers([(k[0], k[1]) for k in keys], short_circuit=True)
            for key, outs in zip(keys, outcomes):
                v = self._verdict(key[0], outs)
                self._cache_put(key, v)
                for i in todo[key]:
                    verdicts[i] = v
        return verdicts  # type: ignore[return-value]

    def grade(self, response: str, gold: Any) -> Verdict:
        """Grade one response (see :meth:`grade_batch`)."""
        return self.grade_batch([response], [gold])[0]


def _gold_str(gold: Any) -> str:
    return gold.strip() if isinstance(gold, str) else str(gold)


# --------------------------------------------------------------------------------------------
# Audit
# --------------------------------------------------------------------------------------------
