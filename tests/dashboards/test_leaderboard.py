"""The leaderboard on fabricated MLflow studies with hand-computed numbers (conftest.py):
seed aggregation, CIs, pass@k, paired deltas and their significance, compute columns, the
contract check, exports and the CLI."""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
import pytest
from dashboard_fixtures import BASELINES, approx, fabricate_study

from dashboards.leaderboard import build_leaderboard, eval_entries, significance
from evals import statistics as S
from evals.contracts import ContractMismatch

pytestmark = pytest.mark.slow  # the session fixture logs 12 runs to SQLite (~15 s)


def _row(board, model):
    rows = board.table[board.table["model"] == model]
    assert len(rows) == 1, f"{model}: {list(board.table['model'])}"
    return rows.iloc[0]


@pytest.fixture(scope="module")
def board(baselines_store):
    return build_leaderboard(baselines_store.uri, studies=["baselines"])


def test_seed_aggregation_and_pass_at_k(board):
    assert list(board.table["model"]) == ["archer", "dapo", "grpo"]  # sorted by avg@2
    assert board.benchmarks == ["gsm8k"] and board.ks == {"gsm8k": 2}
    assert board.baseline == "grpo"  # picked automatically
    archer, dapo, grpo = (_row(board, m) for m in ("archer", "dapo", "grpo"))
    assert archer["seeds"] == 2 and archer["gsm8k n_seeds"] == 2
    # mean over seeds of avg@2: (4.5/6 + 5/6) / 2, (2.5/6 + 2/6) / 2, (2/6 + 2/6) / 2
    assert approx(archer["gsm8k avg@2"], 19 / 24)
    assert approx(dapo["gsm8k avg@2"], 3 / 8)
    assert approx(grpo["gsm8k avg@2"], 1 / 3)
    # sd over seeds (ddof=1): |a - b| / sqrt(2)
    assert approx(archer["gsm8k sd"], (5 / 6 - 4.5 / 6) / math.sqrt(2))
    assert approx(grpo["gsm8k sd"], 0.0)
    # pass@2 per seed: a problem counts when any of its 2 samples is right
    assert approx(archer["gsm8k pass@2"], 1.0)
    assert approx(grpo["gsm8k pass@2"], 0.5)  # 3/6 both seeds
    assert approx(dapo["gsm8k pass@2"], (4 / 6 + 3 / 6) / 2)


def _tables(preset):
    """Per-seed per-problem accuracy of a fabricated preset (dashboard_fixtures.BASELINES)."""
    return {str(s): {f"p{i}": sum(r) / len(r) for i, r in enumerate(seed)}
            for s, seed in enumerate(BASELINES[preset])}


def test_ci_is_a_hierarchical_bootstrap_over_seeds_and_problems(board):
    seed_avg = {"archer": [1, .75, 1, .5, .75, .75], "grpo": [.75, 0, .75, 0, .25, .25],
                "dapo": [.75, 0, .75, 0, .5, .25]}
    for model, pp in seed_avg.items():
        row = _row(board, model)
        assert approx(np.mean(pp), row["gsm8k avg@2"])
        ci = S.hierarchical_bootstrap_ci(_tables(model), n_boot=10000, seed=0)
        assert (row["gsm8k ci_low"], row["gsm8k ci_high"]) == (ci["ci_low"], ci["ci_high"])
        assert row["gsm8k ci_low"] < row["gsm8k avg@2"] < row["gsm8k ci_high"]
        assert 0 <= ci["ci_low"] and ci["ci_high"] <= 1
        assert ci["method"].startswith("hierarchical bootstrap (2 seeds")


