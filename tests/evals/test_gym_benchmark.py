"""The ``gym`` benchmark: the held-out split of a reasoning-gym task, generated offline,
under a contract that pins the task, its config, the split and the checker."""

from __future__ import annotations

import json

import pytest

from archer.data.datasets import load_reasoning_gym, split_train_val
from archer.train_config import DataConfig, TrainConfig
from archer.trainer import load_records
from evals.contracts import ContractMismatch, check_comparable
from evals.registry import make_contract, problems_for
from evals.scoring import score_samples

DATA = {"task": "chain_sum", "size": 60, "seed": 3, "val_size": 12,
        "task_config": {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1}}


def test_problems_are_the_trainers_held_out_split():
    c = make_contract("gym", data_config=DATA, k=2, max_new_tokens=5)
    problems = problems_for(c)
    cfg = TrainConfig(data=DataConfig(task="chain_sum", size=60, seed=3,
                                      task_config=DATA["task_config"]), val_size=12)
    _, val = load_records(cfg)
    assert [p.record["prompt"] for p in problems] == [r["prompt"] for r in val]
    assert [p.gold["answer"] for p in problems] == [r["answer"] for r in val]
    assert c.n_problems == 12 and c.data_file == "reasoning_gym:chain_sum"
    assert c.grader == "gym" and c.grader_version.startswith("archer.gym@")
    assert "reasoning-gym=" in c.grader_version
    # nothing of the held-out split is in the training split
    train, _ = split_train_val(list(load_reasoning_gym("chain_sum", 60, 3,
                                                       **DATA["task_config"])), 12, seed=3)
    assert not {r["index"] for r in train} & {int(p.problem_id.rsplit("-", 1)[1])
                                              for p in problems}


def test_another_split_or_task_config_is_another_contract():
    a = make_contract("gym", data_config=DATA, k=2)
    b = make_contract("gym", data_config=DATA | {"seed": 4}, k=2)
    with pytest.raises(ContractMismatch, match="data_sha256.*data_config"):
        check_comparable(a, b)
    assert make_contract("gym", data_config=dict(DATA), k=2).hash == a.hash
    # file benchmarks keep the hash they had before generated benchmarks existed: the
    # empty data_config is not part of their canonical form
    assert "data_config" not in make_contract("gsm8k", limit=2).to_dict()


@pytest.mark.parametrize("bad,match", [
    (None, "needs a data config"),
    ({"task": "chain_sum", "size": 60}, r"missing \['val_size'\]"),
    (DATA | {"val_sise": 3}, r"unknown key\(s\) \['val_sise'\]"),
    (DATA | {"val_size": 60}, r"val_size=60 must be in \[1, size=60\)"),
    (DATA | {"size": "60"}, "size='60' must be a int"),
])
def test_bad_data_config_is_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        make_contract("gym", data_config=bad)


def test_file_benchmarks_refuse_a_data_config():
    with pytest.raises(ValueError, match="data config is only for generated"):
        make_contract("gsm8k", data_config=DATA)


def test_scoring_uses_the_gyms_checker_with_full_credit(tmp_path):
    c = make_contract("gym", data_config=DATA, k=3, max_new_tokens=5)
    problems = problems_for(c)[:12]
    rows = [{"type": "header", "contract": c.to_dict(), "contract_hash": c.hash,
             "model": "hand", "batch_size": 8}]
    for i, p in enumerate(problems):
        gold = p.gold["answer"]
        texts = [f" {gold}", f" {int(gold) + 1}", ""] if i < 6 else [" x", " x", f" {gold}"]
        rows += [{"type": "sample", "problem_id": p.problem_id, "problem_index": i,
                  "sample_index": j, "text": t, "truncated": False, "n_tokens": 1}
                 for j, t in enumerate(texts)]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = score_samples(tmp_path / "samples.jsonl", workers=1)
    assert [e["accuracy"] for e in res["per_problem"]] == [pytest.approx(1 / 3)] * 12
    m = res["metrics"]
    assert m["avg_at_3"] == pytest.approx(1 / 3) and m["pass_at_3"] == 1.0
    # maj@3: problems 0-5 vote gold and gold+1 (the empty answer does not vote): a tie, won
    # by the first, correct; problems 6-11 vote x twice -> wrong
    assert m["maj_at_3"] == 0.5
    reasons = res["per_problem"][0]["reasons"]
    assert reasons == ["correct", "wrong", "no_answer"]
    assert res["per_problem"][0]["gold"] == problems[0].gold["answer"]
    # well-formed answers (one number, right or wrong): 2 of 3 in problems 0-5, 1 of 3 after
    assert m["numeric_answer_frac"] == pytest.approx((6 * 2 + 6 * 1) / 36)


@pytest.mark.parametrize("answer,numeric", [
    ("7", True), ("-12", True), ("+3", True), (" 4.50 ", True), ("7 apples", False),
    ("3+4", False), ("", False), (None, False), ("1,000", False)])
def test_a_numeric_answer_is_one_number_and_nothing_else(answer, numeric):
    from evals.scoring import numeric_answer_frac

    assert numeric_answer_frac([[answer]]) == float(numeric)


def test_the_lenient_answer_reads_the_last_number_and_the_contract_records_it(tmp_path):
    from archer.data.datasets import extract_last_number, gym_reward, gym_reward_last_number

    assert extract_last_number("The answer to the problem 3 + 4 is 7.") == "7"
    assert extract_last_number("Answer: -2") == "-2"
    assert extract_last_number("<think>1 2 3</think> no digits") is None
    e = problems_for(make_contract("gym", data_config=DATA, k=1))[0].gold["entry"]
    said = f"The final answer is {e['answer']}."
    assert gym_reward([said], e)[0] < 1.0  # strict: the whole sentence is the answer
    assert gym_reward([said], e, extraction="last_number") == [1.0]
    # as the trainer calls a reward: every record column, the reference `answer` among them
    assert gym_reward_last_number([said], [e], answer=[e["answer"]], index=[0]) == [1.0]
    strict, lenient = (make_contract("gym", data_config=DATA, k=1, gym_answer=a)
                       for a in ("strict", "last_number"))
    assert "answer" not in strict.grader_config  # older contracts keep their hash
    assert lenient.grader_config["answer"] == "last_number" and lenient.hash != strict.hash
    with pytest.raises(ValueError, match="gym_answer='first'; choose one of"):
        make_contract("gym", data_config=DATA, gym_answer="first")
    # scored under the lenient contract: correct, but not well-formed (a sentence)
    rows = [{"type": "header", "contract": lenient.to_dict(), "contract_hash": lenient.hash,
             "model": "hand", "batch_size": 8}]
    rows += [{"type": "sample", "problem_id": p.problem_id, "problem_index": i,
              "sample_index": 0, "text": f"It is {p.gold['answer']}.", "truncated": False,
              "n_tokens": 1} for i, p in enumerate(problems_for(lenient))]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = score_samples(tmp_path / "samples.jsonl", workers=1)["metrics"]
    assert m["avg_at_1"] == 1.0 and m["numeric_answer_frac"] == 0.0
