"""``archer grade math|code``: end to end through ``archer_cli.main.main`` with temporary files."""

from __future__ import annotations

import io
import json
import sys

import pytest

from archer.grade import Malformed, parse_code_record, parse_math_record
from archer_cli.main import main


def _write_lines(path, lines: list) -> str:
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return str(path)


def _read_rows(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def fence(code: str) -> str:
    return "Here it is.\n```python\n" + code.strip("\n") + "\n```\n"


# ------------------------------------------------------------------------------------ math

MATH_LINES = [
    {"id": "ok", "completion": r"<think>2+2?</think> so $\boxed{025}$.", "answer": "25"},
    {"id": "sym", "completion": r"\boxed{2\sqrt{2}}", "answer": r"\sqrt{8}"},
    {"id": "wrong", "completion": r"\boxed{3}", "answer": 4},
    '{"id": "broken", "completion": "\\\\boxed{1}", ',  # line 4: truncated JSON
    {"id": "none", "completion": "I am not sure.", "answer": "4"},
    {"id": "gsm", "completion": r"\boxed{1234}", "answer": "Add them.\n#### 1,234"},
    {"id": "nofield", "completion": r"\boxed{1}"},  # line 7: no answer field
    {"id": 8, "completion": ["not", "a", "string"], "answer": "1"},  # line 8: wrong type
    {"completion": r"\boxed{27}", "answer": 27.0},  # no id: the line number
]


def test_grade_math_end_to_end(tmp_path, capsys):
    src = _write_lines(tmp_path / "in.jsonl", MATH_LINES)
    out = tmp_path / "out.jsonl"
    rc = main(["grade", "math", f"in_file={src}", f"out_file={out}", "workers=1"])
    assert rc == 1  # some lines were malformed
    rows = _read_rows(out)
    assert [r["line"] for r in rows] == list(range(1, 10))  # one row per line, in order
    assert [r["id"] for r in rows] == ["ok", "sym", "wrong", None, "none", "gsm", "nofield", 8, 9]
    assert [r["verdict"] for r in rows] == [
        "correct", "correct", "wrong", "error", "no_answer", "correct", "error", "error",
        "correct",
    ]
    assert [r["correct"] for r in rows] == [v == "correct" for v in (r["verdict"] for r in rows)]
    assert rows[0]["extracted"] == "025" and rows[0]["checker"] == "string"
    assert rows[1]["checker"] == "sympy" and rows[1]["time_s"] > 0
    assert (rows[0]["passed"], rows[0]["total"], rows[2]["passed"], rows[2]["total"]) == (1, 1, 0, 1)
    assert rows[3]["reason"].startswith("line 4: malformed record: invalid JSON")
    assert rows[6]["reason"] == "line 7: malformed record: missing field 'answer'"
    assert "line 8" in rows[7]["reason"] and "'completion' must be a string" in rows[7]["reason"]
    assert all(isinstance(r["reason"], str) and "time_s" in r for r in rows)
    err = capsys.readouterr().err
    assert "9 lines, 6 graded, 3 malformed" in err
    assert "correct 4" in err and "wrong 1" in err and "no_answer 1" in err
    assert "accuracy 4/6 = 0.6667" in err


def test_grade_math_all_parsed_exits_zero_and_uses_stdin_stdout(monkeypatch, capsys):
    lines = [
        {"id": 1, "completion": r"\boxed{\frac12}", "answer": "0.5"},
        {"id": 2, "completion": "Answer: 7", "answer": "7"},
        "",  # blank lines are not records
        {"id": 3, "completion": r"\boxed{8}", "answer": "7"},
    ]
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    rc = main([
        "grade", "math", "in_file=-", "out_file=-", "checkers=string",
        "fallbacks=answer_line", "timeout=2",
    ])
    cap = capsys.readouterr()
    assert rc == 0
    rows = [json.loads(x) for x in cap.out.splitlines()]
    assert [(r["id"], r["line"], r["verdict"]) for r in rows] == [
        (1, 1, "correct"), (2, 2, "correct"), (3, 4, "wrong"),
    ]
    assert "accuracy 2/3" in cap.err and "0 malformed" in cap.err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["checkers=string,wolfram"], "wolfram"),
        (["fallbacks=guess"], "guess"),
    ],
)
def test_grade_math_bad_options(tmp_path, capsys, argv, match):
    src = _write_lines(tmp_path / "in.jsonl", MATH_LINES[:1])
    rc = main(["grade", "math", f"in_file={src}", *argv])
    assert rc == 2 and match in capsys.readouterr().err


