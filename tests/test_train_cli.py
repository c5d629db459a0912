"""``archer train``: Hydra composition, strict keys, and real runs through ``archer_cli.main.main``
on a tiny model (hidden 32) with 1-2 steps."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from archer.config import AlgoConfig
from archer.models import build_tiny_model
from archer.rewards import REWARDS, register_reward
from archer.train_config import TrainConfig
from archer_cli.main import main
from experiments.presets import load_preset, preset_names
from experiments.train_cli import build_train_setup, compose_config, group_options

if "test_parity_cli" not in REWARDS:

    @register_reward("test_parity_cli")
    def parity_reward(completions, **columns):
        """1.0 when the sum of character codes is even: mixed groups on a random model."""
        return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=32, layers=2, heads=4)


def print_config(capsys, *overrides) -> dict:
    assert main(["train", "--print-config", *overrides]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_print_config_composes_groups_and_overrides(capsys):
    cfg = print_config(capsys, "algo=dapo", "total_steps=3", "algo.low.kl_weight=0.005",
                       "data.task_config.max_digits=3")
    fields = [f.name for f in dataclasses.fields(TrainConfig)]
    assert list(cfg) == fields + ["progress", "tracking"]  # TrainConfig's order, then the rest
    assert cfg["algo"]["group_filter"] == "refill"  # from the dapo preset
    assert cfg["algo"]["low"]["kl_weight"] == 0.005 and cfg["algo"]["high"]["kl_weight"] == 0.0
    assert cfg["total_steps"] == 3
    assert cfg["out_dir"] == "runs/train/dapo-gym_arith-tiny"
    assert cfg["data"]["task_config"]["max_digits"] == 3
    assert cfg["model"] == "tiny" and cfg["reward"] == "reasoning_gym"
    assert cfg["tracking"]["backend"] == "mlflow" and cfg["tracking"]["uri"] is None


def test_overrides_may_come_before_or_after_the_options(capsys):
    """`archer train algo=dapo --print-config total_steps=3` == all overrides after it."""
    assert main(["train", "algo=dapo", "--print-config", "total_steps=3"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["algo"]["group_filter"] == "refill" and cfg["total_steps"] == 3


def test_every_preset_composes_to_its_algo_config():
    for name in preset_names():
        setup = build_train_setup(compose_config([f"algo={name}", "tracking=none"]))
        assert setup.train.algo == load_preset(name).algo, name


def test_every_group_option_builds():
    for option in group_options("data"):
        setup = build_train_setup(compose_config([f"data={option}"]))
        assert setup.train.data.file or setup.train.data.task, option
    math = build_train_setup(compose_config(["data=math_train"])).train
    assert (math.reward, math.template, math.data.skip_bad_records) == ("math", "boxed_math",
                                                                        True)
    for option in ("jsonl", "none", "mlflow"):
        assert build_train_setup(compose_config([f"tracking={option}"])).tracking["backend"] \
            == option


def test_root_keys_set_train_config_fields_at_their_paths():
    setup = build_train_setup(compose_config([
        "total_steps=7", "lr=0.5", "progress=false", "algo.high.clip_low=0.4",
        "distributed.backend=gloo", "reward=math", "template=boxed_math", "model=smollm2-135m",
        "data.answer_format=' <{answer}>'"]))
    train = setup.train
    assert (train.total_steps, train.lr, setup.progress) == (7, 0.5, False)
    assert train.algo.high.clip_low == 0.4 and train.distributed.backend == "gloo"
    assert (train.reward, train.template, train.model) == ("math", "boxed_math", "smollm2-135m")
    assert train.data.answer_format == " <{answer}>"


def field_paths(cls, prefix: str = "") -> set[str]:
    """The dotted path of every leaf field of the dataclass ``cls`` (a nested config
    dataclass is descended into; a dict-typed field such as data.task_config is a leaf)."""
    out = set()
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out |= field_paths(type(default), f"{prefix}{f.name}.")
        else:
            out.add(prefix + f.name)
    return out


def tree_paths(tree: dict, leaves: set[str], prefix: str = "") -> set[str]:
    """The dotted path of every leaf of a composed tree; a mapping is descended into unless
    the code has a leaf field at its path (data.task_config)."""
    out = set()
    for key, value in tree.items():
        path = prefix + str(key)
        if isinstance(value, dict) and path not in leaves:
            out |= tree_paths(value, leaves, path + ".")
        else:
            out.add(path)
    return out


def test_field_paths_are_what_the_dataclasses_hold():
    paths = field_paths(TrainConfig)
    assert {"total_steps", "algo.high.clip_low", "algo.low.kl_weight", "data.task_config",
            "data.answer_format", "distributed.backend", "model", "reward"} <= paths
    assert "algo" not in paths and "data" not in paths and "algo.high" not in paths


@pytest.mark.parametrize("choice", ["", *[f"algo={p}" for p in preset_names()],
                                    *[f"data={d}" for d in group_options("data")],
                                    *[f"tracking={t}" for t in group_options("tracking")]])
def test_composed_tree_mirrors_train_config(choice):
    """Every leaf key of the composed config (the default, each preset, each data set, each
    tracking backend) is a TrainConfig field at the same dotted path, or a tracking key or
    ``progress``; and every TrainConfig field is in the tree: the YAML cannot drift."""
    from experiments.train_cli import TRACKING_KEYS

    composed = compose_config([choice] if choice else [])
    code = field_paths(TrainConfig)
    tree = tree_paths(composed.config, code)
    backend = composed.config["tracking"]["backend"]
    not_train = {"progress"} | {f"tracking.{k}" for k in TRACKING_KEYS[backend]}
    assert tree - not_train == code, (sorted((tree - not_train) - code),
                                      sorted(code - (tree - not_train)))
    assert not_train <= tree


@pytest.mark.parametrize("data", group_options("data"))
def test_composed_sft_tree_mirrors_sft_config(data):
    from archer.sft import SFTConfig

    code = field_paths(SFTConfig)
    tree = tree_paths(compose_config([f"data={data}"], "sft").config, code)
    assert tree == code, (sorted(tree - code), sorted(code - tree))
    assert "data.answer_format" in tree and "steps" in tree


@pytest.mark.parametrize("old,new", [
    ("trainer.steps=3", "trainer.steps was renamed: use total_steps=3"),
    ("trainer.lr=3e-4", "trainer.lr was renamed: use lr=3e-4"),
    ("+trainer.lr=3e-4", "trainer.lr was renamed: use lr=3e-4"),
    ("~trainer.lr", "trainer.lr was renamed: use ~lr"),
    ("trainer.distributed.backend=gloo",
     "trainer.distributed.backend was renamed: use distributed.backend=gloo"),
    ("trainer.progress=false", "trainer.progress was renamed: use progress=false"),
    ("data.reward=math", "data.reward was renamed: use reward=math"),
    ("data.template=none", "data.template was renamed: use template=none"),
    ("model.path=/some/dir", "model.path was renamed: use model=/some/dir"),
    ("steps=3", "steps was renamed: use total_steps=3"),
    ("trainer=default", "trainer=default: the trainer group is gone"),
])
def test_old_keys_are_refused_with_their_new_names(capsys, old, new):
    assert main(["train", "--print-config", "algo=dapo", old]) == 2
    err = capsys.readouterr().err
    assert new in err and "docs/config-migration.md" in err, err


@pytest.mark.parametrize("override,named", [
    ("total_stpes=3", "'total_stpes' (did you mean 'total_steps'?)"),
    ("+total_stpes=3", "'total_stpes' (did you mean 'total_steps'?)"),
    ("++total_stpes=3", "'total_stpes'"),
    ("distributed.backendd=gloo", "'distributed.backendd' (did you mean 'distributed.backend'?)"),
    ("+distributed.backendd=gloo", "'distributed.backendd' (did you mean "
                                   "'distributed.backend'?)"),
    ("algo.lowx.kl=1", "'algo.lowx.kl' (did you mean 'algo.low'?)"),
    ("+algo.lowx.kl=1", "'algo.lowx' (did you mean 'algo.low'?)"),
    ("+algo.low.kl_weigth=1", "'algo.low.kl_weigth' (did you mean 'algo.low.kl_weight'?)"),
    ("+foo=1", "unknown key(s) in the top level of `archer train`: 'foo'"),
    ("tracking.urii=x", "'tracking.urii' (did you mean 'tracking.uri'?)"),
    ("+data.task_config.min_termz=2", "min_termz"),
    ("algo=ppo", "algo/ppo"),
    ("total_steps=0", "total_steps=0 is invalid; allowed: an int in [1, inf]"),
    ("lr_schedule=cosin", "lr_schedule='cosin' is invalid (did you mean 'cosine'?)"),
    ("template=boxed", "template='boxed' is invalid"),
    ("progress=maybe", "progress='maybe' must be true, false or null"),
    ("algo.entropy_quantile=1.5", "entropy_quantile=1.5"),
    ("data.task=chain_summ", "'chain_summ'"),
    ("data=math_train data.file=math_trian", "'math_trian'"),
    ("data.task=null data.file=no/such/file.jsonl", "no such file"),
    ("reward=./no_such_reward.py:fn", "no_such_reward.py does not exist"),
    ("reward=mathh", "reward='mathh' is unknown (did you mean 'math'?)"),
    ("model=/no/such/model/dir", "/no/such/model/dir"),
    ("model=~/a,b", "needs Hydra's quotes"),
    ("model='~/no_such,dir'", "model='~/no_such,dir' is neither a directory nor a model name"),
    ("model=tinyy", "model='tinyy' is neither a directory nor a model name (did you mean "
                    "'tiny'?)"),
    ("model=local", "model=<dir>"),
    # a typo at the top level: the real groups and the closest one
    ("modle=tiny", "'modle' (did you mean 'model'?); the top level of `archer train` has: "
                   "algo=<"),
    ("alg=grpo", "'alg' (did you mean 'algo'?)"),
    ("alg=grpo", "tracking=<jsonl|mlflow|none>"),
    ("modle=x", "model=<smollm2-135m|tiny|<directory>>"),
    ("+modle=tiny", "'modle' (did you mean 'model'?)"),
    # bools are bools: "no" is not coerced (it would be truthy)
    ("resume=maybe", "resume='maybe' must be true or false"),
    ("export_final=no", "export_final='no' must be true or false"),
    ("data.skip_bad_records=no", "data.skip_bad_records='no' must be true or false"),
    ("distributed.reshard_after_forward=1",
     "distributed.reshard_after_forward=1 must be true or false"),
    ("group_size=1", "group_size=1 is invalid with algo.group_filter='drop': "
                             "group-relative advantages need at least 2 samples per prompt"),
    ("algo=dapo group_size=1", "algo.group_filter='refill'"),
    ("tracking.request_timeout=-1", "tracking.request_timeout=-1 is invalid"),
    ("tracking.request_timeout=0", "tracking.request_timeout=0 is invalid"),
    ("tracking.finish_wait=-2", "tracking.finish_wait=-2 is invalid"),
    ("tracking.uri=htp://127.0.0.1:9", "tracking.uri='htp://127.0.0.1:9' has URI scheme 'htp'"),
    ("tracking.uri=http:///x", "names no host"),
    ("tracking.experiment=''", "tracking.experiment=''"),
    ("model=/etc", "model='/etc': model directory '/etc' is not a Hugging Face model: it "
                   "lacks config.json"),
])
def test_bad_keys_and_values_fail_naming_them(capsys, override, named):
    assert main(["train", "--print-config", *override.split()]) == 2
    err = capsys.readouterr().err
    assert err.startswith("archer: error:")
    assert "Traceback" not in err
    assert named in err, err


def test_group_size_one_composes_without_a_group_filter(capsys):
    cfg = print_config(capsys, "group_size=1", "algo.group_filter=none")
    assert cfg["group_size"] == 1


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "https://mlflow.example.com",
                                 "sqlite:///runs/mlflow.db", "file:///tmp/mlruns",
                                 "postgresql+psycopg2://u@host/db", "databricks", "runs/mlruns"])
def test_tracking_uris_mlflow_opens_are_accepted(uri):
    setup = build_train_setup(compose_config([f"tracking.uri='{uri}'"]))
    assert setup.tracking["uri"] == uri


def test_bad_mlflow_tracking_uri_from_the_environment_is_named(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "htp://127.0.0.1:9")
    assert main(["train", "--print-config"]) == 2
    assert "MLFLOW_TRACKING_URI (used as tracking.uri is null)='htp://127.0.0.1:9' has URI " \
        "scheme 'htp'" in capsys.readouterr().err
    assert main(["train", "--print-config", "tracking=jsonl"]) == 0  # not used: no check


def test_out_dir_that_is_a_file_fails_before_loading(tmp_path, capsys):
    existing = tmp_path / "a_file"
    existing.write_text("x")
    assert main(["train", "model=tiny", "tracking=none", "total_steps=1",
                 f"out_dir={existing}"]) == 2
    err = capsys.readouterr().err
    assert f"archer: error: out_dir='{existing}' is an existing file, not a directory" in err, err
    assert "Traceback" not in err


def small_run(tiny_path, out_dir, *extra) -> list[str]:
    return [
        "train", f"model={tiny_path}", "algo=grpo", "data.size=40", "prompts_per_step=2",
        "group_size=4", "mini_batch_prompts=2", "micro_batch_size=8",
        "max_new_tokens=4", "val_every=1", "val_size=4",
        "num_threads=1", "export_final=false", f"out_dir={out_dir}",
        *extra,
    ]


def test_train_jsonl_writes_config_and_metrics(tiny_path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(small_run(tiny_path, out, "total_steps=1", "tracking=jsonl",
                          "progress=true", "reward=test_parity_cli")) == 0
    captured = capsys.readouterr()
    assert "archer train: 1 steps" in captured.out
    bar = captured.err.split("train: 100%")[-1]  # the tqdm bar's final state
    assert "1/1" in bar and "reward=" in bar and "entropy=" in bar and "val=" in bar
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] and "val/reward_mean" in rows[0]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"] == str(tiny_path) and saved["total_steps"] == 1
    assert AlgoConfig.from_dict(saved["algo"]) == load_preset("grpo").algo
    params = json.loads((out / "params.json").read_text())
    assert params["total_steps"] == 1 and params["algo.low.clip_high"] == 0.28
    assert not (tmp_path / "runs").exists()  # nothing written outside the given out_dir


def test_train_mlflow_resume_continues_one_run(tiny_path, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "run"
    tracking = [f"tracking.uri='{uri}'", "tracking.experiment=cli-test", "progress=false"]
    assert main(small_run(tiny_path, out, "total_steps=1", *tracking)) == 0
    assert main(small_run(tiny_path, out, "total_steps=2", *tracking)) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cli-test").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "reward/mean"))
    assert steps == [1, 2]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.tags["archer.algo"] == "grpo" and run.data.tags["archer.model"] == str(
        tiny_path)
    assert "total_steps=1" in run.data.tags["archer.overrides"]
    assert "total_steps=2" in run.data.tags["archer.resumed_overrides"]
    assert run.data.params["algo.advantage"] == "grpo"
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "dl"))
    assert yaml.safe_load(open(config))["total_steps"] == 2  # the latest invocation


USER_REWARD = """
def quarter(completions, answer, tier, **columns):
    # the columns line up with the completions: 'tier' is "easy" exactly for the records
    # with an even answer, None for the others (which have no 'tier')
    assert len(answer) == len(tier) == len(completions)
    assert all(isinstance(a, str) for a in answer)
    assert all(t == ("easy" if int(a) % 2 == 0 else None) for a, t in zip(answer, tier))
    return [0.25] * len(completions)
