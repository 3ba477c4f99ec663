"""``python -m unimeter.backup DIR``: a consistent copy of a node's data, taken while it runs.

Copies the node data directory (``--data-dir``, default ``./unimeter-data`` or
``UNIMETER_DATA_DIR``) into DIR, which must not exist yet. The node keeps serving; it only
holds off deleting old WAL segments and snapshots until the copy is done. To restore: stop the
node, move the copy into place as its data directory, start it (docs/operations.md, Backup).
Run it on each node of a cluster to back up the cluster.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from unimeter.storage.backup import BackupError, BackupReport, backup

__all__ = ["BackupError", "BackupReport", "backup", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m unimeter.backup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="DIR", help="where the copy goes (must not exist)")
    p.add_argument("--data-dir", default=os.environ.get("UNIMETER_DATA_DIR", "./unimeter-data"))
    a = p.parse_args(argv)
    try:
        report = backup(a.data_dir, a.target)
    except BackupError as exc:
        print(f"backup failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"backed up {a.data_dir} to {report.target}: {report.replicas} replicas, "
        f"{report.files} files, {report.bytes} bytes in {report.seconds:.2f}s"
        + (f" ({report.retries} replicas copied again)" if report.retries else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
