"""Where each data file comes from: one :class:`Source` per file ``archer data fetch`` writes.

Every registered data file (:data:`archer.data.datasets.FILES`) has a Source under the same
name and relpath, or an entry in :data:`NOT_FETCHABLE` saying why it cannot be fetched
(``tests/test_data_fetch.py`` checks this). A few Sources write files no loader registers
(``registered=False``): they are read with ``archer eval --data-file``.

Raw-file sources are pinned: a commit in a GitHub URL, or a release asset's version. Hub
sources (``hub_id``, loaded with the ``datasets`` library) follow the hub's current revision
and are converted to the record format the loader reads. The public sources of the files,
with their licences, are listed in docs/data.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

HUB_HOST = "huggingface.co"
RLLM = "https://raw.githubusercontent.com/agentica-project/rllm/874daa4/rllm/data/"
GSM8K = ("https://raw.githubusercontent.com/openai/grade-school-math/3101c7d/"
         "grade_school_math/data/")
LCB_HUB = "livecodebench/code_generation_lite"
LCB_V5_WINDOW = ("2024-08-01", "2025-02-01")  # the lcb_v5 benchmark's contest dates, [start, end)


@dataclass(frozen=True)
class Source:
    """One file of the data directory and where it is downloaded from."""

    relpath: str  # where the file goes, relative to the data directory
    hub_id: str | None = None  # Hugging Face dataset id (loaded with `datasets`)
    hub_config: str | None = None
    split: str = "test"
    url: str | None = None  # raw file URL when there is no hub id
    convert: Callable[[dict], dict | None] | None = None  # hub row -> record (None: drop it)
    note: str = ""
    gzipped: bool = False  # the url serves a .gz file: stored decompressed
    sha256: str | None = None  # the written file's pinned digest, when known
    legacy: tuple[str, ...] = ()  # relpaths that older versions of the fetch wrote
    registered: bool = True  # False: no loader reads it by name (use --data-file)
    # JSON-lines files of the hub repo ``hub_id``, downloaded (resumably) from ``hub_url``
    # at ``revision`` instead of loading the set with `datasets` (for a script-only repo)
    hub_files: tuple[str, ...] = ()
    revision: str = "main"
    hub_url: str = "https://" + HUB_HOST

    def __post_init__(self) -> None:
        if (self.hub_id is None) == (self.url is None):
            raise ValueError(f"Source {self.relpath}: give exactly one of hub_id and url")

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) that must be reachable to fetch this source."""
        if self.hub_id is not None and not self.hub_files:
            return HUB_HOST, 443
        parts = urlsplit(self.url or self.hub_url)
        return parts.hostname or "", parts.port or (80 if parts.scheme == "http" else 443)

    def file_urls(self) -> list[str]:
        """The URLs of ``hub_files``."""
        return [f"{self.hub_url}/datasets/{self.hub_id}/resolve/{self.revision}/{f}"
                for f in self.hub_files]

    @property
    def origin(self) -> str:
        """The source in one line: the URL, ``hf:<id>@<revision>:<file>+...``, or
        ``hf:<id>[:<config>] split=<split>``."""
        if self.url is not None:
            return self.url
        if self.hub_files:
            return f"hf:{self.hub_id}@{self.revision}:{'+'.join(self.hub_files)}"
        config = f":{self.hub_config}" if self.hub_config else ""
        return f"hf:{self.hub_id}{config} split={self.split}"


def _aime24(row: dict) -> dict:
    return {"id": str(row.get("ID", "")), "problem": row["Problem"], "answer": str(row["Answer"])}


def _aime25(row: dict) -> dict:
    return {"id": str(row.get("id", "")), "problem": row["problem"], "answer": str(row["answer"])}


def _json_value(value):
    return json.loads(value) if isinstance(value, str) else value


def lcb_v5_public(row: dict) -> dict | None:
    """An official LiveCodeBench record -> the ``lcb_v5_public`` shape: inside the v5 window
    only, public tests decoded to a list, metadata to a dict, private tests dropped (the
    benchmark is labelled "public tests only")."""
    date = str(row.get("contest_date") or "")[:10]
    start, end = LCB_V5_WINDOW
    if not start <= date < end:
        return None
    keep = ("question_id", "question_title", "contest_id", "contest_date", "platform",
            "question_content", "starter_code", "difficulty")
    out = {k: row[k] for k in keep if k in row}
    out["contest_date"] = str(row["contest_date"])
    out["public_test_cases"] = _json_value(row["public_test_cases"])
    out["metadata"] = _json_value(row.get("metadata") or {})
    return out


