"""Prompt datasets: offline files from the data directory, and reasoning-gym tasks.

Every dataset yields records (plain dicts) with at least::

    {"prompt": str | list[chat message], "data_source": str, "index": int, ...ground truth}

Ground-truth columns by kind (they are passed to reward functions as columns):

- math: ``answer`` (str; AMC floats like 27.0 become "27"), optional ``solution``.
- code: ``tests``, in a shape the ``code`` reward (``archer.rewards.code.to_problem``)
  accepts, and ``test_type`` naming it: ``"check_script"`` (LeetCode train:
  ``{"functional": "def check(candidate): ..."}`` calling ``Solution().fn``), ``"stdin"``
  (Codeforces: a list of {input, output}) or, for LiveCodeBench, ``"stdin"``/``"functional"``
  with ``tests`` an LCB-shaped dict ``{question_id, public_test_cases (decoded list, private
  cases appended), metadata: {func_name}}``; plus ``starter_code``/``func_name`` there.
- reasoning_gym: ``answer`` and ``entry`` (the gym's full entry, used by its own checker).
- the user's own ``.json``/``.jsonl`` file (:func:`load_data_file`): ``prompt`` plus any
  fields the user's reward reads (``answer``, ``tests``, ...), kept as they are.

``index`` is the record's position in its source (0-based), kept when others are skipped.
A malformed record stops loading with an error naming the file and the line (JSONL) or
record index (JSON array), unless ``skip_bad_records=True`` (``data.skip_bad_records=true``
on the command line): then it is counted (``dataset.num_skipped``) and a warning is logged.
A file with no records (empty, ``[]``, or every record skipped) is an error naming it.
"""

from __future__ import annotations

import functools
import json
import logging
import pickle
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.paths import data_dir as default_data_dir
from archer.paths import data_dir_origin
from archer.registry import Registry
from archer.rewards import register_reward

log = logging.getLogger(__name__)


class DataFormatError(ValueError):
    """A malformed data file or record; the message names the file and line/record."""


@dataclass
class PromptDataset(Sequence):
    """An in-memory list of records plus how many malformed ones were skipped."""

    name: str
    records: list[dict]
    num_skipped: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):  # int -> record, slice -> list of records
        return self.records[i]

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)


# --------------------------------------------------------------------------------------
# Local files
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSpec:
    """How to read one data file: where it is, which fields a raw record needs, and how a
    valid raw record becomes an Archer record (``convert``; may raise ValueError)."""

    relpath: str  # relative to the data directory
    required: dict[str, type | tuple[type, ...]]  # field -> allowed type(s)
    convert: Callable[[dict], dict]
    kind: str = "math"  # "math" | "code"
    expected_records: int | None = None  # as published (docs/data.md)
    extra: dict = field(default_factory=dict)


FILES: Registry[FileSpec] = Registry("data file")


