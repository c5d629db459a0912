"""The evaluation harness end to end: contracts, registry/loaders, resumable generation,
pure scoring, paired comparison, the ``archer eval`` command and its MLflow run."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from archer.rewards.code import encode_lcb_tests
from evals.contracts import ContractMismatch, EvalContract, check_comparable
from evals.registry import BENCHMARKS, load_problems, make_contract, problems_for
from evals.runner import generate_samples, read_samples
from evals.scoring import build_result, compare_results, score_samples

# ----------------------------------------------------------------------------- contracts


def test_paper_defaults_and_overrides_are_recorded():
    c = make_contract("aime2024")
    assert (c.temperature, c.top_p, c.max_new_tokens, c.k) == (0.8, 1.0, 32768, 64)
    assert c.overrides == () and c.n_problems == 30
    assert make_contract("lcb_v5").k == 8 and make_contract("math500").k == 4
    small = make_contract("aime2024", k=4, max_new_tokens=256, limit=5)
    assert small.overrides == ("k", "limit", "max_new_tokens") and small.n_problems == 5
    assert small.hash != c.hash
    # the same inputs give the same hash; a value equal to the default is not an override
    assert make_contract("aime2024", k=64).hash == c.hash
    with pytest.raises(ValueError, match="cannot override.*grader"):
        c.with_overrides(grader="code")


def test_contract_mismatch_is_refused_naming_the_fields():
    a = make_contract("gsm8k", k=4, limit=10, max_new_tokens=64)
    b = make_contract("gsm8k", k=4, limit=10, max_new_tokens=128, temperature=0.6)
    with pytest.raises(ContractMismatch, match=r"temperature: 0.8 != 0.6; max_new_tokens: 64 "
                                               r"!= 128; overrides"):
        check_comparable(a, b)
    diffs = check_comparable(a, b, force=True)  # k=4 is gsm8k's default: not an override
    assert [d.split(":")[0] for d in diffs] == ["temperature", "max_new_tokens", "overrides"]
    assert check_comparable(a, dataclasses.replace(a)) == []
    # round trip through JSON keeps the hash
    assert EvalContract.from_dict(json.loads(json.dumps(a.to_dict()))).hash == a.hash


def test_changed_data_file_is_refused(tmp_path, monkeypatch):
    src = Path(BENCHMARKS.get("aime2025").data_path())
    data = tmp_path / "data"
    (data / "eval_math").mkdir(parents=True)
    shutil.copy(src, data / "eval_math" / "aime2025.jsonl")
    c = make_contract("aime2025", data_dir=data, limit=3)
    assert len(problems_for(c, data_dir=data)) == 3
    with (data / "eval_math" / "aime2025.jsonl").open("a") as f:
        f.write(json.dumps({"id": "x", "problem": "1+1?", "answer": "2"}) + "\n")
    with pytest.raises(ValueError, match="data changed"):
        problems_for(c, data_dir=data)


# ----------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("name,count", [("aime2024", 30), ("aime2025", 30), ("amc23", 40),
                                        ("math500", 500), ("gsm8k", 1319), ("lcb_v5", 279),
                                        ("humaneval", 164)])
def test_every_benchmark_loads_with_unique_ids(name, count):
    problems = load_problems(name)
    assert len(problems) == count
    assert len({p.problem_id for p in problems}) == count
    assert all(isinstance(p.record["prompt"], str) and p.record["prompt"] for p in problems)


def test_lcb_date_window_and_platform_filtering():
    all_v5 = load_problems("lcb_v5")
    assert {p.meta["platform"] for p in all_v5} == {"atcoder", "leetcode"}
    sept = load_problems("lcb_v5", lcb_start="2024-09-01", lcb_end="2024-10-01")
    assert 0 < len(sept) < len(all_v5)
    assert all(p.meta["contest_date"].startswith("2024-09") for p in sept)
    with pytest.raises(ValueError, match="no problems"):
        load_problems("lcb_v6")  # the public v5 file has no 2025-02..05 problems
    c = make_contract("lcb_v5")
    assert (c.test_timeout_s, c.label, c.lcb_start, c.lcb_end) == (
        6.0, "public tests only", "2024-08-01", "2025-02-01")
    # functional problems carry the starter code in the official prompt
    lc = next(p for p in all_v5 if p.meta["platform"] == "leetcode")
    assert "starter code" in lc.record["prompt"] and "class Solution" in lc.record["prompt"]


def test_official_lcb_record_format_with_private_tests(tmp_path):
    """The official release: test cases as JSON strings and base64(zlib(pickle(json)))."""
    rec = {"question_id": "q1", "question_title": "sum", "platform": "atcoder",
           "contest_id": "abc1", "contest_date": "2025-03-01T00:00:00", "difficulty": "easy",
           "question_content": "Read a and b, print a+b.", "starter_code": "",
           "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n",
                                              "testtype": "stdin"}]),
           "private_test_cases": encode_lcb_tests([{"input": "5 5\n", "output": "10\n",
                                                     "testtype": "stdin"}]),
           "metadata": "{}"}
    path = tmp_path / "lcb_official.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    probs = load_problems("lcb_v6", data_file=path)
    assert len(probs) == 1 and probs[0].meta["difficulty"] == "easy"
    assert [t["output"] for t in probs[0].gold["public_test_cases"]] == ["3\n", "10\n"]
    c = make_contract("lcb_v6", data_file=path, k=2)
    assert c.data_file == "lcb_v5_public:lcb_official.jsonl"
    assert c.label == "public and private tests"  # not "public tests only"
    from evals.scoring import grade_texts

    good = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    bad = "```python\nprint(3)\n```"  # passes the public test, fails the private one
    graded = grade_texts(c, probs, [[good, bad]], workers=1)
    assert [r["correct"] for r in graded[0]] == [1, 0]


# ----------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def tiny():
    from evals.runner import make_backend

    return make_backend("hf", "tiny", batch_size=2)


class _Interrupt(Exception):
    pass


def test_interrupted_evaluation_resumes_without_regenerating(tmp_path, tiny):
    backend, tok = tiny
    contract = make_contract("gsm8k", tokenizer=tok, k=3, limit=5, max_new_tokens=8)
    problems = problems_for(contract)
    calls = []
    orig = backend.generate

    def counting(prompts, params):
        calls.append(len(prompts))
        return orig(prompts, params)

    backend.generate = counting
    try:
        path = tmp_path / "run" / "samples.jsonl"

        def stop_after_first(c):
            raise _Interrupt

        with pytest.raises(_Interrupt):
            generate_samples(contract, problems, backend, path, tokenizer=tok, batch_size=2,
                             on_chunk=stop_after_first)
        assert calls == [2] and len(read_samples(path).samples) == 6
        # a kill mid-write leaves half a line: it is dropped and its chunk regenerated
        with path.open("a") as f:
            f.write('{"type": "sample", "problem_id": "gsm8k-2", "sample_ind')
        stats = generate_samples(contract, problems, backend, path, tokenizer=tok,
                                 batch_size=2)
        assert stats == {"generated": 9, "reused": 6, "chunks_run": 2}
        assert calls == [2, 2, 1]  # chunks 1 and 2 only; chunk 0 was not regenerated
        again = generate_samples(contract, problems, backend, path, tokenizer=tok,
                                 batch_size=2)
        assert again["generated"] == 0 and calls == [2, 2, 1]
        # identical to an uninterrupted run
        full = tmp_path / "full" / "samples.jsonl"
        generate_samples(contract, problems, backend, full, tokenizer=tok, batch_size=2)
        texts = {k: v["text"] for k, v in read_samples(path).samples.items()}
        assert texts == {k: v["text"] for k, v in read_samples(full).samples.items()}
        assert len(texts) == 15
        # the same file under another contract is refused, naming the difference
        other = dataclasses.replace(contract, max_new_tokens=9)
        with pytest.raises(ContractMismatch, match="max_new_tokens: 8 != 9"):
            generate_samples(other, problems, backend, path, tokenizer=tok, batch_size=2)
    finally:
        backend.generate = orig


@pytest.mark.slow
@pytest.mark.parametrize("name", ["aime2024", "aime2025", "amc23", "math500", "gsm8k",
                                  "lcb_v5", "humaneval"])
def test_each_benchmark_end_to_end_on_tiny_model(tmp_path, tiny, name):
    backend, tok = tiny
    contract = make_contract(name, tokenizer=tok, k=2, limit=2, max_new_tokens=6)
    problems = problems_for(contract)
    path = tmp_path / "samples.jsonl"
    generate_samples(contract, problems, backend, path, tokenizer=tok, batch_size=2)
    res = score_samples(path, workers=1)
    m = res["metrics"]
    assert m["n_problems"] == 2 and m["n_samples"] == 4
    assert 0.0 <= m["avg_at_2"] <= 1.0 and {"pass_at_1", "pass_at_2"} <= m.keys()
    assert ("maj_at_2" in m) == (BENCHMARKS.get(name).kind == "math")
    assert res["contract_hash"] == contract.hash and res["label"] == contract.label
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["metrics"] == json.loads(json.dumps(m))
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == 4


# ----------------------------------------------------------------------------- scoring


def _write_samples(path: Path, contract: EvalContract, texts: dict[str, list[str]]):
    rows = [{"type": "header", "contract": contract.to_dict(),
             "contract_hash": contract.hash, "model": "hand", "batch_size": 8}]
    for i, (pid, ts) in enumerate(texts.items()):
        rows += [{"type": "sample", "problem_id": pid, "problem_index": i, "sample_index": j,
                  "text": t, "truncated": False, "n_tokens": 1} for j, t in enumerate(ts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_scoring_hand_samples_is_pure_and_rerunnable(tmp_path):
    c = make_contract("gsm8k", k=4, limit=3, max_new_tokens=64)
    golds = [p.gold for p in problems_for(c)]  # 18, 3, 70
    texts = {
        "gsm8k-0": [f"\\boxed{{{golds[0]}}}", "The answer is 5", f"Answer: {golds[0]}", "no"],
        "gsm8k-1": ["\\boxed{1}"] * 4,
        "gsm8k-2": [f"\\boxed{{{golds[2]}}}"] * 3 + ["\\boxed{1}"],
    }
    _write_samples(tmp_path / "samples.jsonl", c, texts)
    res = score_samples(tmp_path / "samples.jsonl", workers=1)
    acc = [e["accuracy"] for e in res["per_problem"]]
    assert acc == [0.5, 0.0, 0.75]  # "no" has no number; "The answer is 5" is wrong
    m = res["metrics"]
    assert m["avg_at_4"] == pytest.approx(1.25 / 3)
    # pass@4: problems 0 and 2 have a correct sample -> 2/3; pass@2 of problem 0 (c=2):
    # 1 - C(2,2)/C(4,2) = 5/6, problem 2 (c=3): 1 -> (5/6 + 0 + 1) / 3
    assert m["pass_at_4"] == pytest.approx(2 / 3)
    assert m["pass_at_2"] == pytest.approx((5 / 6 + 1) / 3)
    # maj@4: problem 0 votes 18 x2 vs 5 -> correct; 1: wrong; 2: 70 x3 -> correct
    assert m["maj_at_4"] == pytest.approx(2 / 3)
    assert m["avg_at_4_ci_low"] <= m["avg_at_4"] <= m["avg_at_4_ci_high"]
    first = (tmp_path / "results.json").read_text()
    score_samples(tmp_path / "samples.jsonl", workers=1)
    assert (tmp_path / "results.json").read_text() == first


def test_incomplete_samples_are_not_scored(tmp_path):
    c = make_contract("gsm8k", k=2, limit=2, max_new_tokens=64)
    _write_samples(tmp_path / "samples.jsonl", c, {"gsm8k-0": ["\\boxed{1}", "\\boxed{2}"]})
    with pytest.raises(ValueError, match="2 of 4 samples are missing"):
        score_samples(tmp_path / "samples.jsonl", workers=1)


def _result(contract, problems, correct):
    graded = [[{"correct": v, "reason": "x", "answer": str(v)} for v in row] for row in correct]
    return build_result(contract, problems, graded, model="m", engine="hf")


def test_paired_comparison_of_results_and_contract_refusal():
    c = make_contract("math500", k=2, limit=20, max_new_tokens=64)
    problems = problems_for(c)
    a = _result(c, problems, [[1, 1]] * 15 + [[0, 0]] * 5)
    b = _result(c, problems, [[0, 0]] * 15 + [[0, 0]] * 5)
    out = compare_results(a, b)
    assert out["diff"] == pytest.approx(0.75) and out["ci_low"] > 0.4
    assert out["p_value"] < 0.001 and out["p_value_method"] == "exact"  # 15 non-zero diffs
    # per-difficulty breakdown is there
    assert set(a["breakdowns"]["difficulty"]) >= {"1.0", "2.0"} or a["breakdowns"]["difficulty"]
    c2 = make_contract("math500", k=2, limit=20, max_new_tokens=128)
    b2 = _result(c2, problems, [[0, 0]] * 20)
    with pytest.raises(ContractMismatch, match="max_new_tokens: 64 != 128"):
        compare_results(a, b2)
    assert compare_results(a, b2, force=True)["contract_differences"]


# ----------------------------------------------------------------------------- command


@pytest.mark.slow
def test_archer_eval_command_logs_an_mlflow_run_nested_under_training(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from archer.models import prepare_model
    from archer_cli.main import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = MlflowClient(uri).create_run(
        MlflowClient(uri).create_experiment("train")).info.run_id
    train_dir = tmp_path / "train_run"
    train_dir.mkdir()
    (train_dir / "mlflow_run.json").write_text(json.dumps({"run_id": parent}))
    shutil.copytree(prepare_model("tiny"), train_dir / "model")
    out = tmp_path / "eval"
    rc = main(["eval", f"model={train_dir / 'model'}", "benchmarks=gsm8k,humaneval",
               "limit=2", "k=2", "max_new_tokens=4", f"out_dir={out}",
               f"tracking.uri={uri}", "workers=1", "progress=false"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "gsm8k: avg@2=" in printed and "[HumanEval base tests only]" in printed
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("archer-eval").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["mlflow.parentRunId"] == parent
    res = json.loads((out / "gsm8k" / "results.json").read_text())
    assert run.data.tags["gsm8k/contract_hash"] == res["contract_hash"]
    assert run.data.params["gsm8k/contract.k"] == "2"
    assert run.data.metrics["gsm8k/avg_at_2"] == pytest.approx(res["metrics"]["avg_at_2"])
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"gsm8k_samples.jsonl", "gsm8k_per_problem.csv", "humaneval_results.json"} <= arts
    # re-running resumes: nothing is generated again
    rc = main(["eval", f"model={train_dir / 'model'}", "benchmarks=gsm8k",
               "limit=2", "k=2", "max_new_tokens=4", f"out_dir={out}",
               "tracking=none", "workers=1", "progress=false"])
    assert rc == 0 and "0 samples generated, 4 reused" in capsys.readouterr().err


@pytest.mark.parametrize("device, message", [
    ("gpu", "device='gpu' is invalid"),
    ("cuda:x", "device='cuda:x' is invalid"),
])
def test_eval_device_is_validated_before_any_model_loads(tmp_path, capsys, device, message):
    from archer_cli.main import main

    rc = main(["eval", "model=tiny", "benchmarks=gsm8k", f"device={device}",
               f"out_dir={tmp_path}", "tracking=none"])
    assert rc == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing generated or written


def test_eval_on_a_gpu_that_is_not_there_is_an_error(tmp_path, capsys):
    import torch

    from archer_cli.main import main

    if torch.cuda.is_available():
        pytest.skip("checks the error without a GPU")
    rc = main(["eval", "model=tiny", "benchmarks=gsm8k", "device=cuda",
               f"out_dir={tmp_path}", "tracking=none"])
    assert rc == 2 and "sees no CUDA GPU" in capsys.readouterr().err


EVAL_TINY = ["eval", "model=tiny", "benchmarks=gsm8k", "limit=4", "k=1",
             "max_new_tokens=4", "batch_size=2", "progress=false"]


class _SignalReachedTheTest(Exception):
    pass


@pytest.fixture
def catch_signals():
    """While the test runs, SIGINT / SIGTERM that `archer eval` does not handle fail the test
    (instead of killing or aborting pytest); returns the handler, to check it is back."""
    import signal

    def unhandled(signum, frame):
        raise _SignalReachedTheTest(f"{signal.Signals(signum).name} was not handled")

    previous = {s: signal.signal(s, unhandled) for s in (signal.SIGINT, signal.SIGTERM)}
    yield unhandled
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_eval_stopped_by_sigterm_keeps_its_samples_and_resumes(tmp_path, capsys, monkeypatch,
                                                               catch_signals):
    import os
    import signal

    import evals.runner
    from archer_cli.main import main

    append = evals.runner.append_samples

    def append_then_sigterm(path, rows):  # the signal arrives after the first chunk is on disk
        append(path, rows)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(evals.runner, "append_samples", append_then_sigterm)
    out = tmp_path / "eval"
    rc = main([*EVAL_TINY, f"out_dir={out}", "tracking=none"])
    err = capsys.readouterr().err
    samples = out / "gsm8k" / "samples.jsonl"
    assert rc == 143, err
    assert (f"archer eval: SIGTERM received: evaluation stopped; kept 2 of 4 samples in "
            f"{samples}; run the same command again to resume: it reuses these samples, "
            "generates only the missing ones, then scores them all\n") in err
    assert "Traceback" not in err
    assert len(read_samples(samples).samples) == 2  # the finished chunk is kept
    assert not (out / "gsm8k" / "results.json").exists()
    assert signal.getsignal(signal.SIGTERM) is catch_signals  # handlers restored
    monkeypatch.undo()
    # what the message says: the same command reuses the 2 samples and generates the rest
    rc = main([*EVAL_TINY, f"out_dir={out}", "tracking=none"])
    assert rc == 0 and "gsm8k: 2 samples generated, 2 reused" in capsys.readouterr().err
    assert len(read_samples(samples).samples) == 4


@pytest.mark.slow
def test_eval_stopped_by_sigint_while_logging_ends_its_mlflow_run_killed(tmp_path, capsys,
                                                                        monkeypatch,
                                                                        catch_signals):
    import os
    import signal

    from mlflow.tracking import MlflowClient

    from archer_cli.main import main
    from experiments.tracking import MlflowLogger

    log_artifact = MlflowLogger.log_artifact

    def ctrl_c_then_log(self, path):  # Ctrl-C while the results go to MLflow
        os.kill(os.getpid(), signal.SIGINT)
        log_artifact(self, path)

    monkeypatch.setattr(MlflowLogger, "log_artifact", ctrl_c_then_log)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "eval"
    rc = main([*EVAL_TINY, f"out_dir={out}", f"tracking.uri={uri}"])
    err = capsys.readouterr().err
    assert rc == 130, err
    assert (f"archer eval: SIGINT received: evaluation stopped; kept 4 of 4 samples in "
            f"{out / 'gsm8k' / 'samples.jsonl'}; run the same command again to resume: it "
            "reuses these samples, generates only the missing ones, then scores them all and "
            "logs to MLflow\n") in err
    assert "Traceback" not in err
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("archer-eval").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]  # not FAILED, not left RUNNING


@pytest.mark.slow
def test_eval_stopped_while_its_mlflow_run_opens_ends_it_killed(tmp_path, capsys, monkeypatch,
                                                                catch_signals):
    """SIGTERM just after MLflow created the run, before the logger was returned: the signal
    is held back until the run can be ended, so it ends KILLED, not RUNNING for ever."""
    import os
    import signal

    from mlflow.tracking import MlflowClient

    from archer_cli.main import main
    from experiments.tracking import MlflowLogger

    init = MlflowLogger.__init__

    def open_then_sigterm(self, *args, **kwargs):
        init(self, *args, **kwargs)  # the run exists now
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(MlflowLogger, "__init__", open_then_sigterm)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = main([*EVAL_TINY, f"out_dir={tmp_path / 'eval'}", f"tracking.uri={uri}"])
    err = capsys.readouterr().err
    assert rc == 143 and "archer eval: SIGTERM received: evaluation stopped" in err, err
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("archer-eval").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]


def test_eval_out_dir_that_is_a_file_is_an_error_before_any_model_loads(tmp_path, capsys):
    from archer_cli.main import main

    existing = tmp_path / "results.txt"
    existing.write_text("keep me\n")
    for out_dir, what in ((existing, "is"),
                          (existing / "sub", f"is inside {str(existing)!r}, which is")):
        rc = main([*EVAL_TINY, f"out_dir={out_dir}", "tracking=none"])
        assert rc == 2
        assert (f"archer: error: out_dir='{out_dir}' {what} an existing file, not a "
                "directory; choose another output directory") in capsys.readouterr().err
    rc = main(["eval", "--score-only", "benchmarks=gsm8k", f"out_dir={existing}",
               "tracking=none"])
    assert rc == 2 and f"out_dir='{existing}' is an existing file" in capsys.readouterr().err
    assert existing.read_text() == "keep me\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.txt"]  # nothing written
    # a benchmark's own folder (or its samples file) of the wrong kind: the same, up front
    out = tmp_path / "out"
    out.mkdir()
    (out / "gsm8k").write_text("not a folder\n")
    assert main([*EVAL_TINY, f"out_dir={out}", "tracking=none"]) == 2
    assert (f"out_dir='{out / 'gsm8k'}' is an existing file, not a directory; choose "
            "another output directory (gsm8k)") in capsys.readouterr().err
    (out / "gsm8k").unlink()
    (out / "gsm8k" / "samples.jsonl").mkdir(parents=True)
    assert main([*EVAL_TINY, f"out_dir={out}", "tracking=none"]) == 2
    assert f"{out / 'gsm8k' / 'samples.jsonl'} is a directory, not the samples file" in \
        capsys.readouterr().err
