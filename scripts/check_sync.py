"""`make check-sync`: check sync definitions against an instance's sys_dictionary.

Without --conn-id it starts the ServiceNow emulator on loopback and checks against its dictionary: by default the
packaged definitions, the custom-table example and the definition with three deliberate mistakes
(docs/examples/definitions/broken_loan.yaml). With --conn-id it uses that Airflow connection (a real instance).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ticketsync.definitions import check
from ticketsync_dev.local import REPO, EmulatorProcess

DEFAULT_FILES = (
    *sorted((REPO / "plugins" / "ticketsync" / "definitions").glob("*.yaml")),
    REPO / "docs" / "examples" / "definitions" / "broken_loan.yaml",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("definitions", nargs="*", type=Path, help="definition files (default: see above)")
    parser.add_argument("--conn-id", help="check against this Airflow connection instead of a local emulator")
    args = parser.parse_args(argv)
    files = [os.path.relpath(path) for path in (args.definitions or DEFAULT_FILES)]
    if args.conn_id:
        return check.main([*files, "--conn-id", args.conn_id])
    work = REPO / ".demo" / "check-sync"
    work.mkdir(parents=True, exist_ok=True)
    with EmulatorProcess(work) as emulator:
        print(f"Checking against the ServiceNow emulator's sys_dictionary on {emulator.url}\n", flush=True)
        os.environ["AIRFLOW_CONN_SERVICENOW_DEFAULT"] = emulator.connection()
        return check.main(files)


if __name__ == "__main__":
    sys.exit(main())
