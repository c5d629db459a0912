"""MLflow logger: key sanitising, params/metrics/artifacts in a SQLite store, resume into the
same run through ``fit``, and offline buffering against a real ``mlflow server`` that starts
only after some steps were logged."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from archer.models import build_tiny_model
from archer.rewards import REWARDS, register_reward
from archer.tracking import (
    MlflowLogger,
    check_tracking_config,
    make_logger,
    sanitize_key,
    sync_run_dir,
)
from archer.tracking.mlflow import BUFFER_NAME, OFFLINE_PREFIX
from archer.tracking.store import check_tracking_uri, sqlite_artifact_root
from archer.train_config import TrainConfig
from archer.trainer import fit
from experiments.presets import load_preset

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

if "test_parity_mlflow" not in REWARDS:

    @register_reward("test_parity_mlflow")
    def parity_reward(completions, **columns):
        return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite tracking store per module (creating one runs MLflow's migrations, ~5 s)."""
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root / 'mlflow.db'}"


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key),
                                               key=lambda m: m.step)]


@pytest.mark.parametrize("key,expected", [
    ("actor/entropy", "actor/entropy"),
    ("reward/mean", "reward/mean"),
    ("a b:c-d.e_f", "a b:c-d.e_f"),
    ("acc@k=1", "acc_k_1"),
    ("//a//b/", "a/b"),
    ("./a/./b", "a/b"),
    ("../a/..", "_/a/_"),
    ("", "_"),
    ("é", "_"),
])
def test_sanitize_key(key, expected):
    assert sanitize_key(key) == expected


def test_sanitize_key_truncates_to_mlflow_limit():
    assert sanitize_key("x" * 300) == "x" * 250


def test_default_store_is_local_sqlite_under_runs(monkeypatch):
    from archer.tracking import resolve_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == "sqlite:///runs/mlflow.db"
    assert sqlite_artifact_root("sqlite:///runs/mlflow.db") == Path("runs/mlartifacts").resolve()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_tracking_uri() == "http://tracking:5000"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_logs_params_metrics_artifact_and_resumes_same_run(store, tmp_path):
    run_dir = tmp_path / "run"
    logger = MlflowLogger(run_dir, tracking_uri=store, experiment="unit", run_name="r1")
    run_id = logger.run_id
    assert not run_id.startswith(OFFLINE_PREFIX)
    logger.log_params({"algo.low.kl_weight": 0.001, "note": "x" * 7000, "bad key!": 1})
    (tmp_path / "config.yaml").write_text("trainer:\n  steps: 2\n")
    logger.log_artifact(tmp_path / "config.yaml")
    logger.log_metrics({"actor/entropy": 0.5, "reward/mean": 0.25, "text": "skip"}, step=1)
    logger.log_metrics({"actor/entropy": 0.75, "val/x": float("nan")}, step=2)
    logger.finish()

    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert run.data.params["algo.low.kl_weight"] == "0.001"
    assert run.data.params["bad key_"] == "1"
    assert len(run.data.params["note"]) == 6000  # truncated to MLflow's limit
    assert history(client, run_id, "actor/entropy") == [(1, 0.5), (2, 0.75)]
    assert "text" not in run.data.metrics and math.isnan(run.data.metrics["val/x"])
    assert [f.path for f in client.list_artifacts(run_id)] == ["config.yaml"]
    local = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path / "dl")))
    assert local.read_text() == "trainer:\n  steps: 2\n"
    assert not (run_dir / BUFFER_NAME).exists()

    again = MlflowLogger(run_dir, run_id, tracking_uri=store, experiment="unit")
    assert again.run_id == run_id
    assert client.get_run(run_id).info.status == "RUNNING"
    again.log_metrics({"actor/entropy": 1.0}, step=3)
    again.finish("FAILED")
    assert history(client, run_id, "actor/entropy") == [(1, 0.5), (2, 0.75), (3, 1.0)]
    assert client.get_run(run_id).info.status == "FAILED"


