"""Helpers shared by the sandbox tests (imported as a plain module, like pytest's rootdir)."""

from __future__ import annotations

import os
import pathlib


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
