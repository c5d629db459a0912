"""PNG figures of ``archer report`` (matplotlib, Agg backend): every arm's training curves,
mean over its seeds, one file per panel.

Panels: reward, held-out accuracy (y from 0 to 1), the entropy of each token class, the clip
fractions (lower and upper bound, per class: four subplots) and the KL to the reference per
class. A panel no trial logged is left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from archer.tracking import reader as D

# (file stem, title, [(subplot title, [(metric, line label)])], y from 0 to 1)
PANELS: list[tuple[str, str, list[tuple[str, list[tuple[str, str]]]], bool]] = [
    ("reward", "reward (mean over the batch)", [("", [("reward/mean", "")])], False),
    ("heldout_accuracy", "held-out accuracy", [("", [("val/accuracy", "")])], True),
    ("entropy", "entropy per token class", [
        ("high-entropy tokens", [("actor/entropy_high_entropy", "")]),
        ("low-entropy tokens", [("actor/entropy_low_entropy", "")])], False),
    ("clipfrac", "clip fractions per token class and bound", [
        ("high-entropy, lower", [("actor/clipfrac_high_entropy_lower", "")]),
        ("high-entropy, upper", [("actor/clipfrac_high_entropy_upper", "")]),
        ("low-entropy, lower", [("actor/clipfrac_low_entropy_lower", "")]),
        ("low-entropy, upper", [("actor/clipfrac_low_entropy_upper", "")])], False),
    ("kl", "KL to the reference per token class", [
        ("high-entropy tokens", [("actor/kl_high_entropy", "")]),
        ("low-entropy tokens", [("actor/kl_low_entropy", "")])], False),
]


def seed_mean_curve(client, run_ids: list[str], metric: str) -> dict[int, float]:
    """``{step: mean over the runs that logged the step}``."""
    hists = [D.metric_history(client, rid, metric) for rid in run_ids]
    steps = sorted({s for h in hists for s in h})
    return {s: float(np.mean([h[s] for h in hists if s in h])) for s in steps}


def write_figures(client, by_arm: dict[str, list[Any]], out_dir: Path) -> dict[str, Path]:
    """One PNG per panel in ``out_dir``; returns ``{panel title: path}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for stem, title, subplots, unit in PANELS:
        curves = {(i, arm): seed_mean_curve(client, [t.run_id for t in trials], metric)
                  for i, (_, series) in enumerate(subplots) for metric, _ in series
                  for arm, trials in by_arm.items()}
        if not any(curves.values()):
            continue
        cols = 2 if len(subplots) > 1 else 1
        rows = (len(subplots) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
        for i, (sub_title, _) in enumerate(subplots):
            ax = axes[i // cols][i % cols]
            for j, arm in enumerate(by_arm):
                pts = curves.get((i, arm)) or {}
                if pts:
                    ax.plot(list(pts), list(pts.values()), marker="o", ms=3, label=arm,
                            color=f"C{j % 10}")
            if not ax.get_lines():
                ax.text(0.5, 0.5, "not logged", ha="center", va="center",
                        transform=ax.transAxes, color="0.5")
            ax.set_title(sub_title, fontsize=10)
            ax.set_xlabel("step")
            if unit:
                ax.set_ylim(0, 1)
            else:
                ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
            ax.grid(alpha=0.3)
        for ax in axes.flat:  # the legend on the first subplot that has lines
            if ax.get_lines():
                ax.legend(fontsize=8)
                break
        for k in range(len(subplots), rows * cols):
            axes[k // cols][k % cols].set_visible(False)
        fig.suptitle(f"{title} (mean over seeds)")
        fig.tight_layout()
        path = out_dir / f"{stem}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written[title] = path
    return written