def test_grade_missing_input_file(tmp_path, capsys):
    rc = main(["grade", "math", f"in_file={tmp_path / 'nope.jsonl'}"])
    assert rc == 2 and "nope.jsonl" in capsys.readouterr().err


def test_grade_bad_timeout_is_a_usage_error(tmp_path, capsys):
    assert main(["grade", "code", "in_file=x", "timeout=0"]) == 2
    assert "timeout=0.0 is invalid; allowed: a number in (0, inf]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"answer": "1"}, "missing field 'completion'"),
        ({"completion": "x", "answer": None}, "'answer' must be a string or a number"),
        ({"completion": "x", "answer": True}, "'answer' must be a string or a number"),
        ({"completion": "x", "answer": "  "}, "'answer' is empty"),
    ],
)
def test_math_record_validation(record, match):
    with pytest.raises(Malformed, match=match):
        parse_math_record(record)


# ------------------------------------------------------------------------------------ code

ADD_STDIN = "a, b = map(int, input().split())\nprint(a + b)"
ADD_STDIN_WRONG = "a, b = map(int, input().split())\nprint(a - b)"
STDIN_TESTS = [
    {"input": "1 2\n", "output": "3\n", "testtype": "stdin"},
    {"input": "5 7\n", "output": "12\n", "testtype": "stdin"},
]
FN_TESTS = [
    {"input": "1\n2", "output": "3", "testtype": "functional"},
    {"input": "[1]\n[2]", "output": "[1, 2]", "testtype": "functional"},
]
SOLUTION = "class Solution:\n    def add(self, a, b):\n        return a + b"
SOLUTION_WRONG = "class Solution:\n    def add(self, a, b):\n        return a * b"
CHECK = "def check(candidate):\n    assert candidate(0, 0) == 0\n    assert candidate(1, 2) == 3\n"

CODE_LINES = [
    {"id": "stdin-pass", "completion": fence(ADD_STDIN), "tests": STDIN_TESTS},
    {"id": "stdin-fail", "completion": fence(ADD_STDIN_WRONG), "tests": STDIN_TESTS},
    {"id": "fn-pass", "completion": fence(SOLUTION), "func_name": "add", "tests": FN_TESTS},
    {"id": "fn-fail", "completion": fence(SOLUTION_WRONG), "metadata": {"func_name": "add"},
     "tests": FN_TESTS},
    "[1, 2]",  # line 5: not an object
    {"id": "check-pass", "completion": fence("def add(a, b):\n    return a + b"),
     "tests": {"check": CHECK, "entry_point": "add"}},
    {"id": "check-fail", "completion": fence("def add(a, b):\n    return a - b"),
     "tests": {"check": CHECK, "entry_point": "add"}},
    {"id": "check-class", "completion": fence(SOLUTION),
     "tests": {"check": CHECK, "entry_point": "Solution().add"}},
    {"id": "no-code", "completion": "I would loop over the input.", "tests": STDIN_TESTS},
    {"id": "fn-noname", "completion": fence(SOLUTION), "tests": FN_TESTS},  # line 10
]


