"""``archer report``: a real tiny study (2 arms x 2 seeds, 2 steps, evaluated) run end to
end into a local MLflow store, then reported; the numbers are checked against what MLflow
holds, read back independently of the report's reader. Plus the refusals: an unknown study
(did-you-mean), an unfinished study, bad settings, a bad reference arm."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from archer.validation import ConfigError
from archer_cli.main import main, parse_args

ARMS = ["grpo", "archer"]


def _report(study, out, uri, *settings):
    """The real ``archer report`` command (parse, key=value settings, dispatch)."""
    return main(["report", study, f"out_dir={out}", f"tracking.uri={uri}", "n_boot=2000",
                 *settings])


def _settings(tokens):
    return parse_args(["report", "s", *tokens])


@pytest.fixture(scope="module")
def real_study(tmp_path_factory, tiny_overrides, write_study):
    """The study ``rep`` (algo grpo/archer x seeds 0, 1; 2 steps; gsm8k on 2 problems) run
    through the scheduler on a local Ray into a SQLite store."""
    pytest.importorskip("ray")
    import ray

    from archer.models import build_tiny_model
    from experiments.study_cli import run_study

    root = tmp_path_factory.mktemp("report_study")
    model = build_tiny_model(root / "tiny", hidden=32, layers=2, heads=4)
    # rewards 0, 1, 0, 1 within every group: each step has a learning signal, so every
    # trial logs its per-token-class metrics at every step (a tiny model rarely solves one)
    reward = root / "alternating_reward.py"
    reward.write_text("def reward(completions, **columns):\n"
                      "    return [float(i % 2) for i in range(len(completions))]\n")
    uri = f"sqlite:///{root}/mlflow.db"
    path = write_study(root, "rep", recipe="cpu", axes={"algo": ARMS}, seeds=[0, 1],
                        reference_arm="archer", register_best=False, max_concurrent=2,
                        eval={"benchmarks": ["gsm8k"], "limit": 2, "k": 1,
                              "max_new_tokens": 8})
    try:
        state = run_study(path, [*tiny_overrides(model), f"reward={reward}:reward"],
                          root=root / "studies",
                          tracking_uri=uri, num_cpus=2, progress=False)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert [t.status for t in state.shown()] == ["finished"] * 4
    return SimpleNamespace(uri=uri, root=root, state=state)


def _history(client, run_id, key):
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


@pytest.mark.slow
def test_report_of_a_real_study(real_study, tmp_path, capsys):
    from mlflow import MlflowClient

    out = tmp_path / "results"
    assert _report("rep", out, real_study.uri) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "rep.json").read_text())
    assert set(doc) >= {"study", "commit", "command", "arms", "paired"}
    assert doc["study"] == "rep" and doc["command"].startswith("archer ablate rep")
    assert len(doc["commit"]) >= 40  # the git commit the study ran at
    assert doc["reference_arm"] == "archer"  # the study file's reference_arm
    assert doc["metric"] == "eval/gsm8k/avg_at_1"
    client = MlflowClient(real_study.uri)
    by_arm = {t.name.split("algo=")[1].split("-")[0]: [] for t in real_study.state.shown()}
    for t in real_study.state.shown():
        by_arm[t.name.split("algo=")[1].split("-")[0]].append(t.run_id)
    assert sorted(a["name"] for a in doc["arms"]) == sorted(ARMS)
    for arm in doc["arms"]:
        assert set(arm) >= {"name", "seeds", "metric", "mean", "ci95", "clipfrac_low",
                            "clipfrac_high", "kl_ref_low", "high_token_fraction"}
        assert arm["seeds"] == ["0", "1"]
        rids = by_arm[arm["name"]]
        runs = [client.get_run(r) for r in rids]
        values = [r.data.metrics["eval/gsm8k/avg_at_1"] for r in runs]
        assert arm["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert arm["ci95"][0] <= arm["mean"] <= arm["ci95"][1]
        clip_low, clip_high, kl, frac = [], [], [], []
        for r in rids:
            lo = _history(client, r, "actor/clipfrac_low_entropy_lower")
            up = _history(client, r, "actor/clipfrac_low_entropy_upper")
            assert sorted(lo) == sorted(up) == [1, 2]
            clip_low.append(np.mean([lo[s] + up[s] for s in lo]))
            hl = _history(client, r, "actor/clipfrac_high_entropy_lower")
            hu = _history(client, r, "actor/clipfrac_high_entropy_upper")
            clip_high.append(np.mean([hl[s] + hu[s] for s in hl]))
            kls = _history(client, r, "actor/kl_low_entropy")  # not logged without a KL term
            if kls:
                kl.append(kls[max(kls)])  # the last logged value
            frac.append(np.mean(list(_history(client, r, "actor/frac_high_entropy").values())))
        assert arm["clipfrac_low"] == pytest.approx(np.mean(clip_low), abs=1e-12)
        assert arm["clipfrac_high"] == pytest.approx(np.mean(clip_high), abs=1e-12)
        if kl:
            assert arm["kl_ref_low"] == pytest.approx(np.mean(kl), abs=1e-12)
        else:
            assert arm["kl_ref_low"] is None and arm["name"] == "grpo"
        assert arm["high_token_fraction"] == pytest.approx(np.mean(frac), abs=1e-12)
    (paired,) = doc["paired"]
    assert paired["arm"] == "grpo" and paired["vs"] == "archer"
    assert set(paired) >= {"arm", "vs", "diff", "ci95", "p", "per_seed"}
    arms = {a["name"]: a for a in doc["arms"]}
    per_seed = {s: arms["grpo"]["per_seed"][s] - arms["archer"]["per_seed"][s]
                for s in ("0", "1")}
    assert paired["per_seed"] == pytest.approx(per_seed, abs=1e-12)
    assert paired["diff"] == pytest.approx(np.mean(list(per_seed.values())), abs=1e-12)
    assert paired["ci95"][0] <= paired["diff"] <= paired["ci95"][1]
    # two seeds: the sign-flip test over seeds cannot go below 0.5, so nothing is significant
    assert paired["p"] >= 0.5 and not paired["significant"]
    # the starting model (the recipe's eval_start), evaluated once under the trials' contract
    (start_run,) = client.search_runs(
        [client.get_run(rids[0]).info.experiment_id],
        f"tags.`archer.role` = 'start' and tags.`mlflow.parentRunId` = '{doc['study_run_id']}'")
    start = start_run.data.metrics["gsm8k/avg_at_1"]
    assert doc["start"]["mean"] == pytest.approx(start, abs=1e-12)
    assert doc["start"]["ci95"][0] <= start <= doc["start"]["ci95"][1]
    assert start_run.data.tags["archer.preset"] == "start"
    gains = {g["arm"]: g for g in doc["vs_start"]}
    assert sorted(gains) == sorted(ARMS)
    for name, g in gains.items():  # same problems: a seed's gain is its mean minus the start's
        want = {s: arms[name]["per_seed"][s] - start for s in ("0", "1")}
        assert g["per_seed"] == pytest.approx(want, abs=1e-12) and g["vs"] == "start"
        assert g["p"] >= 0.5 and not g["significant"]  # two seeds
    md = (out / "rep.md").read_text()
    index = (out / "index.md").read_text()  # rewritten from every page's JSON
    assert "| [rep](rep.md) | `" in index and "2 x 2" in index
    assert "## Against the starting model" in md
    assert "No arm differs significantly from the starting model" in md
    assert "No difference from archer is significant at the 5% level" in md
    assert "cannot reach p < 0.05" in md or paired["p_min"] == 1.0
    for stem in ("reward", "heldout_accuracy", "entropy", "clipfrac", "kl"):
        png = out / "rep" / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
        assert f"(rep/{stem}.png)" in md
        assert str(png) in printed
    # reference= overrides the study's reference arm
    assert _report("rep", tmp_path / "r2", real_study.uri, "reference=grpo",
                   "figures=false") == 0
    doc2 = json.loads((tmp_path / "r2" / "rep.json").read_text())
    assert doc2["reference_arm"] == "grpo" and doc2["paired"][0]["arm"] == "archer"
    assert doc2["paired"][0]["diff"] == pytest.approx(-paired["diff"])
    assert doc2["paired"][0]["p"] == pytest.approx(paired["p"])
    assert not (tmp_path / "r2" / "rep").exists()  # figures=false


@pytest.mark.slow
def test_unknown_study_is_refused_with_did_you_mean(real_study, tmp_path, capsys):
    assert _report("rpe", tmp_path / "x", real_study.uri) == 2
    err = capsys.readouterr().err
    assert "unknown study 'rpe' (did you mean 'rep'?)" in err and "['rep']" in err
    assert not (tmp_path / "x").exists()
    assert _report("rep", tmp_path / "x", real_study.uri, "reference=archr") == 2
    assert "unknown reference arm 'archr' (did you mean 'archer'?)" in capsys.readouterr().err


def _tracked_study(uri: str, root: Path, n_trials: int, finished: int, status: str) -> None:
    """A study run announcing ``n_trials`` trials of which ``finished`` finished, through the
    project's own writer (StudyTracker)."""
    from archer.tracking.hierarchy import StudyTracker

    cfg = root / "study.yaml"
    cfg.write_text("study: {name: half}\n")
    tracker = StudyTracker("half", root, "study-half", uri)
    parent = tracker.open_study_run(None, {"study": "half", "n_trials": n_trials}, cfg)
    for number in range(finished):
        trial = SimpleNamespace(
            number=number, name=f"t{number:03d}-algo=grpo-seed={number}", hash=f"h{number}",
            out_dir=str(root / f"t{number}"), overrides=("algo=grpo", f"seed={number}"),
            tags={"archer.preset": "grpo", "archer.seed": str(number), "archer.axes": "algo=grpo"})
        Path(trial.out_dir).mkdir(parents=True, exist_ok=True)
        tracker.open_trial_run(trial, None, parent, cfg)
        tracker.loggers[trial.hash].log_metrics({"val/accuracy": 0.5}, 1)
        tracker.finish_trial(trial.hash, "FINISHED")
    tracker.finish_study(status, {})


