"""The static dashboards over a fabricated study and Optuna sweep: pages, plots with the
numbers of the runs, no network at view time, read-only over MLflow."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import pytest
from dashboard_fixtures import approx, fabricate_optuna, fabricate_study

from archer.tracking import reader as D
from dashboards.site import (
    CURVE_PANELS,
    PLOTLY_JS,
    axis_figure,
    build_site,
    curves_figure,
    study_curves,
    study_trials,
)

pytestmark = pytest.mark.slow


def test_pages_written(site):
    assert list(site.paths)[0] == "index"
    assert {"index", "leaderboard_md", "leaderboard_csv", "leaderboard_html",
            "study-baselines", "optuna-archer_clip_kl"} <= set(site.paths)
    index = site.paths["index"].read_text()
    assert 'id="leaderboard"' in index and 'id="leaderboard-plot"' in index
    assert index.count('<tr data-model="') == 3
    assert 'href="study-baselines.html"' in index and 'href="optuna-archer_clip_kl.html"' in index
    study = site.paths["study-baselines"].read_text()
    assert 'id="axis-algo"' in study and 'id="curves"' in study
    for _, metrics in CURVE_PANELS:  # every per-token-class curve is plotted
        for metric, _cls in metrics:
            assert metric.replace("/", "\\u002f") in study, metric  # JSON-escaped
    optuna_page = site.paths["optuna-archer_clip_kl"].read_text()
    assert 'id="optuna-history"' in optuna_page and 'id="optuna-importances"' in optuna_page


def test_no_network_at_view_time(site):
    js = site.dir / PLOTLY_JS
    assert js.stat().st_size > 1_000_000 and "Plotly" in js.read_text()[:5000] + "Plotly"
    for page in site.dir.glob("*.html"):
        text = page.read_text()
        srcs = re.findall(r'<script[^>]*\ssrc="([^"]+)"', text)
        assert all(s == PLOTLY_JS for s in srcs), (page.name, srcs)
        assert "cdn.plot.ly" not in text and "https://cdn" not in text, page.name


def test_axis_plot_has_seed_means_and_error_bars(site):
    client = D.open_client(site.uri)
    runs = D.search_runs_frame(client, D.experiment_ids(client))
    trials = study_trials(runs, "baselines").rename(columns={"metrics.objective": "objective"})
    assert sorted(ax["algo"] for ax in trials["axes"]) == ["archer"] * 2 + ["dapo"] * 2 + [
        "grpo"] * 2
    fig = axis_figure(trials, "algo", ["objective"])
    mean_trace, seeds_trace = fig.data[0], fig.data[1]
    assert list(mean_trace.x) == ["archer", "dapo", "grpo"]
    assert [round(v, 9) for v in mean_trace.y] == [round(19 / 24, 9), 0.375, round(1 / 3, 9)]
    # error bars: the 95% t-interval over the 2 seeds, t(0.975, 1) = 12.706 x sd / sqrt(2)
    sd = (5 / 6 - 4.5 / 6) / math.sqrt(2)
    half = 12.7062047361747 * sd / math.sqrt(2)
    assert all(approx(a, b, 1e-6) for a, b in zip(mean_trace.error_y.array, [half, half, 0.0]))
    assert len(seeds_trace.x) == 6  # every seed shown as a dot
    assert tuple(fig.layout.yaxis.range) == (0, 1)  # an accuracy: the axis starts at 0


def test_axis_plot_starts_at_a_baseline_or_says_it_is_zoomed():
    import pandas as pd

    from dashboards.site import y_baseline

    assert y_baseline("eval/gsm8k/avg_at_4", [0.39, 0.405]) == "rate"
    assert y_baseline("train_s", [120.0, 130.0]) == "zero"
    assert y_baseline("objective", [-2.0, -1.5]) == "zoomed"
    trials = pd.DataFrame({"axes": [{"algo": "a"}, {"algo": "b"}], "neg": [-2.0, -1.5],
                           "eval/x/avg_at_2": [0.39, 0.405]})
    fig = axis_figure(trials, "algo", ["neg", "eval/x/avg_at_2"])
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["neg (y-axis zoomed to the data)", "eval/x/avg_at_2"]
    assert fig.layout.yaxis.range is None and tuple(fig.layout.yaxis2.range) == (0, 1)
    assert list(fig.data[0].error_y.array) == [0.0, 0.0]  # one seed each: no seed CI


def test_a_study_run_twice_plots_each_seed_once(tmp_path):
    """Two runs of one study into one store: the axis plot keeps the latest trial of each
    (axes, seed), not both."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fabricate_study(uri, tmp_path / "first", curves=False)
    second = fabricate_study(uri, tmp_path / "second", curves=False,
                             presets={"grpo": [[[1, 1]] * 6, [[0, 0]] * 6]})
    client = D.open_client(uri)
    runs = D.search_runs_frame(client, D.experiment_ids(client))
    trials = study_trials(runs, "baselines")
    grpo = trials[[ax["algo"] == "grpo" for ax in trials["axes"]]]
    assert sorted(grpo["run_id"]) == sorted([second["grpo/0"], second["grpo/1"]])
    assert len(trials) == 6  # archer and dapo from the first run, grpo from the second
    fig = axis_figure(trials.rename(columns={"metrics.objective": "objective"}), "algo",
                      ["objective"])
    assert len(fig.data[1].x) == 6 and list(fig.data[0].y)[2] == 0.5


