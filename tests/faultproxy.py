"""Fault injection on loopback: an HTTP proxy in front of an S3 server (moto's) for flaky-store tests,
and a TCP gate in front of a database that can refuse connections for a while.

The proxy: on a seeded share of requests it answers ``500 InternalError`` or ``503 SlowDown`` without
forwarding, resets the connection before forwarding, or forwards the request and then resets
the connection instead of answering (the request took effect, its response was lost: the case
that makes a retried conditional PUT see its own write). Every other request is forwarded as is.
"""
from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("500", "503", "reset", "reset_after")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
ERROR_BODY = ('<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
              '<RequestId>faultproxy</RequestId></Error>')


class FaultProxy:
    def __init__(self, upstream: str, *, rate: float, seed: int = 0, faults: tuple[str, ...] = FAULTS):
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.rate, self.faults = rate, faults
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _draw(self) -> str:
        with self.lock:
            fault = self.faults[self.random.randrange(len(self.faults))] if self.random.random() < self.rate else "ok"
            self.counts[fault] += 1
            return fault

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        chunk = self.rfile.read(size + 2)[:-2] if size else b""
                        if not size:
                            while self.rfile.readline().strip():  # trailers
                                pass
                            return b"".join(chunks)
                        chunks.append(chunk)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _error(self, status: int, code: str, message: str) -> None:
                body = ERROR_BODY.format(code=code, message=message).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self, body: bytes):
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                return response, data

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._draw()
                if fault == "500":
                    return self._error(500, "InternalError", "We encountered an internal error. Please try again.")
                if fault == "503":
                    return self._error(503, "SlowDown", "Please reduce your request rate.")
                if fault == "reset":
                    return self._reset()
                response, data = self._forward(body)
                if fault == "reset_after":
                    return self._reset()
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler


class TcpGate:
    """A TCP forwarder on loopback in front of a server (a database) that can refuse every
    connection for a while: the source "briefly unreachable". Counts what it refused."""

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed_until = 0.0
        self.refused = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> "TcpGate":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.listener.close()

    def close_for(self, seconds: float) -> None:
        self.closed_until = time.monotonic() + seconds

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self.closed_until:
                self.refused += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            upstream = socket.create_connection(self.upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
