"""The mechanism lint (experiments.mechanism_lint): each rule fires with its reason, and stays
quiet where the mechanism acts."""

from __future__ import annotations

import pytest

from archer.config import AlgoConfig, TokenClassConfig
from archer.models import build_tiny_model
from archer.train_config import TrainConfig
from experiments.mechanism_lint import (
    flatten,
    high_token_count,
    lint_trials,
    lint_warm_start,
    varied_keys,
)

WARM = "/warm/model"  # any non-random model name (the lint does not open it)


def run(model: str = WARM, **kw) -> dict:
    algo = kw.pop("algo", {})
    d = TrainConfig(**kw).to_dict()
    d["model"] = model
    d["algo"] = TrainConfig(algo=AlgoConfig(**algo)).to_dict()["algo"] if algo else d["algo"]
    return d


def rules(trains, varied=None) -> list[str]:
    return [w.split("]")[0].lstrip("[") for w in lint_trials(trains, varied)]


def low(**kw) -> TokenClassConfig:
    return TokenClassConfig(**({"clip_low": 0.2, "clip_high": 0.2, "pg_weight": 1.0,
                                "kl_weight": 0.001} | kw))


def test_flatten_and_varied_keys():
    assert flatten({"a": {"b": 1, "task_config": {"x": 2}}, "c": 3}) == {
        "a.b": 1, "a.task_config": {"x": 2}, "c": 3}
    trains = [run(seed=0, lr=1e-4), run(seed=1, lr=2e-4)]
    assert varied_keys(trains) == {"lr"}  # the seed is not an axis here
    assert "lr" in varied_keys([run(lr=3e-4)])  # one run: set differently from the default
    assert "lr" not in varied_keys([run()])


def test_clip_bounds_with_one_pass_never_bind():
    trains = [run(ppo_epochs=1, prompts_per_step=8, mini_batch_prompts=8,
                  algo={"low": low(clip_high=c)}) for c in (0.1, 0.3)]
    warnings = lint_trials(trains)
    assert [w for w in warnings if w.startswith("[clip_never_binds]")], warnings
    text = next(w for w in warnings if w.startswith("[clip_never_binds]"))
    assert "algo.low.clip_high" in text and "ratio is exactly 1" in text
    assert "mini_batch_prompts=8 >= prompts_per_step=8" in text
    # a second epoch, a second mini-batch or the async mode let the ratio move
    for kw in ({"ppo_epochs": 2, "mini_batch_prompts": 8},
               {"ppo_epochs": 1, "mini_batch_prompts": 4}):
        acting = [run(prompts_per_step=8, algo={"low": low(clip_high=c)}, **kw)
                  for c in (0.1, 0.3)]
        assert "clip_never_binds" not in rules(acting)
    asynchronous = [run(prompts_per_step=8, mini_batch_prompts=8,
                        algo={"update_mode": "async", "low": low(clip_high=c)})
                    for c in (0.1, 0.3)]
    assert "clip_never_binds" not in rules(asynchronous)


def test_a_single_run_with_non_default_clips_and_one_pass():
    one = [run(prompts_per_step=4, mini_batch_prompts=4, algo={"dual_clip_c": 3.0})]
    assert "clip_never_binds" in rules(one)
    assert "clip_never_binds" not in rules([run(prompts_per_step=4, mini_batch_prompts=4)])


def test_low_entropy_kl_under_mask_mode_has_no_effect():
    masked = [run(algo={"update_mode": "mask", "low": low(kl_weight=w)})
              for w in (0.0, 0.005)]
    warnings = lint_trials(masked)
    text = next(w for w in warnings if w.startswith("[masked_class]"))
    assert "algo.low.kl_weight" in text and "update_mode=mask" in text
    synced = [run(algo={"update_mode": "sync", "low": low(kl_weight=w)}) for w in (0.0, 0.005)]
    assert "masked_class" not in rules(synced)
    # one trial in sync mode lets the axis act
    mixed = masked + [run(algo={"update_mode": "sync", "low": low(kl_weight=0.005)})]
    assert "masked_class" not in rules(mixed)