def _answer_str(value: Any) -> str:
    """Ground truth as text: 27.0 -> "27", 2.5 -> "2.5", "70" -> "70"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _math(problem_key: str = "problem") -> Callable[[dict], dict]:
    def convert(raw: dict) -> dict:
        out = {"prompt": raw[problem_key], "answer": _answer_str(raw["answer"])}
        if isinstance(raw.get("solution"), str):
            out["solution"] = raw["solution"]
        for key in ("id", "unique_id", "difficulty", "type", "year"):
            if key in raw:
                out[key] = raw[key]
        return out

    return convert


def _gsm8k(raw: dict) -> dict:
    solution = raw["answer"]
    if "####" not in solution:
        raise ValueError("field 'answer' has no '#### <number>' final line")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    return {"prompt": raw["question"], "answer": final, "solution": solution}


def _leetcode(raw: dict) -> dict:
    tests = raw["tests"]
    if not isinstance(tests.get("functional"), str):
        raise ValueError("field 'tests' has no 'functional' check script")
    return {
        "prompt": raw["problem"],
        "tests": {"functional": tests["functional"]},
        "test_type": "check_script",
        "solution": raw.get("solutions"),
    }


def _codeforces(raw: dict) -> dict:
    tests = raw["tests"]
    if not tests or not all(isinstance(t, dict) and {"input", "output"} <= t.keys() for t in tests):
        raise ValueError("field 'tests' must be a non-empty list of {input, output}")
    return {"prompt": raw["problem"], "tests": tests, "test_type": "stdin"}


def decode_lcb_tests(value: Any) -> list[dict]:
    """LiveCodeBench test cases: a list, a JSON string, or base64(zlib(pickle(JSON str)))
    (the official ``private_test_cases`` format), decoded by the code verifier's restricted
    unpickler, which admits only plain built-in values."""
    from archer.rewards.code import decode_lcb_tests as decode

    return decode(value)


def _lcb(raw: dict) -> dict:
    tests = decode_lcb_tests(raw["public_test_cases"])
    if raw.get("private_test_cases"):
        tests = tests + decode_lcb_tests(raw["private_test_cases"])
    functional = raw["platform"] == "leetcode" or any(
        t.get("testtype") == "functional" for t in tests
    )
    metadata = raw.get("metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    func_name = metadata.get("func_name")
    if functional and not func_name:
        raise ValueError("functional (LeetCode) problem without metadata.func_name")
    return {
        "prompt": raw["question_content"],
        "tests": {
            "question_id": raw["question_id"],
            "public_test_cases": tests,
            "metadata": {"func_name": func_name} if func_name else {},
        },
        "test_type": "functional" if functional else "stdin",
        "starter_code": raw.get("starter_code") or "",
        "func_name": func_name,
        "id": raw["question_id"],
        "contest_date": raw.get("contest_date"),
        "platform": raw["platform"],
        "difficulty": raw.get("difficulty"),
    }


def _mbpp_plus(raw: dict) -> dict:
    """An evalplus MBPP+ record; its tests are built by :mod:`archer.rewards.mbpp_plus`."""
    if not str(raw["task_id"]).startswith("Mbpp/"):
        raise ValueError(f"task_id {raw['task_id']!r} is not an MBPP+ id (Mbpp/N)")
    if not raw["base_input"]:
        raise ValueError("field 'base_input' is empty")
    keys = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input",
            "plus_input", "atol")
    return {k: raw[k] for k in keys} | {"id": raw["task_id"]}


_AIME = {"id": str, "problem": str, "answer": str}
_NUM = (int, float)
for _name, _spec in {
    "aime2024": FileSpec("eval_math/aime2024.jsonl", _AIME, _math(), expected_records=30),
    "aime2025": FileSpec("eval_math/aime2025.jsonl", _AIME, _math(), expected_records=30),
    "amc23": FileSpec(
        "eval_math/amc23.jsonl", {"problem": str, "answer": _NUM}, _math(), expected_records=40
    ),
    "math500": FileSpec(
        "eval_math/math500.json", {"problem": str, "answer": str}, _math(), expected_records=500
    ),
    "gsm8k_test": FileSpec(
        "eval_math/gsm8k_test.jsonl",
        {"question": str, "answer": str},
        _gsm8k,
        expected_records=1319,
    ),
    "math_train": FileSpec(
        "train_math/math_train.json",
        {"problem": str, "answer": str},
        _math(),
        expected_records=7474,
    ),
    "aime_1983_2023": FileSpec(
        "train_math/aime_1983_2023.json",
        {"problem": str, "answer": str},
        _math(),
        expected_records=975,
    ),
    "gsm8k_train": FileSpec(
        "train_math/gsm8k_train.jsonl",
        {"question": str, "answer": str},
        _gsm8k,
        expected_records=7473,
    ),
    "leetcode_train": FileSpec(
        "train_code/leetcode_train.json",
        {"problem": str, "tests": dict},
        _leetcode,
        "code",
        expected_records=1889,
    ),
    "codeforces_test": FileSpec(
        "train_code/codeforces_test.json",
        {"problem": str, "tests": list},
        _codeforces,
        "code",
        expected_records=408,
    ),
    "lcb_v5_public": FileSpec(
        "eval_code/lcb_v5_public.jsonl",
        {
            "question_id": str,
            "platform": str,
            "question_content": str,
            "public_test_cases": (list, str),
        },
        _lcb,
        "code",
        expected_records=279,
    ),
    # evalplus's release file (archer data fetch mbpp_plus)
    "mbpp_plus": FileSpec(
        "eval_code/MbppPlus.jsonl",
        {"task_id": str, "prompt": str, "entry_point": str, "canonical_solution": str,
         "base_input": list, "plus_input": list, "atol": (int, float)},
        _mbpp_plus,
        "code",
        expected_records=378,
    ),
}.items():
    FILES.register(_name)(_spec)


# --------------------------------------------------------------------------------------
# The user's own files
# --------------------------------------------------------------------------------------

RESERVED_FIELDS = ("data_source", "index")  # set by the loader on every record


def _user_record(raw: dict) -> dict:
    """A record of the user's own file: ``prompt`` (text, or chat messages with a user turn)
    and any other fields, kept as they are (they reach the reward as columns); a numeric
    ``answer`` becomes text, as in the math files (27.0 -> "27")."""
    prompt = raw["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("field 'prompt' is empty")
    else:
        for i, m in enumerate(prompt):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)):
                raise ValueError(f"field 'prompt' message {i} is not "
                                 "{'role': str, 'content': str}")
        if not any(m["role"] == "user" for m in prompt):
            raise ValueError("field 'prompt' has no message with role 'user'")
    reserved = [k for k in RESERVED_FIELDS if k in raw]
    if reserved:
        raise ValueError(f"field {reserved[0]!r} is reserved (the loader sets it); rename it")
    out = dict(raw)
    if isinstance(out.get("answer"), (int, float)) and not isinstance(out["answer"], bool):
        out["answer"] = _answer_str(out["answer"])
    return out


USER_FILE = FileSpec("", {"prompt": (str, list)}, _user_record, kind="user")


def is_data_path(file: str) -> bool:
    """Whether ``data.file`` names a file of the user's (a path: it has a directory part or
    a .json/.jsonl suffix) rather than a registered data file."""
    return file not in FILES and (Path(file).suffix in (".json", ".jsonl")
                                  or Path(file).name != file)


def load_data_file(file: str, *, data_dir: str | Path | None = None,
                   skip_bad_records: bool = False, limit: int | None = None
                   ) -> PromptDataset:
    """``data.file``: a registered data file by name (:func:`load_dataset`), or the path of
    the user's own ``.json``/``.jsonl`` file, relative to the working directory, whose
    records each have a ``prompt`` (see :func:`_user_record`); ``data_source`` is the
    file's stem."""
    if not is_data_path(file):
        return load_dataset(file, data_dir=data_dir, skip_bad_records=skip_bad_records,
                            limit=limit)
    path = data_file_path(file)
    return load_file(path, USER_FILE, name=path.stem, skip_bad_records=skip_bad_records,
                     limit=limit)


