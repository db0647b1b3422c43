"""The HTTP side: a threading HTTP/1.1 keep-alive server for the Table API and the admin endpoints."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import socket
import socketserver
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl

from ticketsync_dev.emulator import admin, table_api
from ticketsync_dev.emulator.faults import PRE_COMMIT_FAULTS, FaultConfig, FaultInjector
from ticketsync_dev.emulator.oauth import TokenIssuer, token_reply
from ticketsync_dev.emulator.quota import TransactionClock
from ticketsync_dev.emulator.replies import (
    Reply,
    concurrency_exceeded,
    error_reply,
    pre_commit_fault,
    rate_limited,
    rule_refusal,
    session_busy,
    transaction_cancelled,
    unauthorized,
)
from ticketsync_dev.emulator.sessions import Admission, SessionPolicy, SessionSynchronizer, session_cookie
from ticketsync_dev.emulator.stats import Stats
from ticketsync_dev.emulator.store import DEFAULT_TABLES, Store

_QUIET_ERRORS = (ConnectionError, TimeoutError, ssl.SSLError)


@dataclass(frozen=True)
class EmulatorConfig:
    """Where the emulator listens, whom it lets in, which tables it serves and which faults it injects."""

    host: str = "127.0.0.1"
    port: int = 0
    user: str = "admin"
    password: str = field(default="admin", repr=False)
    faults: FaultConfig = field(default_factory=FaultConfig)
    tables: tuple[str, ...] = DEFAULT_TABLES
    tls_cert: str | None = None
    tls_key: str | None = None
    # Mutual TLS: with TLS on, require a client certificate signed by this CA bundle (PEM).
    tls_client_ca: str | None = None
    verbose: bool = False
    # OAuth 2.0 (`POST /oauth_token.do`): off while the client secret is empty.
    oauth_client_id: str = "ticketsync"
    oauth_client_secret: str = field(default="", repr=False)
    oauth_token_lifetime: float = 1799.0
    # The client-credentials grant: on here because the client's tests use it; an instance has it off until
    # `glide.oauth.inbound.client.credential.grant_type.enabled` is true (then it answers like an unknown grant).
    oauth_client_credentials: bool = True
    # The session synchroniser: on by default, one transaction at a time per session (see sessions.py).
    sessions: SessionPolicy = field(default_factory=SessionPolicy)
    # Fill the reference tables and sys_dictionary at start and after every reset (ticketsync_dev.emulator.reference).
    reference_data: bool = True

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key)


class _HttpDate:
    """The Date header, formatted once a second."""

    def __init__(self) -> None:
        self._cached: tuple[int, str] = (0, "")

    def now(self) -> str:
        second = int(time.time())
        cached = self._cached
        if cached[0] != second:
            cached = (second, formatdate(second, usegmt=True))
            self._cached = cached
        return cached[1]


_DATE = _HttpDate()


class EmulatorServer(ThreadingHTTPServer):
    """Serves one emulated instance: its store, live fault configuration and counters."""

    daemon_threads = True
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._store = Store(config.tables)
        if config.reference_data:
            self._store.seed()
        self.faults = FaultInjector(config.faults)
        self.stats = Stats()
        self._sessions = SessionSynchronizer(config.sessions)
        credentials = f"{config.user}:{config.password}".encode()
        self.expected_authorization = b"Basic " + base64.b64encode(credentials)
        self._oauth = TokenIssuer(config.oauth_token_lifetime)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in config.host:
            self.address_family = socket.AF_INET6
        super().__init__((config.host, config.port), EmulatorHandler)
        if config.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
            if config.tls_client_ca:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(cafile=config.tls_client_ca)
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host (slow where DNS is not configured)."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = self.config.host
        if host in {"", "0.0.0.0"}:  # noqa: S104 - a bind-all address; the URL points at loopback
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.config.tls else 'http'}://{host}:{self.port}"

    # AdminTarget
    @property
    def store(self) -> Store:
        return self._store

    @property
    def fault_config(self) -> FaultConfig:
        return self.faults.config

    @property
    def oauth(self) -> TokenIssuer:
        return self._oauth

    @property
    def sessions(self) -> SessionSynchronizer:
        return self._sessions

    def update_faults(self, changes: dict[str, Any]) -> FaultConfig:
        return self.faults.update(changes)

    def stats_snapshot(self) -> dict[str, Any]:
        return {
            **self.stats.snapshot(),
            **self._sessions.snapshot(),
            "records": self._store.counts(),
            "oauth": self._oauth.snapshot(),
        }

    def request_log(self) -> list[dict[str, Any]]:
        return self.stats.requests()

    def reset(self, *, reset_faults: bool = False) -> None:
        self._store.clear()
        if self.config.reference_data:
            self._store.seed()
        self.stats.reset()
        self._sessions.reset()
        self._oauth.reset()
        if reset_faults:
            self._sessions.set_policy(self.config.sessions)
            self.faults.replace(self.config.faults)
        else:
            self.faults.bucket.reset()
            self.faults.window.reset()

    # connection bookkeeping, so that stop() also ends idle keep-alive connections
    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                continue

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up or time out are normal here; only real errors get a traceback."""
        if isinstance(sys.exception(), _QUIET_ERRORS) and not self.config.verbose:
            return
        super().handle_error(request, client_address)


