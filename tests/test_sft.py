"""Supervised warm-up (archer/sft.py and ``archer sft``) on a tiny model (hidden 32)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from archer.config import ConfigError
from archer.models import build_tiny_model, load_policy_and_ref
from archer.rewards import REWARDS, register_reward
from archer.sft import SFTConfig, sft_batch, sft_loss, supervised_finetune
from archer.train_config import DataConfig
from archer_cli.main import main

if "test_sft_always" not in REWARDS:

    @register_reward("test_sft_always")
    def always_right(completions, **columns):
        return [1.0 for _ in completions]


DATA = DataConfig(task="chain_sum", size=60, seed=0,
                  task_config={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1})


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=32, layers=2, heads=4)


def test_batch_scores_only_the_answer_and_eos(tiny_path):
    _, _, tok = load_policy_and_ref(tiny_path, need_ref=False)
    ids, att, lab = sft_batch(tok, ["ab", "abcd"], [" 7", " 12"])
    # char tokenizer: one token per character; widths 2+2+1 and 4+3+1, row 0 right-padded
    assert ids.shape == lab.shape == att.shape == (2, 8)
    assert att.tolist() == [[1] * 5 + [0] * 3, [1] * 8]
    eos = tok.eos_token_id
    assert lab[0].tolist() == [-100, -100] + tok(" 7", add_special_tokens=False)["input_ids"] \
        + [eos, -100, -100, -100]
    assert ids[0, 5:].tolist() == [tok.pad_token_id] * 3
    assert lab[1].tolist()[:4] == [-100] * 4 and lab[1, -1].item() == eos


def test_loss_decreases_and_saved_dir_loads(tiny_path, tmp_path):
    cfg = SFTConfig(model=str(tiny_path), data=DATA, out_dir=str(tmp_path / "sft"), steps=30,
                    max_seconds=None, eval_every=30, batch_size=16, lr=3e-3, val_size=8,
                    max_new_tokens=3, num_threads=1)
    model, _, tok = load_policy_and_ref(tiny_path, need_ref=False)
    probe_p = ["User: 3 + 4 =\nReply with only the final number.\nAssistant:"] * 2
    probe_a = [" 7", " 7"]
    with torch.no_grad():
        before = sft_loss(model, tok, probe_p, probe_a).item()
    result = supervised_finetune(cfg, log=lambda line: None)
    assert result.steps == 30 and result.stopped == "steps"
    assert result.last_loss < 0.6 * result.first_loss, (result.first_loss, result.last_loss)
    assert 0.0 <= result.accuracy <= 1.0 and [h["step"] for h in result.history] == [30]
    trained, _, tok2 = load_policy_and_ref(result.model_dir, need_ref=False)
    with torch.no_grad():
        after = sft_loss(trained, tok2, probe_p, probe_a).item()
    assert after < before  # the saved weights are the trained ones
    assert tok2("12 + 3", add_special_tokens=False)["input_ids"] == \
        tok("12 + 3", add_special_tokens=False)["input_ids"]
    summary = json.loads((tmp_path / "sft" / "sft_summary.json").read_text())
    assert summary["steps"] == 30 and summary["config"]["batch_size"] == 16


def test_target_accuracy_stops_at_the_first_evaluation(tiny_path, tmp_path):
    cfg = SFTConfig(model=str(tiny_path), data=DATA, reward="test_sft_always",
                    out_dir=str(tmp_path), steps=100, max_seconds=None, eval_every=2,
                    batch_size=4, val_size=4, max_new_tokens=2, target_accuracy=0.5,
                    num_threads=1)
    result = supervised_finetune(cfg, log=lambda line: None)
    assert (result.steps, result.stopped, result.accuracy) == (2, "target", 1.0)


def test_lr_schedule_warms_up_then_decays(tiny_path, tmp_path):
    """warm-up 2 of 6 steps, then linear decay to 0.1 x lr over the other 4: the lr of steps
    1..6 (logged at each evaluation) is lr x [1/2, 1, 1, 0.775, 0.55, 0.325]."""
    cfg = SFTConfig(model=str(tiny_path), data=DATA, out_dir=str(tmp_path), steps=6,
                    max_seconds=None, eval_every=1, batch_size=4, lr=2e-3, val_size=4,
                    max_new_tokens=2, num_threads=1, warmup_steps=2, lr_schedule="linear",
                    min_lr_ratio=0.1)
    result = supervised_finetune(cfg, log=lambda line: None)
    assert [h["lr"] for h in result.history] == pytest.approx(
        [2e-3 * f for f in (0.5, 1.0, 1.0, 0.775, 0.55, 0.325)], rel=1e-9)
    const = supervised_finetune(replace(cfg, out_dir=str(tmp_path / "c"), warmup_steps=0,
                                        lr_schedule="constant"), log=lambda line: None)
    assert [h["lr"] for h in const.history] == [2e-3] * 6


def test_config_is_validated():
    with pytest.raises(ConfigError, match="lr_schedule='step'"):
        SFTConfig(lr_schedule="step")
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        SFTConfig(min_lr_ratio=1.5)
    with pytest.raises(ConfigError, match="device="):
        SFTConfig(device="tpu")
    with pytest.raises(ConfigError, match="target_accuracy"):
        SFTConfig(target_accuracy=1.5)
    with pytest.raises(ConfigError, match=r"data.answer_format='no placeholder'.*\{answer\}"):
        SFTConfig(data={"answer_format": "no placeholder"})
    with pytest.raises(ConfigError, match="sise"):
        SFTConfig(data={"task": "chain_sum", "sise": 3})


def test_cli_sft_then_train_on_the_saved_model(tiny_path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sft"
    assert main(["sft", f"model={tiny_path}", "data.size=40", f"out_dir={out}",
                 "steps=4", "batch_size=8", "eval_every=2", "val_size=4",
                 "max_new_tokens=3", "num_threads=1"]) == 0
    assert f"model: {out / 'model'}" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "sft_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert main(["train", f"model={out / 'model'}", "algo=grpo", "data.size=40",
                 "total_steps=1", "prompts_per_step=2", "group_size=2",
                 "mini_batch_prompts=2", "micro_batch_size=4",
                 "max_new_tokens=3", "val_every=0", "val_size=4",
                 "num_threads=1", "export_final=false", "tracking=none",
                 f"out_dir={tmp_path / 'rl'}"]) == 0
    assert "archer train: 1 steps" in capsys.readouterr().out


def test_cli_sft_ctrl_c_saves_the_model_so_far(tiny_path, tmp_path, monkeypatch, capsys):
    """SIGINT during `archer sft` (here while step 2's evaluation runs): the loop stops before
    the next step, the model so far is saved and loads, the exit status is 130."""
    import os
    import signal

    from archer.rewards import REWARDS, register_reward

    if "test_sigint_sft" not in REWARDS:
        @register_reward("test_sigint_sft")
        def sigint_reward(completions, **columns):
            os.kill(os.getpid(), signal.SIGINT)
            return [0.0] * len(completions)

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sft"
    assert main(["sft", f"model={tiny_path}", "data.size=40", f"out_dir={out}",
                 "steps=50", "batch_size=8", "eval_every=2", "val_size=4",
                 "max_new_tokens=3", "num_threads=1",
                 "reward=test_sigint_sft"]) == 130
    err = capsys.readouterr().err
    assert "SIGINT received: finishing the step under way" in err
    assert f"stopped after step 2; the model so far is in {out / 'model'}" in err
    summary = json.loads((out / "sft_summary.json").read_text())
    assert summary["stopped"] == "SIGINT" and summary["steps"] == 2
    load_policy_and_ref(out / "model", need_ref=False)  # a complete HF directory


def test_cli_sft_stopped_then_resumed_ends_as_a_run_never_stopped(tiny_path, tmp_path,
                                                                   monkeypatch, capsys):
    """SIGINT during step 3's evaluation stops the warm-up after step 3 (exit 130); the same
    command then resumes it: the final parameters and the log equal an unstopped run's. A
    resume with other training settings is refused naming them; resume=false starts
    over."""
    import os
    import signal

    from safetensors.torch import load_file

    import archer.sft as sft_mod

    common = [f"model={tiny_path}", "data.size=40", "steps=6", "batch_size=8",
              "eval_every=3", "val_size=4", "max_new_tokens=3",
              "num_threads=1", "max_seconds=null"]
    monkeypatch.chdir(tmp_path)
    assert main(["sft", *common, f"out_dir={tmp_path / 'straight'}"]) == 0
    real = sft_mod.heldout_accuracy

    def ctrl_c_in_the_first_evaluation(*args, **kwargs):
        monkeypatch.setattr(sft_mod, "heldout_accuracy", real)
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(sft_mod, "heldout_accuracy", ctrl_c_in_the_first_evaluation)
    out = tmp_path / "stopped"
    assert main(["sft", *common, f"out_dir={out}"]) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert (out / "resume.pt").is_file()
    # another lr is another warm-up: refused, naming it; nothing changed
    assert main(["sft", *common, f"out_dir={out}", "lr=0.01"]) == 2
    assert "lr: 0.003 -> 0.01" in capsys.readouterr().err
    assert main(["sft", *common, f"out_dir={out}"]) == 0
    assert "resuming the warm-up stopped after step 3" in capsys.readouterr().err
    assert not (out / "resume.pt").exists()  # finished: nothing left to resume
    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(out / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def rows(path):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (path / "sft_log.jsonl").read_text().splitlines()]

    assert rows(out) == rows(tmp_path / "straight") and [r["step"] for r in rows(out)] == [3, 6]
    # resume=false after a stop starts over (and leaves no resume state once finished)
    monkeypatch.setattr(sft_mod, "heldout_accuracy", ctrl_c_in_the_first_evaluation)
    assert main(["sft", *common, f"out_dir={out}"]) == 130
    assert main(["sft", *common, f"out_dir={out}", "resume=false"]) == 0
    assert "resuming" not in capsys.readouterr().err and not (out / "resume.pt").exists()
    b = load_file(out / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a damaged resume state: an error naming it and the way out, not a traceback
    (out / "resume.pt").write_bytes(b"cut")
    assert main(["sft", *common, f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'resume.pt'}: cannot resume from it" in err and "resume=false" in err


def test_cli_sft_rejects_unknown_knob(capsys):
    assert main(["sft", "--print-config", "+stepz=3"]) == 2
    assert "'stepz' (did you mean 'steps'?)" in capsys.readouterr().err


def test_shared_prefix_length_hand_computed():
    """Leading columns equal in every row, real tokens, and before the column that scores the
    first label (label in column t <- logits of column t - 1)."""
    from archer.sft import shared_prefix_length

    ids = torch.tensor([[5, 6, 7, 8, 1, 0], [5, 6, 7, 9, 2, 3]])
    att = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    late = torch.tensor([[-100] * 4 + [1, -100], [-100] * 5 + [3]])
    assert shared_prefix_length(ids, att, late) == 3  # columns 0-2 agree
    early = torch.tensor([[-100, -100, 7, 8, 1, -100], [-100] * 5 + [3]])
    assert shared_prefix_length(ids, att, early) == 1  # column 1 scores the label in 2
    padded = att.clone()
    padded[0, 1:] = 0  # row 0 is one real token: padding is no shared prefix
    assert shared_prefix_length(ids, padded, late) == 1


def test_shared_prefix_loss_equals_the_plain_loss_and_its_gradients(tiny_path):
    """Rows that share an instruction: the prefix runs once (a one-row forward, then the
    rest of every row) and the loss and every parameter's gradient are the plain pass's;
    without a shared prefix (or with one row) the plain pass runs."""
    model, _, tok = load_policy_and_ref(tiny_path, need_ref=False)
    head = "User: State the final answer to the following arithmetic problem: "
    prompts = [head + f"{i} + {i % 4} =\nAssistant:" for i in range(12)]
    targets = [f" {i + i % 4}" for i in range(12)]

    def run(share: bool):
        shapes = []
        hook = model.register_forward_hook(
            lambda mod, args, kwargs, out: shapes.append(tuple(kwargs["input_ids"].shape)),
            with_kwargs=True)
        model.zero_grad()
        try:
            loss = sft_loss(model, tok, prompts, targets, share_prefix=share)
        finally:
            hook.remove()
        loss.backward()
        return loss, {k: p.grad.clone() for k, p in model.named_parameters()}, shapes

    plain, plain_g, plain_shapes = run(False)
    shared, shared_g, shared_shapes = run(True)
    width = plain_shapes[0][1]
    assert plain_shapes == [(12, width)]
    assert shared_shapes == [(1, len(head)), (12, width - len(head))]
    assert shared.item() == pytest.approx(plain.item(), abs=1e-6)
    for k in plain_g:
        scale = plain_g[k].abs().max().item()
        torch.testing.assert_close(shared_g[k], plain_g[k], atol=1e-5 * scale + 1e-9, rtol=0,
                                   msg=k)
    ids, att, lab = sft_batch(tok, ["a1", "b1"], [" 1", " 2"])
    from archer.sft import shared_prefix_loss
    assert shared_prefix_loss(model, ids, att, lab) is None  # nothing shared
    ids, att, lab = sft_batch(tok, prompts[:1], targets[:1])
    assert shared_prefix_loss(model, ids, att, lab) is None  # one row


@pytest.mark.parametrize("override,named", [
    ("algo=grpo", "unknown config key 'algo' ('algo' is a group of `archer train`; "
                  "`archer sft` has none); the top level of `archer sft` has: data=<"),
    ("modle=tiny", "'modle' (did you mean 'model'?)"),
    ("share_prefix=no", "archer: error: share_prefix='no' must be true or false"),
    ("sft.steps=3", "sft.steps was renamed: use steps=3"),
    ("data.reward=math", "data.reward was renamed: use reward=math"),
    ("model.path=x", "model.path was renamed: use model=x"),
])
def test_cli_sft_bad_top_level_keys_and_bools_are_named(capsys, override, named):
    assert main(["sft", "--print-config", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("archer: error:") and named in err, err


def test_records_without_an_answer_name_the_data_file(tiny_path, tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(8)]
    del rows[5]["answer"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for val_size in (0, 7):  # the record in the training split, or held out (scored)
        cfg = SFTConfig(model=str(tiny_path), data=DataConfig(file=str(path)), reward="math",
                        val_size=val_size, steps=1, out_dir=str(tmp_path / "out"))
        with pytest.raises(ValueError, match=(
                f"data.file='{path}': 1 record\\(s\\) have no 'answer' to learn or score "
                r"\(first: index 5\)")):
            supervised_finetune(cfg, log=lambda line: None)