def data_file_path(file: str, data_dir: str | Path | None = None) -> Path:
    """Where ``data.file`` is read from: the user's path as given, or a registered file's
    place in the data directory."""
    if is_data_path(file):
        return Path(file).expanduser()
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    return root / FILES.get(file).relpath


SKIP_HINT = ("to skip such records: data.skip_bad_records=true on the command line, "
             "skip_bad_records=True in Python")


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    skip_bad_records: bool = False,
    limit: int | None = None,
) -> PromptDataset:
    """A registered data file by name (``FILES.names()``), read from the data directory.

    >>> ds = load_dataset("aime2024")  # doctest: +SKIP
    >>> len(ds), ds[0]["answer"], ds[0]["data_source"]
    (30, '116', 'aime2024')
    """
    spec = FILES.get(name)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    path = root / spec.relpath
    if not path.is_file():
        raise missing_file_error(name, root, given=data_dir is not None)
    return load_file(path, spec, name=name, skip_bad_records=skip_bad_records, limit=limit)


def missing_file_error(name: str, root: Path, *, given: bool = False) -> FileNotFoundError:
    """The error for the registered file ``name`` missing from the data directory ``root``:
    where it looked (and why there) and the command that fetches it."""
    from archer.data.sources import fetch_hint

    origin = "as given" if given else data_dir_origin()
    return FileNotFoundError(f"data file {name!r} not found: looked for "
                             f"{root / FILES.get(name).relpath} (data directory {root}, "
                             f"{origin}); {fetch_hint(name)}")


