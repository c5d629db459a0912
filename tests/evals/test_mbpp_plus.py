"""MBPP+: evalplus-format records as check suites for our verifier, the benchmark end to end,
and our verdicts against evalplus's own (run in the sandbox) on the same samples."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from archer.data.datasets import FILES, DataFormatError, load_file
from archer.rewards.code import CodeGrader, to_problem
from archer.rewards.mbpp_plus import check_code, py_literal
from evals.registry import load_problems, make_contract

FIXTURE = Path(__file__).parent / "data" / "mbpp_plus_mini.jsonl"
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap is needed to run evalplus sandboxed")

# per problem: samples (code) and whether evalplus's oracle accepts them
CASES = {
    "Mbpp/3": [
        ("def is_not_prime(n):\n    return n == 1 or any(n % d == 0 for d in range(2, n))\n",
         True),
        # wrong on the plus input 1 only: the base tests alone would pass it
        ("def is_not_prime(n):\n    return any(n % d == 0 for d in range(2, n))\n", False),
        ("def is_not_prime(n):\n    return 'no'\n", False),
    ],
    "Mbpp/2": [
        # another order than the reference: evalplus compares these as sets
        ("def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))\n",
         True),
        ("def similar_elements(a, b):\n    return tuple(a)\n", False),
    ],
    "Mbpp/14": [
        # 1e-9 off: within the 1e-6 tolerance evalplus applies to float results
        ("def find_Volume(l, b, h):\n    return l * b * h * 0.5 + 1e-9\n", True),
        ("def find_Volume(l, b, h):\n    return l * b * h // 2\n", False),
    ],
    "Mbpp/787": [
        # returns a re.Match (which cannot leave the sandboxed worker); only "not None" counts
        ("import re\ndef text_match_three(text):\n    return re.search('abbb', text)\n", True),
        ("def text_match_three(text):\n    return 'abbb' in text\n", True),
        ("def text_match_three(text):\n    return 'found'\n", False),
    ],
}


def test_py_literal_round_trips_what_repr_cannot_write():
    values = [float("inf"), float("-inf"), complex(1.5, -2), {1, 2}, frozenset({3}), (),
              (1,), {"a": [1, (2, 3)]}, set(), b"x", None, True]
    for v in values:
        assert eval(py_literal(v)) == v and type(eval(py_literal(v))) is type(v)  # noqa: S307
    nan = eval(py_literal(float("nan")))  # noqa: S307
    assert nan != nan
    with pytest.raises(TypeError, match="cannot write a object"):
        py_literal(object())


def test_records_load_and_a_malformed_one_names_its_line(tmp_path):
    ds = load_file(FIXTURE, FILES.get("mbpp_plus"), name="mbpp_plus")
    assert [r["task_id"] for r in ds] == list(CASES)
    bad = tmp_path / "bad.jsonl"
    lines = FIXTURE.read_text().splitlines()
    rec = json.loads(lines[1])
    del rec["plus_input"]
    bad.write_text(lines[0] + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(DataFormatError, match=r"bad.jsonl: line 2: missing required field "
                                              r"'plus_input'"):
        load_file(bad, FILES.get("mbpp_plus"))


def test_check_code_holds_base_then_plus_inputs_after_evalplus_deserialisation():
    rec = json.loads(FIXTURE.read_text().splitlines()[1])  # Mbpp/2: inputs become tuples
    code = check_code(rec)
    ns: dict = {}
    exec(compile(code, "<t>", "exec"), ns)  # noqa: S102 - trusted fixture
    assert ns["_ARCHER_INPUTS"] == [[(3, 4, 5, 6), (5, 7, 4, 10)], [(1, 2, 3, 4), (5, 4, 3, 7)],
                                    [(11, 12, 14, 13), (17, 15, 14, 13)]]
    assert len(ns["_ARCHER_INPUTS"]) == len(rec["base_input"]) + len(rec["plus_input"])
    assert "_ARCHER_INPUTS = [[(3, 4" in check_code(rec, plus=False)
    assert ns["_archer_same"]((5, 4), (4, 5), None, 0)  # the set-equality oracle


@pytest.fixture(scope="module")
def problems():
    return {p.problem_id: p for p in load_problems("mbpp_plus", data_file=FIXTURE)}


@pytest.fixture(scope="module")
def grader():
    g = CodeGrader()
    yield g
    g.close()


@pytest.mark.parametrize("pid", list(CASES))
def test_our_verifier_gives_evalplus_verdicts(problems, grader, pid):
    prob = to_problem(problems[pid].gold)
    for code, expected in CASES[pid]:
        res = grader.grade(f"```python\n{code}```", prob)
        assert res.passed is expected, (code, res)


def test_benchmark_contract_prompt_and_label(problems):
    c = make_contract("mbpp_plus", data_file=FIXTURE, k=2)
    assert c.n_problems == 4 and c.label == "MBPP+ base and plus tests"
    assert c.grader == "code" and c.test_timeout_s == 6.0
    p = problems["Mbpp/3"]
    assert p.record["prompt"].startswith("Please provide a self-contained Python script")
    assert "assert is_not_prime(2) == False" in p.record["prompt"]


def _samples_file(tmp_path: Path) -> Path:
    k = max(len(v) for v in CASES.values())
    c = make_contract("mbpp_plus", data_file=FIXTURE, k=k, temperature=0.0)
    rows = [{"type": "header", "contract": c.to_dict(), "contract_hash": c.hash, "model": "m"}]
    for pid, cases in CASES.items():
        codes = [code for code, _ in cases]
        codes += [codes[-1]] * (k - len(codes))  # pad with a failing sample
        rows += [{"type": "sample", "problem_id": pid, "sample_index": j,
                  "text": f"Here:\n```python\n{code}```\n"} for j, code in enumerate(codes)]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return path


def _expected(k: int) -> list[list[int]]:
    out = []
    for cases in CASES.values():
        v = [int(ok) for _, ok in cases]
        out.append(v + [v[-1]] * (k - len(v)))
    return out


@needs_bwrap
@pytest.mark.slow
def test_evalplus_in_the_sandbox_agrees_with_our_verifier(tmp_path):
    from evals.evalplus_adapter import score_with_evalplus
    from evals.scoring import score_samples

    samples = _samples_file(tmp_path)
    ours = score_samples(samples, data_file=FIXTURE, workers=1)
    theirs = score_with_evalplus(samples, tmp_path / "ep", dataset_path=FIXTURE, parallel=1)
    assert theirs["label"] == "MBPP+ base and plus tests (evalplus)"
    k = 3
    assert [e["correct"] for e in theirs["per_problem"]] == _expected(k)
    assert [e["correct"] for e in ours["per_problem"]] == _expected(k)
    assert theirs["metrics"]["avg_at_3"] == pytest.approx(ours["metrics"]["avg_at_3"])


@needs_bwrap
@pytest.mark.slow
def test_evalplus_runs_sample_code_without_network_or_writable_files(tmp_path):
    """A correct sample that also tries to write outside the sandbox and to open a socket:
    it still passes (its errors are swallowed), but the file never appears."""
    from evals.evalplus_adapter import score_with_evalplus

    marker = tmp_path / "escaped.txt"
    # evalplus's own guard sets builtins.open to None, not os.open
    evil = ("import os, socket\n"
            "try:\n"
            f"    fd = os.open({str(marker)!r}, os.O_WRONLY | os.O_CREAT)\n"
            "    os.write(fd, b'escaped')\n"
            "except Exception:\n    pass\n"
            "try:\n"
            "    socket.create_connection(('127.0.0.1', 22), timeout=1).close()\n"
            f"    fd = os.open({str(marker)!r} + '.net', os.O_WRONLY | os.O_CREAT)\n"
            "except Exception:\n    pass\n"
            "def is_not_prime(n):\n    return n == 1 or any(n % d == 0 for d in range(2, n))\n")
    c = make_contract("mbpp_plus", data_file=FIXTURE, k=1, limit=1)
    rows = [{"type": "header", "contract": c.to_dict(), "contract_hash": c.hash, "model": "m"},
            {"type": "sample", "problem_id": "Mbpp/3", "sample_index": 0,
             "text": f"```python\n{evil}```"}]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(x) + "\n" for x in rows))
    res = score_with_evalplus(samples, tmp_path / "ep", dataset_path=FIXTURE, parallel=1)
    assert res["per_problem"][0]["correct"] == [1]
    assert not marker.exists() and not Path(str(marker) + ".net").exists()
    # the same sample outside the sandbox does write the file (so the check above can fail)
    score_with_evalplus(samples, tmp_path / "ep2", dataset_path=FIXTURE, parallel=1,
                        sandboxed=False)
    assert marker.read_bytes() == b"escaped"


def test_evalplus_refuses_samples_made_on_another_file(tmp_path):
    from evals.evalplus_adapter import score_with_evalplus

    samples = _samples_file(tmp_path)
    other = tmp_path / "other.jsonl"
    other.write_text(FIXTURE.read_text() + "\n")
    with pytest.raises(ValueError, match="not the file the samples were made on"):
        score_with_evalplus(samples, tmp_path / "ep", dataset_path=other)


@needs_bwrap
@pytest.mark.slow
def test_archer_eval_mbpp_plus_end_to_end_with_both_scorers(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from archer_cli.main import main

    out = tmp_path / "ev"
    common = ["benchmarks=mbpp_plus", f"data_file={FIXTURE}", f"out_dir={out}",
              "tracking=none", "workers=1"]
    assert main(["eval", "model=tiny", "k=2", "max_new_tokens=4", *common]) == 0
    ours = json.loads((out / "mbpp_plus" / "results.json").read_text())
    assert ours["metrics"]["n_samples"] == 8 and ours["label"] == "MBPP+ base and plus tests"
    assert main(["eval", "--score-only", "scorer=evalplus", *common]) == 0
    theirs = json.loads((out / "mbpp_plus" / "evalplus" / "results.json").read_text())
    assert theirs["engine"] == "evalplus" and theirs["metrics"]["n_samples"] == 8
    assert [e["correct"] for e in theirs["per_problem"]] == \
        [e["correct"] for e in ours["per_problem"]]
    assert main(["eval", "--score-only", "scorer=evalplus", "benchmarks=gsm8k",
                 f"out_dir={out}"]) == 2
    assert "scorer=evalplus scores ['humaneval', 'mbpp_plus'], not ['gsm8k']" in \
        capsys.readouterr().err
