"""bench/trainer_vs_trl.py: the summary arithmetic, and a smoke run when trl is installed."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "trainer_vs_trl.py"


def _load():
    spec = importlib.util.spec_from_file_location("trainer_vs_trl", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def _timings(mod, steps, cpu, phase):
    t = mod.Timings()
    t.step, t.cpu, t.lengths = list(steps), list(cpu), [8.0] * len(steps)
    for p in mod.PHASES:
        t.phases[p] = [phase] * len(steps)
    return t


def test_summary_medians_and_ratios():
    mod = _load()
    res = {
        "trl": _timings(mod, [2.0, 4.0, 3.0], [4.0, 8.0, 6.0], 0.5),
        "grpo": _timings(mod, [1.0, 6.0, 2.0], [2.0, 12.0, 3.0], 0.25),
        "archer": _timings(mod, [3.0, 6.0, 2.0], [3.0, 12.0, 3.0], 0.25),
        "archer_ref_bf16": _timings(mod, [2.0, 6.0, 2.0], [2.0, 12.0, 3.0], 0.25),
    }
    out = mod.summarise(res)
    assert out["trl"]["step_s"] == 3.0 and out["grpo"]["step_s"] == 2.0
    assert out["ratio_grpo_vs_trl"] == pytest.approx(2.0 / 3.0)
    # per-step ratios grpo/trl: 0.5, 1.5, 0.6667 -> median 0.6667
    assert out["ratio_grpo_vs_trl_paired"] == pytest.approx(2.0 / 3.0)
    # archer/grpo medians 3 / 2; per step 3, 1, 1 -> median 1
    assert out["ratio_archer_vs_grpo"] == pytest.approx(1.5)
    assert out["ratio_archer_vs_grpo_paired"] == pytest.approx(1.0)
    assert out["cpu_ratio_grpo_vs_trl"] == pytest.approx(3.0 / 6.0)
    # every length is 8: per token the ratios are those of the step medians
    assert out["token_ratio_grpo_vs_trl"] == pytest.approx(2.0 / 3.0)
    assert out["token_ratio_archer_vs_grpo"] == pytest.approx(1.5)
    # the bf16-reference run: medians 2 / 2; per step 2, 1, 1 -> 1; CPU medians 3 / 3
    assert out["ratio_archer_ref_bf16_vs_grpo"] == pytest.approx(1.0)
    assert out["ratio_archer_ref_bf16_vs_grpo_paired"] == pytest.approx(1.0)
    assert out["cpu_ratio_archer_ref_bf16_vs_grpo"] == pytest.approx(1.0)
    # other = step - sum of the four phases (4 x 0.5 for TRL): median of 0, 2, 1
    assert out["trl"]["other_s"] == pytest.approx(1.0)


def test_per_token_ratio_discounts_longer_responses():
    mod = _load()
    res = {"trl": _timings(mod, [2.0, 2.0, 2.0], [2.0, 2.0, 2.0], 0.5),
           "grpo": _timings(mod, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], 0.25),
           "archer": _timings(mod, [1.5, 1.5, 1.5], [1.5, 1.5, 1.5], 0.25)}
    res["archer"].lengths = [12.0] * 3  # 1.5x the tokens of grpo's 8 for 1.5x the time
    out = mod.summarise(res)
    assert out["ratio_archer_vs_grpo"] == pytest.approx(1.5)
    assert out["token_ratio_archer_vs_grpo"] == pytest.approx(1.0)


def test_archer_against_grpo_with_kl():
    """Both pay for a reference pass: archer / grpo+KL is the method's own cost."""
    mod = _load()
    res = {"trl": _timings(mod, [2.0, 2.0, 2.0], [2.0, 2.0, 2.0], 0.5),
           "grpo": _timings(mod, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], 0.25),
           "archer": _timings(mod, [1.2, 1.4, 1.1], [1.2, 1.4, 1.1], 0.25),
           "grpo_kl": _timings(mod, [1.0, 1.4, 1.2], [1.0, 1.4, 1.0], 0.25)}
    out = mod.summarise(res)
    assert out["ratio_archer_vs_grpo"] == pytest.approx(1.2)
    assert out["ratio_grpo_kl_vs_grpo"] == pytest.approx(1.2)
    assert out["ratio_archer_vs_grpo_kl"] == pytest.approx(1.0)  # medians 1.2 / 1.2
    # per step 1.2, 1.0, 0.9167 -> median 1.0; CPU medians 1.2 / 1.0
    assert out["ratio_archer_vs_grpo_kl_paired"] == pytest.approx(1.0)
    assert out["cpu_ratio_archer_vs_grpo_kl"] == pytest.approx(1.2)
    without = mod.summarise({k: v for k, v in res.items() if k != "grpo_kl"})
    assert "ratio_archer_vs_grpo_kl" not in without


def test_bad_option_is_refused():
    mod = _load()
    with pytest.raises(SystemExit):
        mod.main(["--group-size", "1"])


@pytest.mark.slow
def test_quick_run_times_all_three(capsys):
    pytest.importorskip("trl")
    mod = _load()
    out = mod.main(["--quick"])
    for name in ("trl", "grpo", "archer", "archer_ref_bf16", "grpo_kl"):
        assert out[name]["step_s"] > 0 and out[name]["length"] > 0
        assert out[name]["update_s"] > 0 and out[name]["rollout_s"] > 0
    # one PPO epoch on one mini-batch: TRL reuses the update's log-probs as the old ones
    assert out["trl"]["logp_passes"] == 0
    assert out["grpo"]["old_logprob_s"] > 0  # our trainer runs a separate no-grad pass
    for key in ("ratio_grpo_vs_trl", "ratio_archer_vs_grpo", "ratio_archer_ref_bf16_vs_grpo",
                "ratio_archer_vs_grpo_kl"):
        assert math.isfinite(out[key]) and out[key] > 0
    assert "ratio ours grpo / TRL" in capsys.readouterr().out
