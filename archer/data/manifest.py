"""The data directory's manifest (``<data_dir>/.archer-manifest.json``) and each set's state.

``archer data fetch`` records every file it writes (relpath, sha256, bytes, source, time);
``archer data list`` compares the files on disk with it. A set is

- ``present``: its file exists and matches the manifest (or the manifest has no record of
  it, e.g. a copy placed by hand: then ``checked`` is False);
- ``stale``: its file differs from the manifest's sha256, or only a file under an older name
  or format (``Source.legacy``) exists;
- ``missing``: neither exists.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from archer.data.sources import Source

MANIFEST_NAME = ".archer-manifest.json"
MANIFEST_FORMAT = 1


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(root: Path) -> dict[str, dict]:
    """name -> record of the files fetched into ``root`` ({} when there is no manifest)."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err.msg}); delete it and fetch again") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise ValueError(f"{path}: expected {{'format': {MANIFEST_FORMAT}, 'files': {{...}}}}")
    return data["files"]


def record_fetch(root: Path, name: str, src: Source, sha256: str, size: int) -> None:
    """Add (or replace) ``name``'s record in the manifest; written atomically."""
    files = read_manifest(root)
    files[name] = {"relpath": src.relpath, "sha256": sha256, "bytes": size,
                   "source": src.origin,
                   "fetched": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path = Path(root) / MANIFEST_NAME
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1,
                              sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class SetState:
    name: str
    state: str  # "present" | "missing" | "stale"
    path: Path  # the file the loader reads (or, stale by name, the old file found)
    size: int | None  # bytes on disk, None when missing
    checked: bool  # the sha256 was compared with the manifest or the pinned digest
    note: str = ""


def set_state(name: str, src: Source, root: Path, manifest: dict[str, dict]) -> SetState:
    """The state of ``name`` in ``root`` (see the module docstring)."""
    path = Path(root) / src.relpath
    if not path.is_file():
        for old in src.legacy:
            old_path = Path(root) / old
            if old_path.is_file():
                return SetState(name, "stale", old_path, old_path.stat().st_size, False,
                                f"older name/format; the loader reads {src.relpath}: "
                                f"run `archer data fetch {name}`")
        return SetState(name, "missing", path, None, False)
    size = path.stat().st_size
    rec = manifest.get(name)
    expected = src.sha256 or (rec or {}).get("sha256")
    if expected is None:
        return SetState(name, "present", path, size, False, "not in the manifest")
    actual = file_sha256(path)
    if actual != expected:
        where = "the pinned digest" if src.sha256 else "the manifest"
        return SetState(name, "stale", path, size, True,
                        f"sha256 {actual[:12]}... differs from {where} ({expected[:12]}...): "
                        f"run `archer data fetch {name} overwrite=true`")
    return SetState(name, "present", path, size, True)
