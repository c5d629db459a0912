"""``archer leaderboard``: one row per model/preset, built from MLflow.

Where the numbers come from (all read-only, through :mod:`archer.tracking.reader`):

- **Evaluation runs** (``archer.kind=eval``; one per trial and benchmark from a study, or one
  per ``archer eval``): ``<bench>/avg_at_K``, its logged CI, ``<bench>/pass_at_K``, the
  contract (params ``<bench>/contract.*``, tag ``<bench>/contract_hash``) and the per-problem
  table artifact ``<bench>_per_problem.csv``.
- **Row identity**: the study (``archer.study``) and a label made of the preset
  (``archer.preset``) plus the trial's variant and non-``algo`` axis values, e.g.
  ``archer [algo.low.kl_weight=0.005]``; without a preset, the model directory's name.
  Seeds (``archer.seed``; each standalone evaluation counts as one) are aggregated.
- **Compute columns**, from the training run each evaluation is nested under (mean per seed):
  training seconds = sum of ``time/step``; device-hours = training seconds x devices / 3600,
  devices = the run's tag ``archer.num_devices`` (the trainer's world size) when present,
  else 1 (said in ``notes``); generated tokens = sum over steps of
  ``response/length_mean x groups/sampled x group_size``; generations discarded by group
  filtering = sum over steps of ``(groups/sampled - groups/kept) x group_size``.

Statistics (all from :mod:`evals.metrics`, nothing re-implemented here):

- ``avg@K``: mean over seeds of each seed's avg@K; ``sd``: its standard deviation over
  seeds (training noise).
- ``CI``: 95% percentile bootstrap (10,000 resamples, seed 0) of the row's avg@K. With
  several seeds it is hierarchical (:func:`evals.statistics.hierarchical_bootstrap_ci`:
  seeds resampled, then problems within each seed), so it carries training noise as well as
  evaluation noise; with one seed it is the bootstrap over problems
  (:func:`evals.metrics.bootstrap_ci`), exactly the CI the evaluation logged.
- ``pass@K``: mean over seeds of each seed's unbiased pass@K.
- ``delta``: paired comparison against the baseline row. When the two rows share at least two
  seeds: :func:`evals.statistics.seed_paired_comparison` (pairs = same seed and problem; mean
  of the per-seed differences, hierarchical bootstrap CI, exact sign-flip p-value over the
  seeds, whose smallest attainable value, ``2 / 2**seeds``, the footnote gives). Otherwise
  :func:`evals.metrics.paired_comparison` over the problems of the seed-averaged per-problem
  accuracy (seed variance not measured; said in the footnote). Column ``<bench> p_test``
  names the test of each row. Marks ``*`` p < 0.05, ``**`` p < 0.01, ``***`` p < 0.001.

Contract check: every number of one benchmark must have been measured under one evaluation
contract (same hash); otherwise :class:`evals.contracts.ContractMismatch` names the fields
that differ and the rows on each side (``contracts={bench: hash}`` keeps one of them,
``force=True`` goes on with a warning in ``notes``).
"""

from __future__ import annotations

import html
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from archer.tracking import reader as D
from evals import metrics as M
from evals import statistics as S
from evals.contracts import ContractMismatch

log = logging.getLogger(__name__)

_AVG_RE = re.compile(r"^avg_at_(\d+)$")
COMPUTE_COLUMNS = ("train_s", "device_h", "gen_tokens", "discarded")
COMPUTE_TITLES = {"train_s": "train time (s)", "device_h": "device-hours",
                  "gen_tokens": "generated tokens", "discarded": "discarded generations"}


