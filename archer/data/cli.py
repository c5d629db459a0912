"""``archer data fetch`` and ``archer data list``.

    archer data fetch aime2024 math500      fetch these sets into the data directory
    archer data fetch --all [--dry-run]     every set (--dry-run: list the files, no network)
    archer data fetch NAME overwrite=true   download again a file already there
    archer data list                        each set: present / missing / stale, path, size

The data directory is ``data_dir=D``, else ``$ARCHER_DATA_DIR``, else the user cache dir
(:func:`archer.paths.data_dir`). Settings are ``key=value`` (the old ``--data-dir`` and
``--overwrite`` spellings still work, with a deprecation note); ``--all`` and ``--dry-run``
are actions.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from archer.cli_settings import Setting, add_settings
from archer.data.fetch import SOURCES, FetchError, fetch, plan, resolve_names
from archer.data.manifest import read_manifest, set_state
from archer.data.sources import NOT_FETCHABLE
from archer.paths import DATA_DIR_ENV, user_data_dir


def add_subparser(subparsers) -> None:
    """Add ``data`` (with ``fetch`` and ``list``) to the ``archer`` command's subparsers."""
    data = subparsers.add_parser("data", help="fetch and list the data sets",
                                 description=__doc__.splitlines()[0])
    data_sub = data.add_subparsers(dest="data_command", required=True)
    where = (f"the data directory (default: ${DATA_DIR_ENV}, else {user_data_dir()})")
    f = data_sub.add_parser("fetch", help="download data sets from their public sources",
                            description="Download data sets into the data directory, under "
                                        "the names the loaders read.")
    data_dir = Setting("data_dir", help=where, deprecated=("--data-dir",))
    add_settings(f, "data fetch", (
        data_dir, Setting("overwrite", False, "bool", "download again even when the file is "
                          "there", deprecated=("--overwrite",))),
        names=f"data sets: {', '.join(SOURCES)}")
    f.add_argument("--all", action="store_true", dest="all_sets", help="fetch every set")
    f.add_argument("--dry-run", action="store_true",
                   help="list the files it would write (name, relpath, source); no network")
    f.set_defaults(func=run)
    lst = data_sub.add_parser("list", help="each data set: present / missing / stale")
    add_settings(lst, "data list", (data_dir,))
    lst.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``archer data fetch`` or ``archer data list``; 0 on success, 2 on an error."""
    try:
        root = Path(args.data_dir or _default_root()).expanduser()
        if args.data_command == "list":
            return _list(root)
        return _fetch(args, root)
    except (FetchError, FileNotFoundError, ValueError) as err:
        print(f"archer: error: {err}", file=sys.stderr)
        return 2


def _default_root() -> Path:
    """``$ARCHER_DATA_DIR`` (created by the fetch when missing), else the user cache dir."""
    return Path(os.environ.get(DATA_DIR_ENV) or user_data_dir())


def _fetch(args: argparse.Namespace, root: Path) -> int:
    names = resolve_names(args.names, args.all_sets)
    if args.dry_run:
        for row in plan(names, root):
            print(f"{row.name}\t{row.relpath}\t{row.origin}")
        return 0
    for name in names:
        kept = (root / SOURCES[name].relpath).exists() and not args.overwrite
        path = fetch(name, root, overwrite=args.overwrite)
        what = "kept (already there; overwrite=true fetches it again)" if kept else "fetched"
        note = SOURCES[name].note
        print(f"{name}\t{what}\t{path}" + (f"\t({note})" if note else ""))
    return 0


def _list(root: Path) -> int:
    manifest = read_manifest(root) if root.is_dir() else {}
    print(f"# data directory: {root}")
    for name, src in SOURCES.items():
        s = set_state(name, src, root, manifest)
        size = "-" if s.size is None else f"{s.size}"
        print(f"{name}\t{s.state}\t{s.path}\t{size}" + (f"\t({s.note})" if s.note else ""))
    for name, reason in NOT_FETCHABLE.items():
        print(f"{name}\tnot fetchable\t-\t-\t({reason})")
    return 0
