"""``archer report <study>``: the results of a finished study, from MLflow, never by hand.

Writes ``<out_dir>/<study>.md`` (the page), ``<out_dir>/<study>.json`` (the numbers) and PNG
figures ``<out_dir>/<study>/*.png`` (:mod:`experiments.report_figures`). Everything is read
through :mod:`archer.tracking.reader` from the runs :class:`archer.tracking.hierarchy.
StudyTracker` wrote: the study's parent run (``archer.kind=study``, params ``n_trials``,
``seeds``, ``objective``, ``trial_overrides``; artifact ``study.yaml``), one child run per
trial (tags ``archer.preset``/``archer.variant``/``archer.axes``/``archer.seed``, per-step
trainer metrics, ``eval/<bench>/avg_at_K``) and the evaluation runs nested under each trial
(artifact ``<bench>_per_problem.csv``).

Arms: the trials that differ only in their seed (named like the leaderboard's rows: the
preset plus the variant and non-``algo`` axis values). The metric of an arm is the first
benchmark's ``avg_at_K`` when the study evaluated its trials (per-problem tables give the
problems of each seed), else the study's objective metric (one value per seed).

Statistics (:mod:`evals.statistics`): an arm's ``mean`` is the mean over seeds of each
seed's metric and ``ci95`` its hierarchical-bootstrap interval (seeds, then problems);
``paired`` compares every arm with the reference arm (the study's ``reference_arm``, else
``grpo`` when it is an arm, else the first arm; ``reference=NAME`` chooses), paired by seed
and problem, with the sign-flip p-value over seeds and its smallest attainable value.
Training summaries per arm (mean over seeds): ``clipfrac_low`` / ``clipfrac_high`` = mean
over the training steps of the class's lower + upper clip fractions, ``kl_ref_low`` = the
last logged ``actor/kl_low_entropy``, ``high_token_fraction`` = mean ``actor/frac_high_entropy``.

A study that is not finished (its run not FINISHED, or fewer finished trials than it has) is
refused, naming how many trials are missing.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from archer.paths import display_path
from archer.tracking import reader as D
from archer.validation import ConfigError, unknown_name
from evals.statistics import hierarchical_bootstrap_ci, seed_paired_comparison
from experiments.start_eval import START_LABEL

log = logging.getLogger(__name__)

_AVG_RE = re.compile(r"^eval/([^/]+)/avg_at_(\d+)$")
CLIP_KEYS = {cls: (f"actor/clipfrac_{cls}_entropy_lower", f"actor/clipfrac_{cls}_entropy_upper")
             for cls in ("low", "high")}
ALPHA = 0.05


class StudyNotFinished(ValueError):
    """The study has trials left to run (or its run did not finish)."""


@dataclass
class Trial:
    """One finished trial run: its arm, seed, metric and (when evaluated) problem table."""

    run_id: str
    arm: str
    seed: str
    metric: float
    per_problem: dict[str, float] | None = None
    summary: dict[str, float] = field(default_factory=dict)


def arm_name(tags: dict[str, Any], run_name: str = "") -> str:
    """The preset plus what distinguishes the trial apart from its seed."""
    from archer.tracking.reader import arm_label

    return arm_label(tags) or run_name or "?"


# ------------------------------------------------------------------------------------------
# reading the study
# ------------------------------------------------------------------------------------------


def study_run(runs, study: str, uri: str):
    """The study's parent run (the latest when there are several); an unknown name is refused
    with the closest study in the store."""
    kind = runs.get("tags.archer.kind")
    names = sorted(set(runs.loc[kind == "study", "tags.archer.study"].dropna())) \
        if kind is not None else []
    if study not in names:
        raise unknown_name("study", study, names, f" (studies logged to {uri})")
    sel = runs[(kind == "study") & (runs["tags.archer.study"] == study)]
    return sel.sort_values("start_time").iloc[-1]


def study_trial_runs(runs, parent):
    """The finished trial runs under the study run, the latest run of each trial identity;
    refuses an unfinished study (see the module docstring)."""
    params = D.prefixed(parent, "params")
    expected = int(float(params.get("n_trials", 0)))
    sel = runs[(runs.get("tags.archer.kind") == "trial")
               & (runs["parent_run_id"] == parent["run_id"])]
    sel = sel.sort_values("start_time").drop_duplicates("tags.archer.config_hash", keep="last")
    done = sel[sel["status"] == "FINISHED"]
    missing = expected - len(done)
    study = parent["tags.archer.study"]
    if missing > 0 or parent["status"] != "FINISHED":
        states = ", ".join(f"{r['run_name']}: {r['status']}" for _, r in sel.iterrows()
                           if r["status"] != "FINISHED")
        raise StudyNotFinished(
            f"study {study} is unfinished: {max(missing, 0)} of {expected} trials missing "
            f"(study run {parent['status']}{'; ' + states if states else ''}); finish it with "
            f"`archer ablate {study}` (it resumes) before reporting it")
    return done


def trial_metric(run) -> tuple[str, str | None]:
    """``(metric, benchmark)``: the first benchmark's ``eval/<b>/avg_at_K`` (largest K) the
    trial run logged, else its objective (``objective``, then ``val/accuracy``)."""
    metrics = D.prefixed(run, "metrics")
    found = sorted((m.group(1), -int(m.group(2)), key) for key in metrics
                   if (m := _AVG_RE.match(key)))
    if found:
        return found[0][2], found[0][0]
    for key in ("objective", "val/accuracy"):
        if key in metrics:
            return key, None
    raise ValueError(f"trial run {run['run_id']} ({run['run_name']}) logged no evaluation "
                     "metric and no objective: nothing to report")


def training_summary(client, run_id: str) -> dict[str, float]:
    """The per-trial training numbers of the module docstring (NaN when not logged)."""
    def mean_of(keys: tuple[str, ...]) -> float:
        hists = [D.metric_history(client, run_id, k) for k in keys]
        steps = sorted(set.intersection(*(set(h) for h in hists))) if all(hists) else []
        return float(np.mean([sum(h[s] for h in hists) for s in steps])) if steps else np.nan

    kl = D.metric_history(client, run_id, "actor/kl_low_entropy")
    return {"clipfrac_low": mean_of(CLIP_KEYS["low"]), "clipfrac_high": mean_of(CLIP_KEYS["high"]),
            "kl_ref_low": float(list(kl.values())[-1]) if kl else np.nan,
            "high_token_fraction": mean_of(("actor/frac_high_entropy",))}


def read_trials(client, runs, trial_runs) -> tuple[list[Trial], str]:
    """Every finished trial with its metric, problem table and training summary."""
    metric, bench = trial_metric(trial_runs.iloc[0])
    out = []
    for _, run in trial_runs.iterrows():
        tags = D.prefixed(run, "tags")
        value = D.prefixed(run, "metrics").get(metric)
        if value is None:
            raise ValueError(f"trial run {run['run_id']} ({run['run_name']}) has no metric "
                             f"{metric!r} (the first trial's); the trials were not measured "
                             "alike")
        table = None
        if bench is not None:
            evals = runs[(runs.get("tags.archer.kind") == "eval")
                         & (runs["parent_run_id"] == run["run_id"])]
            for _, ev in evals.sort_values("start_time").iterrows():
                table = D.per_problem_accuracy(client, ev["run_id"], bench) or table
        summary = training_summary(client, run["run_id"])
        summary["numeric_answer_frac"] = _numeric_frac(D.prefixed(run, "metrics"),
                                                       f"eval/{bench}/")
        out.append(Trial(run_id=run["run_id"], arm=arm_name(tags, run["run_name"]),
                         seed=str(tags.get("archer.seed", run["run_id"])), metric=float(value),
                         per_problem=table, summary=summary))
    return out, metric


def _numeric_frac(metrics: dict[str, Any], prefix: str) -> float:
    """The run's share of well-formed (one-number) answers (evals.scoring), NaN if not logged."""
    value = metrics.get(f"{prefix}numeric_answer_frac")
    return float(value) if value is not None else np.nan