def test_grade_code_end_to_end(tmp_path, capsys):
    src = _write_lines(tmp_path / "in.jsonl", CODE_LINES)
    out = tmp_path / "out.jsonl"
    rc = main(["grade", "code", f"in_file={src}", f"out_file={out}", "timeout=5"])
    assert rc == 1
    rows = _read_rows(out)
    assert [r["line"] for r in rows] == list(range(1, 11))
    got = [(r["id"], r["verdict"], r["passed"], r["total"]) for r in rows]
    assert got == [
        ("stdin-pass", "passed", 2, 2),
        ("stdin-fail", "failed", 0, 2),  # stops at the first failing test
        ("fn-pass", "passed", 2, 2),
        ("fn-fail", "failed", 0, 2),
        (None, "error", 0, 0),
        ("check-pass", "passed", 2, 2),
        ("check-fail", "failed", 1, 2),  # the first assert holds, the second does not
        ("check-class", "passed", 2, 2),
        ("no-code", "no_code", 0, 2),
        ("fn-noname", "error", 0, 0),
    ]
    assert [r["correct"] for r in rows] == [v == "passed" for _, v, _, _ in got]
    assert "got '-1" in rows[1]["reason"]
    assert rows[4]["reason"] == "line 5: malformed record: expected a JSON object, got list"
    assert "line 10" in rows[9]["reason"] and "func_name" in rows[9]["reason"]
    assert all(r["time_s"] > 0 for r in rows if r["verdict"] in ("passed", "failed"))
    err = capsys.readouterr().err
    assert "10 lines, 8 graded, 2 malformed" in err and "accuracy 4/8 = 0.5000" in err


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"completion": "x"}, "missing field 'tests'"),
        ({"completion": "x", "tests": "1 2"}, "'tests' must be a list"),
        ({"completion": "x", "tests": []}, "empty list"),
        ({"completion": "x", "tests": [{"input": "1"}]}, r"tests\[0\] has no 'output'"),
        ({"completion": "x", "tests": [{"input": "1", "output": 1}]}, "must be a string"),
        ({"completion": "x", "tests": [{"input": "1", "output": "1", "testtype": "io"}]},
         "testtype"),
        ({"completion": "x", "tests": [STDIN_TESTS[0], FN_TESTS[0]], "func_name": "f"}, "mix"),
        ({"completion": "x", "tests": FN_TESTS, "func_name": "add",
          "metadata": {"func_name": "sub"}}, "differently"),
        ({"completion": "x", "tests": FN_TESTS, "func_name": "not a name"}, "identifier"),
        ({"completion": "x", "tests": [{"input": "{x}", "output": "1",
                                        "testtype": "functional"}], "func_name": "f"},
         "not JSON"),
        ({"completion": "x", "tests": {"entry_point": "f"}}, "without 'check'"),
        ({"completion": "x", "tests": {"check": CHECK}}, "entry_point is missing"),
        ({"completion": "x", "tests": {"check": CHECK, "entry_point": "f; import os"}},
         "entry_point"),
        ({"completion": "x", "tests": {"check": "def check(:", "entry_point": "f"}},
         "does not parse"),
        ({"completion": "x", "tests": {"check": "assert f(1) == 1", "entry_point": "f"}},
         "no check"),
    ],
)
def test_code_record_validation(record, match):
    with pytest.raises(Malformed, match=match):
        parse_code_record(record)


def test_code_record_func_name_places_agree():
    for rec in (
        {"func_name": "add"},
        {"metadata": {"func_name": "add"}},
        {"metadata": json.dumps({"func_name": "add"})},
        {"func_name": "add", "metadata": {"func_name": "add"}},
    ):
        _, problem = parse_code_record({"completion": "x", "tests": FN_TESTS, **rec})
        assert problem.kind == "functional" and problem.func_name == "add"
    per_test = [dict(t, func_name="add") for t in FN_TESTS]
    _, problem = parse_code_record({"completion": "x", "tests": per_test})
    assert problem.func_name == "add" and len(problem.tests) == 2
    # a suite that already calls check() needs no entry_point
    _, problem = parse_code_record(
        {"completion": "x", "tests": {"check": CHECK + "\ncheck(add)\n"}}
    )
    assert problem.kind == "check" and problem.check_code.count("check(add)") == 1


def test_grade_refuses_to_write_over_its_input(tmp_path, capsys):
    """out_file naming the input file would empty it before it is read: refused, the file
    kept as it was."""
    src = tmp_path / "same.jsonl"
    text = json.dumps({"id": "a", "completion": "\\boxed{2}", "answer": "2"}) + "\n"
    src.write_text(text)
    assert main(["grade", "math", f"in_file={src}", f"out_file={src}"]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert src.read_text() == text


def test_grade_output_of_the_wrong_kind_is_a_usage_error(tmp_path, capsys):
    """out_file naming a directory (or a path under a regular file) is refused before any
    grading, naming the path; nothing is written or removed."""
    src = tmp_path / "in.jsonl"
    text = json.dumps({"id": "a", "completion": "\\boxed{2}", "answer": "2"}) + "\n"
    src.write_text(text)
    folder = tmp_path / "verdicts"
    folder.mkdir()
    (folder / "old.jsonl").write_text("kept\n")
    assert main(["grade", "math", f"in_file={src}", f"out_file={folder}"]) == 2
    assert (f"archer: error: out_file='{folder}' is an existing directory, not a file; give a "
            "file path") in capsys.readouterr().err
    under_file = src / "verdicts.jsonl"
    assert main(["grade", "math", f"in_file={src}", f"out_file={under_file}"]) == 2
    assert (f"archer: error: out_file='{under_file}' is inside '{src}', which is an existing "
            "file, not a directory") in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["old.jsonl"]
    assert (folder / "old.jsonl").read_text() == "kept\n" and src.read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "verdicts"]
    # in_file naming a directory: an error naming it, not IsADirectoryError's traceback
    assert main(["grade", "math", f"in_file={folder}", f"out_file={tmp_path / 'v.jsonl'}"]) == 2
    assert f"archer: error: in_file={folder} is a directory; give a JSONL file" in \
        capsys.readouterr().err
    assert not (tmp_path / "v.jsonl").exists()
