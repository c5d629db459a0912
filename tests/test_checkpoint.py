"""Checkpoints: atomic save, keep-last-K, and exact resume (4 steps == 2 + resume + 2)."""

from __future__ import annotations

import json
import logging
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from archer.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from archer.models import build_tiny_model
from archer.rewards import REWARDS, register_reward
from archer.tracking import PREVIOUS, JsonlLogger
from archer.train_config import TrainConfig
from archer.trainer import (
    StopOnSignal,
    StoppedAtOnce,
    TrainingInterrupted,
    config_changes,
    fit,
)
from experiments.presets import load_preset

if "test_parity_ckpt" not in REWARDS:

    @register_reward("test_parity_ckpt")
    def parity_reward(completions, **columns):
        return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


def make_cfg(model_dir, out_dir, total_steps):
    return TrainConfig(
        model=str(model_dir), algo=load_preset("archer").algo, reward="test_parity_ckpt",
        data={"task": "chain_sum", "size": 40, "seed": 0}, prompts_per_step=4, group_size=4,
        max_new_tokens=5, mini_batch_prompts=2, micro_batch_size=4, ppo_epochs=2, lr=1e-3,
        warmup_steps=3, total_steps=total_steps, val_size=4, ckpt_every=1, keep_checkpoints=2,
        out_dir=str(out_dir), num_threads=1, deterministic=True, export_final=False)


def assert_same_params(want, got, atol=1e-6):
    """Every parameter of the fit result ``got`` equals ``want``'s (to ``atol``)."""
    for (k, v), (_, w) in zip(want.model.named_parameters(), got.model.named_parameters()):
        torch.testing.assert_close(w, v, atol=atol, rtol=0, msg=k)


def logged_steps(run_dir) -> list[int]:
    """The steps of ``run_dir/metrics.jsonl``, in order, read without opening a logger."""
    text = (Path(run_dir) / "metrics.jsonl").read_text()
    return [json.loads(line)["step"] for line in text.splitlines()]


def test_resume_is_exact_and_metrics_continue_the_run(tmp_path):
    model_dir = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    straight = fit(make_cfg(model_dir, tmp_path / "a", 4))
    first = fit(make_cfg(model_dir, tmp_path / "b", 2))
    second = fit(make_cfg(model_dir, tmp_path / "b", 4))
    assert second.state.step == 4 and len(second.metrics) == 2
    assert_same_params(straight, second)
    assert any(not torch.equal(a, b) for a, b in zip(first.model.parameters(),
                                                     second.model.parameters()))
    logger = JsonlLogger(tmp_path / "b", run_id=first.state.run_id)
    rows = logger.read_metrics()
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert second.state.run_id == first.state.run_id
    assert json.loads((tmp_path / "b" / "run.json").read_text())["run_id"] == first.state.run_id
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_000003", "step_000004"]


def test_save_is_atomic_and_keeps_last_k(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, {"sampler": {"pos": step}}, keep=2)
    (tmp_path / "checkpoints" / ".tmp-step_000009-1").mkdir()  # an interrupted save
    assert latest_checkpoint(tmp_path).name == "step_000003"
    assert len(list_checkpoints(tmp_path)) == 2
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    torch.manual_seed(123)
    state = load_checkpoint(latest_checkpoint(tmp_path), fresh, fresh_opt)
    assert state["step"] == 3 and state["sampler"] == {"pos": 3}
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


# --- stopped runs, damaged checkpoints, changed settings: nothing is lost --------------


class SignalAtStep(JsonlLogger):
    """A JsonlLogger that sends this process ``signum`` (``times`` times) while logging
    ``step``: a Ctrl-C / SIGTERM arriving during a run, at a known point."""

    def __init__(self, run_dir, run_id, step, signum, times=1):
        super().__init__(run_dir, run_id)
        self.at, self.signum, self.times = step, signum, times
        self.final_status = None

    def log_metrics(self, metrics, step):
        super().log_metrics(metrics, step)
        if step == self.at:
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)

    def finish(self, status="FINISHED"):
        self.final_status = status
        super().finish(status)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_checkpoints_it_and_resume_is_exact(tmp_path, signum):
    """SIGINT/SIGTERM mid-run (checkpoints only at the end: ckpt_every=0): the step under
    way is finished, checkpointed and logged, fit raises TrainingInterrupted naming the
    checkpoint, the handlers are restored; resuming gives the parameters of a run that was
    never stopped, and its metrics go on in the same run."""
    model_dir = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    straight = fit(replace(make_cfg(model_dir, tmp_path / "a", 4), ckpt_every=0))
    cfg = replace(make_cfg(model_dir, tmp_path / "b", 4), ckpt_every=0)
    before = signal.getsignal(signum)
    loggers = []

    def factory(run_id):
        loggers.append(SignalAtStep(cfg.out_dir, run_id, step=2, signum=signum))
        return loggers[-1]

    with pytest.raises(TrainingInterrupted, match=rf"{signal.Signals(signum).name} received: "
                                                  r"stopped after step 2, checkpointed in "
                                                  r".*step_000002") as stopped:
        fit(cfg, logger=factory)
    assert stopped.value.step == 2 and stopped.value.signum == signum
    assert signal.getsignal(signum) == before
    assert loggers[0].final_status == "KILLED"
    assert [p.name for p in list_checkpoints(cfg.out_dir)] == ["step_000002"]
    again = fit(cfg, logger=factory)
    assert again.state.step == 4 and again.state.run_id == loggers[0].run_id
    assert_same_params(straight, again)
    assert [r["step"] for r in loggers[-1].read_metrics()] == [1, 2, 3, 4]