def read_start(client, runs, parent, metric: str) -> dict[str, Any] | None:
    """The study's ``eval_start`` evaluation (experiments.start_eval): the latest evaluation
    run under the study run tagged ``archer.role=start``, with its value of ``metric``, its
    problem table and its share of well-formed answers; None when the study has none."""
    role = runs.get("tags.archer.role")
    if role is None:
        return None
    sel = runs[(runs.get("tags.archer.kind") == "eval") & (role == "start")
               & (runs["parent_run_id"] == parent["run_id"]) & (runs["status"] == "FINISHED")]
    if sel.empty:
        return None
    run = sel.sort_values("start_time").iloc[-1]
    m = _AVG_RE.match(metric)
    if m is None:  # a study measured by its objective: the start has no such number
        return None
    metrics = D.prefixed(run, "metrics")
    value = metrics.get(metric[len("eval/"):])
    if value is None:
        return None
    model = display_path(D.prefixed(run, "tags").get("archer.model", ""))
    return {"run_id": run["run_id"], "model": model,
            "metric": float(value), "numeric_answer_frac": _numeric_frac(metrics, f"{m.group(1)}/"),
            "per_problem": D.per_problem_accuracy(client, run["run_id"], m.group(1))}


# ------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------


def _tables(trials: list[Trial]) -> dict[str, Any]:
    """Seed -> per-problem scores (the problem table, or the trial's metric alone)."""
    if all(t.per_problem for t in trials):
        return {t.seed: t.per_problem for t in trials}
    return {t.seed: [t.metric] for t in trials}