def test_one_seed_ci_is_the_logged_one(baselines_store):
    from archer.tracking import reader as D
    from dashboards.leaderboard import aggregate

    client = D.open_client(baselines_store.uri)
    runs = D.search_runs_frame(client, D.experiment_ids(client))
    entries = [e for e in eval_entries(runs) if e.label == "archer" and e.seed == "0"]
    assert len(entries) == 1
    e = entries[0]
    e.per_problem = D.per_problem_accuracy(client, e.run_id, "gsm8k")
    assert e.per_problem == {"p0": 1.0, "p1": 0.5, "p2": 1.0, "p3": 0.5, "p4": 0.5, "p5": 1.0}
    table, _ = aggregate([e], baseline=None)
    assert approx(table.loc[0, "gsm8k avg@2"], 0.75)
    assert (table.loc[0, "gsm8k ci_low"], table.loc[0, "gsm8k ci_high"]) == e.ci
    e.per_problem = None  # without the table the logged CI is used as is
    table, _ = aggregate([e], baseline=None)
    assert (table.loc[0, "gsm8k ci_low"], table.loc[0, "gsm8k ci_high"]) == e.ci


def test_paired_deltas_against_the_baseline(board, baselines_store):
    archer, dapo, grpo = (_row(board, m) for m in ("archer", "dapo", "grpo"))
    # archer - grpo per seed: 4.5/6 - 2/6 = 2.5/6 and 5/6 - 2/6 = 3/6; mean 11/24. Two seeds
    # both positive: the exact sign-flip test over seeds gives 2 / 2**2 = 0.5, its floor, so
    # no mark (the problem-only test of the pooled problems said p = 1/32, '*')
    assert approx(archer["gsm8k delta"], 11 / 24)
    assert approx(archer["gsm8k p_value"], 0.5) and approx(archer["gsm8k p_min"], 0.5)
    assert archer["gsm8k p_test"] == "seeds" and archer["gsm8k sig"] == ""
    ref = S.seed_paired_comparison(_tables("archer"), _tables("grpo"), n_boot=10000, seed=0)
    assert (archer["gsm8k delta_ci_low"], archer["gsm8k delta_ci_high"]) == (
        ref["ci_low"], ref["ci_high"])
    assert archer["gsm8k delta_ci_low"] > 0  # every per-problem difference is >= 0
    # dapo - grpo per seed: 0.5/6 and 0 -> one signed seed, p = 1, no mark
    assert approx(dapo["gsm8k delta"], 1 / 24)
    assert approx(dapo["gsm8k p_value"], 1.0)
    assert dapo["gsm8k sig"] == ""
    assert grpo["gsm8k delta"] == 0.0 and math.isnan(grpo["gsm8k p_value"])
    notes = " ".join(board.footer())
    assert "sign-flip test over the per-seed differences" in notes
    assert "smallest attainable p is 0.5" in notes
    other = build_leaderboard(baselines_store.uri, studies=["baselines"], baseline="dapo")
    assert approx(_row(other, "grpo")["gsm8k delta"], -1 / 24)
    assert approx(_row(other, "archer")["gsm8k delta"], 19 / 24 - 3 / 8)


def test_one_seed_rows_use_the_problem_test_and_say_so(tmp_path):
    """One seed per row: the paired test over problems (the old numbers: archer - grpo on
    seed 0 per problem [.5,.5,0,.5,.5,.5], five non-zero, all positive -> p = 2/32), and the
    footnote says training noise is not measured."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fabricate_study(uri, tmp_path, presets={k: v[:1] for k, v in BASELINES.items()},
                    curves=False)
    one = build_leaderboard(uri, studies=["baselines"])
    archer = _row(one, "archer")
    assert archer["gsm8k p_test"] == "problems" and approx(archer["gsm8k p_value"], 2 / 32)
    assert archer["gsm8k sig"] == ""  # 2/32 = 0.0625 is not below 0.05
    assert "training noise not measured" in " ".join(one.footer())


def test_significance_marks():
    assert [significance(p) for p in (0.2, 0.04, 0.009, 0.0009, float("nan"), None)] == [
        "", "*", "**", "***", "", ""]


def test_compute_columns(board):
    for model in ("archer", "dapo", "grpo"):
        row = _row(board, model)
        assert approx(row["train_s"], 6.0)  # sum of time/step 1 + 2 + 3
        assert approx(row["device_h"], 6.0 / 3600)
        assert approx(row["gen_tokens"], 960.0)  # 4 groups x 4 x (10 + 20 + 30)
        assert approx(row["discarded"], 24.0)  # (0 + 2 + 4) groups x 4
    assert any("archer.num_devices" in n for n in board.notes)  # said, not hidden


def test_device_hours_use_the_trainers_device_tag(tmp_path):
    """A training run tagged with 2 devices (a 2-process FSDP run) counts twice the
    device-hours of its training seconds; untagged runs count one device, and the notes say
    so until every run carries the tag."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ids = fabricate_study(uri, tmp_path)
    client = MlflowClient(uri)
    for key, rid in ids.items():
        client.set_tag(rid, "archer.device_kind", "cpu")
        if key.startswith("archer/"):
            client.set_tag(rid, "archer.num_devices", "2")
    board = build_leaderboard(uri, studies=["baselines"])
    assert approx(_row(board, "archer")["device_h"], 2 * 6.0 / 3600)
    assert approx(_row(board, "grpo")["device_h"], 6.0 / 3600)
    assert any("archer.num_devices" in n for n in board.notes)
    assert any("CPU-process hours" in n for n in board.notes)
    for key, rid in ids.items():
        if not key.startswith("archer/"):
            client.set_tag(rid, "archer.num_devices", "1")
    board = build_leaderboard(uri, studies=["baselines"])
    assert not any("archer.num_devices" in n for n in board.notes)