def test_high_entropy_settings_with_quantile_one():
    trains = [run(algo={"entropy_quantile": 1.0,
                        "high": TokenClassConfig(0.5, c, 1.0, 0.0)}) for c in (0.3, 0.5)]
    assert "no_high_tokens" in rules(trains)
    trains = [run(algo={"entropy_quantile": 0.8,
                        "high": TokenClassConfig(0.5, c, 1.0, 0.0)}) for c in (0.3, 0.5)]
    assert "no_high_tokens" not in rules(trains)


def test_entropy_quantile_with_identical_classes_is_unused():
    same = TokenClassConfig(0.2, 0.2, 1.0, 0.0)
    trains = [run(algo={"entropy_quantile": q, "high": same, "low": same}) for q in (0.5, 0.8)]
    text = next(w for w in lint_trials(trains) if w.startswith("[split_unused]"))
    assert "algo.entropy_quantile" in text
    # the classes differ, a per-class KL, or a mask mode: the split acts
    for algo in ({"low": low()},  # archer's (KL 0.001 per class, clips differ)
                 {"high": same, "low": same, "update_mode": "mask"},
                 {"high": TokenClassConfig(0.2, 0.2, 1.0, 0.001),
                  "low": TokenClassConfig(0.2, 0.2, 1.0, 0.001)}):
        acting = [run(algo=algo | {"entropy_quantile": q}) for q in (0.5, 0.8)]
        assert "split_unused" not in rules(acting), algo


def test_async_and_overlong_settings_unused():
    trains = [run(algo={"async_prob_threshold": p}) for p in (0.3, 0.6)]
    assert "async_unused" in rules(trains)
    trains = [run(algo={"update_mode": "async", "async_prob_threshold": p}) for p in (0.3, 0.6)]
    assert "async_unused" not in rules(trains)
    trains = [run(algo={"overlong_penalty_factor": f}) for f in (0.5, 1.0)]
    assert "overlong_unused" in rules(trains)
    trains = [run(algo={"overlong_buffer_len": 2, "overlong_penalty_factor": f})
              for f in (0.5, 1.0)]
    assert "overlong_unused" not in rules(trains)


def test_staleness_with_the_async_update_mode_compounds():
    trains = [run(max_staleness=k, algo={"update_mode": "async"}) for k in (0, 2)]
    text = next(w for w in lint_trials(trains) if w.startswith("[staleness_compounds]"))
    assert "max_staleness=2 with algo.update_mode=async" in text
    assert "staleness_compounds" not in rules([run(max_staleness=2)])  # sync update
    assert "staleness_compounds" not in rules([run(algo={"update_mode": "async"})])  # k = 0


def test_high_token_count_by_hand_and_against_the_split():
    import torch

    from archer.algos.split import split_by_entropy

    # 5 tokens: sorted position rho*4 = 2.8 / 3.2 / 3.6 -> 2, 1, 1 tokens above it
    assert [high_token_count(5, r) for r in (0.7, 0.8, 0.9)] == [2, 1, 1]
    # 11 tokens: positions 8.0 and 9.0 -> 2 and 1 (0.8 and 0.9 first differ here)
    assert [high_token_count(11, r) for r in (0.8, 0.9)] == [2, 1]
    assert high_token_count(1, 0.5) == 0 and high_token_count(4, 1.0) == 0
    gen = torch.Generator().manual_seed(0)
    for length in range(1, 13):
        entropy = torch.rand(1, length, generator=gen, dtype=torch.float64)
        for rho in (0.1, 0.25, 0.5, 0.7, 0.75, 0.8, 0.9, 1.0):
            split = split_by_entropy(entropy, torch.ones(1, length, dtype=torch.bool), rho)
            assert int(split.high_entropy_mask.sum()) == high_token_count(length, rho)


