"""One line per evaluated benchmark (``archer eval`` and the lm-eval adapter print it)."""

from __future__ import annotations

from typing import Any


def summary_line(res: dict[str, Any]) -> str:
    m = res["metrics"]
    n = m["n_samples_max"]
    avg, lo, hi = m[f"avg_at_{n}"], m[f"avg_at_{n}_ci_low"], m[f"avg_at_{n}_ci_high"]
    extra = f" pass@{n}={100 * m[f'pass_at_{n}']:.1f}"
    if f"maj_at_{n}" in m:
        extra += f" maj@{n}={100 * m[f'maj_at_{n}']:.1f}"
    label = f" [{res['label']}]" if res.get("label") else ""
    return (f"{res['benchmark']}: avg@{n}={100 * avg:.1f}% (95% CI {100 * lo:.1f}-"
            f"{100 * hi:.1f}){extra} over {m['n_problems']} problems, "
            f"contract {res['contract_hash']}{label}")
