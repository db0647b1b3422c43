"""A local ServiceNow Table API emulator: real HTTP on loopback, standard library only, with injectable faults.

Start one in-process with `start_emulator(EmulatorConfig(...))`, or run `python -m ticketsync_dev.emulator --help`.
"""

from ticketsync_dev.emulator.faults import FaultConfig, FaultConfigError
from ticketsync_dev.emulator.server import EmulatorConfig, RunningEmulator, start_emulator
from ticketsync_dev.emulator.store import DEFAULT_TABLES, Store

__all__ = [
    "DEFAULT_TABLES",
    "EmulatorConfig",
    "FaultConfig",
    "FaultConfigError",
    "RunningEmulator",
    "Store",
    "start_emulator",
]