def test_resuming_a_run_missing_from_the_store_names_it(store, tmp_path):
    with pytest.raises(ValueError, match="0123456789abcdef.*does not exist"):
        MlflowLogger(tmp_path, "0123456789abcdef0123456789abcdef", tracking_uri=store)


MLFLOW_SECTION = {"backend": "mlflow", "uri": None, "experiment": "archer", "run_name": None,
                  "request_timeout": 5.0, "finish_wait": 10.0}


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "https://host/mlflow",
                                 "sqlite:///runs/mlflow.db", "file:///tmp/mlruns",
                                 "postgresql://u:p@h:5432/db", "mysql+pymysql://u@h/db",
                                 "databricks", "runs/mlruns", "/abs/mlruns"])
def test_tracking_uris_mlflow_accepts_pass(uri, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    check_tracking_uri(uri)
    check_tracking_config(MLFLOW_SECTION | {"uri": uri})


@pytest.mark.parametrize("change,message", [
    ({"uri": "htp://127.0.0.1:9"}, "tracking.uri='htp://127.0.0.1:9' has URI scheme 'htp', "
                                   "which MLflow does not accept; allowed schemes: ["),
    ({"uri": "http://"}, "tracking.uri='http://' names no host"),
    ({"uri": ""}, "tracking.uri='' is invalid"),
    ({"request_timeout": -1}, "tracking.request_timeout=-1 is invalid; allowed: a number > 0"),
    ({"request_timeout": 0}, "tracking.request_timeout=0 is invalid"),
    ({"request_timeout": "5s"}, "tracking.request_timeout='5s' is invalid"),
    ({"finish_wait": -0.5}, "tracking.finish_wait=-0.5 is invalid; allowed: a number >= 0"),
    ({"experiment": ""}, "tracking.experiment='' is invalid"),
    ({"run_name": 3}, "tracking.run_name=3 is invalid"),
])
def test_bad_tracking_config_names_the_key(change, message, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError) as err:
        check_tracking_config(MLFLOW_SECTION | change)
    assert message in str(err.value)


def test_tracking_config_checks_the_environment_uri_only_when_it_is_used(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "mlfow://x")
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI .*'mlfow://x' has URI scheme"):
        check_tracking_config(MLFLOW_SECTION)
    check_tracking_config(MLFLOW_SECTION | {"uri": "sqlite:///x.db"})  # given: env unused
    check_tracking_config({"backend": "jsonl"})


def test_make_logger_backends(tmp_path):
    from archer.tracking import JsonlLogger, NullLogger

    assert isinstance(make_logger("jsonl", tmp_path, None), JsonlLogger)
    assert isinstance(make_logger("none", tmp_path, None), NullLogger)
    with pytest.raises(ValueError, match="unknown tracking backend 'wandb'"):
        make_logger("wandb", tmp_path, None)


def test_a_metric_named_with_at_is_read_back_by_the_name_it_was_logged_as(store, tmp_path):
    """``val/pass@4`` is stored as ``val/pass_4`` (MLflow refuses ``@``), where a lookup by
    the raw name finds nothing; the readers sanitise the name as the logger did. A step logged
    twice (a resumed run redid it) reads as its latest value."""
    from archer.tracking.hierarchy import StudyTracker
    from archer.tracking.reader import metric_history

    logger = MlflowLogger(tmp_path / "run", None, tracking_uri=store, experiment="at-sign")
    logger.log_metrics({"val/pass@4": 0.5}, step=1, timestamp_ms=1_000)
    logger.log_metrics({"val/pass@4": 0.25}, step=2, timestamp_ms=2_000)
    logger.log_metrics({"val/pass@4": 0.75}, step=2, timestamp_ms=3_000)  # step 2 redone
    logger.finish()
    client = MlflowClient(tracking_uri=store)
    assert client.get_metric_history(logger.run_id, "val/pass@4") == []
    stored = client.get_metric_history(logger.run_id, "val/pass_4")
    assert sorted((m.step, m.timestamp, m.value) for m in stored) == [
        (1, 1_000, 0.5), (2, 2_000, 0.25), (2, 3_000, 0.75)]
    assert metric_history(client, logger.run_id, "val/pass@4") == {1: 0.5, 2: 0.75}
    tracker = StudyTracker("at-sign", tmp_path / "study", "at-sign", store)
    assert tracker.metric_history(logger.run_id, "val/pass@4") == [(1, 0.5), (2, 0.75)]
    assert tracker.metric_history(logger.run_id, "val/pass_4") == [(1, 0.5), (2, 0.75)]
    assert tracker.metric_history(logger.run_id, "val/pass@8") == []


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=32, layers=2, heads=4)


