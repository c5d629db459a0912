"""Study files: composition, validation before any trial, trial identity (no Ray here)."""

from __future__ import annotations

import json
import re

import pytest

from archer.config import ConfigError
from experiments.study import (
    expand_trials,
    identity_hash,
    load_study,
    split_overrides,
    study_names,
)
from experiments.sweep import load_sweep


def test_every_shipped_study_passes_the_mechanism_lint(tmp_path):
    """No shipped study varies something that cannot act under its settings (the lint the
    dry run and the launch print), e.g. two response-scope quantiles that mark the same
    tokens of 5-token responses."""
    from experiments.mechanism_lint import lint_trials
    from experiments.study_cli import plan_warm_starts, planned_trains

    for name in study_names():
        spec = load_study(name)
        trials = expand_trials(spec, [], tmp_path / name)
        assert lint_trials(planned_trains(trials, plan_warm_starts(trials, spec.warm_start))) \
            == [], name


def test_shipped_studies_load_with_their_grids():
    assert study_names() == ["ablate_clip", "ablate_entropy_quantile", "ablate_kl",
                             "ablate_staleness", "ablate_update_mode", "baselines",
                             "baselines_smollm2"]
    sizes = {name: load_study(name).size() for name in study_names()}
    # 7 methods; 3 rho at batch scope + the per-response default; 5 clip settings (the
    # paper's table); 3 KL; 4 update modes
    # x 8 seeds for baselines, 6 for each ablation; 3 methods x 3 seeds on SmolLM2;
    # 3 staleness levels x 2 methods x 6 seeds
    assert sizes == {"baselines": 56, "ablate_entropy_quantile": 24, "ablate_clip": 30,
                     "ablate_kl": 18, "ablate_update_mode": 24, "baselines_smollm2": 9,
                     "ablate_staleness": 36}
    smol = load_study("baselines_smollm2")
    assert smol.warm_start is None and smol.eval_start and smol.reference_arm == "grpo"
    spec = load_study("baselines", ["seeds=[0]", "max_concurrent=3"])
    assert spec.seeds == (0,) and spec.max_concurrent == 3 and spec.size() == 7
    assert spec.axes["algo"] == ["grpo", "dapo", "dr_grpo", "high_entropy_only", "ar_lopti",
                                 "archer", "aspo"]
    assert spec.experiment == "study-baselines" and spec.eval["benchmarks"] == ["gym"]
    assert spec.warm_start is not None and spec.warm_start.seed == 0  # the cpu recipe's


def test_split_overrides_separates_study_and_trial_keys():
    study, trial = split_overrides(["study.seeds=[0]", "recipe=cpu", "total_steps=2",
                                    "model=tiny"])
    assert study == ["seeds=[0]", "recipe=cpu"] and trial == ["total_steps=2", "model=tiny"]


def test_trials_compose_each_value_and_seed(tiny_model, tiny_overrides, tmp_path):
    spec = load_study("ablate_kl", ["seeds=[0,3]"])
    trials = expand_trials(spec, tiny_overrides(tiny_model), tmp_path)
    assert [t.number for t in trials] == list(range(6))
    got = [(t.config["algo"]["low"]["kl_weight"], t.train["seed"]) for t in trials]
    assert got == [(0.0, 0), (0.0, 3), (0.001, 0), (0.001, 3), (0.005, 0), (0.005, 3)]
    assert all(t.config["algo"]["high"]["clip_high"] == 0.5 for t in trials)  # base: archer
    assert all(t.train["total_steps"] == 2 for t in trials)
    assert len({t.hash for t in trials}) == 6
    assert all(t.out_dir.startswith(str(tmp_path.resolve() / "ablate_kl" / "trials"))
               for t in trials)
    assert trials[0].tags["archer.preset"] == "archer" and trials[1].tags["archer.seed"] == "3"
    # the same study in another root resolves to the same identities
    again = expand_trials(spec, tiny_overrides(tiny_model), tmp_path / "elsewhere")
    assert [t.hash for t in again] == [t.hash for t in trials]


