"""``archer data fetch NAME``: download a data set from its public source into the data dir.

For users with network access (the project's machines and CI have none and read the copies
in ``ARCHER_DATA_DIR``). Sources are the public hub ids (and, where the data README names no
hub id, the GitHub repository at the pinned commit); each is converted to the record format
the loaders in :mod:`archer.data.datasets` read. Offline, the command fails within a few
seconds with a message saying so, before importing anything heavy.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from archer.paths import DATA_DIR_ENV


class FetchError(RuntimeError):
    """The data set could not be downloaded (offline, unknown name, bad response)."""


@dataclass(frozen=True)
class Source:
    relpath: str  # where the file goes, relative to the data directory
    hub_id: str | None = None  # Hugging Face dataset id (loaded with `datasets`)
    hub_config: str | None = None
    split: str = "test"
    url: str | None = None  # raw file URL when there is no hub id
    convert: Callable[[dict], dict] | None = None  # hub row -> our record
    host: str = "huggingface.co"
    note: str = ""
    gzipped: bool = False  # the url serves a .gz file: stored decompressed


def _aime24(row: dict) -> dict:
    return {"id": str(row.get("ID", "")), "problem": row["Problem"], "answer": str(row["Answer"])}


def _aime25(row: dict) -> dict:
    return {"id": str(row.get("id", "")), "problem": row["problem"], "answer": str(row["answer"])}


def _math500(row: dict) -> dict:
    return {"problem": row["problem"], "answer": row["answer"], "solution": row["solution"],
            "difficulty": row.get("level"), "type": row.get("subject"),
            "unique_id": row.get("unique_id")}


def _gsm8k(row: dict) -> dict:
    return {"question": row["question"], "answer": row["answer"]}


def _lcb(row: dict) -> dict:
    return dict(row)  # the official record format, read by the lcb loader as is


SOURCES: dict[str, Source] = {
    "aime2024": Source("eval_math/aime2024.jsonl", "Maxwell-Jia/AIME_2024", split="train",
                       convert=_aime24),
    "aime2025": Source("eval_math/aime2025.jsonl", "math-ai/aime25", convert=_aime25),
    "math500": Source("eval_math/math500.jsonl", "HuggingFaceH4/MATH-500", convert=_math500,
                      note="written as JSONL; the registered loader reads math500.json"),
    "gsm8k_test": Source("eval_math/gsm8k_test.jsonl", "openai/gsm8k", "main", convert=_gsm8k),
    "gsm8k_train": Source("train_math/gsm8k_train.jsonl", "openai/gsm8k", "main", "train",
                          convert=_gsm8k),
    "amc23": Source("eval_math/amc23.jsonl", host="raw.githubusercontent.com",
                    url="https://raw.githubusercontent.com/QwenLM/Qwen2.5-Math/a45202b/"
                        "evaluation/data/amc23/test.jsonl"),
    "lcb_release_v5": Source("eval_code/lcb_release_v5.jsonl", "livecodebench/code_generation_lite",
                             "release_v5", convert=_lcb,
                             note="official format with private tests; use it with "
                                  "`archer eval --benchmarks lcb_v5 --data-file ...`"),
    # evalplus's own release files (the versions evalplus 0.3 pins), in its record format
    "mbpp_plus": Source("eval_code/MbppPlus.jsonl", host="github.com", gzipped=True,
                        url="https://github.com/evalplus/mbppplus_release/releases/download/"
                            "v0.2.0/MbppPlus.jsonl.gz",
                        note="benchmark mbpp_plus; evalplus MBPP+ v0.2.0"),
    "humaneval_plus": Source("eval_code/HumanEvalPlus.jsonl", host="github.com", gzipped=True,
                             url="https://github.com/evalplus/humanevalplus_release/releases/"
                                 "download/v0.1.10/HumanEvalPlus.jsonl.gz",
                             note="HumanEval+ v0.1.10: `archer eval --score-only --scorer "
                                  "evalplus --benchmarks humaneval --data-file ...`"),
}


def check_online(host: str, timeout: float = 3.0) -> None:
    """Fail fast (FetchError) when offline: HF_HUB_OFFLINE set, or ``host`` unreachable."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise FetchError("HF_HUB_OFFLINE is set: not downloading. Copy the file into the data "
                         f"directory (${DATA_DIR_ENV}) instead; see the data README for sources")
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            pass
    except OSError as err:
        raise FetchError(
            f"cannot reach {host}:443 ({err.__class__.__name__}: {err}); this machine looks "
            f"offline. Copy the file into the data directory (${DATA_DIR_ENV}) instead; the "
            "data README lists each file's public source"
        ) from None


def fetch(name: str, data_dir: str | Path, *, overwrite: bool = False,
          timeout: float = 3.0) -> Path:
    """Download data set ``name`` into ``data_dir``; returns the written file."""
    if name not in SOURCES:
        raise FetchError(f"unknown data set {name!r}; allowed: {sorted(SOURCES)}")
    src = SOURCES[name]
    target = Path(data_dir) / src.relpath
    if target.exists() and not overwrite:
        raise FetchError(f"{target} exists; pass --overwrite to replace it")
    check_online(src.host, timeout)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    if src.url:
        with urllib.request.urlopen(src.url, timeout=60) as resp, tmp.open("wb") as f:
            body = resp.read()
            if src.gzipped:
                import gzip

                body = gzip.decompress(body)
            f.write(body)
    else:
        import datasets

        rows = datasets.load_dataset(src.hub_id, src.hub_config, split=src.split)
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                rec = src.convert(dict(row)) if src.convert else dict(row)
                f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, target)
    return target


def add_fetch_arguments(p: argparse.ArgumentParser, func) -> None:
    p.add_argument("name", help=f"one of: {', '.join(sorted(SOURCES))}")
    p.add_argument("--data-dir", default=None, help=f"default: ${DATA_DIR_ENV}")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=func)


def run_fetch(args: argparse.Namespace) -> int:
    import sys

    data_dir = args.data_dir or os.environ.get(DATA_DIR_ENV)
    if not data_dir:
        print(f"archer: error: set ${DATA_DIR_ENV} or pass --data-dir", file=sys.stderr)
        return 2
    try:
        path = fetch(args.name, data_dir, overwrite=args.overwrite)
    except FetchError as err:
        print(f"archer: error: {err}", file=sys.stderr)
        return 2
    note = SOURCES[args.name].note
    print(f"{path}" + (f"  ({note})" if note else ""))
    return 0