def test_fit_resume_continues_the_same_mlflow_run(store, tiny_path, tmp_path):
    """2 steps, then fit again with total_steps=4: one run, steps 1..4 exactly once."""
    experiment = "resume-test"

    def cfg(steps):
        return TrainConfig(
            model=str(tiny_path), algo=load_preset("grpo").algo, reward="test_parity_mlflow",
            data={"task": "chain_sum", "size": 24, "seed": 0}, prompts_per_step=2,
            group_size=4, max_new_tokens=4, mini_batch_prompts=2, micro_batch_size=8,
            total_steps=steps, val_size=4, out_dir=str(tmp_path / "run"), num_threads=1,
            export_final=False)

    def factory(run_id):
        return MlflowLogger(tmp_path / "run", run_id, tracking_uri=store, experiment=experiment)

    first = fit(cfg(2), logger=factory, progress=False)
    second = fit(cfg(4), logger=factory, progress=False)
    assert first.state.run_id == second.state.run_id
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [first.state.run_id]
    steps = [s for s, _ in history(client, first.state.run_id, "reward/mean")]
    assert steps == [1, 2, 3, 4]
    assert runs[0].data.params["total_steps"] == "2"  # params are logged once, at the start
    assert runs[0].info.status == "FINISHED"
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("step_000004"))
                       .joinpath("state.json").read_text())
    assert state["run_id"] == first.state.run_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} not healthy after {timeout} s")