def test_identity_hash_ignores_paths_but_not_knobs():
    config = {"algo": {"x": 1}, "out_dir": "a", "progress": None, "lr": 0.1,
              "tracking": {"backend": "none"}}
    moved = json.loads(json.dumps(config))
    moved["out_dir"], moved["progress"] = "b", True
    moved["tracking"] = {"backend": "mlflow"}
    changed = json.loads(json.dumps(config))
    changed["lr"] = 0.2
    assert identity_hash(config, None) == identity_hash(moved, None)
    assert identity_hash(config, None) != identity_hash(changed, None)
    assert identity_hash(config, None) != identity_hash(config, {"benchmarks": ["gsm8k"]})


@pytest.mark.parametrize("fields, named", [
    ({"axes": {"algo": ["grpo", "grpoo"]}}, "unknown preset 'grpoo' in axes.algo"),
    ({"variants": {"a": ["algo=nope"]}}, "unknown preset 'nope' in variants.a"),
    ({"axes": {"algo": ["grpo"]}, "seedz": [0]}, "unknown key 'seedz' (did you mean 'seeds'?)"),
    ({"axes": {"algo.low.kl_weight": []}}, "axis 'algo.low.kl_weight' is empty"),
    ({"axes": {}, "seeds": []}, "seeds is empty"),
    ({"axes": {"algo": ["grpo"]}, "recipe": "gpu9000"}, "unknown recipe 'gpu9000'"),
    ({"axes": {"algo": ["grpo"]}, "objective": {"metric": "x", "direction": "up"}},
     "direction"),
    ({"axes": {"algo": ["grpo"]}, "eval": {"benchmarks": ["gsm9k"]}},
     "unknown benchmark 'gsm9k'"),
    ({"axes": {"algo": ["grpo"]}, "eval": {"benchmarks": ["gsm8k"], "k": 0}},
     "study bad.eval.k=0 is not allowed: samples per problem, an integer >= 1 (or null for the "
     "default)"),
    ({"axes": {"algo": ["grpo"]}, "eval": {"benchmarks": ["gsm8k"], "k": -2}}, "eval.k=-2 is"),
    ({"axes": {"algo": ["grpo"]}, "eval": {"benchmarks": ["gsm8k"], "k": 1.5}}, "eval.k=1.5 is"),
    ({"axes": {"algo": ["grpo"]}, "eval": {"benchmarks": ["gsm8k"], "max_new_tokens": 0}},
     "eval.max_new_tokens=0 is not allowed: tokens per sample, an integer >= 1"),
    ({"axes": {"algo": ["grpo"]}, "eval": {"benchmarks": ["gsm8k"], "limit": 0}},
     "eval.limit=0 is not allowed: the first N problems, an integer >= 1"),
    ({"axes": {"algo": ["grpo"]}, "eval": {"benchmarks": ["gsm8k"], "batch_size": "8"}},
     "eval.batch_size='8' is not allowed: problems per batch, an integer >= 1"),
    ({"axes": {"algo": ["grpo"]}, "eval": {"benchmarks": ["gsm8k"], "seed": -1}},
     "eval.seed=-1 is not allowed: the sampling seed, an integer >= 0"),
    ({"axes": {"algo": ["grpo"]}, "eval": {"benchmarks": ["gsm8k"], "temperature": -0.5}},
     "eval.temperature=-0.5 is not allowed: the sampling temperature, a number >= 0"),
    ({"axes": {"algo": ["grpo"]}, "eval": {"benchmarks": ["gsm8k"], "top_p": 0}},
     "eval.top_p=0 is not allowed: nucleus sampling's top_p, a number in (0, 1]"),
    ({"axes": {"algo": ["grpo"]}, "eval": {"benchmarks": ["gsm8k"], "top_p": 1.5}},
     "eval.top_p=1.5 is not allowed"),
    ({"axes": {"algo": ["grpo"]}, "eval": {"benchmarks": ["gsm8k", "gsm8k"]}},
     "eval.benchmarks=['gsm8k', 'gsm8k'] has duplicates"),
])
def test_bad_study_file_is_refused_naming_the_problem(tmp_path, write_study, fields, named):
    path = write_study(tmp_path, "bad", **fields)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert named in str(err.value)


