"""The sweep's pruner reads its metric's history from MLflow, where keys are stored sanitised
(``val/pass@4`` as ``val/pass_4``): a metric named with ``@`` still reaches Optuna, and a
trial worse than the finished one is pruned. Real Optuna and MLflow SQLite stores, no Ray."""

from __future__ import annotations

import dataclasses
import time

import optuna
import pytest

from archer.tracking.hierarchy import StudyTracker
from experiments.scheduler import TrialState
from experiments.sweep import SweepSource, load_sweep, make_pruner

optuna.logging.set_verbosity(optuna.logging.WARNING)

METRIC = "val/pass@4"  # MLflow stores it as val/pass_4


@pytest.fixture
def sweep(tmp_path, tiny_model, tiny_overrides):
    spec = dataclasses.replace(
        load_sweep("archer_clip_kl", ["sampler=random"]),
        objective={"metric": METRIC, "direction": "maximize"},
        pruner={"type": "median", "min_steps": 1, "metric": METRIC, "startup_trials": 1,
                "percentile": 50.0})
    study = optuna.create_study(study_name=spec.name, direction="maximize",
                                storage=f"sqlite:///{tmp_path}/optuna.db",
                                pruner=make_pruner(spec))
    source = SweepSource(spec, study, tiny_overrides(tiny_model), tmp_path / "s", 2)
    source.start(None)
    tracker = StudyTracker(spec.name, tmp_path / "s", f"sweep-{spec.name}",
                           f"sqlite:///{tmp_path}/mlflow.db")
    config = tmp_path / "sweep.yaml"
    config.write_text(f"name: {spec.name}\n")
    parent = tracker.open_study_run(None, {"study": spec.name}, config)
    return source, study, tracker, parent, config


def _train(tracker, trial, parent, config, values: list[float]) -> TrialState:
    """The trial's run with ``METRIC`` = ``values[i]`` at step ``i + 1``, replayed as the
    driver replays a trial's events."""
    run_id = tracker.open_trial_run(trial, None, parent, config)
    uploaded: set[int] = set()
    for step, value in enumerate(values, start=1):
        tracker.apply(trial.hash, {"op": "metrics", "step": step, "time": time.time(),
                                   "values": {METRIC: value, "time/step": 0.1}}, uploaded)
    return TrialState(number=trial.number, name=trial.name, hash=trial.hash,
                      out_dir=trial.out_dir, total_steps=len(values), status="running",
                      run_id=run_id, step=len(values), metrics={METRIC: values[-1]})


def test_a_pruner_over_a_metric_named_with_at_prunes_the_worse_trial(sweep):
    source, study, tracker, parent, config = sweep
    good = source.next_trial()
    state = _train(tracker, good, parent, config, [0.6, 0.7, 0.8])
    assert not source.on_update(good, state, tracker)  # the first trial: never pruned
    assert study.trials[0].intermediate_values == {1: 0.6, 2: 0.7, 3: 0.8}  # history found
    state.status = "finished"
    source.on_done(good, state, tracker)
    source.on_saved(good, state)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert study.trials[0].value == 0.8

    bad = source.next_trial()
    state = _train(tracker, bad, parent, config, [0.1, 0.2])
    assert source.on_update(bad, state, tracker)  # below the median of the finished trial
    assert study.trials[1].intermediate_values == {1: 0.1, 2: 0.2}
    state.status = "pruned"
    source.on_done(bad, state, tracker)
    source.on_saved(bad, state)
    assert study.trials[1].state == optuna.trial.TrialState.PRUNED


def test_a_trial_at_least_as_good_as_the_median_is_not_pruned(sweep):
    source, study, tracker, parent, config = sweep
    good = source.next_trial()
    state = _train(tracker, good, parent, config, [0.5, 0.5])
    source.on_update(good, state, tracker)
    state.status = "finished"
    source.on_done(good, state, tracker)
    source.on_saved(good, state)
    better = source.next_trial()
    state = _train(tracker, better, parent, config, [0.6, 0.9])
    assert not source.on_update(better, state, tracker)
    assert study.trials[1].intermediate_values == {1: 0.6, 2: 0.9}