def arm_stats(name: str, trials: list[Trial], metric: str, n_boot: int) -> dict[str, Any]:
    ci = hierarchical_bootstrap_ci(_tables(trials), n_boot=n_boot, alpha=ALPHA, seed=0)
    summary = {k: float(np.nanmean([t.summary[k] for t in trials]))
               if any(np.isfinite(t.summary[k]) for t in trials) else None
               for k in ("clipfrac_low", "clipfrac_high", "kl_ref_low", "high_token_fraction",
                         "numeric_answer_frac")}
    return {"name": name, "seeds": sorted(t.seed for t in trials), "metric": metric,
            "mean": float(np.mean([t.metric for t in trials])),
            "ci95": [ci["ci_low"], ci["ci_high"]], "ci_method": ci["method"],
            "per_seed": {t.seed: t.metric for t in sorted(trials, key=lambda t: t.seed)},
            **summary, "run_ids": [t.run_id for t in trials]}


def paired_stats(arm: str, trials: list[Trial], ref: str, ref_trials: list[Trial],
                 n_boot: int) -> dict[str, Any]:
    a, b = _tables(trials), _tables(ref_trials)
    if isinstance(next(iter(a.values())), list) != isinstance(next(iter(b.values())), list):
        a, b = ({t.seed: [t.metric] for t in ts} for ts in (trials, ref_trials))
    c = seed_paired_comparison(a, b, n_boot=n_boot, seed=0, alpha=ALPHA)
    return {"arm": arm, "vs": ref, "diff": c["diff"], "ci95": [c["ci_low"], c["ci_high"]],
            "p": c["p_value"], "p_min": c["p_min"], "test": c["p_value_method"],
            "per_seed": c["per_seed"], "n_seeds": c["n_seeds"], "n_pairs": c["n_problems"],
            "unpaired_seeds": c["unpaired_seeds"], "significant": c["p_value"] < ALPHA}