def test_bad_eval_override_refuses_the_study_before_any_trial(tmp_path, capsys, tiny_model,
                                                             tiny_overrides):
    """An evaluation setting that the harness would refuse after training (k=0, an unknown
    benchmark) fails `archer ablate` when the study loads: exit 2, the key and what it
    allows named, nothing created under out_dir."""
    from archer_cli.main import main

    root = tmp_path / "studies"
    for evaluation, named in (("{benchmarks:[gsm8k],k:0}", "study baselines.eval.k=0 is not "
                               "allowed: samples per problem, an integer >= 1"),
                              ("{benchmarks:[gsm9k],k:1}", "unknown benchmark 'gsm9k'; choose "
                               "from ['aime2024'")):
        rc = main(["ablate", "baselines", "study.seeds=[0]", f"study.eval={evaluation}",
                   *tiny_overrides(tiny_model), "warm_start=null", f"out_dir={root}", "progress=false"])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("archer: error: ") and named in err, err
        assert "Traceback" not in err
    assert not root.exists()


def test_missing_benchmark_data_refuses_a_local_study_before_any_trial(
        tmp_path, capsys, monkeypatch, tiny_model, tiny_overrides):
    """A benchmark whose data file is not in the data directory would fail each trial after
    it trained: on a local Ray the study is refused when it loads, naming the file."""
    from archer_cli.main import main

    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("ARCHER_DATA_DIR", str(empty))
    root = tmp_path / "studies"
    rc = main(["ablate", "baselines", "study.seeds=[0]", "study.eval={benchmarks:[gsm8k],k:1}",
               *tiny_overrides(tiny_model), "warm_start=null", f"out_dir={root}", "progress=false"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("archer: error: study baselines.eval: benchmark gsm8k: "
                                      f"data file {empty}/") and "does not exist" in err, err
    assert not root.exists()


def test_yaml_syntax_error_names_the_file_line_and_column(tmp_path, capsys):
    from archer_cli.main import main

    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\naxes: {algo: [grpo]\nseeds: [0]\n")
    rc = main(["ablate", str(path), f"out_dir={tmp_path / 's'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == (f"archer: error: {path}:3:1: expected ',' or '}}', but got '<scalar>' "
                   "(while parsing a flow mapping at line 2, column 7)\n")
    path.write_text("name: broken\n\taxes: {}\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2:1: found character '\\t' that cannot "
                                          "start any token$"):
        load_study(path)
    path.write_text("- name: broken\n")
    with pytest.raises(ConfigError, match="a study file is a mapping of keys"):
        load_study(path)


@pytest.mark.parametrize("overrides, named", [
    (["eval.k=3"], "study baselines: cannot set 'study.eval.k': the study file sets no "
                   "study.eval mapping (its trials use recipe cpu's evaluation, {benchmarks:"
                   "[gym],k:4,max_new_tokens:5,temperature:1.0,batch_size:64}); give the whole "
                   "mapping, e.g. 'study.eval={benchmarks:[gym],k:3,max_new_tokens:5,"
                   "temperature:1.0,batch_size:64}' (keys of study.eval: ['batch_size', "
                   "'benchmarks', 'dtype', 'engine', 'gpu_memory_utilization', 'k', "),
    (["eval.kk=3"], "study baselines: unknown key 'study.eval.kk' (did you mean "
                    "'study.eval.k'?); keys of study.eval: ['batch_size', 'benchmarks', 'dtype', "
                    "'engine', 'gpu_memory_utilization', 'k', "),
    (["resources.num_gpu=1"], "unknown key 'study.resources.num_gpu' (did you mean "
                              "'study.resources.num_gpus'?)"),
    (["seeds.x=1"], "cannot set 'study.seeds.x': study.seeds is [0,1,2,3,4,5,6,7], which has no "
                    "keys; set "
                    "it whole: 'study.seeds=...'"),
    (["axes.distributed.backend=[gloo]"], "cannot set 'study.axes.distributed.backend': "
                                          "study.axes has no key 'distributed.backend' (keys "
                                          "there: ['algo']); add it with "
                                          "'+study.axes={distributed.backend:[gloo]}'"),
    (["axes={lr:[1]}"], "cannot set 'study.axes': Key 'lr' is not in struct; a mapping given "
                        "to study.axes is merged into the file's (keys: ['algo']): add keys "
                        "with '+study.axes={...}', or replace it with '~study.axes' "
                        "'+study.axes={...}'"),
])
def test_nested_study_override_says_how_to_write_it(overrides, named):
    with pytest.raises(ConfigError) as err:
        load_study("baselines", overrides)
    assert named in str(err.value)


def test_nested_override_of_a_mapping_the_file_leaves_out_shows_the_whole_mapping(
        tmp_path, write_study):
    path = write_study(tmp_path, "noobj", axes={"algo": ["grpo"]}, eval=False)
    with pytest.raises(ConfigError, match=re.escape(
            "study noobj: cannot set 'study.objective.direction': the study file sets no "
            "study.objective mapping (the default is {metric:val/accuracy,direction:maximize});"
            " give the whole mapping, e.g. 'study.objective={metric:val/accuracy,direction:"
            "minimize}' (keys of study.objective: ['direction', 'metric'])")):
        load_study(path, ["objective.direction=minimize"])
    with pytest.raises(ConfigError, match=re.escape(
            "cannot set 'study.eval.k': study.eval is false in the study file, not a mapping; "
            "give the whole mapping, e.g. 'study.eval={benchmarks:[gsm8k],k:3}'")):
        load_study(path, ["eval.k=3"])


def test_nested_study_overrides_that_can_work_do(tmp_path, write_study):
    path = write_study(tmp_path, "nested", axes={"algo": ["grpo"]},
                       eval={"benchmarks": ["gsm8k"], "limit": 2},
                       objective={"metric": "val/accuracy", "direction": "maximize"})
    spec = load_study(path, ["eval.k=3", "resources.num_gpus=1", "objective.direction=minimize"])
    assert spec.eval == {"benchmarks": ["gsm8k"], "limit": 2, "k": 3}
    assert spec.resources["num_gpus"] == 1.0 and spec.objective["direction"] == "minimize"
    study, _ = split_overrides(["+study.axes={lr:[0.1,0.2]}", "~study.eval"])
    assert study == ["+axes={lr:[0.1,0.2]}", "~eval"]
    spec = load_study(path, study)
    assert spec.axes == {"algo": ["grpo"], "lr": [0.1, 0.2]}
    assert load_study("ablate_kl", ["axes.algo.low.kl_weight=[0.1]"]).axes == {
        "algo.low.kl_weight": [0.1]}  # a dotted key of the file's axes
    assert spec.eval["benchmarks"] == ["gym"] and spec.eval["k"] == 4  # the recipe's


def test_overrides_may_follow_the_options(tmp_path, capsys, write_study, tiny_model,
                                          tiny_overrides):
    from archer_cli.main import main, parse_args

    args = parse_args(["ablate", "s.yaml", "out_dir=runs/x", "total_steps=2",
                       "progress=false", "study.seeds=[0]"])
    assert (args.study, args.out_dir, args.progress) == ("s.yaml", "runs/x", False)
    assert args.overrides == ["total_steps=2", "study.seeds=[0]"]
    args = parse_args(["sweep", "archer_clip_kl", "n_trials=3", "a=1", "out_dir=r", "b=2",
                       "optuna.storage=sqlite:///o.db"])
    assert (args.space, args.n_trials, args.out_dir, args.optuna_storage, args.overrides) == (
        "archer_clip_kl", 3, "r", "sqlite:///o.db", ["a=1", "b=2"])
    # the old spellings still parse, each noted on stderr with its new name
    args = parse_args(["ablate", "s.yaml", "--root", "runs/y", "--no-progress",
                       "--tracking-uri", "sqlite:///t.db", "total_steps=2"])
    assert (args.out_dir, args.progress, args.tracking_uri, args.overrides) == (
        "runs/y", False, "sqlite:///t.db", ["total_steps=2"])
    err = capsys.readouterr().err
    assert "--root is deprecated; use out_dir=..." in err
    assert "--no-progress is deprecated; use progress=false" in err
    # the overrides after out_dir= reach the trials (a typo among them refuses the study)
    path = write_study(tmp_path, "late", axes={"algo": ["grpo"]}, eval=False)
    rc = main(["ablate", str(path), f"out_dir={tmp_path / 's'}", *tiny_overrides(tiny_model),
               "total_stpes=3"])
    err = capsys.readouterr().err
    assert rc == 2 and "trial t000-algo=grpo-seed=0: " in err and "'total_stpes'" in err, err


def test_unknown_override_keys_are_refused(tmp_path, write_study, tiny_model, tiny_overrides):
    with pytest.raises(ConfigError, match=r"unknown study key 'study.max_concurent' \(did you "
                                          r"mean 'study.max_concurrent'\?\)"):
        load_study("baselines", ["max_concurent=2"])
    spec = load_study(write_study(tmp_path, "one", axes={"algo": ["grpo"]}, eval=False))
    with pytest.raises(ConfigError, match=r"trial t000-algo=grpo-seed=0: .*'total_stpes'"):
        expand_trials(spec, tiny_overrides(tiny_model) + ["total_stpes=3"], tmp_path)


def test_study_that_collapses_to_duplicate_trials_is_refused(tmp_path, write_study, tiny_model,
                                                             tiny_overrides):
    spec = load_study(write_study(tmp_path, "dup", axes={"algo": ["grpo", "dapo"]}, eval=False))
    with pytest.raises(ConfigError, match="resolve to the same configuration"):
        expand_trials(spec, tiny_overrides(tiny_model) + ["algo=archer"], tmp_path)


def test_sweep_spaces_validate(tmp_path):
    spec = load_sweep("archer_clip_kl")
    assert spec.sampler == "tpe" and spec.storage == "sqlite:///runs/optuna.db"
    # the archer preset's own values are the first trial
    assert spec.enqueued[0] == {"algo.high.clip_high": 0.5, "algo.low.kl_weight": 0.001,
                                "algo.entropy_quantile": 0.8}
    assert load_sweep("presets").params["algo"]["choices"][0] == "grpo"
    with pytest.raises(ConfigError, match="grid sampler needs categorical params"):
        load_sweep("archer_clip_kl", ["sampler=grid"])
    with pytest.raises(ConfigError, match="not an RDB URL"):
        load_sweep("archer_clip_kl", storage="redis://x")
    with pytest.raises(ConfigError, match="prunes single-objective studies only"):
        load_sweep("archer_clip_kl", ["compute_objective=true"])


def test_resources_declare_cpus_gpus_custom_resources_and_placement(tmp_path, write_study):
    from experiments.scheduler import task_options

    path = write_study(tmp_path, "res", axes={"algo": ["grpo"]}, eval=False,
                       resources={"num_gpus": 1, "custom": {"a100": 1}, "strategy": "spread"})
    spec = load_study(path)
    # the recipe's num_cpus (1) is kept, the study's keys are added
    assert spec.resources == {"num_cpus": 1.0, "num_gpus": 1.0, "custom": {"a100": 1.0},
                              "strategy": "SPREAD", "procs_per_trial": 1}
    assert task_options(spec.resources, "s/t") == {
        "num_cpus": 1.0, "num_gpus": 1.0, "name": "s/t", "resources": {"a100": 1.0},
        "scheduling_strategy": "SPREAD"}
    plain = load_study(write_study(tmp_path, "plain", axes={"algo": ["grpo"]}, eval=False))
    assert task_options(plain.resources, "s/t") == {"num_cpus": 1.0, "num_gpus": 0.0,
                                                    "name": "s/t"}
    sweep = load_sweep("archer_clip_kl", ["resources={custom:{big_node:0.5}}"])
    assert sweep.resources["custom"] == {"big_node": 0.5}


@pytest.mark.parametrize("resources, named", [
    ({"num_gpu": 1}, "unknown key 'num_gpu' (did you mean 'num_gpus'?)"),
    ({"num_cpus": -1}, "resources.num_cpus=-1 must be a number >= 0"),
    ({"custom": {"a100": 0}}, "resources.custom.a100=0 must be a number > 0"),
    ({"custom": {"GPU": 1}}, "give CPUs/GPUs as resources.num_cpus/num_gpus"),
    ({"custom": ["a100"]}, "resources.custom must map resource names to amounts"),
    ({"strategy": "PACK"}, "resources.strategy='PACK'; choose one of ['DEFAULT', 'SPREAD']"),
])
def test_bad_resources_are_refused(tmp_path, write_study, resources, named):
    path = write_study(tmp_path, "badres", axes={"algo": ["grpo"]}, eval=False,
                       resources=resources)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert named in str(err.value)


@pytest.mark.parametrize("recipe,steps,data_file,benchmarks", [
    ("archer_math_1p5b", 520, "math_train", ["aime2024", "aime2025", "amc23", "math500"]),
    ("archer_code_1p5b", 320, "leetcode_train", ["lcb_v5"]),
])
def test_gpu_recipes_resolve_to_the_papers_hyperparameters(tmp_path, tiny_model, recipe, steps,
                                                           data_file, benchmarks):
    """The paper's recipes compose and validate (without a GPU): the rollout, update and
    optimiser settings (docs/method.md, section 2), the vLLM sampler, FSDP knobs and 8 GPUs a
    trial; the model is required (the recipe leaves it ???)."""
    from experiments.study import expand_trials, load_study

    spec = load_study("baselines", [f"recipe={recipe}", "seeds=[0]", "axes.algo=[archer]"])
    (trial,) = expand_trials(spec, [f"model={tiny_model}"], tmp_path)
    t = trial.train
    with pytest.raises(ConfigError, match=rf"recipe {recipe} needs model=<hf dir or hub id>"):
        expand_trials(spec, [], tmp_path)
    assert (t["total_steps"], t["prompts_per_step"], t["group_size"]) == (steps, 64, 16)
    assert (t["ppo_epochs"], t["mini_batch_prompts"], t["max_new_tokens"]) == (3, 32, 32768)
    assert (t["lr"], t["warmup_steps"], t["weight_decay"], t["grad_clip"]) == (
        1e-6, 10, 0.1, 1.0)
    assert t["temperature"] in (None, 1.0) and t["top_p"] == 1.0
    assert t["rollout_backend"] == "vllm" and t["dtype"] == "bfloat16"
    assert t["distributed"]["mixed_precision"] == "bf16" and t["gradient_checkpointing"]
    assert t["data"]["file"] == data_file
    assert t["algo"]["entropy_quantile"] == 0.8 and t["algo"]["low"]["kl_weight"] == 0.001
    assert trial.eval["benchmarks"] == benchmarks and trial.eval["max_new_tokens"] == 32768
    assert trial.resources["num_gpus"] == 8


def test_trials_take_the_users_files_as_absolute_paths(tiny_model, tiny_overrides, tmp_path,
                                                       monkeypatch):
    """A trial may run in another working directory (a Ray worker): the user's own data file
    and reward file given relative to the driver's directory reach it as absolute paths;
    registered names and importable modules stay as they are."""
    from experiments.study import user_file_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.jsonl").write_text(json.dumps({"prompt": "1+1=", "answer": 2}) + "\n")
    (tmp_path / "score.py").write_text("def fn(completions, **_):\n    return [0.0] * "
                                       "len(completions)\n")
    spec = load_study("ablate_kl", ["seeds=[0]", "eval=false"])  # (gym needs a gym task)
    trials = expand_trials(spec, tiny_overrides(tiny_model) + [
        "data.task=null", "data.file=mine.jsonl", "reward=./score.py:fn"], tmp_path / "s")
    for t in trials:
        assert t.train["data"]["file"] == t.config["data"]["file"] == str(tmp_path / "mine.jsonl")
        assert t.train["reward"] == t.config["reward"] == f"{tmp_path / 'score.py'}:fn"
    assert user_file_paths("gsm8k_train", "math") == ("gsm8k_train", "math")
    assert user_file_paths(None, "pkg.mod:fn") == (None, "pkg.mod:fn")


def test_configuration_errors_are_not_retried_also_through_ray():
    """A bad setting, a malformed data line or a reward that cannot load fails the trial at
    once (another attempt repeats it), also wrapped in Ray's task error; a crash, a missing
    file (maybe not mounted yet) or a killed worker is retried."""
    import ray.exceptions

    from archer.config import ConfigError
    from archer.data.datasets import DataFormatError
    from archer.rewards import RewardSpecError
    from experiments.scheduler import not_retried

    for err in (ConfigError("k=0"), DataFormatError("line 3"), RewardSpecError("no module")):
        assert not_retried(err)
        wrapped = ray.exceptions.RayTaskError("run_trial", "tb", err)
        assert not_retried(wrapped) and not_retried(wrapped.as_instanceof_cause())
    for err in (RuntimeError("CUDA error"), FileNotFoundError("data.jsonl"), ValueError("nan"),
                ray.exceptions.WorkerCrashedError()):
        assert not not_retried(err)
        assert not not_retried(ray.exceptions.RayTaskError("run_trial", "tb", err))


def test_an_axis_on_an_old_key_is_refused_with_its_new_name():
    with pytest.raises(ConfigError, match=r"study baselines: axis 'trainer.lr' was renamed: use "
                                          r"'lr' \(docs/config-migration.md"):
        load_study("baselines", ["+axes={trainer.lr:[0.1,0.2]}"])


def test_a_sweep_param_on_an_old_key_is_refused_with_its_new_name():
    with pytest.raises(ConfigError, match=r"sweep archer_clip_kl: param 'trainer.lr' was "
                                          r"renamed: use 'lr'"):
        load_sweep("archer_clip_kl", ["+params={trainer.lr:{type:float,low:0.1,high:0.2}}"])
    spec = load_sweep("archer_clip_kl", ["+params={lr:{type:float,low:0.1,high:0.2}}"])
    assert spec.params["lr"] == {"type": "float", "low": 0.1, "high": 0.2}


def test_a_sweep_starts_from_the_recipes_warm_start_and_may_not_vary_its_inputs():
    from dataclasses import replace

    from experiments.sweep import sweep_warm_start

    spec = load_sweep("archer_clip_kl")
    assert spec.warm_start is not None  # the cpu recipe's
    assert load_sweep("archer_clip_kl", ["warm_start=null"]).warm_start is None
    for key in ("data.size", "max_new_tokens", "model"):
        bad = replace(spec, params={key: {"type": "categorical", "choices": [1, 2]}})
        with pytest.raises(ConfigError, match=rf"\['{key}'\] change what the warm start"):
            sweep_warm_start(bad, probe=None)
    assert sweep_warm_start(replace(spec, warm_start=None), probe=None) is None
