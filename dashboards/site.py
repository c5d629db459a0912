"""Static dashboards over MLflow (and the Optuna storage), read-only, as HTML pages with
interactive plotly plots. Nothing is fetched at view time: ``plotly.min.js`` is written once
beside the pages and every page loads it by relative path (no CDN), so the site works from
``archer dashboard serve``, any static file server, or ``file://``.

Pages (``build_site(tracking_uri, out_dir)``):

- ``index.html``: the leaderboard (:mod:`dashboards.leaderboard`: seeds aggregated, CIs,
  paired deltas, compute columns; a contract refusal is shown instead of the table), a plot
  of avg@K with its CI per benchmark, and links to every other page;
  ``leaderboard.md`` / ``.csv`` / ``.html`` beside it.
- ``study-<name>.html`` per study: the study's metrics (objective, per-benchmark avg@K)
  against each ablation axis (every ``archer.axes`` key and the variant that takes more than
  one value; mean over seeds with its 95% t-interval over seeds as error bars, each seed as
  a dot; accuracies on a 0..1 axis, other non-negative metrics from 0, and an axis zoomed to
  the data says so in its title),
  and training curves per token class (entropy, clip fraction, KL, PG contribution of the
  high- and low-entropy tokens; repetition ratio, response length, reward), mean over seeds.
- ``optuna-<name>.html`` per Optuna study in the storage: optimisation history and
  parameter importances (fANOVA, seed 0).
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from archer.extras import require
from archer.tracking import reader as D

log = logging.getLogger(__name__)

PLOTLY_JS = "plotly.min.js"
# (panel title, [(metric, token class or None)]): training curves per token class.
CURVE_PANELS: list[tuple[str, list[tuple[str, str | None]]]] = [
    ("entropy", [("actor/entropy_high_entropy", "high"), ("actor/entropy_low_entropy", "low")]),
    ("clip fraction (upper)", [("actor/clipfrac_high_entropy_upper", "high"),
                               ("actor/clipfrac_low_entropy_upper", "low")]),
    ("KL to reference", [("actor/kl_high_entropy", "high"), ("actor/kl_low_entropy", "low")]),
    ("PG contribution", [("actor/pg_contrib_high_entropy", "high"),
                         ("actor/pg_contrib_low_entropy", "low")]),
    ("repetition ratio", [("response/repetition_ratio", None)]),
    ("response length (tokens)", [("response/length_mean", None)]),
    ("reward", [("reward/mean", None)]),
]
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table.leaderboard{border-collapse:collapse;font-size:14px}
table.leaderboard td,table.leaderboard th{border:1px solid #ccc;padding:3px 8px;text-align:right}
table.leaderboard td:first-child,table.leaderboard th:first-child{text-align:left}
table.leaderboard th{background:#f3f3f3}
.refused{background:#fee;border:1px solid #c66;padding:.6em;white-space:pre-wrap}
ul.notes{font-size:13px;color:#555}
nav a{margin-right:1em}
"""
_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "_"


def _page(title: str, body: str, nav: list[tuple[str, str]]) -> str:
    links = "".join(f'<a href="{html.escape(h)}">{html.escape(t)}</a>' for t, h in nav)
    # window.__archerErrors collects uncaught errors so a browser test can read them back
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><link rel=\"icon\" href=\"data:,\"><style>{_STYLE}</style>"
            "<script>window.__archerErrors=[];window.addEventListener('error',"
            "function(e){window.__archerErrors.push(String(e.message))});</script>"
            f"<script src=\"{PLOTLY_JS}\"></script></head><body>\n<nav>{links}</nav>\n"
            f"<h1>{html.escape(title)}</h1>\n{body}\n"
            f"<p class=\"notes\">Built {time.strftime('%Y-%m-%d %H:%M:%S')} from MLflow "
            "(read-only).</p></body></html>\n")


def _fig_html(fig, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


# ------------------------------------------------------------------------------------------
# study pages
# ------------------------------------------------------------------------------------------


def trial_axes(tags: dict[str, Any]) -> dict[str, str]:
    """``{axis: value}`` of a trial: every ``key=value`` of ``archer.axes`` plus the variant."""
    out = {}
    for item in str(tags.get("archer.axes") or "").split():
        if "=" in item:
            k, v = item.split("=", 1)
            out[k] = v
    variant = tags.get("archer.variant")
    if variant and variant != "-":
        out["variant"] = str(variant)
    return out


def _sort_values(values: list[str]) -> list[str]:
    def key(v: str):
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)
    return sorted(values, key=key)


