"""The shared warm start (experiments.warm_start): content hash, cache, lock, corruption."""

from __future__ import annotations

import multiprocessing
from dataclasses import replace
from pathlib import Path

import pytest

from archer.validation import ConfigError
from experiments import warm_start as ws

SETTINGS = ws.WarmStartSettings(steps=4, target=None, batch_size=8, eval_every=2)


def train_dict(**overrides) -> dict:
    from archer.train_config import DataConfig, TrainConfig

    base = dict(model="tiny", val_size=8, max_new_tokens=4, num_threads=1, seed=0,
                data=DataConfig(task="chain_sum", size=120,
                                task_config={"min_terms": 2, "max_terms": 2,
                                             "min_digits": 1, "max_digits": 1}))
    return TrainConfig(**(base | overrides)).to_dict()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ARCHER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "warm_starts"


def key_hash(train: dict, settings=SETTINGS) -> str:
    return ws.warm_start_hash(ws.warm_start_key(train, settings))


def test_hash_ignores_the_trial_seed_and_follows_data_and_settings(cache):
    base = key_hash(train_dict())
    assert key_hash(train_dict()) == base  # stable
    assert key_hash(train_dict(seed=7, out_dir="runs/elsewhere", lr=1e-3)) == base
    assert key_hash(train_dict(data={"task": "chain_sum", "size": 121,
                                     "task_config": {"min_terms": 2, "max_terms": 2,
                                                     "min_digits": 1, "max_digits": 1}})) != base
    assert key_hash(train_dict(val_size=9)) != base
    assert key_hash(train_dict(max_new_tokens=5)) != base
    assert key_hash(train_dict(template="none")) != base
    assert key_hash(train_dict(), replace(SETTINGS, seed=1)) != base
    assert key_hash(train_dict(), replace(SETTINGS, steps=5)) != base
    assert key_hash(train_dict(), replace(SETTINGS, lr=1e-3)) != base
    assert len(base) == 64 and int(base, 16) >= 0


def test_a_model_directory_is_identified_by_its_files(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "config.json").write_text("{}")
    b = tmp_path / "b"
    b.mkdir()
    (b / "config.json").write_text("{}")
    assert ws.base_model_identity(str(a)) == ws.base_model_identity(str(b))
    (b / "config.json").write_text('{"x": 1}')
    assert ws.base_model_identity(str(a)) != ws.base_model_identity(str(b))
    assert ws.base_model_identity("tiny") == {"name": "tiny"}
    with pytest.raises(ConfigError, match="nope"):
        ws.base_model_identity("nope")


def test_settings_from_a_recipe_spec():
    assert ws.WarmStartSettings.from_spec(None) is None
    assert ws.WarmStartSettings.from_spec(False) is None
    assert ws.WarmStartSettings.from_spec({"steps": 7, "seed": 2}) == ws.WarmStartSettings(
        steps=7, seed=2)
    with pytest.raises(ConfigError, match="'stpes'.*did you mean 'steps'"):
        ws.WarmStartSettings.from_spec({"stpes": 7})
    with pytest.raises(ConfigError, match="warm_start.target"):
        ws.WarmStartSettings.from_spec({"target": 1.5})
    with pytest.raises(ConfigError, match="mapping"):
        ws.WarmStartSettings.from_spec("yes")


