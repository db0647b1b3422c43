"""A small HTTP proxy for tests: ``CONNECT`` tunnels (https through a proxy) and absolute-form forwarding (plain
http through a proxy), recording what it was asked for."""

from __future__ import annotations

import http.client
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit


class _Handler(socketserver.StreamRequestHandler):
    server: _ProxyServer

    def handle(self) -> None:
        while True:
            line = self.rfile.readline()
            if not line.strip():
                return
            method, target, _ = line.decode("latin-1").split()
            headers: list[tuple[str, str]] = []
            while (header := self.rfile.readline().decode("latin-1").rstrip("\r\n")):
                name, _, value = header.partition(":")
                headers.append((name.strip(), value.strip()))
            with self.server.lock:
                self.server.seen.append((method, target))
            if method == "CONNECT":
                self._tunnel(target)
                return
            self._forward(method, target, headers)

    def _tunnel(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        upstream = socket.create_connection((host, int(port)))
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()

        def pipe(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                sink.close()

        back = threading.Thread(target=pipe, args=(upstream, self.connection), daemon=True)
        back.start()
        pipe(self.connection, upstream)
        back.join(timeout=5)

    def _forward(self, method: str, target: str, headers: list[tuple[str, str]]) -> None:
        url = urlsplit(target)
        if not url.hostname:
            self.wfile.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        length = int(next((value for name, value in headers if name.lower() == "content-length"), "0"))
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=30)
        upstream.putrequest(method, url.path + (f"?{url.query}" if url.query else ""), skip_host=True,
                            skip_accept_encoding=True)
        for name, value in headers:
            if not name.lower().startswith("proxy-"):
                upstream.putheader(name, value)
        upstream.endheaders(body)
        answer = upstream.getresponse()
        data = answer.read()
        upstream.close()
        lines = [f"HTTP/1.1 {answer.status} {answer.reason}"]
        lines += [f"{name}: {value}" for name, value in answer.getheaders()
                  if name.lower() not in ("content-length", "transfer-encoding", "connection")]
        lines.append(f"Content-Length: {len(data)}")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
        self.wfile.flush()


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str]] = []  # (method, target) of every request the proxy was sent
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def running_proxy() -> Iterator[_ProxyServer]:
    """A proxy on a loopback port, for the duration of the block."""
    server = _ProxyServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
