"""``archer algos``: the method presets (``algo=NAME`` of ``archer train`` / ``demo``)."""

from __future__ import annotations


def algo_table() -> list[tuple[str, ...]]:
    """One row per preset: name, arXiv id, update mode, loss aggregation, the clip ranges of
    high- and low-entropy tokens and the low-entropy KL weight (header first)."""
    from experiments.presets import load_preset, preset_names

    rows = [("algo", "arXiv", "update", "agg", "clip high-ent", "clip low-ent", "KL low")]
    for name in preset_names():
        p = load_preset(name)
        a = p.algo
        rows.append((
            name, p.arxiv, a.update_mode, a.loss_agg_mode,
            f"{a.high.clip_low}/{a.high.clip_high}", f"{a.low.clip_low}/{a.low.clip_high}",
            str(a.low.kl_weight),
        ))
    return rows


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
