"""Command line for the source table's schema migrations (docs/migrations.md): show the version, print the pending
SQL for review, or apply it under the same lock as the DAG.

    python -m ticketsync.source.migrate --conn-id ticket_source [--table ticket_requests] [--sql | --status]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

from ticketsync.source.migrator import Migrator, load_migrations


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ticketsync.source.migrate",
        description="Apply the pending schema migrations of the ticketsync source table (docs/migrations.md).",
    )
    parser.add_argument("--conn-id", default="ticket_source", help="the source's Airflow connection id")
    parser.add_argument("--table", default="ticket_requests", help="the source table's name")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--sql", action="store_true", help="print the SQL that would run, and change nothing")
    group.add_argument("--status", action="store_true", help="print the version found and the version needed")
    parser.add_argument("--migrations-dir", type=Path, help=argparse.SUPPRESS)  # tests: a modified set
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)

    from ticketsync.source.table import SourceTable

    with SourceTable.from_conn_id(args.conn_id, args.table) as source:
        migrations = load_migrations(source.dialect, args.migrations_dir) if args.migrations_dir else None
        migrator = Migrator(source, migrations)
        if args.status:
            print(f"found {migrator.found_version()}, needed {migrator.latest}, "
                  f"pending {[m.version for m in migrator.pending()]}")
        elif args.sql:
            print(migrator.script() or "-- nothing to apply: the table is at the latest version")
        else:
            applied = migrator.apply()
            print(f"applied {applied or 'nothing'}; {args.table} is at schema version {migrator.found_version()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