def load_file(
    path: str | Path,
    spec: FileSpec,
    *,
    name: str | None = None,
    skip_bad_records: bool = False,
    limit: int | None = None,
) -> PromptDataset:
    """Read a ``.json`` (array of objects) or ``.jsonl`` file with ``spec``'s schema."""
    path = Path(path)
    name = name or path.stem
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    records, skipped = [], 0
    for where, index, raw in _raw_records(path):
        try:
            record = _validate_and_convert(raw, spec)
        except DataFormatError as err:
            if not skip_bad_records:
                raise DataFormatError(f"{path}: {where}: {err} ({SKIP_HINT})") from None
            skipped += 1
            continue
        record.update(data_source=name, index=index)
        records.append(record)
        if limit is not None and len(records) >= limit:
            break
    if not records:
        if skipped:
            raise DataFormatError(f"{path}: no valid record: all {skipped} record(s) are "
                                  "malformed and were skipped (skip_bad_records)")
        shape = ("a JSON array of record objects" if path.suffix == ".json"
                 else "one JSON record object per line")
        raise DataFormatError(f"{path}: the data file has no records (expected {shape})")
    if skipped:
        log.warning("%s: skipped %d malformed record(s)", path, skipped)
    return PromptDataset(name=name, records=records, num_skipped=skipped)


def _raw_records(path: Path) -> Iterator[tuple[str, int, Any]]:
    """(location text, 0-based record index, parsed value or _BadJSON) per record."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            index = 0
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as err:
                    value = _BadJSON(f"invalid JSON: {err.msg} (column {err.colno})")
                yield f"line {lineno}", index, value
                index += 1
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataFormatError(f"{path}: invalid JSON: {err.msg} (line {err.lineno}, "
                                  f"column {err.colno})") from None
        if not isinstance(data, list):
            raise DataFormatError(
                f"{path}: expected a JSON array of records, got {type(data).__name__}"
            )
        for index, value in enumerate(data):
            yield f"record {index}", index, value
    else:
        raise DataFormatError(f"{path}: unsupported data file type; allowed: .json, .jsonl")


@dataclass
class _BadJSON:
    reason: str


def _validate_and_convert(raw: Any, spec: FileSpec) -> dict:
    if isinstance(raw, _BadJSON):
        raise DataFormatError(raw.reason)
    if not isinstance(raw, dict):
        raise DataFormatError(f"expected a JSON object, got {type(raw).__name__}")
    for key, types in spec.required.items():
        if key not in raw:
            raise DataFormatError(f"missing required field {key!r}")
        value = raw[key]
        if not isinstance(value, types) or isinstance(value, bool):
            allowed = " or ".join(
                t.__name__ for t in (types if isinstance(types, tuple) else (types,))
            )
            raise DataFormatError(
                f"field {key!r} is {type(value).__name__} ({_short(value)}), expected {allowed}"
            )
    try:
        return spec.convert(raw)
    except (ValueError, KeyError, TypeError, AttributeError, pickle.UnpicklingError) as err:
        raise DataFormatError(str(err) or type(err).__name__) from None


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


# --------------------------------------------------------------------------------------
# Train / validation split
# --------------------------------------------------------------------------------------


def split_train_val(
    records: Sequence[dict], val_size: int | float, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Deterministic, disjoint (train, val) split; each keeps the original order.

    ``val_size``: a count (int >= 1) or a fraction in (0, 1). Same inputs -> same split.
    """
    total = len(records)
    if isinstance(val_size, float) and not isinstance(val_size, bool):
        if not 0 < val_size < 1:
            raise ValueError(f"val_size={val_size} is invalid; allowed: a fraction in (0, 1)")
        count = max(1, round(total * val_size))
    elif isinstance(val_size, int) and not isinstance(val_size, bool):
        count = val_size
    else:
        raise ValueError(f"val_size={val_size!r} is invalid; allowed: an int or a float")
    if not 1 <= count < total:
        raise ValueError(
            f"val_size={val_size} gives {count} validation records out of {total}; "
            "allowed: at least 1 and fewer than all records"
        )
    val_rows = set(random.Random(seed).sample(range(total), count))
    train = [r for i, r in enumerate(records) if i not in val_rows]
    val = [r for i, r in enumerate(records) if i in val_rows]
    return train, val


# --------------------------------------------------------------------------------------
# reasoning-gym
# --------------------------------------------------------------------------------------