def test_a_signal_in_the_last_step_lets_the_run_finish(tmp_path):
    model_dir = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    cfg = replace(make_cfg(model_dir, tmp_path / "b", 2), ckpt_every=0)
    loggers = []

    def factory(run_id):
        loggers.append(SignalAtStep(cfg.out_dir, run_id, 2, signal.SIGINT))
        return loggers[-1]

    before = signal.getsignal(signal.SIGINT)
    done = fit(cfg, logger=factory)
    assert done.state.step == 2 and loggers[0].final_status == "FINISHED"
    assert signal.getsignal(signal.SIGINT) == before


def test_a_second_signal_stops_at_once_keeping_a_finished_update(tmp_path):
    """Two SIGINTs while step 1 is being logged (its update done, no checkpoint due): the
    run stops at once, and step 1, complete, is checkpointed on the way out."""
    model_dir = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    cfg = replace(make_cfg(model_dir, tmp_path / "b", 3), ckpt_every=0)
    loggers = []

    def factory(run_id):
        loggers.append(SignalAtStep(cfg.out_dir, run_id, 1, signal.SIGINT, 2))
        return loggers[-1]

    with pytest.raises(StoppedAtOnce, match="SIGINT received again: stopped at once"):
        fit(cfg, logger=factory)
    assert [p.name for p in list_checkpoints(cfg.out_dir)] == ["step_000001"]
    assert loggers[0].final_status == "KILLED"


def test_a_second_signal_waits_for_work_it_would_lose(capsys):
    """While ``busy`` names unfinished work (an update, a checkpoint being written), the
    second signal only says so; the third stops at once. Without busy work the second
    stops at once."""
    said = []
    work = {"busy": "the update"}
    with StopOnSignal(say=said.append, busy=lambda: work["busy"]) as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)
        assert "the update is under way" in said[-1] and "a third signal" in said[-1]
        with pytest.raises(StoppedAtOnce) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.signum == signal.SIGTERM
    work["busy"] = None
    with StopOnSignal(say=said.append, busy=lambda: work["busy"]):
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(StoppedAtOnce):
            os.kill(os.getpid(), signal.SIGINT)


def test_a_signal_before_the_first_step_ends_the_tracking_run(tmp_path):
    """SIGTERM while the tracking run opens (before any step): no step starts, the run is
    marked KILLED, and there is nothing to checkpoint."""
    model_dir = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    cfg = make_cfg(model_dir, tmp_path / "b", 3)
    loggers = []

    def factory(run_id):
        loggers.append(SignalAtStep(cfg.out_dir, run_id, None, signal.SIGTERM))
        os.kill(os.getpid(), signal.SIGTERM)
        return loggers[-1]

    with pytest.raises(TrainingInterrupted, match="SIGTERM received before the first step: "
                                                  "nothing to checkpoint"):
        fit(cfg, logger=factory)
    assert loggers[0].final_status == "KILLED" and loggers[0].read_metrics() == []


