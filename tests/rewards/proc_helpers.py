"""Helpers shared by the reward tests (imported as a plain module, like pytest's rootdir)."""

from __future__ import annotations

import os
import pathlib

from archer.paths import data_dir


def pids_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker`` (stray-process checks)."""
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if marker.encode() in pathlib.Path(f"/proc/{p}/cmdline").read_bytes():
                    out.append(int(p))
            except OSError:
                pass
    return out


def offline_data_dir() -> pathlib.Path:
    """The offline data directory (:func:`archer.paths.data_dir`, which says how it is set), or
    a path that does not exist, so that the tests needing its files skip."""
    try:
        return data_dir()
    except FileNotFoundError:
        return pathlib.Path("/nonexistent/archer-data")