def load_reasoning_gym(task: str, size: int, seed: int = 0, **config: Any) -> PromptDataset:
    """``size`` procedurally generated problems of reasoning-gym ``task`` (offline).

    ``config`` goes to the task's config class, e.g.
    ``load_reasoning_gym("chain_sum", 100, seed=1, min_terms=2, max_terms=2)``.
    """
    import reasoning_gym

    ds = reasoning_gym.create_dataset(task, size=size, seed=seed, **config)
    records = [
        {
            "prompt": entry["question"],
            "answer": str(entry["answer"]),
            "entry": entry,
            "data_source": f"reasoning_gym/{task}",
            "index": i,
        }
        for i, entry in enumerate(ds)
    ]
    return PromptDataset(name=f"reasoning_gym/{task}", records=records)


_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANSWER_LINE = re.compile(
    r"^\s*(?:final\s+)?answer\s*[:：]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE
)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (nested braces allowed), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for j in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[start:j].strip()
    return None


def extract_answer(completion: str) -> str | None:
    """The answer in a completion: look after any ``</think>``, then take the last
    ``\\boxed{}``, else the last ``<answer>..</answer>``, else the last ``Answer: ...``
    line, else the whole stripped text. None when nothing is left.

    >>> extract_answer("<think>2+2 is 4</think> So \\\\boxed{4}.")
    '4'
    >>> extract_answer("Work...\\nAnswer: 17")
    '17'
    """
    text = completion.rsplit("</think>", 1)[-1]
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    lines = _ANSWER_LINE.findall(text)
    answer = lines[-1] if lines else text.strip()
    return answer or None


@functools.cache
def _gym_scorer(source_dataset: str) -> Callable[[str | None, dict], float]:
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(source_dataset)


NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def extract_last_number(completion: str) -> str | None:
    """The answer for a numeric task read leniently: :func:`extract_answer`'s when it is one
    number, else the last number in the text (after any ``</think>``), else None. A small
    instruct model writes "The answer is 6." more often than "6" or "Answer: 6".

    >>> extract_last_number("The final answer to the problem is -4.")
    '-4'
    >>> extract_last_number("Answer: 12")
    '12'
    """
    strict = extract_answer(completion)
    if strict is not None and NUMBER.fullmatch(strict.strip()):
        return strict.strip()
    numbers = NUMBER.findall(completion.rsplit("</think>", 1)[-1])
    return numbers[-1] if numbers else None


# how a reasoning-gym reward reads the answer out of a response (evals' gym grader too)
GYM_ANSWERS: dict[str, Callable[[str], str | None]] = {
    "strict": extract_answer, "last_number": extract_last_number}


@register_reward("reasoning_gym")
def gym_reward(completions: list[str], entry: list[dict] | dict, *,
               extraction: str = "strict", **columns: Any) -> list[float]:
    """reasoning-gym's own checker on the extracted answer (a float in [0, 1] per sample).

    ``entry`` is the column of gym entries aligned with ``completions`` (a single dict is
    used for every completion); ``extraction`` names how the answer is read
    (:data:`GYM_ANSWERS`). The other columns (the record's ``answer``...) are not used.

    >>> e = load_reasoning_gym("chain_sum", 1, seed=1)[0]["entry"]  # doctest: +SKIP
    >>> gym_reward([f"Answer: {e['answer']}", "Answer: nope"], [e, e])  # doctest: +SKIP
    [1.0, 0.0]
    """
    if extraction not in GYM_ANSWERS:
        raise ValueError(f"unknown answer extraction {extraction!r}; choose one of "
                         f"{sorted(GYM_ANSWERS)}")
    extract = GYM_ANSWERS[extraction]
    entries = [entry] * len(completions) if isinstance(entry, dict) else list(entry)
    if len(entries) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(entries)} entries")
    scores = []
    for text, e in zip(completions, entries):
        found = extract(text)
        if found is None:
            scores.append(0.0)
            continue
        scorer = _gym_scorer(e["metadata"]["source_dataset"])
        scores.append(float(scorer(found, e)))
    return scores


@register_reward("reasoning_gym_last_number")
def gym_reward_last_number(completions: list[str], entry: list[dict] | dict,
                           **columns: Any) -> list[float]:
    """:func:`gym_reward` with the lenient extraction (:func:`extract_last_number`): for
    numeric tasks asked of a model that answers in a sentence."""
    return gym_reward(completions, entry, extraction="last_number")