def test_resume_false_moves_the_old_run_aside_and_never_revives_it(tmp_path, caplog):
    """A fresh run (resume=false) in a directory holding an earlier run: the earlier run's
    checkpoints and metrics move to previous/<run id>/ (not deleted, not pruned in
    place of the new run's), and a later resume continues the new run, not the old."""
    model_dir = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    out = tmp_path / "run"
    old = fit(replace(make_cfg(model_dir, out, 3), export_final=True))  # checkpoints 2, 3
    (out / "config.yaml").write_text("the old run's\n")
    with caplog.at_level(logging.WARNING):
        new = fit(replace(make_cfg(model_dir, out, 1), resume=False))
    assert "resume=false: the run in" in caplog.text and "final/ and config.yaml" in caplog.text
    [moved] = list((out / PREVIOUS).iterdir())
    assert moved.name == old.state.run_id
    assert [p.name for p in list_checkpoints(moved)] == ["step_000002", "step_000003"]
    assert (moved / "final" / "config.json").is_file() and not (out / "final").exists()
    assert (moved / "config.yaml").read_text() == "the old run's\n"
    assert logged_steps(moved) == [1, 2, 3]
    assert json.loads((moved / "run.json").read_text())["status"] == "FINISHED"
    assert [p.name for p in list_checkpoints(out)] == ["step_000001"]
    later = fit(make_cfg(model_dir, out, 2))
    assert later.state.run_id == new.state.run_id and len(later.metrics) == 1
    assert [r["step"] for r in JsonlLogger(out, new.state.run_id).read_metrics()] == [1, 2]


def test_a_new_run_without_checkpoints_keeps_the_old_metrics(tmp_path):
    """A run that died before its first checkpoint cannot be resumed; the next run starts
    a new run id and moves the dead run's metrics to previous/ instead of deleting them."""
    first = JsonlLogger(tmp_path)
    first.log_metrics({"x": 1.0}, 1)
    second = JsonlLogger(tmp_path)
    assert second.run_id != first.run_id and second.read_metrics() == []
    [moved] = list((tmp_path / PREVIOUS).iterdir())
    assert json.loads((moved / "metrics.jsonl").read_text()) == {"step": 1, "x": 1.0}


