"""A local ServiceNow Table API emulator: real HTTP on loopback, standard library only, with injectable faults.

Start one in-process with `start_emulator(EmulatorConfig(...))`, or run `python -m ticketsync.emulator --help`.
"""

from ticketsync.emulator.faults import FaultConfig, FaultConfigError
from ticketsync.emulator.server import EmulatorConfig, RunningEmulator, start_emulator
from ticketsync.emulator.store import DEFAULT_TABLES, Store

__all__ = [
    "DEFAULT_TABLES",
    "EmulatorConfig",
    "FaultConfig",
    "FaultConfigError",
    "RunningEmulator",
    "Store",
    "start_emulator",
]