def test_response_scope_quantiles_that_mark_the_same_tokens_are_one_experiment():
    def arm(rho, scope="response", tokens=5):
        return run(max_new_tokens=tokens, algo={"entropy_quantile": rho, "entropy_scope": scope,
                                                "low": low()})

    grid = [arm(r, s) for r in (0.7, 0.8, 0.9) for s in ("response", "batch")]
    warning = next(w for w in lint_trials(grid) if w.startswith("[quantile_indistinct]"))
    assert "algo.entropy_quantile=0.8 and 0.9 at algo.entropy_scope=response" in warning
    assert "max_new_tokens=5" in warning
    assert "quantile_indistinct" not in rules([arm(0.7), arm(0.8)])  # 2 vs 1 tokens at 5
    assert "quantile_indistinct" not in rules([arm(r, "batch") for r in (0.8, 0.9)])
    assert "quantile_indistinct" not in rules([arm(r, tokens=11) for r in (0.8, 0.9)])
    # the same quantiles in arms that differ in something else are not duplicates
    other = [arm(0.8), run(max_new_tokens=5, lr=3e-4, algo={"entropy_quantile": 0.9,
                                                          "low": low()})]
    assert "quantile_indistinct" not in rules(other)


def test_random_model_and_warm_start_without_signal():
    text = next(w for w in lint_trials([run(model="tiny")]) if w.startswith("[random_model]"))
    assert "model=tiny" in text and "every reward is 0" in text
    assert "random_model" not in rules([run(model=WARM)])
    assert lint_warm_start(0.0) and "accuracy is 0" in lint_warm_start(0.0)[0]
    assert lint_warm_start(1.0) and "accuracy is 1" in lint_warm_start(1.0)[0]
    assert lint_warm_start(0.3) == [] and lint_warm_start(None) == []


def test_the_default_archer_run_gets_no_warning():
    assert lint_trials([run(model=WARM, prompts_per_step=8, mini_batch_prompts=8)]) == []


def test_archer_train_lints_its_config_at_start(monkeypatch, tmp_path, capsys):
    import archer.trainer
    from experiments.train_cli import run_train

    class Started(Exception):
        pass

    def fit(*args, **kwargs):
        raise Started

    monkeypatch.setattr(archer.trainer, "fit", fit)
    common = ["tracking=none", f"out_dir={tmp_path / 'run'}", "prompts_per_step=8",
              "mini_batch_prompts=8"]
    with pytest.raises(Started):
        run_train(common + ["model=tiny", "algo.dual_clip_c=3.0"])
    err = capsys.readouterr().err
    assert "WARNING: archer train: [clip_never_binds] algo.dual_clip_c set (not the default)" in err
    assert "WARNING: archer train: [random_model]" in err
    model = tmp_path / "model"
    build_tiny_model(model, hidden=16, layers=1, heads=2)
    with pytest.raises(Started):
        run_train(common + [f"model={model}", "ppo_epochs=2", "algo.dual_clip_c=3.0"])
    assert "WARNING" not in capsys.readouterr().err


def test_a_sweep_is_linted_at_its_parameters_ends(tmp_path):
    from experiments.study_cli import lint_sweep

    on_policy = ["ppo_epochs=1", "mini_batch_prompts=16"]  # one pass over each rollout
    found = rules_of(lint_sweep("archer_clip_kl", on_policy, tmp_path))
    assert "clip_never_binds" in found  # algo.high.clip_high over one pass
    assert "random_model" not in found  # the recipe's shared warm start
    found = rules_of(lint_sweep("archer_clip_kl", on_policy + ["warm_start=null"], tmp_path))
    assert "random_model" in found  # the random tiny model as given
    model = build_tiny_model(tmp_path / "model", hidden=16, layers=1, heads=2)
    found = rules_of(lint_sweep("archer_clip_kl", [f"model={model}"], tmp_path))  # 4 x 3
    assert "clip_never_binds" not in found and "random_model" not in found


def rules_of(warnings: list[str]) -> list[str]:
    return [w.split("]")[0].lstrip("[") for w in warnings]
