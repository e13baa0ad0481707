"""The worklist store's maintenance commands.

    python -m engine.cli.store check  [--store DIR]          integrity check; exit 1 when damaged
    python -m engine.cli.store backup [--store DIR] DEST     SQLite online backup of the database
    python -m engine.cli.store new    [--store DIR]          keep a damaged database aside, start an empty one

The store refuses to open a missing (beside cached files), empty or corrupt database and says so; these
commands are the two ways on: restore a backup (copy DEST back as ``store.sqlite3``), or start anew.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from engine.errors import StoreDamaged
from engine.worklist.store import Store, default_root, start_new_database


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.cli.store", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["check", "backup", "new"])
    p.add_argument("destination", nargs="?", help="backup: the file to write")
    p.add_argument("--store", help="store folder (default: $CXR_STORE_DIR or the user's data folder)")
    args = p.parse_intermixed_args(argv)
    root = Path(args.store) if args.store else default_root()
    if args.action == "new":
        kept = start_new_database(root)
        print(f"Started a new, empty store database in {root}" + (f"; the old one is kept as {kept}" if kept else ""))
        return 0
    try:
        store = Store(root)
    except StoreDamaged as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.action == "check":
        print(f"{store.db_path}: ok")
        return 0
    if not args.destination:
        p.error("backup needs a DESTINATION file")
    print(f"Backed up {store.db_path} to {store.backup(args.destination)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
