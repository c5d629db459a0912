"""Audit of the math checkers: run them side by side and list where they disagree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from archer.rewards.math.config import MathGraderConfig
from archer.rewards.math.extract import extract_answer
from archer.rewards.math.grader import MathGrader, _gold_str

# --------------------------------------------------------------------------------------------


@dataclass
class AuditReport:
    """Side-by-side results of every checker.

    ``rows`` has one dict per response: ``index``, ``extracted``, ``gold`` and one column per
    checker with ``accept``/``reject``/``timeout``/``error``/``no_answer``. ``accept_rates``
    is per checker over all responses (no answer counts as not accepted). ``disagreements``
    are the rows where some checker accepted and another did not. ``counts`` has ``n``,
    ``no_answer``, ``any_accept``, ``all_accept``, ``disagreements``, ``timeouts``, ``errors``
    and ``only_<checker>`` (accepted by that checker alone).
    """

    checkers: tuple[str, ...]
    rows: list[dict[str, Any]]
    accept_rates: dict[str, float]
    disagreements: list[dict[str, Any]]
    counts: dict[str, int]

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def summary(self) -> str:
        rates = ", ".join(f"{c} {r:.3f}" for c, r in self.accept_rates.items())
        return (
            f"{self.counts['n']} answers ({self.counts['no_answer']} without answer); "
            f"accept rates: {rates}; {self.counts['disagreements']} disagreements"
        )


def audit_graders(
    responses: Sequence[str],
    golds: Sequence[Any],
    config: MathGraderConfig | dict | None = None,
    *,
    grader: MathGrader | None = None,
) -> AuditReport:
    """Run each enabled checker separately on every response and compare them.

    Pass ``grader`` to reuse its workers (its config then applies), else ``config`` (default:
    all three builtin checkers) builds a temporary grader.
    """
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
    own = grader is None
    g = grader if grader is not None else MathGrader(config)
    checkers = g.config.checkers
    try:
        rows: list[dict[str, Any]] = []
        pairs: list[tuple[str, str]] = []
        answered: list[int] = []
        for i, (resp, gold) in enumerate(zip(responses, golds)):
            extracted, _ = extract_answer(resp, g.config.fallbacks)
            rows.append({"index": i, "extracted": extracted, "gold": _gold_str(gold)})
            if extracted is None:
                rows[-1].update({c: "no_answer" for c in checkers})
            else:
                answered.append(i)
                pairs.append((extracted, _gold_str(gold)))
        uniq = list(dict.fromkeys(pairs))
        outs = dict(zip(uniq, g.run_checkers(uniq)))
        for i, pair in zip(answered, pairs):
            for c in checkers:
                rows[i][c] = outs[pair][c].status
                rows[i][f"{c}_detail"] = outs[pair][c].detail
    finally:
        if own:
            g.close()
    n = len(rows)
    accepted = {c: [r[c] == "accept" for r in rows] for c in checkers}
    disagreements = [
        r
        for r in rows
        if any(r[c] == "accept" for c in checkers) and not all(r[c] == "accept" for c in checkers)
    ]
    counts = {
        "n": n,
        "no_answer": sum(r["extracted"] is None for r in rows),
        "any_accept": sum(any(accepted[c][i] for c in checkers) for i in range(n)),
        "all_accept": sum(all(accepted[c][i] for c in checkers) for i in range(n)),
        "disagreements": len(disagreements),
        "timeouts": sum(any(r[c] == "timeout" for c in checkers) for r in rows),
        "errors": sum(any(r[c] == "error" for c in checkers) for r in rows),
    }
    for c in checkers:
        counts[f"only_{c}"] = sum(
            accepted[c][i] and not any(accepted[o][i] for o in checkers if o != c) for i in range(n)
        )
    rates = {c: (sum(accepted[c]) / n if n else 0.0) for c in checkers}
    return AuditReport(checkers, rows, rates, disagreements, counts)


# --------------------------------------------------------------------------------------------
# Reward
# --------------------------------------------------------------------------------------------
