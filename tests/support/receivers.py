"""Real receivers on loopback for alert tests: an SMTP server (aiosmtpd) and an HTTP webhook endpoint (stdlib)."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ReceivedMail:
    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        parts = [part for part in self.message.walk() if part.get_content_type() in ("text/html", "text/plain")]
        return "\n".join(str(part.get_content()) for part in parts)


@dataclass
class SmtpReceiver:
    """An SMTP server on 127.0.0.1 that keeps every message it is given."""

    messages: list[ReceivedMail] = field(default_factory=list)
    port: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        self.messages.append(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"

    def __enter__(self) -> SmtpReceiver:
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    def connection(self) -> str:
        """The ``smtp_default``-style Airflow connection JSON: plain SMTP on loopback, no TLS, no login."""
        return json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": self.port,
            "extra": {"disable_ssl": True, "disable_tls": True, "timeout": 10, "retry_limit": 1,
                      "from_email": "airflow-alerts@bank.example"},
        })


@dataclass
class ReceivedPost:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that answers 200 to every POST and keeps its JSON body."""

    def __init__(self) -> None:
        self.posts: list[ReceivedPost] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                posts.append(ReceivedPost(self.path, dict(self.headers), json.loads(raw or b"null")))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])

    def __enter__(self) -> WebhookReceiver:
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def connection(self, endpoint: str = "/services/T0/B0/hook") -> str:
        return json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": self.port, "schema": "http",
            "extra": {"endpoint": endpoint},
        })


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
