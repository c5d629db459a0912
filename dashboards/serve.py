"""``archer dashboard build|serve``: write the static dashboards (:mod:`dashboards.site`) and
serve them on localhost with the standard library's HTTP server (read-only, no network
access needed: plotly's JavaScript is one of the served files)."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt: str, *args) -> None:  # quiet: one line per request is noise
        pass


def make_server(out_dir: str | Path, host: str = "127.0.0.1",
                port: int = 8765) -> http.server.ThreadingHTTPServer:
    """An HTTP server for ``out_dir`` (port 0 picks a free port: ``server.server_port``)."""
    out = Path(out_dir)
    if not (out / "index.html").is_file():
        raise FileNotFoundError(f"{out / 'index.html'} does not exist: run "
                                f"`archer dashboard build --out {out}` first")
    handler = functools.partial(_Handler, directory=str(out))
    return http.server.ThreadingHTTPServer((host, port), handler)


def serve_in_thread(out_dir: str | Path, host: str = "127.0.0.1", port: int = 0):
    """Start :func:`make_server` in a daemon thread; returns ``(server, url)``; stop it with
    ``server.shutdown(); server.server_close()``."""
    server = make_server(out_dir, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_port}/"