_RATE_RE = re.compile(r"accuracy|avg_at_|pass_at_|maj_at_|^objective$")


def _need(module: str):
    """An optional package a page needs, imported: plotly (the ``dashboards`` extra) or
    optuna (``sweeps``); missing, an error naming the extra."""
    extra = "sweeps" if module.split(".")[0] == "optuna" else "dashboards"
    return require(module, extra, "archer dashboard")


def seed_mean_ci(values: list[float], level: float = 0.95) -> tuple[float | None, float]:
    """Mean over seeds and the half-width of its ``level`` t-interval (0 for one seed: no
    seed variance measured)."""
    if not values:
        return None, 0.0
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, 0.0
    from scipy.stats import t

    sem = float(np.std(values, ddof=1)) / math.sqrt(len(values))
    return mean, float(t.ppf(0.5 + level / 2, len(values) - 1)) * sem


def y_baseline(metric: str, values: list[float]) -> str:
    """How a metric's y-axis starts: ``"rate"`` (an accuracy-like fraction: the axis is
    0..1), ``"zero"`` (non-negative: the axis starts at 0) or ``"zoomed"`` (the axis follows
    the data, and the subplot's title says so)."""
    finite = [v for v in values if _finite(v)]
    if finite and _RATE_RE.search(metric) and 0.0 <= min(finite) and max(finite) <= 1.0:
        return "rate"
    if finite and min(finite) >= 0.0:
        return "zero"
    return "zoomed"


def axis_figure(trials: pd.DataFrame, axis: str, metrics: list[str]):
    """Each metric (one subplot) against ``axis``; one trace per combination of the other
    axes; mean over seeds with its 95% t-interval over seeds as error bars, seeds as dots.
    Accuracies are drawn on a 0..1 axis, other non-negative metrics from 0; an axis that
    follows the data says so in its title."""
    go = _need("plotly.graph_objects")
    make_subplots = _need("plotly.subplots").make_subplots

    bases = {m: y_baseline(m, list(trials[m])) for m in metrics}
    titles = [m + (" (y-axis zoomed to the data)" if bases[m] == "zoomed" else "")
              for m in metrics]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=titles)
    others = sorted({k for ax in trials["axes"] for k in ax if k != axis})
    xs = _sort_values(sorted({ax.get(axis, "-") for ax in trials["axes"]}))
    numeric = all(_finite(_float_or_none(x)) for x in xs)  # a line only between numbers
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ax in zip(trials.index, trials["axes"]):
        groups[", ".join(f"{k}={ax.get(k, '-')}" for k in others) or "all"].append(i)
    for gi, (gname, idx) in enumerate(sorted(groups.items())):
        color = _COLORS[gi % len(_COLORS)]
        sub = trials.loc[idx]
        for mi, metric in enumerate(metrics):
            means, half, sx, sy = [], [], [], []
            for x in xs:
                vals = [v for ax, v in zip(sub["axes"], sub[metric])
                        if ax.get(axis, "-") == x and _finite(v)]
                mean, h = seed_mean_ci(vals)
                means.append(mean)
                half.append(h)
                sx += [x] * len(vals)
                sy += vals
            fig.add_trace(go.Scatter(
                x=xs, y=means, mode="lines+markers" if numeric else "markers", name=gname,
                legendgroup=gname, showlegend=mi == 0, line={"color": color},
                error_y={"type": "data", "array": half, "visible": True},
                hovertemplate="%{x}: %{y:.4g} ± %{error_y.array:.3g} (95% CI over seeds)"
                              "<extra></extra>"),
                row=1, col=mi + 1)
            fig.add_trace(go.Scatter(
                x=sx, y=sy, mode="markers", name=f"{gname} (seeds)", legendgroup=gname,
                showlegend=False, marker={"color": color, "size": 6, "opacity": 0.45},
                hovertemplate="%{x}: %{y:.4g} (one seed)<extra></extra>"),
                row=1, col=mi + 1)
    for mi, metric in enumerate(metrics):
        if bases[metric] == "rate":
            fig.update_yaxes(range=[0, 1], row=1, col=mi + 1)
        elif bases[metric] == "zero":
            fig.update_yaxes(rangemode="tozero", row=1, col=mi + 1)
    fig.update_xaxes(type="category", title_text=axis)
    fig.update_layout(height=380, margin={"t": 50, "b": 40},
                      title=f"against {axis} (mean over seeds, 95% CI over seeds; dots: seeds)")
    return fig