@pytest.mark.slow
def test_offline_buffer_uploads_when_the_server_comes_up(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    run_dir = tmp_path / "run"
    logger = MlflowLogger(run_dir, tracking_uri=url, experiment="offline", retry_initial=0.0,
                          request_timeout=2.0, finish_wait=0.0)
    assert logger.run_id.startswith(OFFLINE_PREFIX)  # no server yet: placeholder id
    local_id = logger.run_id
    (tmp_path / "config.yaml").write_text("a: 1\n")
    start = time.monotonic()
    logger.log_params({"lr": 0.001})
    logger.log_artifact(tmp_path / "config.yaml")
    logger.log_metrics({"reward/mean": 0.1, "actor/entropy": 2.0}, step=1)
    logger.log_metrics({"reward/mean": 0.2, "actor/entropy": 1.5}, step=2)
    assert time.monotonic() - start < 10  # each failed attempt is one quick request
    ops = [json.loads(line)["op"] for line in (run_dir / BUFFER_NAME).read_text().splitlines()]
    assert ops == ["create", "params", "artifact", "metrics", "metrics"]

    db = tmp_path / "server.db"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
         "--artifacts-destination", str(tmp_path / "server_artifacts"), "--host",
         "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        wait_healthy(url, proc)
        logger.log_metrics({"reward/mean": 0.3, "actor/entropy": 1.0}, step=3)  # replays
        assert not (run_dir / BUFFER_NAME).exists()
        run_id = logger.run_id
        assert not run_id.startswith(OFFLINE_PREFIX)
        state = json.loads((run_dir / "mlflow_run.json").read_text())
        assert state["local_id"] == local_id and state["run_id"] == run_id
        logger.finish()

        http = MlflowClient(url)
        assert http.get_run(run_id).data.params == {"lr": "0.001"}
        assert [f.path for f in http.list_artifacts(run_id)] == ["config.yaml"]
        # the server's own store holds the buffered steps
        direct = MlflowClient(f"sqlite:///{db}")
        assert history(direct, run_id, "reward/mean") == [(1, 0.1), (2, 0.2), (3, 0.3)]
        assert history(direct, run_id, "actor/entropy") == [(1, 2.0), (2, 1.5), (3, 1.0)]
        assert direct.get_run(run_id).info.status == "FINISHED"
        assert sync_run_dir(run_dir)  # nothing left to upload
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_unreachable_server_leaves_a_buffer_that_a_resume_keeps(tmp_path):
    """Down for the whole run: training-side calls return, the buffer keeps everything in
    order, and a resumed logger on the same placeholder id appends behind it."""
    url = f"http://127.0.0.1:{free_port()}"
    logger = MlflowLogger(tmp_path, tracking_uri=url, retry_initial=0.0, request_timeout=1.0,
                          finish_wait=0.0)
    logger.log_metrics({"a": 1.0}, step=1)
    logger.finish()
    resumed = MlflowLogger(tmp_path, logger.run_id, tracking_uri=url, retry_initial=0.0,
                           request_timeout=1.0, finish_wait=0.0)
    assert resumed.run_id == logger.run_id
    resumed.log_metrics({"a": 2.0}, step=2)
    rows = [json.loads(line) for line in (tmp_path / BUFFER_NAME).read_text().splitlines()]
    assert [r["op"] for r in rows] == ["create", "metrics", "terminate", "status", "metrics"]
    assert [r["step"] for r in rows if r["op"] == "metrics"] == [1, 2]
    assert not sync_run_dir(tmp_path)
    with pytest.raises(ValueError, match="offline-nope"):
        MlflowLogger(tmp_path, "offline-nope", tracking_uri=url)


def test_mlflow_resume_relogs_a_checkpointed_step_that_never_reached_mlflow(store, tiny_path,
                                                                           tmp_path):
    """The process dies after checkpointing step 2 but before logging it: the resumed run
    logs step 2 from the checkpoint; MLflow ends with steps 1..3 exactly once."""
    experiment = "rewind-test"

    class Crash(BaseException):
        pass

    class Dying(MlflowLogger):
        def log_metrics(self, metrics, step):
            if step == 2:
                raise Crash
            super().log_metrics(metrics, step)

    cfg = TrainConfig(
        model=str(tiny_path), algo=load_preset("grpo").algo, reward="test_parity_mlflow",
        data={"task": "chain_sum", "size": 24, "seed": 0}, prompts_per_step=2, group_size=4,
        max_new_tokens=4, mini_batch_prompts=2, micro_batch_size=8, total_steps=3,
        ckpt_every=1, val_size=4, out_dir=str(tmp_path / "run"), num_threads=1,
        export_final=False)
    with pytest.raises(Crash):
        fit(cfg, logger=lambda rid: Dying(tmp_path / "run", rid, tracking_uri=store,
                                          experiment=experiment), progress=False)
    result = fit(cfg, logger=lambda rid: MlflowLogger(tmp_path / "run", rid, tracking_uri=store,
                                                      experiment=experiment), progress=False)
    client = MlflowClient(store)
    assert [s for s, _ in history(client, result.state.run_id, "time/step")] == [1, 2, 3]
    run = client.get_run(result.state.run_id)
    assert "archer.rewound_to_step" not in run.data.tags
    # what the run trained on, for the leaderboard's device-hours: one CPU process
    assert run.data.tags["archer.num_devices"] == "1"
    assert run.data.tags["archer.device_kind"] == "cpu"