def significance(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def row_label(tags: dict[str, Any], run_name: str = "") -> str:
    """Preset plus what distinguishes the trial apart from its seed (see module docstring)."""
    from archer.tracking.reader import arm_label

    label = arm_label(tags)
    if label:
        return label
    model = tags.get("archer.model")
    return Path(str(model)).name if model else (run_name or "?")


@dataclass
class EvalEntry:
    """One benchmark of one evaluation run."""

    run_id: str
    parent_run_id: str | None
    study: str
    label: str
    seed: str
    benchmark: str
    k: int
    avg: float
    ci: tuple[float, float]
    pass_k: float | None
    contract_hash: str
    contract: dict[str, str]
    caveat: str
    start_time: int
    per_problem: dict[str, float] | None = None


def eval_entries(runs: pd.DataFrame, benchmarks: list[str] | None = None) -> list[EvalEntry]:
    """Every (evaluation run, benchmark) in the frame, trial tags filled in from the parent
    run when the evaluation run lacks them."""
    if runs.empty or "tags.archer.kind" not in runs:
        return []
    by_id = runs.set_index("run_id", drop=False)
    out = []
    for _, row in runs[runs["tags.archer.kind"] == "eval"].iterrows():
        tags = D.prefixed(row, "tags")
        parent = row.get("parent_run_id")
        if parent in by_id.index:
            tags = D.prefixed(by_id.loc[parent], "tags") | tags
        params = D.prefixed(row, "params")
        metrics = D.prefixed(row, "metrics")
        benches = sorted(k[: -len("/contract_hash")] for k in tags if k.endswith("/contract_hash"))
        for b in benches:
            if benchmarks and b not in benchmarks:
                continue
            found = [(int(m.group(1)), v) for key, v in metrics.items()
                     if key.startswith(b + "/") and (m := _AVG_RE.match(key[len(b) + 1:]))]
            if not found:
                log.warning("eval run %s has a %s contract but no avg_at_K metric; skipped",
                            row["run_id"], b)
                continue
            k, avg = max(found)
            ci = (metrics.get(f"{b}/avg_at_{k}_ci_low", float("nan")),
                  metrics.get(f"{b}/avg_at_{k}_ci_high", float("nan")))
            contract = {key[len(b) + len("/contract."):]: v for key, v in params.items()
                        if key.startswith(f"{b}/contract.")}
            seed = tags.get("archer.seed")
            out.append(EvalEntry(
                run_id=row["run_id"], parent_run_id=parent if isinstance(parent, str) else None,
                study=str(tags.get("archer.study", "")), label=row_label(tags, row["run_name"]),
                seed=str(seed) if seed is not None else f"run:{row['run_id']}", benchmark=b,
                k=k, avg=float(avg), ci=(float(ci[0]), float(ci[1])),
                pass_k=metrics.get(f"{b}/pass_at_{k}"), contract_hash=str(tags[f"{b}/contract_hash"]),
                contract=contract, caveat=str(tags.get(f"{b}/label", "-")),
                start_time=int(row["start_time"] or 0)))
    return out


def _dedupe(entries: list[EvalEntry], notes: list[str]) -> list[EvalEntry]:
    """One entry per (study, label, seed, benchmark): the latest evaluation."""
    best: dict[tuple, EvalEntry] = {}
    for e in sorted(entries, key=lambda e: e.start_time):
        key = (e.study, e.label, e.seed, e.benchmark)
        if key in best:
            notes.append(f"{e.benchmark}: {e.label} seed {e.seed} was evaluated more than once; "
                         f"the latest run ({e.run_id}) is used")
        best[key] = e
    return list(best.values())


def check_contracts(entries: list[EvalEntry], *, contracts: dict[str, str] | None = None,
                    force: bool = False, notes: list[str] | None = None) -> list[EvalEntry]:
    """Refuse entries of one benchmark measured under different contracts (see module
    docstring); returns the entries kept."""
    contracts = contracts or {}
    kept = [e for e in entries if e.benchmark not in contracts
            or e.contract_hash == contracts[e.benchmark]]
    for b, h in contracts.items():
        if not any(e.benchmark == b for e in kept):
            have = sorted({e.contract_hash for e in entries if e.benchmark == b})
            raise ValueError(f"{b}: no evaluation under contract {h}; found {have or 'none'}")
    for b in sorted({e.benchmark for e in kept}):
        group = [e for e in kept if e.benchmark == b]
        hashes = Counter(e.contract_hash for e in group)
        if len(hashes) < 2:
            continue
        ref_hash = hashes.most_common(1)[0][0]
        ref = next(e for e in group if e.contract_hash == ref_hash)
        parts = []
        for h in sorted(hashes):
            if h == ref_hash:
                continue
            other = next(e for e in group if e.contract_hash == h)
            keys = sorted(set(ref.contract) | set(other.contract))
            diffs = [f"{key}: {ref.contract.get(key)!r} != {other.contract.get(key)!r}"
                     for key in keys if ref.contract.get(key) != other.contract.get(key)]
            rows = sorted({f"{e.label} seed {e.seed}" for e in group if e.contract_hash == h})
            parts.append(f"contract {h} ({', '.join(rows[:6])}{' ...' if len(rows) > 6 else ''})"
                         f" differs from {ref_hash} in " + ("; ".join(diffs) or
                                                            "fields not logged as params"))
        msg = (f"{b}: results measured under {len(hashes)} different evaluation contracts "
               f"cannot share a leaderboard: " + " | ".join(parts) +
               f". Keep one with --contract {b}=HASH (or force=True / --force to mix them)")
        if not force:
            raise ContractMismatch(msg)
        log.warning(msg)
        if notes is not None:
            notes.append("FORCED: " + msg)
    return kept


@dataclass
class ComputeStats:
    train_s: float = float("nan")
    device_h: float = float("nan")
    gen_tokens: float = float("nan")
    discarded: float = float("nan")


def trial_compute(client, run: pd.Series) -> ComputeStats:
    """Compute columns of one training run (see the module docstring)."""
    rid = run["run_id"]
    steps = D.metric_history(client, rid, "time/step")
    length = D.metric_history(client, rid, "response/length_mean")
    sampled = D.metric_history(client, rid, "groups/sampled")
    kept = D.metric_history(client, rid, "groups/kept")
    tags = D.prefixed(run, "tags")
    params = D.prefixed(run, "params")
    out = ComputeStats()
    if steps:
        out.train_s = float(sum(steps.values()))
        devices = float(tags.get("archer.num_devices", 1) or 1)
        out.device_h = out.train_s * devices / 3600.0
    g = params.get("group_size")
    if g is not None and sampled:
        g = float(g)
        out.gen_tokens = float(sum(length.get(s, 0.0) * n * g for s, n in sampled.items()))
        out.discarded = float(sum((n - kept.get(s, 0.0)) * g for s, n in sampled.items()))
    return out


@dataclass
class Leaderboard:
    """The leaderboard table plus what a reader needs to trust it."""

    table: pd.DataFrame  # one row per (study, label); flat, machine-readable columns
    benchmarks: list[str]
    ks: dict[str, int]
    baseline: str | None
    contracts: dict[str, str]  # benchmark -> contract hash
    caveats: dict[str, str]  # benchmark -> label every number must carry ("public tests only")
    notes: list[str] = field(default_factory=list)

    # -- formatting ---------------------------------------------------------------------------

    def _cells(self, r: pd.Series) -> list[str]:
        cells = [str(r["model"]), str(int(r["seeds"]))]
        for b in self.benchmarks:
            k = self.ks[b]
            avg, lo, hi = r.get(f"{b} avg@{k}"), r.get(f"{b} ci_low"), r.get(f"{b} ci_high")
            sd = r.get(f"{b} sd")
            text = _pct(avg)
            if _finite(lo) and _finite(hi):
                text += f" [{_pct(lo)}, {_pct(hi)}]"
            if _finite(sd):
                text += f" sd {_pct(sd)}"
            cells.append(text if _finite(avg) else "-")
            cells.append(_pct(r.get(f"{b} pass@{k}")))
            if self.baseline is not None:
                d = r.get(f"{b} delta")
                if r["model"] == self.baseline:
                    cells.append("baseline")
                elif _finite(d):
                    t = f"{'+' if d >= 0 else ''}{_pct(d)}{r.get(f'{b} sig') or ''}"
                    dl, dh = r.get(f"{b} delta_ci_low"), r.get(f"{b} delta_ci_high")
                    if _finite(dl) and _finite(dh):
                        t += f" [{_pct(dl)}, {_pct(dh)}]"
                    p = r.get(f"{b} p_value")
                    if _finite(p):
                        t += f" p={p:.3g}"
                    cells.append(t)
                else:
                    cells.append("-")
        cells += [_num(r.get("train_s"), 1), _num(r.get("device_h"), 4),
                  _num(r.get("gen_tokens"), 0), _num(r.get("discarded"), 0)]
        return cells

    def headers(self) -> list[str]:
        heads = ["model", "seeds"]
        for b in self.benchmarks:
            k = self.ks[b]
            heads += [f"{b} avg@{k} % [95% CI]", f"{b} pass@{k} %"]
            if self.baseline is not None:
                heads.append(f"{b} Δ vs {self.baseline} (pts)")
        return heads + [COMPUTE_TITLES[c] for c in COMPUTE_COLUMNS]

    def footer(self) -> list[str]:
        lines = []
        for b in self.benchmarks:
            cav = self.caveats.get(b, "-")
            lines.append(f"{b}: contract {self.contracts.get(b, '?')}"
                         + (f" ({cav})" if cav and cav != "-" else ""))
        lines.append("avg@K: mean over seeds; CI: 95% bootstrap (hierarchical: seeds, then "
                     "problems, when a row has several seeds; over problems for one seed); "
                     "sd: over seeds. Compute columns: mean per seed.")
        lines += self.test_notes()
        return lines + list(dict.fromkeys(self.notes))

    def test_notes(self) -> list[str]:
        """Which test gave each benchmark's Δ p-values (and the smallest p it can give)."""
        if self.baseline is None:
            return []
        out = []
        for b in self.benchmarks:
            col, pmin = f"{b} p_test", f"{b} p_min"
            if col not in self.table:
                continue
            tests = sorted({t for t in self.table[col] if isinstance(t, str) and t})
            for t in tests:
                rows = self.table[self.table[col] == t]
                if t == "seeds":
                    floor = min(float(v) for v in rows[pmin])
                    out.append(f"{b} Δ ({', '.join(rows['model'])}): paired by seed and "
                               "problem; CI: hierarchical bootstrap; p: exact sign-flip test "
                               f"over the per-seed differences (with these seeds the smallest "
                               f"attainable p is {floor:.3g}); * p<0.05, ** p<0.01, *** p<0.001")
                else:
                    out.append(f"{b} Δ ({', '.join(rows['model'])}): paired over problems of "
                               "the seed-averaged accuracy (fewer than 2 shared seeds: "
                               "training noise not measured); p: sign-flip test over problems; "
                               "* p<0.05, ** p<0.01, *** p<0.001")
        return out

    def to_markdown(self) -> str:
        heads = self.headers()
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for _, r in self.table.iterrows():
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in self._cells(r)) + " |")
        return "\n".join(lines) + "\n\n" + "\n".join(f"- {x}" for x in self.footer()) + "\n"

    def to_csv(self, path: str | Path | None = None) -> str:
        text = self.table.to_csv(index=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_html(self, *, full_page: bool = True) -> str:
        heads = self.headers()
        rows = []
        for _, r in self.table.iterrows():
            cells = "".join(f"<td>{html.escape(c)}</td>" for c in self._cells(r))
            rows.append(f'<tr data-model="{html.escape(str(r["model"]))}">{cells}</tr>')
        table = ('<table id="leaderboard" class="leaderboard">\n<thead><tr>'
                 + "".join(f"<th>{html.escape(h)}</th>" for h in heads)
                 + "</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>\n"
                 + "<ul class=\"notes\">" + "".join(f"<li>{html.escape(x)}</li>"
                                                    for x in self.footer()) + "</ul>\n")
        if not full_page:
            return table
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Leaderboard"
                "</title><style>table{border-collapse:collapse}td,th{border:1px solid #ccc;"
                "padding:3px 8px}</style></head><body><h1>Leaderboard</h1>\n" + table
                + "</body></html>\n")

    FORMATS = ("md", "csv", "html")

    @classmethod
    def check_format(cls, path: str | Path) -> str:
        """The format ``path``'s extension names; a ValueError for any other."""
        path = Path(path)
        fmt = path.suffix.lstrip(".").lower()
        if fmt not in cls.FORMATS:
            raise ValueError(f"unknown leaderboard format {path.suffix!r} for {path}; use "
                             ".md, .csv or .html")
        return fmt

    def write(self, path: str | Path) -> Path:
        """Write by extension: ``.md``, ``.csv`` or ``.html``."""
        path = Path(path)
        writers = {"md": self.to_markdown, "csv": self.to_csv, "html": self.to_html}
        text = writers[self.check_format(path)]()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _pct(x: Any) -> str:
    return f"{100 * float(x):.1f}" if _finite(x) else "-"


