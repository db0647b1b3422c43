"""`python -m ticketsync_dev.emulator`: run the emulator until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from ticketsync_dev.emulator.faults import FaultConfig, FaultConfigError
from ticketsync_dev.emulator.server import EmulatorConfig, start_emulator
from ticketsync_dev.emulator.sessions import SessionPolicy, SessionPolicyError
from ticketsync_dev.emulator.store import DEFAULT_TABLES

PASSWORD_ENV = "TICKETSYNC_EMULATOR_PASSWORD"  # noqa: S105 - the name of a variable, not a secret
CLIENT_SECRET_ENV = "TICKETSYNC_EMULATOR_CLIENT_SECRET"  # noqa: S105 - the name of a variable, not a secret

# flag -> FaultConfig field, for the flags that take a rate between 0 and 1
_RATE_FLAGS: dict[str, str] = {
    "--error-403": "error_403",
    "--error-500": "error_500",
    "--error-502": "error_502",
    "--error-503": "error_503",
    "--error-504": "error_504",
    "--html-200": "html_200",
    "--cut-before-commit": "cut_before_commit",
    "--cut-after-commit": "cut_after_commit",
    "--slow-after-commit": "slow_after_commit",
    "--malformed-json": "malformed_json",
    "--missing-sys-id": "missing_sys_id",
    "--garbled-json": "garbled_json",
    "--error-429": "error_429",
    "--error-429-busy": "error_429_busy",
    "--slow-before-commit": "slow_before_commit",
    "--cut-then-commit": "cut_then_commit",
}
# flag -> (FaultConfig field, help) for the other numeric fault settings
_NUMBER_FLAGS: dict[str, tuple[str, str]] = {
    "--latency-ms": ("latency_ms", "added latency of every API request, in ms"),
    "--latency-jitter-ms": ("latency_jitter_ms", "latency varies uniformly by up to this many ms either way"),
    "--rate-limit": ("rate_limit_per_second", "requests per second of the shared token bucket (0: off)"),
    "--rate-limit-burst": ("rate_limit_burst", "token bucket size (0: the rate)"),
    "--slow-after-commit-ms": ("slow_after_commit_ms", "how long a slow_after_commit answer waits, in ms"),
    "--slow-before-commit-ms": (
        "slow_before_commit_ms", "how long a slow_before_commit or cut_then_commit write takes, in ms",
    ),
    "--retry-after": ("retry_after_seconds", "the Retry-After of an --error-429 answer, in seconds (default 1)"),
    "--transaction-quota": (
        "transaction_quota_seconds",
        "a Table API transaction still running after this many seconds is cancelled with a 500, nothing written "
        "(the instance's quota rule; default 60, 0: off)",
    ),
    "--rate-limit-window": (
        "rate_limit_window_seconds", "the window of --rate-limit-window-requests, in seconds (default 3600: an hour)"
    ),
}


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a rate between 0 and 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ticketsync_dev.emulator",
        description="A local ServiceNow Table API emulator with injectable faults.",
        epilog=f"The password is best given in the environment variable {PASSWORD_ENV} (it wins over --password), "
        f"the OAuth client secret in {CLIENT_SECRET_ENV}.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write the port to this file once listening")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password", help=f"used when ${PASSWORD_ENV} is unset (default: 'admin')")
    parser.add_argument("--tables", help=f"comma-separated tables to serve (default: {','.join(DEFAULT_TABLES)})")
    parser.add_argument(
        "--no-reference-data", dest="reference_data", action="store_false",
        help="leave the reference tables and sys_dictionary empty (by default they hold the fixed seed)",
    )
    parser.add_argument("--tls-cert", help="PEM certificate: serve HTTPS when given with --tls-key")
    parser.add_argument("--tls-key", help="PEM private key")
    parser.add_argument(
        "--tls-client-ca", help="PEM CA bundle: with TLS, require a client certificate it signed (mutual TLS)"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    oauth = parser.add_argument_group("OAuth 2.0 (POST /oauth_token.do; off without a client secret)")
    oauth.add_argument("--oauth-client-id", default="ticketsync")
    oauth.add_argument("--oauth-client-secret", help=f"used when ${CLIENT_SECRET_ENV} is unset")
    oauth.add_argument("--oauth-token-lifetime", type=float, default=1799.0, metavar="SECONDS")
    oauth.add_argument(
        "--no-oauth-client-credentials", dest="oauth_client_credentials", action="store_false",
        help="refuse the client_credentials grant, as an instance does until it is enabled",
    )
    sessions = parser.add_argument_group("sessions (the session synchroniser; on by default)")
    sessions.add_argument(
        "--session-transactions", type=int, choices=(0, 1, 2), default=1,
        help="transactions one session (JSESSIONID) runs at once: 1, 2 (REST from Yokohama on) or 0 (off)",
    )
    sessions.add_argument(
        "--session-max-waiters", type=int, default=10, metavar="N",
        help="requests of one session that may wait; the next is refused with 429 (default 10)",
    )
    sessions.add_argument(
        "--session-idle-timeout", type=float, default=300.0, metavar="SECONDS",
        help="a session expires this long after its last transaction (default 300)",
    )
    faults = parser.add_argument_group("faults")
    for flag, (name, help_text) in _NUMBER_FLAGS.items():
        default = float(getattr(FaultConfig(), name))
        faults.add_argument(flag, dest=name, type=float, default=default, metavar="N", help=help_text)
    faults.add_argument("--concurrency-limit", type=int, default=0, help="429 beyond this many requests at once")
    faults.add_argument(
        "--rate-limit-window-requests", dest="rate_limit_per_window", type=int, default=0, metavar="N",
        help="a rate-limit rule: at most N API requests per window, then 429 until it resets (0: off)",
    )
    for flag, name in _RATE_FLAGS.items():
        faults.add_argument(flag, dest=name, type=_rate, default=0.0, metavar="RATE")
    faults.add_argument(
        "--empty-gateway-bodies", action="store_true", help="answer 502/503/504 with an empty body, not an HTML page"
    )
    faults.add_argument("--fault-methods", default="GET,POST,PATCH,PUT,DELETE", help="methods random faults hit")
    faults.add_argument("--fault-tables", default="", help="tables random faults hit (comma-separated; default all)")
    faults.add_argument("--seed", type=int, help="seed of the random fault draws")
    return parser


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> EmulatorConfig:
    """The emulator configuration a command line asks for (raises FaultConfigError on bad fault settings)."""
    fault_fields = [
        *_RATE_FLAGS.values(), *(name for name, _ in _NUMBER_FLAGS.values()), "concurrency_limit",
        "rate_limit_per_window", "seed",
    ]
    faults = FaultConfig().with_changes(
        {
            **{name: getattr(args, name) for name in fault_fields},
            "methods": args.fault_methods,
            "empty_gateway_bodies": args.empty_gateway_bodies,
            "tables": args.fault_tables,
        }
    )
    tables = tuple(name.strip() for name in (args.tables or "").split(",") if name.strip()) or DEFAULT_TABLES
    return EmulatorConfig(
        host=args.host,
        port=args.port,
        user=args.user,
        password=environ.get(PASSWORD_ENV) or args.password or "admin",
        faults=faults,
        tables=tables,
        reference_data=args.reference_data,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        verbose=args.verbose,
        oauth_client_id=args.oauth_client_id,
        oauth_client_secret=environ.get(CLIENT_SECRET_ENV) or args.oauth_client_secret or "",
        oauth_token_lifetime=args.oauth_token_lifetime,
        oauth_client_credentials=args.oauth_client_credentials,
        sessions=SessionPolicy(
            transactions=args.session_transactions,
            max_waiters=args.session_max_waiters,
            idle_timeout=args.session_idle_timeout,
        ),
    )


def _write_port_file(path: Path, port: int) -> None:
    """Write atomically, so that a poller never reads a half-written port."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(f"{port}\n", encoding="ascii")
    partial.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args, os.environ)
    except (FaultConfigError, SessionPolicyError) as exc:
        parser.error(str(exc))
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    emulator = start_emulator(config)
    try:
        if args.port_file is not None:
            _write_port_file(args.port_file, emulator.port)
        print(f"ServiceNow emulator listening on {emulator.url}", flush=True)
        if config.verbose:
            print(f"faults: {config.faults.to_dict()}", file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            continue
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
