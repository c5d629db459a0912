"""Method presets as data: ``experiments/conf/preset/<name>.yaml``.

Each preset names its paper (arXiv id), the module that implements it, and exactly the
algorithm knobs of its method (docs/method.md, section 3) as an ``algo`` mapping for :class:`AlgoConfig`.
Overrides are dotted keys (``{"low.kl_weight": 0.005}``) validated like the preset itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from archer.config import AlgoConfig
from archer.validation import ConfigError, unknown_name

PRESET_DIR = Path(__file__).resolve().parent / "conf" / "preset"
_TOP_KEYS = {"name", "paper", "module", "algo"}


@dataclass(frozen=True)
class Preset:
    name: str  # registry name, e.g. "archer"
    arxiv: str  # arXiv id of the method's paper
    title: str  # paper title
    module: str  # where the method lives in this code base
    algo: AlgoConfig  # the validated algorithm knobs


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a mapping")
    node[parts[-1]] = value


def load_preset(name: str, overrides: dict[str, Any] | None = None) -> Preset:
    """Load and validate a preset; ``overrides`` maps dotted algo keys to values."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise unknown_name("preset", name, preset_names())
    raw = yaml.safe_load(path.read_text())
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{path.name}: unknown top-level key(s) {sorted(unknown)}")
    algo = dict(raw.get("algo") or {})
    algo = {k: (dict(v) if isinstance(v, dict) else v) for k, v in algo.items()}
    for key, value in (overrides or {}).items():
        _set_dotted(algo, key, value)
    try:
        cfg = AlgoConfig.from_dict(algo)
    except ConfigError as err:
        raise ConfigError(f"preset {name!r}: {err}") from None
    paper = raw.get("paper") or {}
    return Preset(name=raw.get("name", name), arxiv=str(paper.get("arxiv", "")),
                  title=str(paper.get("title", "")), module=str(raw.get("module", "")),
                  algo=cfg)