def _linger(sock: ssl.SSLSocket) -> None:
    """After a refused TLS handshake (its alert already sent): stop writing, then read what the client had sent
    meanwhile, so that closing does not reset the connection. A reset can drop the alert before the client reads it,
    and the client would see a bare EOF instead of why it was refused; TLS terminators close lingering like this."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(1.0)
        while socket.socket.recv(sock, 65536):  # the raw socket: the TLS session is gone
            pass


class EmulatorHandler(BaseHTTPRequestHandler):
    """One connection: any number of keep-alive requests, each answered with a single write."""

    protocol_version = "HTTP/1.1"
    server_version = "ServiceNow"
    sys_version = ""
    timeout = 300  # an idle keep-alive connection is closed after this many seconds
    server: EmulatorServer

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        if isinstance(self.request, ssl.SSLSocket):
            try:
                self.request.do_handshake()
            except ssl.SSLError:
                _linger(self.request)
                raise
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()
        self.server.track(self.request)

    def finish(self) -> None:
        self.server.untrack(self.request)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.config.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        path = self.path.partition("?")[0]
        if path.startswith("/api/"):
            self._api(method)
            return
        body = self._read_body()
        if body is None:
            reply = error_reply(400, "Bad request framing")
        elif path == "/oauth_token.do" and method == "POST":
            config = self.server.config
            reply = token_reply(
                self.server.oauth, body, client_id=config.oauth_client_id, client_secret=config.oauth_client_secret,
                user=config.user, password=config.password, client_credentials=config.oauth_client_credentials,
            )
        elif path.startswith(admin.PREFIX):
            reply = admin.handle(self.server, method, path, body)
        else:
            reply = error_reply(404, "Not Found", f"No resource at {path}")
        self._send(reply)

    def _api(self, method: str) -> None:
        stats = self.server.stats
        stats.begin(method, table_api.table_of(self.path.partition("?")[0]))
        reply: Reply | None = None
        try:
            reply = self._api_reply(method)
        finally:  # counted before the client can see the answer, so stats read right after it are exact
            stats.end(None if reply is None else reply.status, method)
        if reply is None:
            self.close_connection = True
        else:
            self._send(reply)

    def _api_reply(self, method: str) -> Reply | None:
        body = self._read_body()
        if body is None:
            return error_reply(400, "Bad request framing")
        clock = TransactionClock(self.server.faults.config.transaction_quota_seconds)
        user = self._authenticate()
        if user is None:
            return unauthorized()
        sessions = self.server.sessions
        session, created = sessions.open(session_cookie(self.headers.get("Cookie")), user)
        cookies = session.cookies(secure=self.server.config.tls) if created else ()
        admission = sessions.enter(session, clock.remaining())
        if admission is Admission.REFUSED:
            return session_busy().with_cookies(cookies)
        if admission is Admission.TIMED_OUT:
            return self._cancelled().with_cookies(cookies)
        try:
            reply = self._in_transaction(method, body, user, clock)
        finally:
            sessions.leave(session)
        return None if reply is None else reply.with_cookies(cookies)

    def _cancelled(self) -> Reply:
        """The transaction quota ran out: the quota manager cancelled the transaction before it wrote anything."""
        self.server.stats.fault("transaction_quota")
        return transaction_cancelled()

    def _in_transaction(self, method: str, body: bytes, user: str, clock: TransactionClock) -> Reply | None:
        """The request's transaction, once the session synchroniser let it run."""
        injector = self.server.faults
        wait, per_second = injector.rate_limit_wait()
        if wait > 0:
            self.server.stats.fault("rate_limit")
            return rate_limited(wait, per_second)
        if not injector.gate.try_enter(injector.config.concurrency_limit):
            self.server.stats.fault("concurrency_limit")
            return concurrency_exceeded()
        try:
            return self._admitted(method, body, user, clock)
        finally:
            injector.gate.leave()

    def _admitted(self, method: str, body: bytes, user: str, clock: TransactionClock) -> Reply | None:
        injector = self.server.faults
        if not clock.spend(injector.latency_seconds()):
            return self._cancelled()
        path, _, query = self.path.partition("?")
        params = dict(parse_qsl(query))
        config = injector.config
        rule = config.rule_for(method, _json_object(body), params) if config.rules else None
        if rule is not None:
            self.server.stats.fault("rule")
            if rule.status:
                return rule_refusal(rule.status, rule.field, rule.contains)
        kind = injector.draw(method, table_api.table_of(path))
        if kind is not None:
            self.server.stats.fault(kind)
        if kind in PRE_COMMIT_FAULTS:
            return pre_commit_fault(kind, config.retry_after_seconds, empty_gateway_bodies=config.empty_gateway_bodies)
        if kind == "cut_then_commit":
            self._hang_up()
        slow = config.slow_before_commit_ms / 1000 if kind in ("slow_before_commit", "cut_then_commit") else 0.0
        if not clock.spend(slow) or clock.exceeded():
            return self._cancelled()
        if config.truncate and method in ("POST", "PUT", "PATCH"):
            body = self._truncated(body, dict(config.truncate))
        request = table_api.ApiRequest(
            method, path, params, body, self._base_url(), user,
            content_type=self.headers.get("Content-Type", ""), accept=self.headers.get("Accept", ""),
        )
        reply = table_api.handle(self.server.store, request)
        if rule is not None and rule.answer_correlation_id is not None:
            reply = reply.with_result_field("correlation_id", rule.answer_correlation_id)
        return reply if kind in (None, "slow_before_commit") else self._after_commit(kind, reply)

    def _truncated(self, body: bytes, limits: dict[str, int]) -> bytes:
        """The body with the values of the limited fields cut to their length, as the instance stores them."""
        data = _json_object(body)
        cut = {
            name: value[: limits[name]]
            for name, value in data.items()
            if name in limits and isinstance(value, str) and len(value) > limits[name]
        }
        if not cut:
            return body
        self.server.stats.fault("truncate")
        return json.dumps({**data, **cut}, ensure_ascii=False).encode("utf-8")

    def _hang_up(self) -> None:
        """Cut the client's connection now; the transaction goes on (a gateway or the network lost it)."""
        self.close_connection = True
        try:
            self.request.shutdown(socket.SHUT_RDWR)
        except OSError:
            return

    def _after_commit(self, kind: str, reply: Reply) -> Reply | None:
        if kind in ("cut_after_commit", "cut_then_commit"):
            return None
        if kind == "slow_after_commit":
            time.sleep(self.server.faults.config.slow_after_commit_ms / 1000)
            return reply
        if kind == "malformed_json":
            return reply.truncated()
        if kind == "garbled_json":
            return reply.garbled()
        return reply.without_sys_id()

    def _authenticate(self) -> str | None:
        """The user name when the Basic credentials or the bearer token are good (and fail_auth is off), else None."""
        if self.server.faults.config.fail_auth:
            self.server.stats.fault("fail_auth")
            return None
        header = self.headers.get("Authorization", "")
        config = self.server.config
        if hmac.compare_digest(header.encode(), self.server.expected_authorization):
            return config.user  # the usual spelling of the right credentials: no need to decode them
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() == "bearer":
            return self.server.oauth.user_for(encoded.strip())
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, password = decoded.partition(":")
        user_ok = hmac.compare_digest(user.encode(), config.user.encode())
        password_ok = hmac.compare_digest(password.encode(), config.password.encode())
        return user if user_ok and password_ok else None

    def _read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked), or None when its framing is broken."""
        try:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._read_chunked()
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            return None
        body = self.rfile.read(length) if length > 0 else b""
        if len(body) < length:  # the client went away mid-body (killed, say): a server never processes that
            self.close_connection = True
            return None
        return body

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise ValueError("the client went away mid-body")
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                break
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise ValueError("the client went away mid-chunk")
            chunks.append(chunk)
            self.rfile.readline()
        while self.rfile.readline(65537).strip():
            continue  # trailer fields
        return b"".join(chunks)

    def _base_url(self) -> str:
        host = self.headers.get("Host")
        if not host:
            return self.server.url
        return f"{'https' if self.server.config.tls else 'http'}://{host}"

    def _send(self, reply: Reply) -> None:
        """Status line, headers and body in one write: no Nagle stalls, always framed for keep-alive."""
        body, content_type = reply.encode()
        phrase = self.responses.get(reply.status, ("",))[0]
        lines = [f"HTTP/1.1 {reply.status} {phrase}", f"Date: {_DATE.now()}", f"Server: {self.server_version}"]
        if reply.status != 204:
            lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in reply.headers.items()]
        lines += [f"Set-Cookie: {cookie}" for cookie in reply.cookies]
        if self.close_connection:
            lines.append("Connection: close")
        elif self.request_version == "HTTP/1.0":
            lines.append("Connection: keep-alive")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        self.wfile.write(head + body)
        if self.server.config.verbose:
            self.log_request(reply.status)


def _json_object(body: bytes) -> dict[str, Any]:
    """The JSON object of a body, or {} when it is not one (the Table API answers that itself)."""
    try:
        data = json.loads(body) if body.strip() else {}
    except ValueError:
        return {}
    if isinstance(data, list):
        data = data[0] if data else {}
    return data if isinstance(data, dict) else {}


class RunningEmulator:
    """A started emulator: its address, its store, run-time fault control, counters; a context manager."""

    def __init__(self, server: EmulatorServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._stopped = False

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def host(self) -> str:
        return self.url.rpartition("://")[2].rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def store(self) -> Store:
        return self._server.store

    @property
    def config(self) -> EmulatorConfig:
        return self._server.config

    @property
    def faults(self) -> FaultConfig:
        return self._server.fault_config

    def set_faults(self, **changes: Any) -> FaultConfig:
        """Replace fields of the fault configuration at run time; returns the new configuration."""
        return self._server.update_faults(changes)

    def stats(self) -> dict[str, Any]:
        return self._server.stats_snapshot()

    def requests(self) -> list[dict[str, Any]]:
        """The last API requests, oldest first: when each was answered (UNIX time), its method and status."""
        return self._server.request_log()

    @property
    def session_policy(self) -> SessionPolicy:
        return self._server.sessions.policy

    def set_session_policy(self, policy: SessionPolicy) -> None:
        """Change how sessions are synchronised from now on (sessions already open keep their cookies)."""
        self._server.sessions.set_policy(policy)

    def revoke_tokens(self) -> int:
        """Invalidate every OAuth token issued so far; returns how many were live."""
        return self._server.oauth.revoke_all()

    def issued_tokens(self) -> list[str]:
        """The last 1,000 OAuth access tokens issued (so a test can check none of them leaked)."""
        return self._server.oauth.recent_tokens()

    def set_token_lifetime(self, seconds: float) -> None:
        """The lifetime of OAuth tokens issued from now on."""
        self._server.oauth.set_lifetime(seconds)

    def work(self, table: str, sys_id: str, *, updated_on: str | None = None, **changes: str) -> dict[str, str] | None:
        """An agent's change to a record (state, journal notes, ...), as `POST /_emulator/work/...` makes it.

        :param updated_on: stamp this `sys_updated_on` (UTC, `YYYY-MM-DD HH:MM:SS`) instead of now.
        """
        return self._server.store.update(table, sys_id, changes, admin.AGENT, updated_on=updated_on)

    def delete(self, table: str, sys_id: str) -> bool:
        """Delete a record, as an agent on the instance may."""
        return self._server.store.delete(table, sys_id)

    def reset(self, *, reset_faults: bool = False) -> None:
        """Clear records and counters; faults stay unless reset_faults (back to the start configuration)."""
        self._server.reset(reset_faults=reset_faults)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def start_emulator(config: EmulatorConfig | None = None) -> RunningEmulator:
    """Start an emulator on a background thread; it accepts connections when this returns."""
    server = EmulatorServer(config or EmulatorConfig())
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="servicenow-emulator", daemon=True
    )
    thread.start()
    return RunningEmulator(server, thread)