def _num(x: Any, digits: int) -> str:
    if not _finite(x):
        return "n/a"
    return f"{float(x):,.{digits}f}"


def aggregate(entries: list[EvalEntry], *, baseline: str | None, n_boot: int = 10000,
              notes: list[str] | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """Per (study, label): seeds aggregated, per-benchmark columns, paired deltas."""
    notes = notes if notes is not None else []
    benches = sorted({e.benchmark for e in entries})
    ks = {b: next(e.k for e in entries if e.benchmark == b) for b in benches}
    multi_study = len({e.study for e in entries}) > 1
    keys = sorted({(e.study, e.label) for e in entries})
    name = {key: (f"{key[0]}/{key[1]}" if multi_study and key[0] else key[1]) for key in keys}
    if baseline is not None and baseline not in name.values():
        raise ValueError(f"baseline {baseline!r} is not a leaderboard row; rows: "
                         f"{sorted(name.values())}")
    pooled: dict[tuple, dict[str, float] | None] = {}
    by_seed: dict[tuple, dict[str, dict[str, float]]] = {}  # per-seed tables of each row
    rows = []
    for key in keys:
        row: dict[str, Any] = {"study": key[0], "model": name[key]}
        seeds: set[str] = set()
        for b in benches:
            es = sorted((e for e in entries if (e.study, e.label) == key and e.benchmark == b),
                        key=lambda e: e.seed)
            if not es:
                continue
            seeds.update(e.seed for e in es)
            k = ks[b]
            if any(e.k != k for e in es):
                raise ValueError(f"{b}: {name[key]} mixes k values {sorted({e.k for e in es})}")
            avgs = np.array([e.avg for e in es])
            row[f"{b} avg@{k}"] = float(avgs.mean())
            row[f"{b} sd"] = float(avgs.std(ddof=1)) if len(es) > 1 else float("nan")
            row[f"{b} n_seeds"] = len(es)
            pk = [e.pass_k for e in es]
            row[f"{b} pass@{k}"] = (float(np.mean(pk)) if all(p is not None for p in pk)
                                    else float("nan"))
            pp = _seed_average([e.per_problem for e in es], f"{b} {name[key]}")
            pooled[(key, b)] = pp
            if pp is not None:
                tables = {e.seed: e.per_problem for e in es}
                by_seed[(key, b)] = tables
                ci = S.hierarchical_bootstrap_ci(tables, n_boot=n_boot, seed=0)
                lo, hi = ci["ci_low"], ci["ci_high"]
            elif len(es) == 1:
                lo, hi = es[0].ci
            else:
                lo = hi = float("nan")
                notes.append(f"{b}: {name[key]} has no per-problem tables; no CI over seeds")
            row[f"{b} ci_low"], row[f"{b} ci_high"] = lo, hi
        row["seeds"] = len(seeds)
        rows.append(row)
    table = pd.DataFrame(rows)
    if baseline is not None:
        base_key = next(key for key in keys if name[key] == baseline)
        for i, key in enumerate(keys):
            for b in benches:
                a, ref = pooled.get((key, b)), pooled.get((base_key, b))
                cols = {f"{b} {c}": float("nan") for c in
                        ("delta", "delta_ci_low", "delta_ci_high", "p_value", "p_min")}
                cols[f"{b} sig"] = cols[f"{b} p_test"] = ""
                if key != base_key and (key, b) in pooled and (base_key, b) in pooled:
                    k = ks[b]
                    cols[f"{b} delta"] = (table.at[i, f"{b} avg@{k}"]
                                          - table.loc[table["model"] == baseline,
                                                      f"{b} avg@{k}"].iloc[0])
                    if a is not None and ref is not None:
                        cmp, test = _paired_test(by_seed[(key, b)], by_seed[(base_key, b)],
                                                 a, ref, n_boot)
                        cols[f"{b} p_test"], cols[f"{b} p_min"] = test, cmp["p_min"]
                        cols[f"{b} delta"] = cmp["diff"]
                        cols[f"{b} delta_ci_low"] = cmp["ci_low"]
                        cols[f"{b} delta_ci_high"] = cmp["ci_high"]
                        cols[f"{b} p_value"] = cmp["p_value"]
                        cols[f"{b} sig"] = significance(cmp["p_value"])
                    else:
                        notes.append(f"{b}: no per-problem tables for {name[key]} or the "
                                     "baseline; delta without a paired test")
                elif key == base_key:
                    cols[f"{b} delta"] = 0.0
                for c, v in cols.items():
                    table.at[i, c] = v
    if benches and not table.empty:
        first = f"{benches[0]} avg@{ks[benches[0]]}"
        table = table.sort_values(first, ascending=False, na_position="last", kind="stable")
    return table.reset_index(drop=True), ks


def _paired_test(a_seeds: dict[str, dict[str, float]], ref_seeds: dict[str, dict[str, float]],
                 a_avg: dict[str, float], ref_avg: dict[str, float], n_boot: int
                 ) -> tuple[dict[str, Any], str]:
    """The seed-aware paired test when the rows share two seeds or more, else the test over
    the problems of the seed-averaged accuracy; returns its result and ``"seeds"`` or
    ``"problems"``."""
    if len(set(a_seeds) & set(ref_seeds)) >= 2:
        return S.seed_paired_comparison(a_seeds, ref_seeds, n_boot=n_boot, seed=0), "seeds"
    cmp = M.paired_comparison(a_avg, ref_avg, n_boot=n_boot, seed=0)
    return cmp | {"p_min": 0.0}, "problems"


def _seed_average(tables: list[dict[str, float] | None], what: str) -> dict[str, float] | None:
    """Per-problem accuracy averaged over seeds (None if any seed lacks its table)."""
    if not tables or any(t is None for t in tables):
        return None
    ids = set(tables[0])  # type: ignore[arg-type]
    for t in tables[1:]:
        if set(t) != ids:  # type: ignore[arg-type]
            raise ValueError(f"{what}: seeds were evaluated on different problem sets "
                             f"({len(ids)} vs {len(t)} problems)")  # type: ignore[arg-type]
    return {pid: float(np.mean([t[pid] for t in tables])) for pid in sorted(ids)}  # type: ignore[index]


def build_leaderboard(tracking_uri: str | None = None, *, studies: list[str] | None = None,
                      experiments: list[str] | None = None, benchmarks: list[str] | None = None,
                      baseline: str | None = "auto", contracts: dict[str, str] | None = None,
                      force: bool = False, n_boot: int = 10000,
                      runs: pd.DataFrame | None = None, client=None) -> Leaderboard:
    """Search MLflow and build the leaderboard.

    Args:
        tracking_uri: the MLflow store (default: as for training, ``runs/mlflow.db``).
        studies: keep only runs of these studies (tag ``archer.study``).
        experiments: search only these MLflow experiments (default: all).
        benchmarks: keep only these benchmarks.
        baseline: the row that deltas are measured against; ``"auto"`` picks ``grpo`` when
            there is such a row, ``None`` shows no deltas.
        contracts: ``{benchmark: contract hash}`` to keep when several were used.
        force: mix contracts anyway (with a note) instead of refusing.
    """
    client = client or D.open_client(tracking_uri)
    if runs is None:
        runs = D.search_runs_frame(client, D.experiment_ids(client, experiments))
    if studies:
        have = set(runs.get("tags.archer.study", pd.Series(dtype=str)).dropna())
        missing = [s for s in studies if s not in have]
        if missing:
            raise ValueError(f"no runs of study {missing} in MLflow; studies found: "
                             f"{sorted(have)}")
        runs = runs[runs["tags.archer.study"].isin(studies)]  # eval runs carry it too
    notes: list[str] = []
    entries = eval_entries(runs, benchmarks)
    if not entries:
        raise ValueError("no evaluation results in MLflow" + (f" for studies {studies}"
                                                               if studies else "")
                         + (f" on benchmarks {benchmarks}" if benchmarks else "")
                         + ": run `archer ablate` (with evaluation) or `archer eval` first")
    entries = _dedupe(entries, notes)
    entries = check_contracts(entries, contracts=contracts, force=force, notes=notes)
    for e in entries:
        e.per_problem = D.per_problem_accuracy(client, e.run_id, e.benchmark)
    labels = {e.label for e in entries}
    if baseline == "auto":
        baseline = "grpo" if "grpo" in labels and len({e.study for e in entries}) == 1 else None
    table, ks = aggregate(entries, baseline=baseline, n_boot=n_boot, notes=notes)
    # compute columns from the training runs the evaluations are nested under
    by_id = runs.set_index("run_id", drop=False)
    stats: dict[str, list[ComputeStats]] = {}
    multi_study = len({e.study for e in entries}) > 1
    seen: set[str] = set()
    for e in entries:
        pid = e.parent_run_id
        if pid is None or pid in seen or pid not in by_id.index:
            continue
        seen.add(pid)
        model = f"{e.study}/{e.label}" if multi_study and e.study else e.label
        stats.setdefault(model, []).append(trial_compute(client, by_id.loc[pid]))
    parents = runs[runs["run_id"].isin({e.parent_run_id for e in entries})]
    col = "tags.archer.num_devices"
    if col not in parents.columns or parents[col].isna().any():
        notes.append("device-hours assume one device for training runs without the tag "
                     "archer.num_devices (logged by the trainer since it tracks its world size)")
    kinds = parents.get("tags.archer.device_kind", pd.Series(dtype=str)).dropna()
    if len(kinds) and (kinds == "cpu").all():
        notes.append("device-hours here are CPU-process hours: every training run ran on CPU")
    for c in COMPUTE_COLUMNS:
        table[c] = [float(np.nanmean([getattr(s, c) for s in stats[m]]))
                    if m in stats and any(_finite(getattr(s, c)) for s in stats[m])
                    else float("nan") for m in table["model"]]
    caveats = {b: next(e.caveat for e in entries if e.benchmark == b) for b in ks}
    hashes = {b: ",".join(sorted({e.contract_hash for e in entries if e.benchmark == b}))
              for b in ks}
    front = ["model", "study", "seeds"]
    table = table[front + [c for c in table.columns if c not in front]]
    return Leaderboard(table=table, benchmarks=list(ks), ks=ks, baseline=baseline,
                       contracts=hashes, caveats=caveats, notes=notes)