def test_curves_are_seed_means(site):
    client = D.open_client(site.uri)
    runs = D.search_runs_frame(client, D.experiment_ids(client))
    curves = study_curves(client, study_trials(runs, "baselines"))
    assert sorted(curves) == ["archer", "dapo", "grpo"]
    wanted = {m for _, ms in CURVE_PANELS for m, _ in ms}
    assert set(curves["archer"]) == wanted
    # conftest: entropy_high = 2 + 0.1 * (1 + preset index) + 0.01 * seed - 0.1 * step0;
    # archer is preset 1, seeds 0 and 1 -> 2.205 at step 1, 2.005 at step 3
    ent = curves["archer"]["actor/entropy_high_entropy"]
    assert list(ent) == [1, 2, 3]
    assert approx(ent[1], 2.205) and approx(ent[3], 2.005)
    assert curves["grpo"]["response/length_mean"] == {1: 10.0, 2: 20.0, 3: 30.0}
    fig = curves_figure(curves)
    dashes = {t.line.dash for t in fig.data if "low" in t.hovertemplate.split("<br>")[0]}
    assert dashes == {"dash"}  # low-entropy tokens dashed, the rest solid


def test_build_is_read_only(site, tmp_path):
    db = Path(site.uri[len("sqlite:///"):])
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    build_site(site.uri, tmp_path / "again", optuna_storage=site.storage)
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_contract_refusal_shown_on_the_page(tmp_path):
    from dashboard_fixtures import fabricate_study

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    one = [[[1, 0], [0, 0], [1, 1], [0, 0], [0, 0], [1, 0]]]
    fabricate_study(uri, tmp_path, "cold", {"grpo": one}, temperature=0.8, curves=False)
    fabricate_study(uri, tmp_path, "hot", {"archer": one}, temperature=1.0, curves=False)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    fabricate_optuna(storage, n_trials=3)
    paths = build_site(uri, tmp_path / "site", optuna_storage=storage)
    index = paths["index"].read_text()
    assert 'class="refused"' in index and "temperature" in index
    assert "leaderboard_md" not in paths  # no table was exported
    # each study page still has its own (single-contract) leaderboard
    assert 'id="leaderboard"' in paths["study-cold"].read_text()


@pytest.mark.parametrize("command", ["build", "serve"])
def test_dashboard_out_that_is_a_file_is_an_error(baselines_store, tmp_path, capsys, command):
    from archer_cli.main import main

    existing = tmp_path / "notes.txt"
    existing.write_text("keep me\n")
    for out, what in ((existing, "is"),
                      (existing / "site", f"is inside {str(existing)!r}, which is")):
        rc = main(["dashboard", command, f"tracking.uri={baselines_store.uri}", f"out_dir={out}"])
        assert rc == 2
        assert (f"archer: error: out_dir='{out}' {what} an existing file, not a directory; "
                "choose another site directory") in capsys.readouterr().err
    assert existing.read_text() == "keep me\n"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # nothing written


def test_an_optuna_storage_asked_for_by_name_must_hold_sweeps(baselines_store, tmp_path,
                                                              capsys):
    """--optuna-storage naming a missing or empty SQLite file is an error naming it (it used
    to build a site without the sweeps, silently); the file is left as it was, no site made."""
    from archer_cli.main import main

    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    for path, what in ((tmp_path / "missing.db", "does not exist"),
                       (empty, "is empty (0 bytes)")):
        rc = main(["dashboard", "build", f"tracking.uri={baselines_store.uri}",
                   f"optuna.storage=sqlite:///{path}", f"out_dir={tmp_path / 'site'}"])
        assert rc == 2
        assert (f"archer: error: --optuna-storage sqlite:///{path}: {path} {what}, so it "
                "holds no Optuna sweep") in capsys.readouterr().err
    assert not (tmp_path / "missing.db").exists() and empty.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]