@pytest.mark.parametrize("damage", ["truncate_model", "empty_optimizer", "cut_state",
                                    "empty_state", "state_without_sampler"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog, damage):
    model_dir = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    cfg = make_cfg(model_dir, tmp_path / "b", 3)
    fit(cfg)  # checkpoints 2 and 3
    last = list_checkpoints(cfg.out_dir)[-1]
    if damage == "truncate_model":
        (last / "model.pt").write_bytes((last / "model.pt").read_bytes()[:100])
    elif damage == "empty_optimizer":
        (last / "optimizer.pt").write_bytes(b"")
    elif damage == "cut_state":
        (last / "state.json").write_text((last / "state.json").read_text()[:20])
    elif damage == "empty_state":
        (last / "state.json").write_text("")
    else:
        (last / "state.json").write_text('{"step": 3}')
    stale = last.parent / ".tmp-step_000004-12345"  # a save that a kill interrupted
    stale.mkdir()
    with caplog.at_level(logging.WARNING):
        again = fit(replace(cfg, total_steps=4))
    assert not stale.exists()
    assert again.state.step == 4 and len(again.metrics) == 2  # steps 3 and 4 from step 2
    assert "step_000003" in caplog.text
    if "state" in damage:
        assert "state.json is damaged" in caplog.text
    if damage == "state_without_sampler":
        assert "no 'sampler', 'run_id'" in caplog.text


def test_no_loadable_checkpoint_is_an_error_naming_each(tmp_path):
    model_dir = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    cfg = make_cfg(model_dir, tmp_path / "b", 2)
    fit(cfg)
    for path in list_checkpoints(cfg.out_dir):
        (path / "model.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"no checkpoint under .*checkpoints can be loaded: "
                                         r"step_000002: .*model.pt is not a torch file .*; "
                                         r"step_000001: .*resume=false"):
        fit(replace(cfg, total_steps=3))


def test_resuming_with_other_settings_is_an_error_naming_them(tmp_path, caplog):
    """What is trained (algorithm, lr, model, data, ...) may not change on resume; how long,
    how often it validates/saves and how it is computed may."""
    model_dir = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    cfg = make_cfg(model_dir, tmp_path / "b", 2)
    fit(cfg)
    changed = replace(cfg, lr=0.5, algo=load_preset("grpo").algo, total_steps=3)
    with pytest.raises(ValueError, match=r"step_000002 was saved by a run with other settings: "
                                         r"algo\.high\.clip_high: 0\.5 -> 0\.28; .*"
                                         r"algo\.low\.kl_weight: 0\.001 -> 0\.0; "
                                         r"lr: 0\.001 -> 0\.5\. Resuming would"):
        fit(changed)
    with pytest.raises(ValueError, match=r"data\.size: 40 -> 60.*use another out_dir"):
        fit(replace(cfg, data={"task": "chain_sum", "size": 60, "seed": 0}, total_steps=3))
    assert config_changes(cfg.to_dict(), replace(cfg, lr=0.5).to_dict()) == ["lr: 0.001 -> 0.5"]
    ok = fit(replace(cfg, total_steps=3, micro_batch_size=2, val_every=1, ckpt_every=0))
    assert ok.state.step == 3 and len(ok.metrics) == 1
    with caplog.at_level(logging.WARNING):  # fewer steps than done: said, nothing trained
        done = fit(replace(cfg, total_steps=2))
    assert done.state.step == 3 and done.metrics == []
    assert "the run is at step 3 already, total_steps=2: no step to train" in caplog.text


FAIL_AT_CALL = {"n": 0, "at": 0}

if "test_fails_at_call" not in REWARDS:

    @register_reward("test_fails_at_call")
    def fails_at_call(completions, **columns):
        """The parity reward, raising on its ``at``-th call: a verifier bug in one step."""
        FAIL_AT_CALL["n"] += 1
        if FAIL_AT_CALL["n"] == FAIL_AT_CALL["at"]:
            raise ZeroDivisionError("a bug in the verifier")
        return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


def test_a_step_that_fails_before_its_update_is_checkpointed_and_redone_exactly(tmp_path,
                                                                                caplog):
    """Checkpoints only at the end (ckpt_every=0) and the reward raises in step 3: the run
    is checkpointed at step 2 with step 3's starting RNG and data position, so the resume
    (reward fixed) redoes step 3 and ends with the parameters of a run never interrupted."""
    model_dir = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    straight = fit(replace(make_cfg(model_dir, tmp_path / "a", 4), ckpt_every=0))
    cfg = replace(make_cfg(model_dir, tmp_path / "b", 4), ckpt_every=0,
                  reward="test_fails_at_call")
    FAIL_AT_CALL.update(n=0, at=3)  # validation off: call k is step k's reward
    with caplog.at_level(logging.WARNING), pytest.raises(ZeroDivisionError):
        fit(cfg)
    assert "step 3 failed before its update changed the parameters (ZeroDivisionError: a bug " \
        "in the verifier)" in caplog.text
    assert [p.name for p in list_checkpoints(cfg.out_dir)] == ["step_000002"]
    assert json.loads((tmp_path / "b" / "run.json").read_text())["status"] == "FAILED"
    FAIL_AT_CALL.update(n=0, at=0)
    again = fit(cfg)
    assert again.state.step == 4 and len(again.metrics) == 2
    assert_same_params(straight, again)
    assert logged_steps(tmp_path / "b") == [1, 2, 3, 4]
    # failing in the first step leaves nothing to save
    FAIL_AT_CALL.update(n=0, at=1)
    with pytest.raises(ZeroDivisionError):
        fit(replace(cfg, out_dir=str(tmp_path / "c")))
    assert list_checkpoints(tmp_path / "c") == []


def test_a_failure_in_the_update_before_the_optimizer_step_is_redone_exactly(
        tmp_path, caplog, monkeypatch):
    """Step 3's backward runs, then fails (as an out-of-memory error in a later micro-batch
    would) before the optimizer steps: the parameters and the optimizer state are step 2's,
    so the run is checkpointed at step 2 and the resume ends as a run never interrupted. A
    failure after the optimizer step leaves half a step: nothing is checkpointed, and the
    warning says where a resume starts."""
    import archer.trainer.update as trainer_mod  # update_policy looks both up there

    model_dir = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    straight = fit(replace(make_cfg(model_dir, tmp_path / "a", 4), ckpt_every=0))
    real_accumulate, real_step = trainer_mod.accumulate_gradients, trainer_mod.optimizer_step
    fail = {"where": "backward", "step": 3}

    def accumulate(ctx, *args, **kwargs):
        out = real_accumulate(ctx, *args, **kwargs)  # gradients are in .grad now
        if fail["where"] == "backward" and ctx.state.step + 1 == fail["step"]:
            raise MemoryError("out of memory in the next micro-batch")
        return out

    def step_then_fail(ctx):
        out = real_step(ctx)  # the parameters have moved
        if fail["where"] == "after" and ctx.state.step + 1 == fail["step"]:
            raise MemoryError("out of memory after the optimizer step")
        return out

    monkeypatch.setattr(trainer_mod, "accumulate_gradients", accumulate)
    monkeypatch.setattr(trainer_mod, "optimizer_step", step_then_fail)
    cfg = replace(make_cfg(model_dir, tmp_path / "b", 4), ckpt_every=0)
    with caplog.at_level(logging.WARNING), pytest.raises(MemoryError):
        fit(cfg)
    assert "step 3 failed before its update changed the parameters (MemoryError: out of " \
        "memory in the next micro-batch)" in caplog.text
    assert [p.name for p in list_checkpoints(cfg.out_dir)] == ["step_000002"]
    fail["where"] = None
    again = fit(cfg)
    assert again.state.step == 4 and len(again.metrics) == 2
    assert_same_params(straight, again)
    assert logged_steps(tmp_path / "b") == [1, 2, 3, 4]
    # after the optimizer step of step 3: not checkpointable, and said
    fail.update(where="after")
    caplog.clear()
    c = replace(cfg, out_dir=str(tmp_path / "c"))
    with caplog.at_level(logging.WARNING), pytest.raises(MemoryError):
        fit(c)
    assert "step 3 failed in its update after an optimizer step (MemoryError: out of memory " \
        "after the optimizer step): a half done step cannot be checkpointed; resuming " \
        "starts from the start" in caplog.text
    assert list_checkpoints(c.out_dir) == []


def test_a_failure_in_validation_keeps_the_finished_step_and_resume_is_exact(tmp_path,
                                                                            caplog):
    """val_every=1: reward calls alternate training / validation, so call 4 is step 2's
    validation. It raises after step 2's update: step 2 is checkpointed (validation put the
    RNG back), and the resume ends with the parameters of a run that never failed."""
    model_dir = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    base = replace(make_cfg(model_dir, tmp_path / "a", 4), ckpt_every=0, val_every=1,
                   reward="test_fails_at_call")
    FAIL_AT_CALL.update(n=0, at=0)
    straight = fit(base)
    cfg = replace(base, out_dir=str(tmp_path / "b"))
    FAIL_AT_CALL.update(n=0, at=4)
    with caplog.at_level(logging.WARNING), pytest.raises(ZeroDivisionError):
        fit(cfg)
    assert "step 2 failed after its update (ZeroDivisionError" in caplog.text
    assert [p.name for p in list_checkpoints(cfg.out_dir)] == ["step_000002"]
    FAIL_AT_CALL.update(n=0, at=0)
    again = fit(cfg)
    assert_same_params(straight, again)
    assert logged_steps(tmp_path / "b") == [1, 2, 3, 4]
    rows = JsonlLogger(tmp_path / "b", again.state.run_id).read_metrics()
    assert "val/reward_mean" not in rows[1]  # step 2's validation never finished


def test_validation_does_not_move_the_training_rng(tmp_path):
    """Sampled validation (temperature 1, 2 samples) every step, or none: the same training
    trajectory, parameter for parameter."""
    model_dir = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    plain = fit(replace(make_cfg(model_dir, tmp_path / "a", 3), ckpt_every=0))
    validated = fit(replace(make_cfg(model_dir, tmp_path / "b", 3), ckpt_every=0,
                            val_every=1, val_temperature=1.0, val_samples=2))
    assert "val/reward_mean" in validated.metrics[0]
    assert_same_params(plain, validated, atol=0)


def test_a_decaying_schedule_resumed_longer_says_how_it_is_stretched(tmp_path, caplog):
    """Cosine over 2 steps, resumed to 4: step 3's lr is 1e-3 x (1 + cos(pi/2)) / 2 = 5e-4
    where the 2-step schedule had ended at 0; allowed (extending a run), and said."""
    model_dir = build_tiny_model(tmp_path / "tiny", hidden=32, layers=2, heads=4)
    cfg = replace(make_cfg(model_dir, tmp_path / "b", 2), warmup_steps=0, lr_schedule="cosine")
    fit(cfg)
    with caplog.at_level(logging.WARNING):
        longer = fit(replace(cfg, total_steps=4))
    assert "total_steps 2 -> 4 with lr_schedule=cosine: the remaining decay is rescaled to " \
           "the new length; the lr of step 3 is 0.0005 (it would have been 0)" in caplog.text
    assert longer.metrics[0]["actor/lr"] == pytest.approx(5e-4)


def test_a_checkpoint_from_before_kl_monitor_and_answer_format_existed_resumes():
    # Saved before the two keys existed: RL never reads answer_format, and the KL monitor
    # only logs; nothing else may pass unnoticed.
    from archer.train_config import TrainConfig
    from archer.trainer.checkpointing import config_changes

    now = TrainConfig().to_dict()
    saved = TrainConfig().to_dict()
    del saved["algo"]["kl_monitor"], saved["data"]["answer_format"]
    assert config_changes(saved, now) == []
    saved["algo"]["entropy_quantile"] = 0.7
    assert config_changes(saved, now) == ["algo.entropy_quantile: 0.7 -> 0.8"]