def _lcb_official(row: dict) -> dict:
    return dict(row)  # the official record format, read by the lcb loader as is


SOURCES: dict[str, Source] = {
    "aime2024": Source("eval_math/aime2024.jsonl", "Maxwell-Jia/AIME_2024", split="train",
                       convert=_aime24),
    "aime2025": Source("eval_math/aime2025.jsonl", "math-ai/aime25", convert=_aime25),
    "amc23": Source("eval_math/amc23.jsonl",
                    url="https://raw.githubusercontent.com/QwenLM/Qwen2.5-Math/a45202b/"
                        "evaluation/data/amc23/test.jsonl"),
    "math500": Source("eval_math/math500.json", url=RLLM + "test/math/math.json",
                      legacy=("eval_math/math500.jsonl",),
                      note="MATH-500 (the HuggingFaceH4/MATH-500 problems) as a JSON array"),
    "gsm8k_test": Source("eval_math/gsm8k_test.jsonl", url=GSM8K + "test.jsonl"),
    "gsm8k_train": Source("train_math/gsm8k_train.jsonl", url=GSM8K + "train.jsonl"),
    "math_train": Source("train_math/math_train.json", url=RLLM + "train/math/math.json"),
    "aime_1983_2023": Source("train_math/aime_1983_2023.json", url=RLLM + "train/math/aime.json"),
    "leetcode_train": Source("train_code/leetcode_train.json",
                             url=RLLM + "train/code/leetcode.json"),
    "codeforces_test": Source("train_code/codeforces_test.json",
                              url=RLLM + "test/code/codeforces.json"),
    # LiveCodeBench's repo holds a loading script (which `datasets` no longer runs) and one
    # JSONL file per release increment: release_v5 is test.jsonl + test2..test5.jsonl; the
    # v5 window's problems (2024-08 .. 2025-01) are in the v4 and v5 increments
    "lcb_v5_public": Source("eval_code/lcb_v5_public.jsonl", LCB_HUB,
                            hub_files=("test4.jsonl", "test5.jsonl"), convert=lcb_v5_public,
                            note="benchmark lcb_v5: the v5 window, public tests only"),
    "lcb_release_v5": Source("eval_code/lcb_release_v5.jsonl", LCB_HUB,
                             hub_files=("test.jsonl", "test2.jsonl", "test3.jsonl",
                                        "test4.jsonl", "test5.jsonl"),
                             convert=_lcb_official, registered=False,
                             note="official format with private tests; use it with "
                                  "`archer eval --benchmarks lcb_v5 --data-file ...`"),
    # evalplus's own release files (the versions evalplus 0.3 pins), in its record format
    "mbpp_plus": Source("eval_code/MbppPlus.jsonl", gzipped=True,
                        url="https://github.com/evalplus/mbppplus_release/releases/download/"
                            "v0.2.0/MbppPlus.jsonl.gz",
                        note="benchmark mbpp_plus; evalplus MBPP+ v0.2.0"),
    "humaneval_plus": Source("eval_code/HumanEvalPlus.jsonl", gzipped=True, registered=False,
                             url="https://github.com/evalplus/humanevalplus_release/releases/"
                                 "download/v0.1.10/HumanEvalPlus.jsonl.gz",
                             note="HumanEval+ v0.1.10: `archer eval --score-only --scorer "
                                  "evalplus --benchmarks humaneval --data-file ...`"),
}

# Registered data files that `archer data fetch` cannot write, each with the reason.
NOT_FETCHABLE: dict[str, str] = {}


def fetch_hint(name: str) -> str:
    """How to get the registered file ``name``: the fetch command, or why there is none."""
    if name in NOT_FETCHABLE:
        return f"it cannot be fetched ({NOT_FETCHABLE[name]})"
    return f"fetch it with `archer data fetch {name}`"
