"""Datasets, templates, the validation split and the reasoning-gym reward."""

import base64
import json
import logging
import pickle
import zlib

import pytest

from archer.data import (
    FILES,
    DataFormatError,
    extract_answer,
    format_prompt,
    gym_reward,
    load_dataset,
    load_file,
    load_reasoning_gym,
    split_train_val,
)
from archer.data.datasets import decode_lcb_tests
from archer.paths import data_dir
from archer.rewards import get_reward

AIME_SPEC = FILES.get("aime2024")
MATH500_SPEC = FILES.get("math500")


def _write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def _aime(i, answer="7"):
    return json.dumps({"id": f"x-{i}", "problem": f"problem {i}", "answer": answer})


# ---------------------------------------------------------------- malformed records


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    path = _write_jsonl(tmp_path / "probs.jsonl", [_aime(0), "", _aime(1), "{not json", _aime(3)])
    with pytest.raises(DataFormatError, match=r"probs\.jsonl: line 4: invalid JSON"):
        load_file(path, AIME_SPEC)


@pytest.mark.parametrize(
    "bad, message",
    [
        (json.dumps({"id": "a", "problem": "p"}), "missing required field 'answer'"),
        (json.dumps({"id": "a", "problem": "p", "answer": 7}), "field 'answer' is int"),
        ("[1, 2]", "expected a JSON object, got list"),
    ],
)
def test_missing_or_mistyped_field_names_line(tmp_path, bad, message):
    path = _write_jsonl(tmp_path / "p.jsonl", [_aime(0), bad])
    with pytest.raises(DataFormatError) as err:
        load_file(path, AIME_SPEC)
    assert "p.jsonl: line 2: " in str(err.value) and message in str(err.value)


def test_broken_json_file_names_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"problem": "p", "answer": "1"},\n {"problem": "abc')
    with pytest.raises(DataFormatError, match=(
            r"broken\.json: invalid JSON: Unterminated string starting at \(line 2, column 14\)")):
        load_file(path, MATH500_SPEC)


def test_bad_record_hint_gives_the_command_line_key(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [_aime(0), "{not json"])
    with pytest.raises(DataFormatError) as err:
        load_file(path, AIME_SPEC)
    assert "p.jsonl: line 2: invalid JSON: Expecting property name enclosed in double quotes " \
        "(column 2)" in str(err.value)
    assert "data.skip_bad_records=true on the command line" in str(err.value)


@pytest.mark.parametrize("name,text", [("empty.jsonl", ""), ("blank.jsonl", "\n  \n"),
                                       ("empty.json", "[]")])
def test_a_file_without_records_is_an_error_naming_it(tmp_path, name, text):
    from archer.data.datasets import load_data_file

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataFormatError, match=f"{path}: the data file has no records"):
        load_data_file(str(path))