def test_exports(board, tmp_path):
    md = board.to_markdown()
    lines = md.splitlines()
    assert lines[0].startswith("| model | seeds | gsm8k avg@2 % [95% CI]")
    assert "Δ vs grpo" in lines[0]
    assert lines[2].startswith("| archer | 2 | 79.2 [")
    assert "+45.8 [" in lines[2] and "p=0.5" in lines[2]
    assert "| grpo | 2 | 33.3 [" in md and "baseline" in md
    assert board.contracts["gsm8k"] in md and "(test slice)" in md
    csv_path = board.write(tmp_path / "lb.csv")
    back = pd.read_csv(csv_path, keep_default_na=False, na_values=[""])
    assert list(back["model"]) == ["archer", "dapo", "grpo"]
    assert np.allclose(back["gsm8k avg@2"], [19 / 24, 3 / 8, 1 / 3])
    html = board.write(tmp_path / "lb.html").read_text()
    assert html.count('<tr data-model="') == 3 and 'id="leaderboard"' in html
    with pytest.raises(ValueError, match="unknown leaderboard format '.txt'"):
        board.write(tmp_path / "lb.txt")


def test_mixing_contracts_is_refused(tmp_path):
    from dashboard_fixtures import make_contract

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    grpo = {"grpo": [[[1, 0], [0, 0], [1, 1], [0, 0], [0, 0], [1, 0]]]}
    archer = {"archer": [[[1, 1], [1, 0], [1, 1], [0, 1], [1, 0], [1, 1]]]}
    fabricate_study(uri, tmp_path, "cold", grpo, temperature=0.8, curves=False)
    fabricate_study(uri, tmp_path, "hot", archer, temperature=1.0, curves=False)
    with pytest.raises(ContractMismatch) as err:
        build_leaderboard(uri)
    msg = str(err.value)
    assert "gsm8k" in msg and "2 different evaluation contracts" in msg
    assert "temperature: '0.8' != '1.0'" in msg or "temperature: '1.0' != '0.8'" in msg
    assert "seed 0" in msg and ("archer" in msg or "grpo" in msg)
    assert "--contract gsm8k=" in msg
    # one study alone is fine; a chosen contract keeps only its rows
    assert list(build_leaderboard(uri, studies=["hot"]).table["model"]) == ["archer"]
    hot = make_contract(temperature=1.0).hash
    board = build_leaderboard(uri, contracts={"gsm8k": hot})
    assert list(board.table["model"]) == ["archer"] and board.contracts == {"gsm8k": hot}
    with pytest.raises(ValueError, match="no evaluation under contract deadbeef"):
        build_leaderboard(uri, contracts={"gsm8k": "deadbeef"})
    forced = build_leaderboard(uri, force=True)  # mixed on purpose: said in the notes
    assert sorted(forced.table["model"]) == ["cold/grpo", "hot/archer"]
    assert any(n.startswith("FORCED:") and "temperature" in n for n in forced.notes)
    assert "FORCED:" in forced.to_markdown()