def test_an_unfinished_study_is_refused(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _tracked_study(uri, tmp_path, n_trials=3, finished=1, status="FAILED")
    assert _report("half", tmp_path / "out", uri) == 2
    err = capsys.readouterr().err
    assert "study half is unfinished: 2 of 3 trials missing (study run FAILED)" in err
    assert "archer ablate half" in err and not (tmp_path / "out").exists()


def test_settings_are_key_value_with_did_you_mean():
    s = _settings(["out_dir=x", "n_boot=50", "figures=false"])
    assert s.out_dir == "x" and s.n_boot == 50 and s.figures is False
    assert s.reference is None and s.tracking_uri is None
    with pytest.raises(ConfigError, match=r"'out_dri' \(did you mean 'out_dir'\?\)"):
        _settings(["out_dri=x"])
    with pytest.raises(ConfigError, match="not key=value"):
        _settings(["rubbish"])
    with pytest.raises(ConfigError, match="n_boot='many' is invalid; allowed: an int"):
        _settings(["n_boot=many"])
    with pytest.raises(ConfigError, match="figures='maybe' must be true or false"):
        _settings(["figures=maybe"])


def test_reference_arm_of_the_study_spec(tmp_path, write_study):
    from experiments.study import load_study

    ok = write_study(tmp_path, "withref", axes={"algo": ARMS}, reference_arm="grpo")
    assert load_study(ok).reference_arm == "grpo"
    assert load_study(write_study(tmp_path, "noref", axes={"algo": ARMS})).reference_arm is None
    bad = write_study(tmp_path, "badref", axes={"algo": ARMS}, reference_arm="grpp")
    with pytest.raises(ConfigError, match=r"reference_arm='grpp' is not an arm of the study "
                                          r"\(did you mean 'grpo'\?\)"):
        load_study(bad)


def test_a_reference_arm_is_named_as_the_study_file_names_it():
    from experiments.report import pick_reference

    arms = ["archer [batch_rho0.7]", "archer [batch_rho0.8]", "archer [response_rho0.8]"]
    assert pick_reference(arms, None, "response_rho0.8") == "archer [response_rho0.8]"
    assert pick_reference(arms, "archer [batch_rho0.7]", "response_rho0.8") == arms[0]
    axes = ["archer [algo.low.kl_weight=0.0]", "archer [algo.low.kl_weight=0.001]"]
    assert pick_reference(axes, None, "0.001") == axes[1]  # an axis value
    assert pick_reference(["grpo", "archer"], None, "grpo") == "grpo"
    assert pick_reference(["dapo", "grpo"], None, None) == "grpo"
    grid = ["archer [a=0.8, b=response]", "archer [a=0.8, b=batch]"]
    with pytest.raises(ConfigError, match=r"reference arm '0.8' is ambiguous"):
        pick_reference(grid, None, "0.8")
    assert pick_reference(grid, None, "batch") == grid[1]
    with pytest.raises(ConfigError, match=r"unknown reference arm 'batch_rho0.9'.*did you "
                       r"mean 'archer \[batch_rho0.8\]'"):
        pick_reference(arms, "batch_rho0.9", None)


def test_each_method_is_compared_with_its_own_first_setting():
    from experiments.report import Trial, paired_within_methods

    def arm(name, values):  # one trial per seed, its metric alone
        return [Trial(run_id=f"{name}{s}", arm=name, seed=str(s), metric=v)
                for s, v in enumerate(values)]

    by_arm = {"archer [max_staleness=0]": arm("a0", [0.5, 0.6, 0.7]),
              "archer [max_staleness=1]": arm("a1", [0.4, 0.5, 0.7]),
              "grpo [max_staleness=0]": arm("g0", [0.3, 0.3, 0.3]),
              "grpo [max_staleness=1]": arm("g1", [0.4, 0.4, 0.5])}
    rows = {r["arm"]: r for r in paired_within_methods(by_arm, n_boot=200)}
    assert sorted(rows) == ["archer [max_staleness=1]", "grpo [max_staleness=1]"]
    assert rows["archer [max_staleness=1]"]["vs"] == "archer [max_staleness=0]"
    assert rows["archer [max_staleness=1]"]["diff"] == pytest.approx((-0.1 - 0.1 + 0) / 3)
    assert rows["grpo [max_staleness=1]"]["per_seed"] == pytest.approx(
        {"0": 0.1, "1": 0.1, "2": 0.2})
    # one method, or one setting per method: nothing to compare within
    assert paired_within_methods({k: v for k, v in by_arm.items() if "grpo" in k}, 200) == []
    assert paired_within_methods({"archer": arm("a", [1]), "grpo": arm("g", [1])}, 200) == []
