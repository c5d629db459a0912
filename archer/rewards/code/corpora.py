"""Problems from data records: LiveCodeBench (local and official shapes, with a restricted
unpickler), HumanEval, and whatever :func:`to_problem` accepts."""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import pickle
import zlib
from collections.abc import Iterable
from typing import Any

from archer.rewards.code.problems import Problem, TestCase


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickles only plain built-in values (str, bytes, numbers, list, dict, tuple, ...)."""

    def find_class(self, module: str, name: str):  # noqa: D401
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing persistent ids")


def restricted_loads(data: bytes) -> Any:
    return _NoGlobalsUnpickler(io.BytesIO(data)).load()


MAX_DECOMPRESSED = 1 << 30


def decode_lcb_tests(value: Any) -> list[dict]:
    """``public_test_cases``/``private_test_cases``: a list, a JSON string, or
    base64(zlib(pickle(JSON string))) as in the official LiveCodeBench release."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    if not isinstance(value, (str, bytes)):
        raise ValueError(f"unsupported test-case encoding: {type(value).__name__}")
    try:
        return _as_test_list(json.loads(value))
    except (ValueError, TypeError):
        pass
    raw = base64.b64decode(value, validate=False)
    dec = zlib.decompressobj()
    data = dec.decompress(raw, MAX_DECOMPRESSED)
    if dec.unconsumed_tail:
        raise ValueError("decompressed test cases exceed the size limit")
    obj = restricted_loads(data)
    if isinstance(obj, bytes):
        obj = obj.decode("utf-8")
    if isinstance(obj, str):
        obj = json.loads(obj)
    return _as_test_list(obj)


def _as_test_list(obj: Any) -> list[dict]:
    if not isinstance(obj, list) or not all(isinstance(t, dict) for t in obj):
        raise ValueError("test cases must decode to a list of dicts")
    return obj


def encode_lcb_tests(tests: list[dict]) -> str:
    """The official encoding (for round-trip tests and fixtures)."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def load_lcb_record(rec: dict, include_private: bool = True) -> Problem:
    """A LiveCodeBench record (local or official shape) -> :class:`Problem`."""
    tests = decode_lcb_tests(rec.get("public_test_cases"))
    if include_private:
        tests = tests + decode_lcb_tests(rec.get("private_test_cases"))
    meta = rec.get("metadata") or {}
    if isinstance(meta, str):
        meta = json.loads(meta) if meta.strip() else {}
    cases = [TestCase(str(t["input"]), str(t["output"]), t.get("testtype", "stdin"))
             for t in tests]
    functional = any(c.testtype == "functional" for c in cases) or bool(meta.get("func_name"))
    if functional:
        return Problem("functional", cases, func_name=meta.get("func_name"),
                       problem_id=str(rec.get("question_id", "")))
    return Problem("stdin", cases, problem_id=str(rec.get("question_id", "")))


def _to_datetime(x: Any) -> _dt.datetime:
    if isinstance(x, _dt.datetime):
        return x.replace(tzinfo=None)
    if isinstance(x, _dt.date):
        return _dt.datetime(x.year, x.month, x.day)
    return _dt.datetime.fromisoformat(str(x).replace("Z", "")).replace(tzinfo=None)


def filter_lcb(records: Iterable[dict], start_date: Any = None, end_date: Any = None,
               platforms: Iterable[str] | None = None) -> list[dict]:
    """Records whose ``contest_date`` is in ``[start_date, end_date]`` (both inclusive,
    dates or ISO strings, None = open) and, optionally, whose platform is listed."""
    lo = _to_datetime(start_date) if start_date is not None else None
    hi = _to_datetime(end_date) if end_date is not None else None
    plats = set(platforms) if platforms is not None else None
    out = []
    for r in records:
        d = _to_datetime(r["contest_date"])
        if (lo is None or d >= lo) and (hi is None or d <= hi) and (
            plats is None or r.get("platform") in plats
        ):
            out.append(r)
    return out


def humaneval_problem(rec: dict) -> Problem:
    """A HumanEval record (prompt, test, entry_point) -> check problem."""
    return Problem("check", check_code=rec["test"] + f"\n\ncheck({rec['entry_point']})\n",
                   prompt=rec["prompt"], entry_point=rec["entry_point"], header=False,
                   suffix=rec.get("program_suffix", ""),
                   problem_id=str(rec.get("task_id", "")))


def to_problem(obj: Any) -> Problem:
    """Coerce a ``tests`` column value into a :class:`Problem`.

    Accepts a Problem; a LiveCodeBench record; a HumanEval record; ``{"functional": code}``
    (rllm/DeepCoder LeetCode); a list of ``{input, output[, testtype]}``; or a JSON string of
    any of these.
    """
    if isinstance(obj, Problem):
        return obj
    if isinstance(obj, str):
        obj = json.loads(obj)
    if isinstance(obj, list):
        cases = [TestCase(str(t["input"]), str(t["output"]), t.get("testtype", "stdin"))
                 for t in obj]
        if any(c.testtype == "functional" for c in cases):
            raise ValueError("functional tests need a func_name: pass a LiveCodeBench record")
        return Problem("stdin", cases)
    if not isinstance(obj, dict):
        raise TypeError(f"cannot make a problem from {type(obj).__name__}")
    if "public_test_cases" in obj or "private_test_cases" in obj:
        return load_lcb_record(obj)
    if "entry_point" in obj and "test" in obj:
        return humaneval_problem(obj)
    tests = obj.get("tests", obj)
    if isinstance(tests, str):
        tests = json.loads(tests)
    if isinstance(tests, dict) and isinstance(tests.get("functional"), str):
        return Problem("check", check_code=tests["functional"])
    if isinstance(tests, list):
        return to_problem(tests)
    raise ValueError(f"unrecognised tests format (keys: {sorted(obj)[:8]})")
