"""``archer data fetch``: download data sets from their public sources into the data dir.

For users with network access (the project's machines and CI have none and read the copies
in ``ARCHER_DATA_DIR``). Each set is written under the name and relpath its loader reads
(:mod:`archer.data.sources`). Offline, a fetch fails within a few seconds with a message
saying so, before importing anything heavy.

- Raw-URL sources download to ``<file>.part`` (``<file>.gz.part`` for a gzipped one); a
  dropped connection is retried, and a rerun continues from the ``.part``'s size with an
  HTTP Range request. The file is renamed into place only when complete.
- Hub sources are loaded with the ``datasets`` library, which cannot resume a download with
  a Range request: the converted records are written to ``<file>.part`` and renamed when
  complete, so a stopped fetch leaves no half file under the loader's name. A hub source
  that names its repo's files (``Source.hub_files``: LiveCodeBench, whose repo has only a
  loading script) downloads them like raw files, resumably, into
  ``<data_dir>/.archer-downloads/<name>/``, converts their rows the same way, and deletes
  the downloads.
- Every written file's sha256 is checked against the Source's pinned digest, or, for a
  raw-URL source fetched before, the manifest's record (the URL is pinned, so the bytes must
  not change); a mismatch is an error naming the file and both digests. A successful fetch
  records the digest in ``<data_dir>/.archer-manifest.json``.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import shutil
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from archer.data.manifest import file_sha256, read_manifest, record_fetch, set_state
from archer.data.sources import NOT_FETCHABLE, SOURCES, Source
from archer.paths import DATA_DIR_ENV
from archer.validation import unknown_name

__all__ = ["SOURCES", "ChecksumError", "FetchError", "PlannedFile", "Source", "check_online",
           "fetch", "plan", "resolve_names"]

CHUNK = 1 << 16


class FetchError(RuntimeError):
    """The data set could not be downloaded (offline, unknown name, bad response)."""


class ChecksumError(FetchError):
    """A downloaded file's sha256 differs from the expected one."""


class _Interrupted(Exception):
    """The download stopped early; the ``.part`` file keeps what arrived."""


def source(name: str) -> Source:
    """The Source of ``name``; FetchError with the closest name and all names otherwise."""
    if name in SOURCES:
        return SOURCES[name]
    if name in NOT_FETCHABLE:
        raise FetchError(f"data set {name!r} cannot be fetched: {NOT_FETCHABLE[name]}")
    raise FetchError(str(unknown_name("data set", name, SOURCES)))


def resolve_names(names: Iterable[str], all_sets: bool = False) -> list[str]:
    """The sets to fetch: every Source with ``all_sets``, else ``names`` (each checked)."""
    names = list(names)
    if all_sets:
        if names:
            raise FetchError(f"give data set names or --all, not both (got {names})")
        return list(SOURCES)
    if not names:
        raise FetchError(f"name the data sets to fetch, or pass --all; sets: {sorted(SOURCES)}")
    for name in names:
        source(name)
    return names


@dataclass(frozen=True)
class PlannedFile:
    name: str
    relpath: str
    path: Path
    origin: str


def plan(names: Iterable[str], data_dir: str | Path) -> list[PlannedFile]:
    """What fetching ``names`` writes (no network)."""
    root = Path(data_dir)
    return [PlannedFile(n, source(n).relpath, root / source(n).relpath, source(n).origin)
            for n in names]


def check_online(host: str, timeout: float = 3.0, port: int = 443, *,
                 hub: bool = True) -> None:
    """Fail fast (FetchError) when offline: HF_HUB_OFFLINE set (for hub sources), or
    ``host:port`` unreachable."""
    if hub and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise FetchError("HF_HUB_OFFLINE is set: not downloading. Copy the file into the data "
                         f"directory (${DATA_DIR_ENV}) instead; docs/data.md lists the sources")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        raise FetchError(
            f"cannot reach {host}:{port} ({err.__class__.__name__}: {err}); this machine looks "
            f"offline. Copy the file into the data directory (${DATA_DIR_ENV}) instead; "
            "docs/data.md lists each file's public source"
        ) from None


def fetch(name: str, data_dir: str | Path, *, overwrite: bool = False, timeout: float = 3.0,
          retries: int = 2, progress: bool = True) -> Path:
    """Download data set ``name`` into ``data_dir``; returns the loader's file.

    A file already there is kept when it matches the manifest (or has no record); one that
    differs is refused unless ``overwrite``. ``retries``: how many times a dropped download
    is resumed within this call."""
    src = source(name)
    root = Path(data_dir)
    target = root / src.relpath
    manifest = read_manifest(root)
    if target.exists() and not overwrite:
        state = set_state(name, src, root, manifest)
        if state.state == "stale":
            raise FetchError(f"{target} is stale: {state.note}")
        return target
    host, port = src.address
    check_online(host, timeout, port, hub=src.hub_id is not None)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    if src.url is not None:
        _download(src, name, target, retries, progress)
    elif src.hub_files:
        _write_hub_files(src, name, root, part, retries, progress)
    else:
        _write_records(src, name, part, _hub_rows(src), progress)
    digest = file_sha256(part)
    expected, where = _expected_sha256(src, manifest.get(name))
    if expected is not None and digest != expected:
        part.unlink()
        raise ChecksumError(f"{name}: the download of {target} has sha256 {digest}, expected "
                            f"{expected} ({where}); the source changed or the download is "
                            "corrupt. Nothing was written")
    os.replace(part, target)
    record_fetch(root, name, src, digest, target.stat().st_size)
    return target


