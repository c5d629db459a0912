"""Recipes (experiments/recipes.py): one loader for `archer train|ablate|sweep|eval`, the
order recipe -> study -> command line, required keys, the `study:` defaults and the
evaluation settings a recipe gives `archer eval`."""

from __future__ import annotations

import pytest
import yaml

from archer.models import build_tiny_model
from archer.validation import ConfigError
from archer_cli.main import main
from experiments import recipes
from experiments.recipes import (
    check_required,
    eval_settings,
    expand_recipe,
    load_recipe,
    recipe_names,
)
from experiments.study import expand_trials, load_study
from experiments.train_cli import build_train_setup, compose_config


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden=32, layers=2, heads=4)


def test_the_shipped_recipes_are_listed_and_load():
    names = recipe_names()
    assert {"cpu", "demo", "archer_math_1p5b", "archer_code_1p5b", "archer_math_1gpu"} <= set(
        names)
    for name in names:
        assert load_recipe(name)["overrides"], name


def test_train_applies_the_recipe_first_and_the_command_line_after_it():
    """demo sets total_steps=40, lr=1e-4, max_new_tokens=5 and data=gym_chain_sum3 (config.yaml:
    30, the dataclass's lr, 8, gym_arith); the command line's total_steps=7 wins over 40."""
    config = compose_config(["recipe=demo", "total_steps=7"]).config
    assert config["total_steps"] == 7  # command line over recipe
    assert config["lr"] == 1e-4 and config["max_new_tokens"] == 5  # recipe over config.yaml
    assert config["data"]["task_config"]["max_terms"] == 3  # the recipe's data=gym_chain_sum3
    plain = compose_config(["total_steps=7"]).config
    assert plain["max_new_tokens"] == 8 and plain["data"]["task"] == "chain_sum"


