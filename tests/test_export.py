"""``archer export``: any checkpoint as a Hugging Face directory (the writer of ``final/``),
``--step`` / ``--best`` / latest, the best validation step kept by pruning, and the errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import archer.trainer.loop as loop
from archer.checkpoint import (
    best_checkpoint,
    list_checkpoints,
    load_model_state,
    save_checkpoint,
)
from archer.models import build_tiny_model
from archer.rewards import REWARDS, register_reward
from archer.train_config import TrainConfig
from archer.trainer import fit
from archer_cli.main import main
from experiments.presets import load_preset

if "test_parity_export" not in REWARDS:

    @register_reward("test_parity_export")
    def parity_reward(completions, **columns):
        return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


VAL = {1: 0.25, 2: 0.75, 3: 0.5}  # val/reward_mean of each step: step 2 is the best


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 3-step run, a checkpoint and a validation every step, keep_checkpoints=1, final/
    exported; validation scripted (VAL) so that the best step is neither first nor last."""
    tmp = tmp_path_factory.mktemp("export")
    model_dir = build_tiny_model(tmp / "tiny", hidden=32, layers=2, heads=4)
    cfg = TrainConfig(
        model=str(model_dir), algo=load_preset("archer").algo, reward="test_parity_export",
        data={"task": "chain_sum", "size": 40, "seed": 0}, prompts_per_step=4, group_size=4,
        max_new_tokens=5, mini_batch_prompts=2, micro_batch_size=4, ppo_epochs=1, lr=1e-2,
        total_steps=3, val_every=1, val_size=4, ckpt_every=1, keep_checkpoints=1,
        out_dir=str(tmp / "run"), num_threads=1, export_final=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "validate_aside", lambda ctx: {"val/reward_mean": VAL[ctx.state.step]})
        fit(cfg)
    return tmp / "run"


def export(*args) -> int:
    return main(["export", *map(str, args)])


def assert_exported(out: Path, checkpoint: Path) -> None:
    """``out`` is an HF directory transformers loads as is, with the checkpoint's exact
    tensors, a tokenizer, a generation config, and a model that generates."""
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json",
            "tokenizer_config.json"} <= names, names
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    want = load_model_state(checkpoint)
    got = model.state_dict()
    assert set(got) == set(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key
    ids = tokenizer("1 + 2 =", return_tensors="pt").input_ids
    new = model.generate(ids, max_new_tokens=3, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    assert new.shape == (1, ids.shape[1] + 3)


def test_pruning_keeps_the_latest_and_the_best_validation_step(run_dir):
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_000002", "step_000003"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["val/reward_mean"] for r in rows] == [VAL[1], VAL[2], VAL[3]]  # what was logged
    assert best_checkpoint(run_dir).name == "step_000002"


def test_export_step_and_best_write_the_checkpoints_tensors(run_dir, tmp_path, capsys):
    assert export(run_dir, tmp_path / "s3", "--step", 3) == 0
    assert_exported(tmp_path / "s3", run_dir / "checkpoints" / "step_000003")
    assert export(run_dir, tmp_path / "best", "--best") == 0
    assert "step 2" in capsys.readouterr().out
    assert_exported(tmp_path / "best", run_dir / "checkpoints" / "step_000002")
    two, three = (load_model_state(run_dir / "checkpoints" / f"step_00000{s}") for s in (2, 3))
    assert any(not torch.equal(two[k], three[k]) for k in two)  # the steps differ


def test_the_latest_by_default_is_what_final_holds(run_dir, tmp_path):
    """Without --step/--best the latest checkpoint; the last step's export and final/ are
    written by one writer: the same files, the same config and the same tensors."""
    assert export(run_dir, tmp_path / "latest") == 0
    final = run_dir / "final"
    assert sorted(p.name for p in (tmp_path / "latest").iterdir()) == sorted(
        p.name for p in final.iterdir())
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        assert (json.loads((tmp_path / "latest" / name).read_text())
                == json.loads((final / name).read_text())), name
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "latest").state_dict()
    b = AutoModelForCausalLM.from_pretrained(final).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_a_checkpoint_directory_exports_itself(run_dir, tmp_path):
    ckpt = run_dir / "checkpoints" / "step_000002"
    assert export(ckpt, tmp_path / "one") == 0
    assert_exported(tmp_path / "one", ckpt)


def test_export_errors_say_what_is_there(run_dir, tmp_path, capsys):
    def error(*args) -> str:
        assert export(*args) == 2
        return capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    assert "run " + str(tmp_path / "empty") + " has no checkpoint" in error(
        tmp_path / "empty", tmp_path / "o1")
    assert ("has no checkpoint of step 7; its checkpoints are of steps [2, 3]"
            in error(run_dir, tmp_path / "o2", "--step", 7))
    (tmp_path / "afile").write_text("x")
    assert "is a file, not a directory" in error(run_dir, tmp_path / "afile")
    assert "is a file, not a directory" in error(run_dir, tmp_path / "afile" / "sub")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    assert "is not empty" in error(run_dir, tmp_path / "full")
    assert "--step/--best choose among a run's checkpoints" in error(
        run_dir / "checkpoints" / "step_000003", tmp_path / "o3", "--best")
    assert "neither a run directory nor a checkpoint" in error(tmp_path / "nowhere",
                                                              tmp_path / "o4")
    # a run whose checkpointed steps were never validated has no best
    bare = tmp_path / "bare"
    shutil.copytree(run_dir / "checkpoints" / "step_000003",
                    bare / "checkpoints" / "step_000003")
    state = bare / "checkpoints" / "step_000003" / "state.json"
    state.write_text(json.dumps(json.loads(state.read_text()) | {"metrics": {}}))
    assert "records val/reward_mean" in error(bare, tmp_path / "o5", "--best")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))


def save(out_dir, step, val, keep):
    model = torch.nn.Linear(2, 1)
    metrics = {} if val is None else {"val/reward_mean": val}
    save_checkpoint(out_dir, step, model, torch.optim.SGD(model.parameters(), lr=0.1),
                    {"sampler": {}, "run_id": None, "metrics": metrics}, keep=keep)


def steps(out_dir) -> list[int]:
    return [int(p.name[5:]) for p in list_checkpoints(out_dir)]


def test_best_is_the_highest_validation_the_latest_of_ties_and_survives_pruning(tmp_path):
    for step, val in [(1, 0.9), (2, None), (3, 0.5), (4, math.nan), (5, 0.1)]:
        save(tmp_path / "a", step, val, keep=2)
    assert steps(tmp_path / "a") == [1, 4, 5]  # the last 2 and step 1 (0.9): NaN never ranks
    for step, val in [(1, 0.5), (2, 0.5), (3, 0.2)]:
        save(tmp_path / "b", step, val, keep=1)
    assert steps(tmp_path / "b") == [2, 3]  # a tie goes to the later step
    assert best_checkpoint(tmp_path / "b").name == "step_000002"
    for step in (1, 2, 3):
        save(tmp_path / "c", step, None, keep=1)
    assert steps(tmp_path / "c") == [3] and best_checkpoint(tmp_path / "c") is None
    for step in (1, 2, 3):
        save(tmp_path / "d", step, 0.1 * step, keep=0)  # 0 keeps every checkpoint
    assert steps(tmp_path / "d") == [1, 2, 3]
