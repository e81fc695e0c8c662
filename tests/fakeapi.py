"""A CI engine's API on 127.0.0.1, as `vfio-lab ci fetch-previous` reads it: for the unit
tests of the pipelines, and for the real pipeline's previous night."""

from __future__ import annotations

import contextlib
import io
import threading
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeApi:
    """An engine's API on 127.0.0.1: each path (with its query) answers as told; a route
    may be a function of the request's headers (names in lower case). Every request is
    kept."""

    url: str
    routes: dict[str, Any] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)


@contextlib.contextmanager
def serving() -> Iterator[FakeApi]:
    """A FakeApi answering until the block ends; an unrouted path is GitLab's 404."""
    fake = FakeApi("")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            fake.requests.append((self.path, headers))
            route = fake.routes.get(self.path, (404, {}, b'{"message": "404 Not Found"}'))
            status, extra, body = route(headers) if callable(route) else route
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def zipped(files: Mapping[str, str | bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()
