"""The live page `rlmf up` serves on loopback (default http://127.0.0.1:8010/): the report of
`rlmf report` made again on request at most every few seconds, reloading itself, and
`/status.json`, exactly `rlmf status --json`'s object.

A thread of the `up` process, on the standard library's HTTP server: it reads the state folder
only, as `rlmf status` does, so it shows the same whichever service restarts. Each page is made
in a folder of its own and the page before it is kept, so a browser still fetching the last
page's plots never reads a half-written PNG.
"""

from __future__ import annotations

import html
import json
import logging
import shutil
import tempfile
import threading
import time
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from services.common.up_state import StateDir
from services.up.report import ReportError, write_report
from services.up.status import StatusError, collect

log = logging.getLogger(__name__)

DEFAULT_PORT = 8010
MIN_INTERVAL_S = 5.0
"""A page younger than this is served as it is: plots take a second or two per ticker."""
REFRESH_S = 10
"""The browser reloads the page this often."""


class LivePage:
    """The page's files and when they were made; `start()` serves them."""

    def __init__(
        self,
        state: StateDir,
        port: int = DEFAULT_PORT,
        min_interval_s: float = MIN_INTERVAL_S,
        refresh_s: int = REFRESH_S,
    ) -> None:
        self.state, self.port = state, port
        self.min_interval_s, self.refresh_s = min_interval_s, refresh_s
        self.root = Path(tempfile.mkdtemp(prefix="rlmf-page-"))
        self._lock = threading.Lock()
        self._made: list[tuple[float, Path]] = []
        """(monotonic time, folder) of the newest pages, newest last."""
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def start(self) -> LivePage:
        """Bind 127.0.0.1:port (OSError when taken) and serve from a daemon thread."""
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), partial(_Handler, self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="live-page", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        shutil.rmtree(self.root, ignore_errors=True)

    def page(self) -> Path:
        """The newest page's folder, made again when older than `min_interval_s`."""
        with self._lock:
            if self._made and time.monotonic() - self._made[-1][0] < self.min_interval_s:
                return self._made[-1][1]
            folder = Path(tempfile.mkdtemp(prefix="page-", dir=self.root))
            write_report(self.state, folder, live=True, refresh_s=self.refresh_s)
            self._made.append((time.monotonic(), folder))
            for _, old in self._made[:-2]:
                shutil.rmtree(old, ignore_errors=True)
            self._made = self._made[-2:]
            return folder

    def plot(self, name: str) -> Path | None:
        """A plot of the newest or the page before it (a browser may still be loading it)."""
        with self._lock:
            folders = [folder for _, folder in reversed(self._made)]
        for folder in folders:
            path = folder / "plots" / name
            if path.is_file():
                return path
        return None


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, page: LivePage, *args: object) -> None:
        self.live = page
        super().__init__(*args)  # type: ignore[arg-type]

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        path = self.path.split("?", 1)[0]
        try:
            if path in ("/", "/index.html", "/report.html"):
                body = (self.live.page() / "report.html").read_bytes()
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", body)
            elif path == "/status.json":
                status = json.dumps(collect(self.live.state), indent=2).encode()
                self._send(HTTPStatus.OK, "application/json", status)
            elif path.startswith("/plots/") and "/" not in path[len("/plots/") :]:
                self._plot(path[len("/plots/") :])
            elif path == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, "image/x-icon", b"")
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n")
        except (StatusError, ReportError) as exc:
            # The state folder cannot be read right now: say so on the page, keep serving.
            log.warning("live page: %s", exc)
            text = f"<p>cannot make the page: {html.escape(str(exc))}</p>".encode()
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/html; charset=utf-8", text)

    def _plot(self, name: str) -> None:
        found = self.live.plot(name)
        if found is None:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", b"no such plot\n")
        else:
            self._send(HTTPStatus.OK, "image/png", found.read_bytes())

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")  # every reload shows the newest figures
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib's name
        log.debug("live page: " + format, *args)