def test_cli(baselines_store, tmp_path, capsys):
    from archer_cli.main import main

    out = tmp_path / "lb.md"
    rc = main(["leaderboard", f"tracking.uri={baselines_store.uri}", "study=baselines",
               "baseline=grpo", f"out_file={out}", "format=csv"])
    assert rc == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(io.StringIO(printed.split("wrote ")[0]))
    assert list(table["model"]) == ["archer", "dapo", "grpo"]
    assert out.read_text().startswith("| model | seeds |")
    assert main(["leaderboard", f"tracking.uri={baselines_store.uri}", "study=nope"]) == 2
    assert "no runs of study ['nope']" in capsys.readouterr().err
    missing = tmp_path / "none.db"
    assert main(["leaderboard", f"tracking.uri=sqlite:///{missing}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not missing.exists()  # a reader never creates a store


def test_readers_refuse_a_file_that_is_not_an_mlflow_store(tmp_path, capsys, monkeypatch):
    """A 0-byte, foreign or absent SQLite file named by --tracking-uri, $MLFLOW_TRACKING_URI
    or the default is an error naming it, and stays as it was (MLflow would make it a store);
    `dashboard build` writes no page."""
    import sqlite3

    from archer_cli.main import main

    site = tmp_path / "site"
    readers = (["leaderboard"], ["dashboard", "build", f"out_dir={site}"])
    empty = tmp_path / "empty.db"
    empty.touch()
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as con:
        con.execute("CREATE TABLE t (x)")
    foreign_bytes = foreign.read_bytes()
    for argv in readers:
        assert main([*argv, f"tracking.uri=sqlite:///{empty}"]) == 2
        assert (f"archer: error: MLflow store sqlite:///{empty} (from --tracking-uri): {empty} "
                "is empty (0 bytes), not an MLflow database") in capsys.readouterr().err
        assert empty.stat().st_size == 0
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{foreign}")
        assert main(argv) == 2
        assert (f"(from $MLFLOW_TRACKING_URI): {foreign} is an SQLite database without "
                "MLflow's tables") in capsys.readouterr().err
        assert foreign.read_bytes() == foreign_bytes
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
        monkeypatch.chdir(tmp_path)  # the default, sqlite:///runs/mlflow.db, is not there
        assert main(argv) == 2
        assert (f"MLflow store sqlite:///runs/mlflow.db (from the default) does not exist (no "
                f"file {tmp_path / 'runs' / 'mlflow.db'})") in capsys.readouterr().err
        assert not (tmp_path / "runs").exists()
    assert not site.exists()  # the store is checked before any page is written


def test_leaderboard_out_that_is_a_directory_is_an_error(baselines_store, tmp_path, capsys):
    from archer_cli.main import main

    folder = tmp_path / "lb.md"
    folder.mkdir()
    md = tmp_path / "lb2.md"
    rc = main(["leaderboard", f"tracking.uri={baselines_store.uri}", f"out_file={md}",
               f"out_file={folder}"])
    assert rc == 2
    assert (f"archer: error: out_file='{folder}' is an existing directory, not a file"
            in capsys.readouterr().err)
    assert not md.exists() and not any(folder.iterdir())  # checked before anything is written
    # an unknown extension in any out_file: refused before the first one is written
    rc = main(["leaderboard", f"tracking.uri={baselines_store.uri}", f"out_file={md}",
               f"out_file={tmp_path / 'lb.txt'}"])
    assert rc == 2
    assert "unknown leaderboard format '.txt'" in capsys.readouterr().err
    assert not md.exists() and not (tmp_path / "lb.txt").exists()


def test_a_store_mlflow_refuses_is_an_error_not_a_traceback(tmp_path, capsys, monkeypatch):
    """A directory as the tracking URI (MLflow's file store, which MLflow refuses): MLflow's
    own message as a usage error (exit 2)."""
    from archer_cli.main import main

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    folder = tmp_path / "mlruns"
    folder.mkdir()
    assert main(["leaderboard", f"tracking.uri={folder}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("archer: error: MLflow: ") and "Traceback" not in err