def curves_figure(curves: dict[str, dict[str, dict[int, float]]]):
    """Training curves per token class: ``curves[label][metric] = {step: mean over seeds}``."""
    go = _need("plotly.graph_objects")
    make_subplots = _need("plotly.subplots").make_subplots

    rows = math.ceil(len(CURVE_PANELS) / 2)
    fig = make_subplots(rows=rows, cols=2, subplot_titles=[p[0] for p in CURVE_PANELS],
                        vertical_spacing=0.08)
    for li, (label, series) in enumerate(sorted(curves.items())):
        color = _COLORS[li % len(_COLORS)]
        first = True
        for pi, (_, metrics) in enumerate(CURVE_PANELS):
            for metric, cls in metrics:
                pts = series.get(metric)
                if not pts:
                    continue
                steps = sorted(pts)
                fig.add_trace(go.Scatter(
                    x=steps, y=[pts[s] for s in steps], mode="lines",
                    name=label, legendgroup=label, showlegend=first,
                    line={"color": color, "dash": "dash" if cls == "low" else "solid"},
                    hovertemplate=f"{label} {cls or ''} {metric}<br>step %{{x}}: %{{y:.4g}}"
                                  "<extra></extra>"),
                    row=pi // 2 + 1, col=pi % 2 + 1)
                first = False
    fig.update_xaxes(title_text="step")
    fig.update_layout(height=300 * rows, margin={"t": 60},
                      title="training curves (solid: high-entropy tokens, dashed: "
                            "low-entropy tokens; mean over seeds)")
    return fig


def _float_or_none(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def study_trials(runs: pd.DataFrame, study: str) -> pd.DataFrame:
    """The study's trial runs, one per (axes, seed): when a study was run more than once into
    one store, the latest run of each trial (as the leaderboard keeps the latest
    evaluation), so a seed is never plotted twice."""
    sel = runs[(runs.get("tags.archer.kind") == "trial") & (runs.get("tags.archer.study") == study)]
    sel = sel.copy()
    from dashboards.leaderboard import row_label

    sel["axes"] = [trial_axes(D.prefixed(r, "tags")) for _, r in sel.iterrows()]
    sel["label"] = [row_label(D.prefixed(r, "tags"), r["run_name"]) for _, r in sel.iterrows()]
    if sel.empty:
        return sel
    seeds = sel["tags.archer.seed"] if "tags.archer.seed" in sel else pd.Series(None, sel.index)
    sel["_trial_key"] = [
        (tuple(sorted(ax.items())), str(seed) if isinstance(seed, str) else f"run:{rid}")
        for ax, seed, rid in zip(sel["axes"], seeds, sel["run_id"])]
    sel = sel.sort_values("start_time", kind="stable")
    sel = sel.drop_duplicates("_trial_key", keep="last").drop(columns="_trial_key")
    return sel.sort_index()


def study_metrics(trials: pd.DataFrame) -> list[str]:
    """Objective first, then per-benchmark avg@K, then val/accuracy."""
    cols = [c for c in trials.columns if c.startswith("metrics.")]
    out = [c for c in ("metrics.objective",) if c in cols]
    out += sorted(c for c in cols if re.match(r"metrics\.eval/[^/]+/avg_at_\d+$", c))
    out += [c for c in ("metrics.val/accuracy",) if c in cols and "metrics.objective" not in cols]
    return [c for c in out if trials[c].notna().any()]


def study_curves(client, trials: pd.DataFrame) -> dict[str, dict[str, dict[int, float]]]:
    """``{label: {metric: {step: mean over the label's seeds}}}`` for the curve metrics."""
    curves: dict[str, dict[str, dict[int, float]]] = {}
    per_label: dict[str, list[str]] = defaultdict(list)
    for _, r in trials.iterrows():
        per_label[r["label"]].append(r["run_id"])
    for label, rids in per_label.items():
        for _, metrics in CURVE_PANELS:
            for metric, _cls in metrics:
                hists = [D.metric_history(client, rid, metric) for rid in rids]
                steps = sorted({s for h in hists for s in h})
                if steps:
                    curves.setdefault(label, {})[metric] = {
                        s: float(np.mean([h[s] for h in hists if s in h])) for s in steps}
    return curves


def build_study_page(client, runs: pd.DataFrame, study: str, out_dir: Path,
                     nav: list[tuple[str, str]]) -> Path:
    from dashboards.leaderboard import build_leaderboard

    trials = study_trials(runs, study)
    parts = [f"<p>{len(trials)} trial runs in MLflow experiment "
             f"{html.escape(', '.join(sorted(set(trials['experiment']))))}.</p>"]
    try:
        board = build_leaderboard(client=client, runs=runs, studies=[study])
        parts.append("<h2>Leaderboard</h2>" + board.to_html(full_page=False))
    except ValueError as err:
        parts.append(f'<h2>Leaderboard</h2><div class="refused">{html.escape(str(err))}</div>')
    metrics = study_metrics(trials)
    axes = sorted({k for ax in trials["axes"] for k in ax})
    varying = [a for a in axes if len({ax.get(a, "-") for ax in trials["axes"]}) > 1]
    parts.append("<h2>Metrics against each ablation axis</h2>")
    if not metrics or not varying:
        parts.append("<p>No axis takes more than one value, or no trial logged a metric.</p>")
    else:
        renamed = trials.rename(columns={m: m[len("metrics."):] for m in metrics})
        names = [m[len("metrics."):] for m in metrics]
        for a in varying:
            parts.append(_fig_html(axis_figure(renamed, a, names), f"axis-{_slug(a)}"))
    curves = study_curves(client, trials)
    parts.append("<h2>Training curves per token class</h2>")
    if curves:
        parts.append(_fig_html(curves_figure(curves), "curves"))
    else:
        parts.append("<p>No training metrics logged yet.</p>")
    path = out_dir / f"study-{_slug(study)}.html"
    path.write_text(_page(f"Study {study}", "\n".join(parts), nav))
    return path


# ------------------------------------------------------------------------------------------
# Optuna
# ------------------------------------------------------------------------------------------


def optuna_file_problem(storage: str) -> str | None:
    """Why a ``sqlite:///`` Optuna storage holds no sweep (Optuna would make a storage
    there: it is not opened then); None when it may, or for another kind of storage."""
    if not storage.startswith("sqlite:///"):
        return None
    path = Path(storage[len("sqlite:///"):]).expanduser()
    if not path.exists():
        return f"{path.absolute()} does not exist"
    if not path.is_file():
        return f"{path.absolute()} is not a file"
    return f"{path.absolute()} is empty (0 bytes)" if path.stat().st_size == 0 else None


def optuna_studies(storage: str | None) -> list[str]:
    if not storage or optuna_file_problem(storage):
        return []
    optuna = _need("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage))


def build_optuna_page(storage: str, name: str, out_dir: Path,
                      nav: list[tuple[str, str]]) -> Path:
    optuna = _need("optuna")
    vis = _need("optuna.visualization")
    FanovaImportanceEvaluator = _need("optuna.importance").FanovaImportanceEvaluator

    study = optuna.load_study(study_name=name, storage=storage)
    multi = len(study.directions) > 1
    kw: dict[str, Any] = {}
    if multi:  # the first objective is the metric; the second (if any) is compute
        kw = {"target": lambda t: t.values[0], "target_name": "objective"}
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    parts = ["<p>" + ", ".join(f"{k.lower()}: {v}" for k, v in states.items() if v) + "</p>"]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        parts.append("<h2>Optimisation history</h2>")
        parts.append(_fig_html(vis.plot_optimization_history(study, **kw), "optuna-history"))
        try:
            fig = vis.plot_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0),
                                             **kw)
            parts.append("<h2>Parameter importances (fANOVA)</h2>")
            parts.append(_fig_html(fig, "optuna-importances"))
        except (ValueError, RuntimeError) as err:
            parts.append(f"<p>Parameter importances unavailable: {html.escape(str(err))}</p>")
        best = ([t for t in study.best_trials] if multi else [study.best_trial])
        rows = "".join(f"<tr><td>{t.number}</td><td>{html.escape(str(t.values))}</td>"
                       f"<td>{html.escape(json.dumps(t.params, default=str))}</td></tr>"
                       for t in best)
        parts.append('<h2>Best</h2><table class="leaderboard"><tr><th>trial</th><th>values'
                     f"</th><th>params</th></tr>{rows}</table>")
    else:
        parts.append("<p>No completed trials yet.</p>")
    path = out_dir / f"optuna-{_slug(name)}.html"
    path.write_text(_page(f"Optuna study {name}", "\n".join(parts), nav))
    return path


# ------------------------------------------------------------------------------------------
# index
# ------------------------------------------------------------------------------------------


def leaderboard_figure(board):
    """avg@K with its 95% CI per benchmark, one bar per row."""
    go = _need("plotly.graph_objects")
    make_subplots = _need("plotly.subplots").make_subplots

    fig = make_subplots(rows=1, cols=len(board.benchmarks),
                        subplot_titles=[f"{b} avg@{board.ks[b]} (95% CI)"
                                        for b in board.benchmarks])
    t = board.table
    for i, b in enumerate(board.benchmarks):
        col = f"{b} avg@{board.ks[b]}"
        y = t[col].to_numpy(dtype=float)
        lo = t[f"{b} ci_low"].to_numpy(dtype=float)
        hi = t[f"{b} ci_high"].to_numpy(dtype=float)
        fig.add_trace(go.Bar(
            x=list(t["model"]), y=y, name=b, showlegend=False,
            marker={"color": [_COLORS[j % len(_COLORS)] for j in range(len(t))]},
            error_y={"type": "data", "symmetric": False, "array": np.nan_to_num(hi - y),
                     "arrayminus": np.nan_to_num(y - lo), "visible": True}),
            row=1, col=i + 1)
        fig.update_yaxes(range=[0, 1], tickformat=".0%", row=1, col=i + 1)
    fig.update_layout(height=380, margin={"t": 50})
    return fig


def build_site(tracking_uri: str | None, out_dir: str | Path, *,
               optuna_storage: str | None = None, experiments: list[str] | None = None,
               baseline: str | None = "auto") -> dict[str, Path]:
    """Write every page into ``out_dir``; returns ``{page name: path}`` (``index``,
    ``leaderboard_md``/``_csv``/``_html`` when there is a leaderboard, ``study-<name>``,
    ``optuna-<name>``)."""
    plotly_offline = _need("plotly.offline")

    from dashboards.leaderboard import build_leaderboard

    client = D.open_client(tracking_uri)  # first: a store that is not there writes nothing
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = out / PLOTLY_JS
    plotly_js = plotly_offline.get_plotlyjs()
    if not js.is_file() or js.stat().st_size != len(plotly_js.encode()):
        js.write_text(plotly_js)
    runs = D.search_runs_frame(client, D.experiment_ids(client, experiments))
    studies = sorted(set(runs.get("tags.archer.study", pd.Series(dtype=str)).dropna())) \
        if not runs.empty else []
    studies = [s for s in studies if ((runs["tags.archer.study"] == s)
                                      & (runs["tags.archer.kind"] == "trial")).any()]
    sweeps = optuna_studies(optuna_storage)
    nav = [("Leaderboard", "index.html")] + [(f"study {s}", f"study-{_slug(s)}.html")
                                              for s in studies]
    nav += [(f"optuna {s}", f"optuna-{_slug(s)}.html") for s in sweeps]
    paths: dict[str, Path] = {}
    parts = []
    try:
        board = build_leaderboard(client=client, runs=runs, baseline=baseline)
        parts.append(board.to_html(full_page=False))
        parts.append(_fig_html(leaderboard_figure(board), "leaderboard-plot"))
        for ext in ("md", "csv", "html"):
            paths[f"leaderboard_{ext}"] = board.write(out / f"leaderboard.{ext}")
    except ValueError as err:
        parts.append(f'<div class="refused">{html.escape(str(err))}</div>')
    for s in studies:
        paths[f"study-{s}"] = build_study_page(client, runs, s, out, nav)
    for s in sweeps:
        paths[f"optuna-{s}"] = build_optuna_page(optuna_storage, s, out, nav)  # type: ignore[arg-type]
    links = "".join(f'<li><a href="{html.escape(h)}">{html.escape(t)}</a></li>'
                    for t, h in nav[1:])
    if links:
        parts.append(f"<h2>Pages</h2><ul>{links}</ul>")
    index = out / "index.html"
    index.write_text(_page("Archer leaderboard", "\n".join(parts), nav))
    paths = {"index": index} | paths
    return paths


def build_all(tracking_uri: str | None, out_dir: str | Path,
              optuna_storage: str | None = None) -> dict[str, Path]:
    """Leaderboard exports and every dashboard page (what ``make demo`` calls after its
    study); returns their paths, ``index`` first."""
    from experiments.sweep import DEFAULT_STORAGE

    storage = optuna_storage
    if storage is None:
        path = Path(DEFAULT_STORAGE[len("sqlite:///"):])
        storage = DEFAULT_STORAGE if path.is_file() else None
    elif problem := optuna_file_problem(storage):  # asked for by name: it must be there
        raise FileNotFoundError(f"--optuna-storage {storage}: {problem}, so it holds no "
                                "Optuna sweep; left untouched (run `archer sweep` first, or "
                                "leave --optuna-storage out)")
    return build_site(tracking_uri, out_dir, optuna_storage=storage)