def start_stats(start: dict[str, Any], by_arm: dict[str, list[Trial]],
                n_boot: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The starting model's row and every arm's gain over it, paired by problem; the start
    was evaluated once, so each seed of an arm is paired with that one evaluation (the test
    is over the arm's seeds)."""
    table = start["per_problem"] or [start["metric"]]
    ci = hierarchical_bootstrap_ci({"start": table}, n_boot=n_boot, alpha=ALPHA, seed=0)
    row = {"name": START_LABEL, "model": start["model"], "run_id": start["run_id"],
           "mean": start["metric"], "ci95": [ci["ci_low"], ci["ci_high"]],
           "numeric_answer_frac": (start["numeric_answer_frac"]
                                   if np.isfinite(start["numeric_answer_frac"]) else None)}
    gains = []
    for arm, trials in by_arm.items():
        a = _tables(trials)
        if start["per_problem"] is None or isinstance(next(iter(a.values())), list):
            a = {t.seed: [t.metric] for t in trials}
            b = {t.seed: [start["metric"]] for t in trials}
        else:
            b = {t.seed: start["per_problem"] for t in trials}
        c = seed_paired_comparison(a, b, n_boot=n_boot, seed=0, alpha=ALPHA)
        gains.append({"arm": arm, "vs": START_LABEL, "diff": c["diff"],
                      "ci95": [c["ci_low"], c["ci_high"]], "p": c["p_value"],
                      "p_min": c["p_min"], "test": c["p_value_method"],
                      "per_seed": c["per_seed"], "n_seeds": c["n_seeds"],
                      "significant": c["p_value"] < ALPHA})
    return row, gains


def paired_within_methods(by_arm: dict[str, list[Trial]], n_boot: int) -> list[dict[str, Any]]:
    """With several methods each run at several settings of another axis (e.g. archer and
    grpo at staleness 0/1/2): every arm against its own method's first setting, so each
    setting's cost is measured within the method. Empty otherwise."""
    methods: dict[str, list[str]] = {}
    for arm in by_arm:
        methods.setdefault(arm.split(" [", 1)[0], []).append(arm)
    if len(methods) < 2 or not any(len(arms) > 1 for arms in methods.values()):
        return []
    return [paired_stats(arm, by_arm[arm], arms[0], by_arm[arms[0]], n_boot)
            for arms in methods.values() for arm in arms[1:]]


def pick_reference(arms: list[str], asked: str | None, declared: str | None) -> str:
    """The arm named by ``reference=`` (``asked``), else by the study's ``reference_arm``
    (``declared``), else grpo, else the first. A name is an arm's full name, or what the
    study file calls it: a variant (``archer [batch_rho0.8]`` is variant ``batch_rho0.8``) or
    an axis value (``archer [algo.low.kl_weight=0.0]`` is value ``0.0``), when one arm has it."""
    for name in (asked, declared):
        if name is None:
            continue
        if name in arms:
            return name
        hits = [arm for arm in arms if name in _arm_parts(arm)]
        if len(hits) > 1:
            raise ConfigError(f"reference arm {name!r} is ambiguous: it names {hits}; give "
                              "one arm's full name")
        if not hits:
            raise unknown_name("reference arm", name, arms)
        return hits[0]
    return "grpo" if "grpo" in arms else arms[0]


def _arm_parts(arm: str) -> set[str]:
    """What distinguishes an arm in its study file: ``archer [a=1, v]`` -> {a=1, 1, v}."""
    if " [" not in arm or not arm.endswith("]"):
        return set()
    parts = arm.split(" [", 1)[1][:-1].split(", ")
    return set(parts) | {p.split("=", 1)[1] for p in parts if "=" in p}


def declared_reference(client, parent) -> str | None:
    """``reference_arm`` of the study file as the study logged it (artifact ``study.yaml``)."""
    import tempfile

    import yaml

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(client.download_artifacts(parent["run_id"], "study.yaml", tmp))
            data = yaml.safe_load(path.read_text()) or {}
    except Exception as err:  # noqa: BLE001  (no artifact: a study from before the key)
        log.info("study run %s: no study.yaml artifact (%s)", parent["run_id"], err)
        return None
    return (data.get("study") or {}).get("reference_arm")


# ------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------


def build_report(study: str, *, tracking_uri: str | None = None, reference: str | None = None,
                 n_boot: int = 10000) -> tuple[dict[str, Any], dict[str, list[Trial]], Any]:
    """The report's JSON document, the trials of each arm and the MLflow client."""
    client = D.open_client(tracking_uri)
    uri = D.resolve_uri(tracking_uri)
    runs = D.search_runs_frame(client, D.experiment_ids(client))
    if runs.empty:
        raise unknown_name("study", study, [], f" (studies logged to {uri})")
    parent = study_run(runs, study, uri)
    trials, metric = read_trials(client, runs, study_trial_runs(runs, parent))
    by_arm: dict[str, list[Trial]] = {}
    for t in trials:
        by_arm.setdefault(t.arm, []).append(t)
    arms = list(by_arm)
    ref = pick_reference(arms, reference, declared_reference(client, parent))
    params = D.prefixed(parent, "params")
    seeds = params.get("seeds", "")
    command = " ".join(x for x in (f"archer ablate {study}",
                                   f"study.seeds={seeds.replace(' ', '')}" if seeds else "",
                                   params.get("trial_overrides", "")) if x)
    doc = {"study": study, "commit": str(parent.get("tags.archer.code_version") or "unknown"),
           "command": command, "tracking_uri": uri, "study_run_id": parent["run_id"],
           "metric": metric, "reference_arm": ref, "alpha": ALPHA,
           "arms": [arm_stats(a, by_arm[a], metric, n_boot) for a in arms],
           "paired": [paired_stats(a, by_arm[a], ref, by_arm[ref], n_boot)
                      for a in arms if a != ref]}
    within = paired_within_methods(by_arm, n_boot)
    if within:
        doc["paired_within"] = within
    start = read_start(client, runs, parent, metric)
    if start is not None:
        doc["start"], doc["vs_start"] = start_stats(start, by_arm, n_boot)
    return doc, by_arm, client


def significance_sentence(doc: dict[str, Any]) -> str:
    """What the paired tests show, plainly."""
    paired = doc["paired"]
    if not paired:
        return "Only one arm: nothing is compared."
    sig = [p for p in paired if p["significant"]]
    floor = min(p["p_min"] for p in paired)
    if sig:
        return ("Significant at the 5% level against " + doc["reference_arm"] + ": "
                + ", ".join(f"{p['arm']} ({_pts(p['diff'])} points, p={p['p']:.3g})" for p in sig)
                + ". Every other difference is not significant.")
    text = (f"No difference from {doc['reference_arm']} is significant at the 5% level "
            "(seed-aware test: sign-flip over seeds).")
    if floor >= ALPHA:
        n = max(p["n_seeds"] for p in paired)
        text += (f" With {n} seed{'s' if n != 1 else ''} the smallest attainable p is "
                 f"{floor:.3g}, so this design cannot reach p < 0.05: run more seeds.")
    return text


def _pts(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{100 * x:+.1f}"


def _num(x: float | None, digits: int = 4) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def _pct(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def to_markdown(doc: dict[str, Any], figures: dict[str, Path], out_dir: Path) -> str:
    m = doc["metric"]
    lines = [f"# Study `{doc['study']}`", "",
             f"Written by `archer report {doc['study']}` from MLflow ({doc['tracking_uri']}, "
             f"study run `{doc['study_run_id']}`); do not edit by hand.", "",
             f"- commit: `{doc['commit']}`", f"- command: `{doc['command']}`",
             f"- metric: `{m}`; reference arm: `{doc['reference_arm']}`", "",
             f"**{significance_sentence(doc)}**", ""]
    if doc.get("start"):
        lines += [f"**{start_sentence(doc)}**", ""]
    lines += arms_table(doc)
    if doc.get("start"):
        lines += start_table(doc)
    if doc["paired"]:
        lines += [f"## Against {doc['reference_arm']}", ""] + paired_table(doc["paired"])
    if doc.get("paired_within"):
        lines += ["## Within each method, against its first setting", ""]
        lines += paired_table(doc["paired_within"], with_reference=True)
    if figures:
        lines += ["## Figures", ""]
        for title, path in figures.items():
            lines += [f"![{title}]({path.relative_to(out_dir).as_posix()})", ""]
    return "\n".join(lines)


def arms_table(doc: dict[str, Any]) -> list[str]:
    """Every arm's metric over seeds and its training summaries (and, for a task with
    numeric answers, its share of well-formed answers)."""
    formed = any(a.get("numeric_answer_frac") is not None for a in doc["arms"])
    head = ("| arm | seeds | mean % [95% CI] | per seed % | clipfrac low | clipfrac high | "
            "KL(ref) low, final | high-entropy token fraction |"
            + (" well-formed answers % |" if formed else ""))
    lines = ["## Arms", "", head, "|---" * (8 + formed) + "|"]
    for a in doc["arms"]:
        per_seed = ", ".join(f"{s}: {100 * v:.1f}" for s, v in a["per_seed"].items())
        lines.append(f"| {a['name']} | {len(a['seeds'])} | {100 * a['mean']:.1f} "
                     f"[{100 * a['ci95'][0]:.1f}, {100 * a['ci95'][1]:.1f}] | {per_seed} | "
                     f"{_num(a['clipfrac_low'])} | {_num(a['clipfrac_high'])} | "
                     f"{_num(a['kl_ref_low'])} | {_num(a['high_token_fraction'])} |"
                     + (f" {_pct(a.get('numeric_answer_frac'))} |" if formed else ""))
    return lines + ["", f"CI: {doc['arms'][0]['ci_method']} (95%, percentile).", ""]


def start_table(doc: dict[str, Any]) -> list[str]:
    st = doc["start"]
    return ["## Against the starting model", "",
            f"The trials start from `{st['model']}`, evaluated once under the trials' "
            f"evaluation: {100 * st['mean']:.1f}% [{100 * st['ci95'][0]:.1f}, "
            f"{100 * st['ci95'][1]:.1f}] (CI over problems); well-formed answers "
            f"{_pct(st['numeric_answer_frac'])}%.", ""] + paired_table(doc["vs_start"])


def paired_table(rows: list[dict[str, Any]], with_reference: bool = False) -> list[str]:
    ref = " vs |" if with_reference else ""
    lines = [f"| arm |{ref} Δ (points) [95% CI] | p | smallest attainable p | Δ per seed "
             "(points) |", "|---" * (5 + with_reference) + "|"]
    for p in rows:
        per_seed = ", ".join(f"{s}: {_pts(d)}" for s, d in p["per_seed"].items())
        vs = f" {p['vs']} |" if with_reference else ""
        lines.append(f"| {p['arm']} |{vs} {_pts(p['diff'])} [{_pts(p['ci95'][0])}, "
                     f"{_pts(p['ci95'][1])}] | {p['p']:.3g} | {p['p_min']:.3g} | {per_seed} |")
    return lines + ["", f"Test: {rows[0]['test']}; pairs are (seed, problem) both sides "
                    "have; CI: hierarchical bootstrap (seeds, then problems).", ""]


def start_sentence(doc: dict[str, Any]) -> str:
    """Which arms beat the starting model, plainly."""
    gains = doc["vs_start"]
    sig = [g for g in gains if g["significant"]]
    if not sig:
        return ("No arm differs significantly from the starting model at the 5% level "
                f"(smallest attainable p {min(g['p_min'] for g in gains):.3g}).")
    up = [g for g in sig if g["diff"] > 0]
    down = [g for g in sig if g["diff"] < 0]
    parts = []
    if up:
        parts.append("better than the starting model at the 5% level: " + ", ".join(
            f"{g['arm']} ({_pts(g['diff'])} points, p={g['p']:.3g})" for g in up))
    if down:
        parts.append("worse than the starting model: " + ", ".join(
            f"{g['arm']} ({_pts(g['diff'])} points, p={g['p']:.3g})" for g in down))
    rest = len(gains) - len(sig)
    text = "; ".join(parts)
    return (text[0].upper() + text[1:] + "."
            + (f" {rest} arm{'s' if rest != 1 else ''} not significantly different." if rest
               else ""))


def write_report(study: str, out_dir: str | Path = "docs/results", *,
                 tracking_uri: str | None = None, reference: str | None = None,
                 n_boot: int = 10000, figures: bool = True) -> dict[str, Path]:
    """Build and write the report; returns ``{"md", "json", <figure name>...: path}``."""
    from experiments.report_figures import write_figures

    doc, by_arm, client = build_report(study, tracking_uri=tracking_uri, reference=reference,
                                       n_boot=n_boot)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir={str(out)!r} is an existing file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    figs = write_figures(client, by_arm, out / study) if figures else {}
    md = out / f"{study}.md"
    md.write_text(to_markdown(doc, figs, out))
    js = out / f"{study}.json"
    js.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    index = write_index(out)
    return {"md": md, "json": js, "index": index} | figs


INDEX_HEAD = """# Results

Every page here is written by `archer report <study>` from the study's MLflow runs (never by
hand); each names the commit its study ran at and the command that reproduces it. This index
is rewritten by the same command from the pages' JSON files.

| study | commit | arms x seeds | what the tests show |
|---|---|---|---|
"""


def write_index(out: Path) -> Path:
    """``<out>/index.md``: one row per ``<study>.json`` in ``out`` (its headline sentences)."""
    rows = []
    for path in sorted(out.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or not {"study", "arms", "paired"} <= set(doc):
            continue
        seeds = max((len(a["seeds"]) for a in doc["arms"]), default=0)
        headline = significance_sentence(doc)
        if doc.get("start"):
            headline += " " + start_sentence(doc)
        rows.append(f"| [{doc['study']}]({doc['study']}.md) | `{str(doc['commit'])[:10]}` | "
                    f"{len(doc['arms'])} x {seeds} | {headline} |")
    index = out / "index.md"
    index.write_text(INDEX_HEAD + "\n".join(rows) + "\n")
    return index


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")
