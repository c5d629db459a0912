"""``archer ablate STUDY --dry-run``: trials, warm start, cost estimate and the mechanism
lint, with nothing started (no Ray, no training, no warm-start build)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from archer.validation import ConfigError
from experiments import warm_start as ws
from experiments.study import expand_trials, load_study


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHER_CACHE_DIR", str(tmp_path / "cache"))

    def no_ray(*args, **kwargs):
        raise AssertionError("a dry run started Ray")

    monkeypatch.setattr("experiments.scheduler.init_ray", no_ray)
    monkeypatch.setattr("experiments.warm_start._build", no_ray)
    return tmp_path / "cache" / "warm_starts"


def fake_warm_start(study: str, accuracy: float, root, model_files=None) -> ws.WarmStart:
    """A verified cache entry for the study's warm start (its manifest and file hashes):
    a copy of ``model_files`` (a model directory), else a lone config.json."""
    spec = load_study(study, ["seeds=[0]"])
    trial = expand_trials(spec, [], root)[0]
    target = ws.locate(trial.train, spec.warm_start)
    model = target.model_dir
    if model_files is not None:
        shutil.copytree(model_files, model)
        files = ws.file_hashes(model)
    else:
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}")
        files = {"config.json": hashlib.sha256(b"{}").hexdigest()}
    (target.dir / ws.MANIFEST).write_text(json.dumps(
        {"hash": target.hash, "heldout_accuracy": accuracy, "sft_steps": 100,
         "files": files}))
    found = ws.locate(trial.train, spec.warm_start)
    assert found.present
    return found


def test_dry_run_lists_trials_warm_start_and_cost(cache, tmp_path, capsys):
    from archer_cli.main import main

    root = tmp_path / "studies"
    assert main(["ablate", "ablate_kl", "--dry-run", "study.seeds=[0,1]",
                 f"out_dir={root}"]) == 0
    out = capsys.readouterr().out
    assert "6 trials = 3 arm(s) x 2 seed(s) [0, 1]" in out
    for value in ("0.0", "0.001", "0.005"):
        for seed in (0, 1):
            assert f"algo.low.kl_weight={value} seed={seed}" in out
    assert "every trial: model=tiny data=gym_chain_sum3" in out
    spec = load_study("ablate_kl")
    trial = expand_trials(spec, [], root)[0]
    digest = ws.warm_start_hash(ws.warm_start_key(trial.train, spec.warm_start))
    assert f"warm start: {digest[:16]} at {cache / digest[:16] / 'model'} (absent: will be " \
           "built (800 SFT steps at most))" in out
    assert "CPU-hours" in out and "GPU-hours" not in out and "assumptions:" in out
    assert "s per training step at 16 prompts x 8 samples x 5 new tokens" in out
    assert "WARNING" not in out  # the KL axis acts (sync mode, the split is used)
    assert not root.exists()  # nothing written: no study state, no trial directories
    assert not cache.exists()


def test_staleness_study_dry_run_fits_an_hour_on_two_cores(cache, tmp_path, capsys):
    import re

    from archer_cli.main import main

    root = tmp_path / "studies"
    assert main(["ablate", "ablate_staleness", "--dry-run", f"out_dir={root}"]) == 0
    out = capsys.readouterr().out
    assert "36 trials = 6 arm(s) x 6 seed(s) [0, 1, 2, 3, 4, 5]" in out
    for algo in ("archer", "grpo"):
        for k in (0, 1, 2):
            assert f"algo={algo} max_staleness={k} seed=5" in out
    hours = float(re.search(r"estimate: ([0-9.]+) CPU-hours", out).group(1))
    assert hours <= 2 * 1.0  # 2 trials at a time on 2 cores: at most 60 min of wall time
    spec = load_study("ablate_staleness")
    trials = expand_trials(spec, [], root)
    assert {t.train["max_staleness"] for t in trials} == {0, 1, 2}
    # one shared warm start for every arm (staleness is not part of its key)
    assert len({ws.locate(t.train, spec.warm_start).hash for t in trials}) == 1


def test_a_smollm2_study_is_estimated_at_that_models_measured_rate(cache, tmp_path):
    import re

    from experiments.study_cli import dry_run

    out = dry_run("baselines_smollm2", [], tmp_path / "studies")
    assert "9 trials = 3 arm(s) x 3 seed(s)" in out
    assert "50 s per training step at 8 prompts x 8 samples x 16 new tokens (model " \
           "smollm2-135m: measured" in out
    minutes = [float(m) for m in re.findall(r"\(~([0-9.]+) min\)", out)]
    # 12 steps x 50 s, one validation of 200 and 200 x 4 evaluation samples at 50/64 s each:
    # 600 + 156.25 + 625 s = 23.0 min (the run at ca2051d: 7.4 to 29 min, median 19)
    assert minutes == [23.0] * 9
    # the tiny model's rate would have said a few seconds per trial
    tiny = dry_run("baselines", ["study.seeds=[0]"], tmp_path / "studies")
    assert "(recipe cpu: measured" in tiny


def test_dry_run_reuses_a_present_warm_start_and_lints_its_accuracy(cache, tmp_path):
    from experiments.study_cli import dry_run

    root = tmp_path / "studies"
    warm = fake_warm_start("ablate_kl", 0.3, root)
    out = dry_run("ablate_kl", ["study.seeds=[0]"], root)
    assert f"warm start: {warm.hash[:16]} at {warm.model_dir} (present, reused (held-out " \
           "accuracy 0.3))" in out
    assert "warm start 0.0 min" in out  # nothing to build
    (warm.dir / ws.MANIFEST).write_text(json.dumps(
        json.loads((warm.dir / ws.MANIFEST).read_text()) | {"heldout_accuracy": 0.0}))
    out = dry_run("ablate_kl", ["study.seeds=[0]"], root)
    assert "WARNING: study ablate_kl: [no_reward_signal] the warm start's held-out accuracy " \
           "is 0" in out


def test_dry_run_warns_about_axes_that_cannot_act(cache, tmp_path):
    from experiments.study_cli import dry_run

    root = tmp_path / "studies"
    # one on-policy pass per rollout (one mini-batch, one epoch): the clips never bind
    out = dry_run("ablate_clip", ["study.seeds=[0]", "ppo_epochs=1", "mini_batch_prompts=16"],
                  root)
    assert "[clip_never_binds]" in out and "ratio is exactly 1" in out
    out = dry_run("ablate_clip", ["study.seeds=[0]"], root)  # the cpu recipe: 4 x 3 passes
    assert "[clip_never_binds]" not in out
    out = dry_run("ablate_kl", ["study.seeds=[0]", "warm_start=null"], root)
    assert "warm start: none (warm_start=null)" in out
    assert "[random_model] model=tiny is a randomly initialised model" in out


def test_a_gpu_recipe_is_estimated_in_gpu_hours(cache, tmp_path, tiny_model):
    from experiments.study_cli import dry_run

    out = dry_run("baselines", ["recipe=archer_math_1p5b", "study.seeds=[0]",
                                f"model={tiny_model}"], tmp_path / "studies")
    assert "GPU-hours" in out and "assumed, not measured" in out
    assert "warm start: none" in out  # the GPU recipe has no warm start


def test_unknown_study_and_recipe_names_say_did_you_mean(cache, tmp_path):
    from experiments.study_cli import dry_run, study_status

    with pytest.raises(ConfigError, match="unknown study 'ablate_k'.*did you mean 'ablate_kl'"):
        dry_run("ablate_k", [], tmp_path)
    with pytest.raises(ConfigError, match="unknown recipe 'cpx'.*did you mean 'cpu'"):
        dry_run("ablate_kl", ["recipe=cpx"], tmp_path)
    with pytest.raises(ConfigError, match="unknown preset 'grp0'.*did you mean 'grpo'"):
        dry_run("baselines", ["study.axes.algo=[grpo,grp0]"], tmp_path)
    with pytest.raises(ConfigError, match="warm_start.*'stesp'.*did you mean 'steps'"):
        dry_run("ablate_kl", ["warm_start={stesp:3}"], tmp_path)
    (tmp_path / "ablate_kl").mkdir()
    (tmp_path / "ablate_kl" / "study.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="did you mean 'ablate_kl'"):
        study_status("ablate_k", tmp_path)


def test_a_study_runs_every_trial_from_its_warm_start_and_logs_it(cache, tmp_path, tiny_model,
                                                                   monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from experiments.scheduler import Scheduler
    from experiments.study_cli import run_study

    root = tmp_path / "studies"
    warm = fake_warm_start("ablate_kl", 0.3, root, model_files=tiny_model)
    seen = {}

    def run(self, source):  # the trials as the scheduler would get them; nothing runs
        seen["trials"] = list(source.queue)
        return self.state

    monkeypatch.setattr(Scheduler, "run", run)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state = run_study("ablate_kl", ["study.seeds=[0,1]"], root=root, tracking_uri=uri,
                      progress=False)
    trials = seen["trials"]
    assert len(trials) == 6
    assert {t.train["model"] for t in trials} == {str(warm.model_dir)}  # every seed, one model
    assert {t.tags["archer.warm_start"] for t in trials} == {warm.hash[:16]}
    assert "reusing the warm start" in capsys.readouterr().out
    run_data = MlflowClient(uri).get_run(state.parent_run_id).data
    assert run_data.tags["warm_start/hash"] == warm.hash
    assert run_data.metrics["warm_start/heldout_accuracy"] == 0.3
    assert run_data.params["warm_start"] == warm.hash[:16]