def test_print_config_shows_the_composed_recipe(capsys, tiny_dir):
    assert main(["train", "--print-config", "recipe=archer_math_1gpu", f"model={tiny_dir}",
                 "total_steps=3"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"] == str(tiny_dir) and cfg["total_steps"] == 3
    assert (cfg["prompts_per_step"], cfg["group_size"], cfg["max_new_tokens"]) == (32, 8, 3072)
    assert cfg["rollout_backend"] == "vllm" and cfg["vllm_enable_sleep_mode"] is True
    assert cfg["dtype"] == "bfloat16" and cfg["gradient_checkpointing"] is True
    assert cfg["data"]["file"] == "math_train"


def test_the_one_gpu_recipe_validates_into_a_train_config(tiny_dir):
    setup = build_train_setup(compose_config(["recipe=archer_math_1gpu", f"model={tiny_dir}"]))
    t = setup.train
    assert (t.total_steps, t.ppo_epochs, t.mini_batch_prompts, t.micro_batch_size) == (
        100, 3, 16, 2)
    assert t.max_prompt_tokens + t.max_new_tokens == t.vllm_max_model_len == 4096
    assert t.keep_checkpoints == 2 and t.lr == 1e-6
    assert setup.composed.choices["recipe"] == "archer_math_1gpu"


@pytest.mark.parametrize("recipe", ["archer_math_1gpu", "archer_math_1p5b", "archer_code_1p5b"])
def test_a_recipes_required_model_is_asked_for_by_name(recipe, capsys):
    with pytest.raises(ConfigError, match=rf"^recipe {recipe} needs model=<hf dir or hub id>$"):
        compose_config([f"recipe={recipe}", "total_steps=3"])
    assert main(["train", "--print-config", f"recipe={recipe}"]) != 0
    assert f"recipe {recipe} needs model=<hf dir or hub id>" in capsys.readouterr().err


def test_an_unknown_recipe_is_refused_with_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        compose_config(["recipe=archer_math_1gp"])
    text = str(err.value)
    assert text.startswith("unknown recipe 'archer_math_1gp' (did you mean 'archer_math_1gpu'?)")
    assert str(recipe_names()) in text
    with pytest.raises(ConfigError, match="recipe= given 2 times"):
        expand_recipe(["recipe=cpu", "recipe=demo"])


def test_check_required_wants_a_later_value_for_each_placeholder():
    check_required("r", ["model=???", "lr=1", "model=/m"])  # given after: fine
    with pytest.raises(ConfigError, match=r"^recipe r needs model=<hf dir or hub id>$"):
        check_required("r", ["model=/m", "model=???"])  # the placeholder comes last
    with pytest.raises(ConfigError, match=r"^recipe r needs data.file=<value>$"):
        check_required("r", ["data.file=???"])


def test_study_overrides_come_between_the_recipe_and_the_command_line(tmp_path, tiny_dir,
                                                                        write_recipe):
    """recipe (lr=0.5, total_steps=9, max_new_tokens=6) < study base (lr=0.25,
    max_new_tokens=3) < trial overrides from the command line (max_new_tokens=2)."""
    write_recipe("order", {"overrides": [f"model={tiny_dir}", "lr=0.5", "total_steps=9",
                                         "max_new_tokens=6"]})
    study = tmp_path / "ordered.yaml"
    study.write_text(yaml.safe_dump({"name": "ordered", "recipe": "order", "eval": False,
                                     "base": ["lr=0.25", "max_new_tokens=3"],
                                     "axes": {"algo": ["grpo"]}}))
    (trial,) = expand_trials(load_study(study), ["max_new_tokens=2"], tmp_path / "s")
    assert trial.train["total_steps"] == 9  # the recipe's
    assert trial.train["lr"] == 0.25  # the study's over the recipe's
    assert trial.train["max_new_tokens"] == 2  # the command line's over both
    write_recipe("order", {"overrides": ["model=???"]})
    with pytest.raises(ConfigError, match="recipe order needs model="):
        expand_trials(load_study(study), [], tmp_path / "s")


def test_gpu_recipes_keep_their_best_policy_out_of_the_registry():
    """A recipe's `study:` block sets study defaults; the study file and its overrides win."""
    for recipe in ("archer_math_1gpu", "archer_math_1p5b", "archer_code_1p5b"):
        spec = load_study("baselines", [f"recipe={recipe}", "seeds=[0]"])
        assert spec.register_best is False, recipe
    one = load_study("baselines", ["recipe=archer_math_1gpu", "seeds=[0]"])
    assert one.max_concurrent == 2  # the baselines file sets max_concurrent: 2 itself
    assert load_study("baselines", ["seeds=[0]"]).register_best is True  # cpu: the default
    forced = load_study("baselines", ["recipe=archer_math_1gpu", "register_best=true"])
    assert forced.register_best is True


def test_a_recipes_study_defaults_fill_keys_the_study_file_leaves_out(tmp_path, write_recipe):
    write_recipe("serial", {"overrides": ["model=tiny"], "study": {"max_concurrent": 1,
                                                                  "register_best": False}})
    study = tmp_path / "plain.yaml"
    study.write_text(yaml.safe_dump({"name": "plain", "recipe": "serial",
                                     "axes": {"algo": ["grpo"]}}))
    spec = load_study(study)
    assert spec.max_concurrent == 1 and spec.register_best is False
    assert load_study(study, ["max_concurrent=3"]).max_concurrent == 3


def test_eval_settings_are_the_recipes_checked_eval_spec():
    assert eval_settings("archer_math_1gpu") == {
        "benchmarks": ["math500", "amc23", "aime2024"], "max_new_tokens": 3072,
        "engine": "vllm", "dtype": "bfloat16", "gpu_memory_utilization": 0.45}
    assert eval_settings("cpu") == {"benchmarks": ["gym"], "k": 4, "max_new_tokens": 5,
                                    "temperature": 1.0, "batch_size": 64}
    assert eval_settings("archer_math_1p5b")["engine"] == "vllm"


def test_eval_settings_refuse_a_bad_spec_and_a_recipe_without_one_gives_none(write_recipe):
    write_recipe("noeval", {"overrides": ["model=tiny"]})
    assert eval_settings("noeval") == {}
    write_recipe("badeval", {"overrides": ["model=tiny"],
                             "eval": {"benchmarks": ["gsm8k"], "engine": "tgi"}})
    with pytest.raises(ConfigError, match=r"recipe badeval\.eval\.engine='tgi' is not allowed; "
                                          r"choose one of \['hf', 'vllm'\]"):
        eval_settings("badeval")
    write_recipe("badk", {"eval": {"benchmarks": ["gsm8k"], "k": 0}})
    with pytest.raises(ConfigError, match=r"recipe badk\.eval\.k=0 is not allowed"):
        eval_settings("badk")


@pytest.mark.parametrize("content, named", [
    ({"overrides": ["model=tiny"], "evals": {}}, "unknown key(s) in recipe bad: 'evals' (did "
                                                 "you mean 'eval'?)"),
    ({"overrides": ["model"]}, "recipe bad: overrides must be a list of key=value strings"),
    ({"overrides": [], "study": {"seeds": [0]}}, "unknown key(s) in recipe bad.study: 'seeds'"),
    ({"overrides": [], "resources": [1]}, "recipe bad: resources must be a mapping"),
])
def test_a_malformed_recipe_is_refused_naming_the_problem(write_recipe, content, named):
    write_recipe("bad", content)
    with pytest.raises(ConfigError) as err:
        load_recipe("bad")
    assert named in str(err.value)


@pytest.fixture
def write_recipe(tmp_path, monkeypatch):
    """Recipes in a temporary directory standing in for experiments/conf/recipe."""
    directory = tmp_path / "recipes"
    directory.mkdir()
    monkeypatch.setattr(recipes, "RECIPE_DIR", directory)

    def write(name: str, content: dict) -> None:
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(content))

    return write


def test_a_mistyped_recipe_key_names_recipe_and_the_recipes(capsys):
    assert main(["train", "--print-config", "recipee=cpu"]) != 0
    err = capsys.readouterr().err
    assert "unknown config key 'recipee' (did you mean 'recipe'?)" in err
    assert f"recipe=<{'|'.join(recipe_names())}>" in err


def test_archer_eval_takes_the_recipes_eval_spec_and_typed_settings_win():
    from archer_cli.main import apply_recipe_eval, parse_args

    args = parse_args(["eval", "model=m", "recipe=archer_math_1p5b", "k=2"])
    apply_recipe_eval(args)
    spec = eval_settings("archer_math_1p5b")
    assert args.benchmarks == spec["benchmarks"] and args.engine == spec["engine"] == "vllm"
    assert args.dtype == "bfloat16" and args.max_new_tokens == spec["max_new_tokens"]
    assert args.k == 2  # typed on the command line: the recipe does not override it
    with pytest.raises(ValueError, match="unknown recipe 'archer_math_1pb5'"):
        apply_recipe_eval(parse_args(["eval", "model=m", "recipe=archer_math_1pb5"]))
