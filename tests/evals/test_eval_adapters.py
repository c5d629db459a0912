"""lm-eval task YAMLs and adapter, evalplus adapter, and `archer data fetch` offline."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evals.lm_eval_adapter import LM_EVAL_BENCHMARKS, TASK_DIR, task_config, task_yaml
from evals.registry import make_contract, read_humaneval

# ----------------------------------------------------------------------------- lm-eval


def test_task_yamls_are_current_and_score_all_k_repeats():
    for b in LM_EVAL_BENCHMARKS:
        path = TASK_DIR / f"archer_{b}.yaml"
        assert path.read_text() == task_yaml(b), f"{path} is stale: python -m evals.lm_eval_adapter"
    cfg = task_config("aime2024")
    assert cfg["repeats"] == 64 and cfg["generation_kwargs"]["temperature"] == 0.8
    # every repeat reaches process_results (the stock default keeps only the first)
    assert cfg["filter_list"][0]["filter"] == [{"function": "take_first_k", "k": 64}]
    assert task_config("gsm8k", k=3)["repeats"] == 3


def test_lm_eval_process_results_scores_every_repeat_with_our_verifier():
    cfg = task_config("gsm8k", k=4)
    docs = cfg["custom_dataset"]()["test"]
    doc = docs[0]
    assert doc["problem_id"] == "gsm8k-0" and doc["answer"] == "18"
    assert "\\boxed{}" in cfg["doc_to_text"](doc)
    out = cfg["process_results"](doc, [["\\boxed{18}", "so 18", "\\boxed{17}", "nothing"]])
    # correct: boxed 18, "so 18" (last number), wrong: 17, "nothing" -> 2/4; pass = 1
    assert out == {"avg_at_k": 0.5, "pass_at_k": 1.0}
    aime = task_config("aime2025")
    d = aime["custom_dataset"]()["test"][0]
    assert aime["process_results"](d, [[f"\\boxed{{{d['answer']}}}", d["answer"]]]) == {
        "avg_at_k": 0.5, "pass_at_k": 1.0}  # boxed only for AIME: the bare number is no answer


def test_task_folder_loads_in_lm_eval_standalone():
    """What `lm_eval --include_path evals/tasks --tasks archer_amc23` builds."""
    from lm_eval.tasks import TaskManager, get_task_dict

    tm = TaskManager(include_path=str(TASK_DIR))
    assert {f"archer_{b}" for b in LM_EVAL_BENCHMARKS} <= set(tm.all_tasks)
    task = get_task_dict(["archer_amc23"], tm)["archer_amc23"]
    assert task.config.repeats == 64 and len(task.eval_docs) == 40
    doc = task.eval_docs[0]  # answer 27
    assert task.process_results(doc, [["\\boxed{27}", "\\boxed{1}", "27"]]) == {
        "avg_at_k": pytest.approx(1 / 3), "pass_at_k": 1.0}


@pytest.mark.slow
def test_archer_eval_engine_lm_eval_writes_our_result_format(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from archer_cli.main import main

    out = tmp_path / "lm"
    rc = main(["eval", "engine=lm-eval", "model=tiny", "benchmarks=gsm8k",
               "limit=2", "k=2", "max_new_tokens=3", f"out_dir={out}",
               "tracking=none", "workers=1"])
    assert rc == 0
    res = json.loads((out / "gsm8k" / "results.json").read_text())
    assert res["engine"] == "lm-eval" and res["metrics"]["n_samples"] == 4
    # lm-eval's own aggregate (our verifier inside process_results) agrees with our scoring
    assert res["lm_eval_metrics"]["avg_at_k,all_2"] == pytest.approx(res["metrics"]["avg_at_2"])
    samples = (out / "gsm8k" / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 5 and json.loads(samples[0])["contract_hash"] == res["contract_hash"]



class _Interrupt(Exception):
    pass


def _count_simple_evaluate(monkeypatch, fail_on_call: int | None = None) -> list[dict]:
    """Wrap lm_eval.simple_evaluate: record each call's documents and lm-eval's aggregate;
    raise _Interrupt on call number ``fail_on_call`` (1-based)."""
    import lm_eval
    from lm_eval.evaluator import simple_evaluate

    calls: list[dict] = []

    def wrapper(*args, **kwargs):
        calls.append({"docs": kwargs["samples"]["archer_gsm8k"]})
        if len(calls) == fail_on_call:
            raise _Interrupt
        out = simple_evaluate(*args, **kwargs)
        calls[-1]["avg"] = out["results"]["archer_gsm8k"]["avg_at_k,all_2"]
        return out

    monkeypatch.setattr(lm_eval, "simple_evaluate", wrapper, raising=False)
    return calls


def _lm_eval_args(out: Path, *extra: str) -> list[str]:
    return ["eval", "engine=lm-eval", "model=tiny", "benchmarks=gsm8k",
            "limit=4", "k=2", "batch_size=2", "max_new_tokens=3",
            f"out_dir={out}", "tracking=none", "workers=1", *extra]


@pytest.mark.slow
def test_interrupted_lm_eval_evaluation_resumes_chunk_by_chunk(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from archer_cli.main import main
    from evals.runner import read_samples

    out = tmp_path / "lm"
    path = out / "gsm8k" / "samples.jsonl"
    calls = _count_simple_evaluate(monkeypatch, fail_on_call=2)
    with pytest.raises(_Interrupt):
        main(_lm_eval_args(out))
    # chunk 0 (problems 0, 1) is on disk; chunk 1 failed before writing anything
    assert [c["docs"] for c in calls] == [[0, 1], [2, 3]]
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 4 and not (out / "gsm8k" / "results.json").exists()
    assert {json.loads(x)["problem_index"] for x in lines[1:]} == {0, 1}
    with path.open("a") as f:  # and a kill mid-write left half a line
        f.write('{"type": "sample", "problem_id": "gsm8k-2", "sample_ind')

    calls = _count_simple_evaluate(monkeypatch)
    assert main(_lm_eval_args(out)) == 0
    assert [c["docs"] for c in calls] == [[2, 3]]  # only the missing chunk
    sf = read_samples(path)
    assert len(sf.samples) == 8 and not sf.dropped_partial_line
    assert path.read_text().splitlines()[:5] == lines  # chunk 0 untouched
    res = json.loads((out / "gsm8k" / "results.json").read_text())
    assert res["engine"] == "lm-eval" and res["metrics"]["n_samples"] == 8
    # lm-eval's metric over all documents: the document-weighted mean of its per-chunk
    # aggregates, and (our verifier inside process_results) equal to our scoring
    lm = res["lm_eval_metrics"]
    assert lm["sample_len"] == 4 and lm["avg_at_k,all_2"] == pytest.approx(
        res["metrics"]["avg_at_2"])

    # a complete file: nothing to generate, simple_evaluate is not called
    calls = _count_simple_evaluate(monkeypatch)
    assert main(_lm_eval_args(out)) == 0 and calls == []
    assert json.loads((out / "gsm8k" / "results.json").read_text())["metrics"] == res["metrics"]

    # chunks are seeded by index: an uninterrupted run writes the same samples
    full = tmp_path / "full"
    calls = _count_simple_evaluate(monkeypatch)
    assert main(_lm_eval_args(full)) == 0
    assert [c["docs"] for c in calls] == [[0, 1], [2, 3]]
    texts = {k: v["text"] for k, v in sf.samples.items()}
    assert texts == {k: v["text"] for k, v in
                     read_samples(full / "gsm8k" / "samples.jsonl").samples.items()}
    per_chunk = sum(2 * c["avg"] for c in calls) / 4
    assert lm["avg_at_k,all_2"] == pytest.approx(per_chunk)


def test_lm_eval_refuses_a_samples_file_of_another_contract_or_engine(tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from archer.models import load_tokenizer, resolve_model_path
    from archer_cli.main import main
    from evals.runner import open_samples_file

    tok = load_tokenizer(resolve_model_path("tiny"))
    contract = make_contract("gsm8k", tokenizer=tok, k=2, limit=4, max_new_tokens=3)
    out = tmp_path / "lm"
    path = out / "gsm8k" / "samples.jsonl"
    open_samples_file(path, contract, model="tiny", batch_size=2, engine="lm-eval")
    before = path.read_text()
    calls = _count_simple_evaluate(monkeypatch)
    assert main(_lm_eval_args(out, "k=3")) == 2
    err = capsys.readouterr().err
    assert "holds samples of contract" in err and "k: 2 != 3" in err
    assert calls == [] and path.read_text() == before
    # samples of the hf engine (our prompts, not lm-eval's) are not continued either
    hf = tmp_path / "hf"
    open_samples_file(hf / "gsm8k" / "samples.jsonl", contract, model="tiny", batch_size=2,
                      engine="hf")
    assert main(_lm_eval_args(hf)) == 2
    assert "holds samples of engine 'hf', this run is 'lm-eval'" in capsys.readouterr().err
    assert calls == []


# ----------------------------------------------------------------------------- evalplus


def test_humaneval_base_inputs_from_the_human_eval_tests():
    from evals.evalplus_adapter import humaneval_base_inputs

    recs = {r["task_id"]: r for r in read_humaneval()}
    first = humaneval_base_inputs(recs["HumanEval/0"]["test"])
    assert first[0] == [[1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3]
    assert humaneval_base_inputs(recs["HumanEval/16"]["test"])[2] == ["abcdecadeCADE"]
    with pytest.raises(ValueError):
        humaneval_base_inputs(recs["HumanEval/32"]["test"])  # random inputs in a loop


@pytest.mark.slow
def test_evalplus_scores_base_tests_through_its_override_path(tmp_path):
    from evals.evalplus_adapter import score_with_evalplus

    c = make_contract("humaneval", k=2, limit=3)
    recs = read_humaneval()[:3]
    rows = [{"type": "header", "contract": c.to_dict(), "contract_hash": c.hash, "model": "m"}]
    for r in recs:
        right = "```python\n" + r["prompt"] + r["canonical_solution"] + "```"
        wrong = "```python\n" + r["prompt"] + "    return None\n```"
        rows += [{"type": "sample", "problem_id": r["task_id"], "sample_index": j, "text": t}
                 for j, t in enumerate([right, wrong])]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    res = score_with_evalplus(tmp_path / "samples.jsonl", tmp_path / "ep", parallel=1)
    assert res["label"] == "HumanEval base tests only (evalplus)"
    assert [e["correct"] for e in res["per_problem"]] == [[1, 0]] * 3
    assert res["metrics"]["avg_at_2"] == 0.5 and res["metrics"]["pass_at_2"] == 1.0
    written = [json.loads(x) for x in (tmp_path / "ep" / "HumanEvalBase.jsonl").open()]
    assert [w["plus_input"] for w in written] == [[], [], []]


# ----------------------------------------------------------------------------- data fetch


def test_data_fetch_fails_fast_offline_with_a_clear_message(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "ARCHER_DATA_DIR": str(tmp_path)}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "archer_cli", "data", "fetch", "aime2024"],
                          capture_output=True, text=True, env=env, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2
    assert "HF_HUB_OFFLINE is set: not downloading" in proc.stderr
    assert time.monotonic() - start < 30
    assert not any(tmp_path.iterdir())


def test_data_fetch_unreachable_host_and_unknown_name(tmp_path):
    from archer.data.fetch import FetchError, check_online, fetch

    with pytest.raises(FetchError, match="unknown data set 'nope'; choose one of"):
        fetch("nope", tmp_path)
    start = time.monotonic()
    with pytest.raises(FetchError, match="cannot reach 127.0.0.1:443.*offline"):
        check_online("127.0.0.1", timeout=1.0)  # nothing listens on 443 here
    assert time.monotonic() - start < 5
