"""A local stand-in for Sentry's ingest: it takes the envelopes sentry-sdk posts and keeps them,
so that tests read what left the app, byte for byte. Loopback only."""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SentryIngest:
    """``with SentryIngest() as ingest``: ``ingest.dsn`` for SENTRY_DSN; ``ingest.events()``."""

    PROJECT = "42"
    PUBLIC_KEY = "0123456789abcdef0123456789abcdef"

    def __init__(self) -> None:
        self.raw: list[bytes] = []  # every body as it arrived, decompressed
        self._lock = threading.Lock()
        ingest = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                coding = self.headers.get("Content-Encoding", "")
                if coding == "gzip":
                    body = gzip.decompress(body)
                elif coding == "deflate":
                    body = zlib.decompress(body)
                with ingest._lock:
                    ingest.raw.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"id": "ok"}')

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://{self.PUBLIC_KEY}@127.0.0.1:{self._server.server_address[1]}/{self.PROJECT}"

    def __enter__(self) -> "SentryIngest":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def items(self) -> list[tuple[dict, dict | bytes]]:
        """(item header, payload) of every envelope item received so far."""
        with self._lock:
            bodies = list(self.raw)
        items = []
        for body in bodies:
            lines = body.split(b"\n")
            index = 1  # line 0: the envelope's header
            while index < len(lines) and lines[index].strip():
                header = json.loads(lines[index])
                payload = lines[index + 1] if index + 1 < len(lines) else b""
                try:
                    items.append((header, json.loads(payload)))
                except ValueError:
                    items.append((header, payload))
                index += 2
        return items

    def events(self) -> list[dict]:
        return [payload for header, payload in self.items() if header.get("type") == "event"]

    def wait_for_event(self, predicate, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if predicate(event):
                    return event
            time.sleep(0.2)
        raise AssertionError(f"no such event reached the ingest; it has {len(self.events())} event(s)")