def test_a_file_whose_records_are_all_skipped_is_an_error_naming_it(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", ["{oops", json.dumps({"id": "b"})])
    with pytest.raises(DataFormatError, match=f"{path}: no valid record: all 2 record"):
        load_file(path, AIME_SPEC, skip_bad_records=True)


def test_bad_json_array_record_names_index(tmp_path):
    path = tmp_path / "arr.json"
    good = {"problem": "p", "answer": "1"}
    path.write_text(json.dumps([good, good, {"problem": "p", "answer": None}, good]))
    with pytest.raises(DataFormatError, match=r"arr\.json: record 2: field 'answer' is NoneType"):
        load_file(path, MATH500_SPEC)


def test_skip_mode_counts_and_logs_and_keeps_source_index(tmp_path, caplog):
    lines = [_aime(0), "{oops", json.dumps({"id": "b"}), _aime(3, "12")]
    path = _write_jsonl(tmp_path / "p.jsonl", lines)
    with caplog.at_level(logging.WARNING):
        ds = load_file(path, AIME_SPEC, name="mine", skip_bad_records=True)
    assert len(ds) == 2 and ds.num_skipped == 2
    assert [r["index"] for r in ds] == [0, 3] and ds[1]["answer"] == "12"
    assert ds[0]["data_source"] == "mine"
    assert "skipped 2 malformed" in caplog.text and "p.jsonl" in caplog.text


def test_unknown_dataset_lists_options():
    with pytest.raises(KeyError, match="aime2024"):
        load_dataset("aime2099")


# ---------------------------------------------------------------- shared data files

EXPECTED = {
    "aime2024": 30,
    "aime2025": 30,
    "amc23": 40,
    "math500": 500,
    "gsm8k_test": 1319,
    "gsm8k_train": 7473,
    "aime_1983_2023": 975,
    "leetcode_train": 1889,
    "codeforces_test": 408,
    "lcb_v5_public": 279,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_file_loads_with_published_count(name):
    ds = load_dataset(name)
    assert len(ds) == EXPECTED[name] == FILES.get(name).expected_records
    assert ds.num_skipped == 0
    assert [r["index"] for r in ds] == list(range(len(ds)))
    for r in ds:
        assert isinstance(r["prompt"], str) and r["prompt"].strip()
        assert r["data_source"] == name
        if FILES.get(name).kind == "math":
            assert isinstance(r["answer"], str) and r["answer"]
        else:
            assert r["test_type"] in {"check_script", "stdin", "functional"} and r["tests"]


def test_math_train_has_two_records_without_answer():
    # The published MATH train copy has answer=null at records 886 and 1009.
    with pytest.raises(DataFormatError, match="math_train.json: record 886: field 'answer'"):
        load_dataset("math_train")
    ds = load_dataset("math_train", skip_bad_records=True)
    assert (len(ds), ds.num_skipped) == (7472, 2)


def test_ground_truth_normalisation():
    assert load_dataset("amc23")[0]["answer"] == "27"  # 27.0 in the file
    gsm = load_dataset("gsm8k_test", limit=3)
    assert len(gsm) == 3 and gsm[0]["answer"] == "18" and "####" in gsm[0]["solution"]
    aime = load_dataset("aime2024")
    # 30 distinct problems; use "index" as the key: this copy labels all 30 ids "II".
    assert len({r["prompt"] for r in aime}) == 30 and aime[0]["answer"] == "204"
    lcb = [r for r in load_dataset("lcb_v5_public") if r["test_type"] == "functional"]
    assert lcb and all(r["func_name"] and r["starter_code"] for r in lcb)


@pytest.mark.parametrize("name", ["leetcode_train", "codeforces_test", "lcb_v5_public"])
def test_code_tests_column_is_accepted_by_code_reward(name):
    code = pytest.importorskip("archer.rewards.code")
    kinds = {"check_script": "check", "stdin": "stdin", "functional": "functional"}
    for r in load_dataset(name):
        assert code.to_problem(r["tests"]).kind == kinds[r["test_type"]]


def test_lcb_official_private_tests_decode():
    tests = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    packed = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()
    assert decode_lcb_tests(packed) == tests
    assert decode_lcb_tests(json.dumps(tests)) == tests


def test_data_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("ARCHER_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="ARCHER_DATA_DIR"):
        data_dir()
    monkeypatch.setenv("ARCHER_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path


# ---------------------------------------------------------------- split


def test_split_is_disjoint_deterministic_and_seeded():
    records = [{"index": i} for i in range(100)]
    train, val = split_train_val(records, 20, seed=1)
    assert len(val) == 20 and len(train) == 80
    ids_t, ids_v = {r["index"] for r in train}, {r["index"] for r in val}
    assert not ids_t & ids_v and ids_t | ids_v == set(range(100))
    assert split_train_val(records, 20, seed=1) == (train, val)
    assert split_train_val(records, 20, seed=2)[1] != val
    assert [r["index"] for r in val] == sorted(ids_v)  # original order kept
    assert len(split_train_val(records, 0.25, seed=0)[1]) == 25
    for bad in (0, 100, 1.0, 0.0):
        with pytest.raises(ValueError, match="val_size"):
            split_train_val(records, bad)


# ---------------------------------------------------------------- templates


def test_templates_plain_fallback_and_chat_template():
    record = {"prompt": "What is 2+3?"}
    plain = format_prompt(record, "plain_answer")
    assert plain == "User: What is 2+3?\nReply with only the final number.\nAssistant:"
    assert "\\boxed{}" in format_prompt(record, "boxed_math")
    assert "```python" in format_prompt(record, "code")

    class ChatTok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return f"<chat>{messages[-1]['content']}</chat>"

    assert format_prompt(record, "boxed_math", ChatTok()).startswith("<chat>What is 2+3?\n")
    msgs = {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]}
    assert format_prompt(msgs, "none") == "System: S\nUser: Q\nAssistant:"
    gym = {"prompt": "State the final answer to the following arithmetic problem: 1 - 5 - 2 ="}
    assert format_prompt(gym, "expression") == "User: 1 - 5 - 2 =\nAssistant:"
    assert format_prompt({"prompt": "no colon here"}, "expression") == \
        "User: no colon here\nAssistant:"
    assert format_prompt({"prompt": "ends with a colon:"}, "expression") == \
        "User: ends with a colon:\nAssistant:"
    with pytest.raises(KeyError, match="boxed_math"):
        format_prompt(record, "no_such_template")


# ---------------------------------------------------------------- reasoning-gym


def test_extract_answer():
    assert (
        extract_answer("<think>maybe \\boxed{3}</think>so \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    )
    assert extract_answer("<think>\\boxed{3}</think> Answer: 5") == "5"
    assert extract_answer("work\nAnswer: -12\n") == "-12"
    assert extract_answer("<answer> 8 </answer>") == "8"
    assert extract_answer("  42 \n") == "42"
    assert extract_answer("<think>long</think>   ") is None


def test_reasoning_gym_dataset_and_reward():
    ds = load_reasoning_gym("chain_sum", 5, seed=3, min_terms=2, max_terms=2)
    assert len(ds) == 5 and ds[0]["data_source"] == "reasoning_gym/chain_sum"
    again = load_reasoning_gym("chain_sum", 5, seed=3, min_terms=2, max_terms=2)
    assert [r["prompt"] for r in ds] == [r["prompt"] for r in again]
    entry = ds[0]["entry"]
    right, wrong = entry["answer"], str(int(entry["answer"]) + 1)
    completions = [f"<think>{wrong}?</think>Answer: {right}", f"\\boxed{{{wrong}}}", right, ""]
    assert gym_reward(completions, [entry] * 4) == [1.0, 0.0, 1.0, 0.0]
    # Registered by name, and usable on an entry that went through JSON (as in a file).
    stored = json.loads(json.dumps(entry))
    assert get_reward("reasoning_gym")([right], entry=[stored]) == [1.0]
    with pytest.raises(ValueError, match="2 completions but 1 entries"):
        gym_reward([right, right], [entry])


def test_training_split_never_repeats_a_held_out_prompt():
    """Generated tasks repeat problems; the trainer (and the SFT warm-up, which shares its
    split) drops training records whose prompt is held out, so validation measures unseen
    problems."""
    from archer.train_config import DataConfig, TrainConfig
    from archer.trainer import drop_heldout_duplicates, load_records

    cfg = TrainConfig(data=DataConfig(task="chain_sum", size=400, seed=0, task_config={
        "min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}), val_size=40)
    train, val = load_records(cfg)
    held = {r["prompt"] for r in val}
    assert len(val) == 40 and not held & {r["prompt"] for r in train}
    # 2 one-digit terms: at most 200 distinct problems in 400, so some were dropped
    assert len(train) < 360
    a, b, c = ({"prompt": "x"}, {"prompt": [{"role": "user", "content": "y"}]}, {"prompt": "z"})
    assert drop_heldout_duplicates([a, b, c], [{"prompt": "x"}]) == [b, c]
    assert drop_heldout_duplicates([a, b, c], [{"prompt": [{"content": "y", "role": "user"}]}]
                                   ) == [a, c]
    with pytest.raises(ValueError, match="too few distinct problems"):
        drop_heldout_duplicates([a], [{"prompt": "x"}])


# ---------------------------------------------------------------- the user's own file


def test_user_file_keeps_its_fields_and_accepts_chat_messages(tmp_path):
    from archer.data.datasets import load_data_file

    path = _write_jsonl(tmp_path / "mine.jsonl", [
        json.dumps({"prompt": "1+2=", "answer": 3, "tier": "easy"}),
        "",
        json.dumps({"prompt": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "2*5="}], "answer": "10",
                    "tests": {"any": ["shape"]}}),
        json.dumps({"prompt": "no answer here", "answer": 2.5}),
    ])
    ds = load_data_file(str(path))
    assert ds.name == "mine" and len(ds) == 3
    assert ds[0] == {"prompt": "1+2=", "answer": "3", "tier": "easy", "data_source": "mine",
                     "index": 0}
    assert ds[1]["tests"] == {"any": ["shape"]} and ds[1]["index"] == 1
    assert ds[2]["answer"] == "2.5"
    assert format_prompt(ds[1], "none") == "System: Be brief.\nUser: 2*5=\nAssistant:"
    arr = tmp_path / "arr.json"
    arr.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b", "answer": True}]))
    assert [r["prompt"] for r in load_data_file(str(arr))] == ["a", "b"]
    assert load_data_file(str(arr))[1]["answer"] is True  # only numbers become text


@pytest.mark.parametrize("bad, message", [
    ({"question": "1+2="}, "missing required field 'prompt'"),
    ({"prompt": 7}, "field 'prompt' is int"),
    ({"prompt": "   "}, "field 'prompt' is empty"),
    ({"prompt": [{"role": "user"}]}, "message 0 is not"),
    ({"prompt": [{"role": "system", "content": "x"}]}, "no message with role 'user'"),
    ({"prompt": "p", "index": 4}, "field 'index' is reserved"),
    ({"prompt": "p", "data_source": "x"}, "field 'data_source' is reserved"),
])
def test_user_file_bad_record_names_file_and_line_or_is_skipped(tmp_path, caplog, bad, message):
    from archer.data.datasets import load_data_file

    path = _write_jsonl(tmp_path / "mine.jsonl",
                        [json.dumps({"prompt": "ok"}), json.dumps(bad), json.dumps({"prompt": "b"})])
    with pytest.raises(DataFormatError) as err:
        load_data_file(str(path))
    assert "mine.jsonl: line 2: " in str(err.value) and message in str(err.value)
    with caplog.at_level(logging.WARNING):
        ds = load_data_file(str(path), skip_bad_records=True)
    assert [r["prompt"] for r in ds] == ["ok", "b"] and ds.num_skipped == 1
    assert [r["index"] for r in ds] == [0, 2]
    assert "skipped 1 malformed" in caplog.text


def test_data_file_is_a_registered_name_or_a_path(tmp_path):
    from archer.data.datasets import is_data_path, load_data_file

    assert not is_data_path("gsm8k_train") and not is_data_path("gsm8k_trian")
    assert is_data_path("mine.jsonl") and is_data_path("data/mine") and is_data_path("a.json")
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        load_data_file(str(tmp_path / "missing.jsonl"))
    with pytest.raises(KeyError, match="gsm8k_trian"):
        load_data_file("gsm8k_trian")
    odd = tmp_path / "data.csv"
    odd.write_text("prompt\nx\n")
    with pytest.raises(DataFormatError, match="unsupported data file type"):
        load_data_file(str(odd))