"""


def test_train_on_the_users_own_file_and_reward(tiny_path, tmp_path, monkeypatch, capsys):
    """``data.file=<path>.jsonl`` and ``reward=<file>.py:fn``: a relative path from the
    working directory, records with extra fields (some without), the function gets them as
    columns and its rewards are what the step logs."""
    monkeypatch.chdir(tmp_path)
    lines = [json.dumps({"prompt": f"{i}+1=", "answer": i + 1, **({"tier": "easy"} if i % 2
                                                                   else {})})
             for i in range(24)]
    (tmp_path / "problems.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "my_reward.py").write_text(USER_REWARD)
    out = tmp_path / "run"
    assert main(small_run(tiny_path, out, "total_steps=2", "tracking=jsonl",
                          "data.task=null", "data.file=problems.jsonl", "algo.group_filter=none",
                          "reward=my_reward.py:quarter", "prompts_per_step=4")) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["reward/mean"] == 0.25 and r["val/reward_mean"] == 0.25 for r in rows)
    assert "archer train: 2 steps" in capsys.readouterr().out


SIGNAL_AT_CALL = {"n": 0, "at": 0}

if "test_sigint_cli" not in REWARDS:

    @register_reward("test_sigint_cli")
    def sigint_reward(completions, **columns):
        """The parity reward that sends this process SIGINT on its ``at``-th call: Ctrl-C in
        the middle of a step (the reward runs between the rollout and the update)."""
        import os
        import signal

        SIGNAL_AT_CALL["n"] += 1
        if SIGNAL_AT_CALL["n"] == SIGNAL_AT_CALL["at"]:
            os.kill(os.getpid(), signal.SIGINT)
        return [float(sum(map(ord, c)) % 2 == 0) for c in completions]


def test_ctrl_c_checkpoints_the_step_and_the_same_command_resumes(tiny_path, tmp_path,
                                                                    monkeypatch, capsys):
    """Ctrl-C inside step 2 of 3 (checkpoints only at the end): exit 130, the step finished
    and checkpointed, a message saying how to resume; the same command then does steps 3
    only. A later start that is refused (other settings) leaves config.yaml as it was."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    SIGNAL_AT_CALL.update(n=0, at=2)  # validation off: call k is step k's reward
    command = small_run(tiny_path, out, "total_steps=3", "tracking=jsonl",
                        "val_every=0", "reward=test_sigint_cli")
    assert main(command) == 130
    err = capsys.readouterr().err
    assert "SIGINT received: finishing the step under way" in err
    assert "stopped after step 2, checkpointed in" in err and "again to resume" in err
    assert json.loads((out / "run.json").read_text())["status"] == "KILLED"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000002"]
    assert main(command) == 0
    assert "archer train: 3 steps" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    saved = (out / "config.yaml").read_text()
    assert main([*command, "lr=0.5", "total_steps=4"]) == 2
    assert "was saved by a run with other settings: lr: " in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == saved