def test_build_then_reuse_then_rebuild_a_corrupt_entry(cache):
    train = train_dict()
    assert not ws.locate(train, SETTINGS).present
    logs: list[str] = []
    built = ws.prepare_warm_start(train, SETTINGS, log=logs.append)
    assert built.present and built.dir == cache / built.hash[:16]
    assert built.sft_steps == 4 and 0.0 <= built.heldout_accuracy <= 1.0
    assert (built.model_dir / "config.json").is_file()
    assert any("building the warm start" in line for line in logs)
    logs.clear()
    again = ws.prepare_warm_start(train, SETTINGS, log=logs.append)
    assert again == built and logs and logs[0].startswith("reusing the warm start")
    weights = next(built.model_dir.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert not ws.locate(train, SETTINGS).present  # detected by its hash, never used
    logs.clear()
    rebuilt = ws.prepare_warm_start(train, SETTINGS, log=logs.append)
    assert any("corrupt" in line for line in logs), logs
    assert rebuilt.present and ws.read_manifest(rebuilt.dir) is not None
    (rebuilt.dir / ws.MANIFEST).unlink()  # a missing manifest: corrupt too
    assert not ws.locate(train, SETTINGS).present


def test_a_build_cut_short_by_its_time_budget_says_so_when_built_and_reused(cache):
    train = train_dict()
    budget = replace(SETTINGS, max_seconds=1e-9)  # spent before the first step
    logs: list[str] = []
    built = ws.prepare_warm_start(train, budget, log=logs.append)
    assert built.present and built.sft_steps == 0 and built.cut_short
    warning = next(line for line in logs if line.startswith("WARNING"))
    assert "stopped on its time budget (max_seconds=1e-09) after 0 of 4 steps" in warning
    assert f"delete {built.dir} to build it again" in warning
    logs.clear()
    again = ws.prepare_warm_start(train, budget, log=logs.append)
    assert again == built and logs[0].startswith("reusing") and logs[1].startswith("WARNING")
    # a build that finished its steps (or met its target) within the budget is not cut short
    full = ws.prepare_warm_start(train, SETTINGS, log=lambda _: None)
    assert full.sft_steps == 4 and not full.cut_short


def test_an_interrupted_build_is_cleaned_and_rebuilt(cache):
    train = train_dict()
    target = ws.locate(train, SETTINGS)
    stale = cache / f".{target.dir.name}.tmp-4242"
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "model.safetensors").write_bytes(b"half a file")
    logs: list[str] = []
    built = ws.prepare_warm_start(train, SETTINGS, log=logs.append)
    assert not stale.exists() and built.present
    assert any("interrupted" in line for line in logs)
    assert list(cache.glob(".*tmp-*")) == []


def test_a_signal_during_the_build_publishes_nothing(cache, monkeypatch):
    import archer.sft as sft

    real = sft.supervised_finetune

    def stopped(cfg, log=print):
        result = real(cfg, log=log)
        return replace(result, stopped="SIGINT")

    monkeypatch.setattr(sft, "supervised_finetune", stopped)
    train = train_dict()
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        ws.prepare_warm_start(train, SETTINGS, log=lambda _: None)
    target = ws.locate(train, SETTINGS)
    assert not target.present and not target.dir.exists()
    assert list(cache.glob(".*tmp-*")) == []


def _race(cache_dir: str, queue) -> None:
    import os

    os.environ["ARCHER_CACHE_DIR"] = cache_dir
    logs: list[str] = []
    result = ws.prepare_warm_start(train_dict(), SETTINGS, log=logs.append)
    queue.put((result.hash, logs))


def test_two_processes_racing_build_it_once(cache):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(cache.parent), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    hashes = {h for h, _ in results}
    assert len(hashes) == 1
    builds = [line for _, logs in results for line in logs if "building the warm start" in line]
    assert len(builds) == 1, results
    assert ws.locate(train_dict(), SETTINGS).present


def test_the_study_parent_run_records_hash_and_accuracy(tmp_path):
    from mlflow.tracking import MlflowClient

    from archer.tracking.hierarchy import StudyTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = StudyTracker("s", tmp_path / "s", "study-s", uri)
    config = tmp_path / "study.yaml"
    config.write_text("name: s\n")
    run_id = tracker.open_study_run(None, {"study": "s"}, config)
    tracker.log_warm_start("ab" * 32, 0.25, "/cache/warm_starts/abab/model")
    tracker.finish_study("FINISHED", {})
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.tags["warm_start/hash"] == "ab" * 32
    assert run.data.tags["warm_start/path"] == "/cache/warm_starts/abab/model"
    assert run.data.metrics["warm_start/heldout_accuracy"] == 0.25