def _expected_sha256(src: Source, record: dict | None) -> tuple[str | None, str]:
    if src.sha256:
        return src.sha256, "pinned in its Source"
    if src.url is not None and record and record.get("relpath") == src.relpath:
        return record.get("sha256"), "recorded in the manifest by an earlier fetch"
    return None, ""


# --------------------------------------------------------------------------------------
# Raw files (resumable)
# --------------------------------------------------------------------------------------


def _download(src: Source, name: str, target: Path, retries: int, progress: bool) -> None:
    """``src.url`` -> ``<target>.part`` (decompressed when gzipped), resuming a partial one."""
    part = target.with_name(target.name + ".part")
    raw = target.with_name(target.name + ".gz.part") if src.gzipped else part
    _download_url(src.url, raw, name, retries, progress)
    if src.gzipped:
        with gzip.open(raw, "rb") as fin, part.open("wb") as fout:
            shutil.copyfileobj(fin, fout)
        raw.unlink()


def _download_url(url: str, raw: Path, name: str, retries: int, progress: bool) -> None:
    """``url`` -> ``raw``, continuing from ``raw``'s size; ``retries`` resumes on a drop."""
    for attempt in range(retries + 1):
        try:
            _download_once(url, raw, name, progress)
            return
        except _Interrupted as err:
            if attempt == retries:
                size = raw.stat().st_size if raw.exists() else 0
                raise FetchError(f"{name}: the download of {url} stopped ({err}); {raw} "
                                 f"keeps {size} bytes: rerun the same command to resume"
                                 ) from None


def _download_once(url: str, raw: Path, name: str, progress: bool) -> None:
    offset = raw.stat().st_size if raw.exists() else 0
    headers = {"User-Agent": "archer-data-fetch"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            if _range_total(err.headers.get("Content-Range")) == offset:
                return  # the .part is already complete
            raw.unlink()  # the server has a different file now: start again
            raise _Interrupted(f"HTTP 416 for a {offset}-byte .part; restarting") from None
        raise FetchError(f"{name}: {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise _Interrupted(f"{err.__class__.__name__}: {err}") from None
    with resp:
        resumed = offset > 0 and resp.status == 206
        start = offset if resumed else 0
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        _copy_body(resp, raw, "ab" if resumed else "wb", start, total, name, progress)
    size = raw.stat().st_size
    if total is not None and size < total:
        raise _Interrupted(f"connection closed after {size} of {total} bytes")


def _copy_body(resp, raw: Path, mode: str, start: int, total: int | None, name: str,
               progress: bool) -> None:
    from tqdm import tqdm

    with raw.open(mode) as f, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                   desc=name, file=sys.stderr, disable=not progress) as bar:
        try:
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:
            raise _Interrupted(f"{err.__class__.__name__}: {err}") from None


def _range_total(content_range: str | None) -> int | None:
    """N of a ``Content-Range: bytes */N`` header."""
    if not content_range or "/" not in content_range:
        return None
    tail = content_range.rsplit("/", 1)[1].strip()
    return int(tail) if tail.isdigit() else None


# --------------------------------------------------------------------------------------
# Hub data sets (converted; not resumable)
# --------------------------------------------------------------------------------------


DOWNLOADS = ".archer-downloads"  # hub files being fetched, under the data directory


def _write_hub_files(src: Source, name: str, root: Path, part: Path, retries: int,
                     progress: bool) -> None:
    """Download ``src.hub_files`` (resumable, into ``<data_dir>/.archer-downloads/<name>/``),
    convert their rows into ``part``, then delete the downloads."""
    folder = root / DOWNLOADS / name
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for file, url in zip(src.hub_files, src.file_urls()):
        path = folder / file
        if not path.is_file():  # a complete one from a stopped run is kept
            _download_url(url, path.with_name(path.name + ".part"), f"{name}:{file}",
                          retries, progress)
            os.replace(path.with_name(path.name + ".part"), path)
        paths.append(path)
    _write_records(src, name, part, _jsonl_rows(paths), progress)
    shutil.rmtree(folder)
    if not any((root / DOWNLOADS).iterdir()):
        (root / DOWNLOADS).rmdir()


def _jsonl_rows(paths: list[Path]) -> Iterator[dict]:
    for path in paths:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise FetchError(f"{path}: line {lineno}: invalid JSON ({err.msg}); "
                                         "delete it and fetch again") from None


def _hub_rows(src: Source) -> Iterator[dict]:
    import datasets

    for row in datasets.load_dataset(src.hub_id, src.hub_config, split=src.split):
        yield dict(row)


def _write_records(src: Source, name: str, part: Path, rows: Iterable[dict],
                   progress: bool) -> None:
    """The converted ``rows`` of a hub data set -> ``part``: JSON lines for a ``.jsonl``
    relpath, a JSON array for ``.json``."""
    from tqdm import tqdm

    as_array = part.name.endswith(".json.part")
    records = (src.convert(row) if src.convert else row for row in rows)
    count = 0
    with part.open("w", encoding="utf-8") as f, tqdm(unit="row", desc=name, file=sys.stderr,
                                                     disable=not progress) as bar:
        f.write("[\n" if as_array else "")
        for rec in records:
            bar.update(1)
            if rec is None:
                continue
            text = json.dumps(rec, ensure_ascii=False, default=str)
            f.write((",\n" if count else "") + text if as_array else text + "\n")
            count += 1
        f.write("\n]\n" if as_array else "")
    if not count:
        part.unlink()
        raise FetchError(f"{name}: {src.origin} gave no records")
