"""`--mode=serve`: the studio's HTTP server (stdlib `http.server.ThreadingHTTPServer`).

Routes (everything else is 404):
  GET  /                          the page (package data: static/index.html)
  GET  /static/studio.js|.css     its script and style (a fixed list, nothing from a CDN)
  GET  /api/models                the models, their facts and the form's limits (JSON)
  POST /api/generate              JSON settings (+ primer or melody MIDI in base64) -> 202 {job}
  GET  /api/jobs/<id>             a job's state, progress and results (JSON)
  GET  /results/<id>/<name>       a file the job wrote (?download=1: as an attachment)

Why the standard library: the page needs six routes, JSON and static files; a framework would
add a dependency (and its own threading model) for nothing the stdlib lacks. Requests are
answered by threads (two browsers at once are both answered); generation runs in the one worker
of app.Studio. Errors are JSON {"error": message} with 400 (bad field), 404, 411, 413 (too
large) or 503 (queue full); the page shows the message.
"""

from __future__ import annotations

import http.server
import importlib.resources
import json
import logging
import mimetypes
import re
import socket
import urllib.parse

from jaxcomposer.studio import app

STATIC = {  # served name -> content type (the only files served from the package)
    "index.html": "text/html; charset=utf-8",
    "studio.js": "text/javascript; charset=utf-8",
    "studio.css": "text/css; charset=utf-8",
}
_JOB = re.compile(r"^/api/jobs/([0-9a-f]{16})$")
_RESULT = re.compile(r"^/results/([0-9a-f]{16})/([A-Za-z0-9_.-]{1,100})$")
_TYPES = {".svg": "image/svg+xml", ".wav": "audio/wav", ".mid": "audio/midi",
          ".musicxml": "application/vnd.recordare.musicxml+xml", ".png": "image/png",
          ".json": "application/json", ".html": "text/html; charset=utf-8"}  # fmt: skip
# No inline script, no other origin; SVG scores are shown through <img>, where scripts never run.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "media-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_DRAIN_LIMIT = 64 * 1024 * 1024  # a too-large body up to this size is read and dropped


def static_file(name: str) -> bytes:
    return importlib.resources.files("jaxcomposer.studio").joinpath("static", name).read_bytes()


def make_handler(studio: app.Studio) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "jaxcomposer-studio"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
            logging.getLogger(__name__).info("%s %s", self.address_string(), format % args)

        def _send(self, code: int, body: bytes, content_type: str, extra: dict | None = None):
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", _CSP)
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Cache-Control", "no-store")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, payload: dict) -> None:
            body = json.dumps(payload).encode("utf-8")
            self._send(code, body, "application/json; charset=utf-8")

        def _error(self, code: int, message: str) -> None:
            self._json(code, {"error": message})

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            url = urllib.parse.urlsplit(self.path)
            path = url.path
            if path in ("/", "/index.html"):
                return self._send(200, static_file("index.html"), STATIC["index.html"])
            if path.startswith("/static/") and path[len("/static/") :] in STATIC:
                name = path[len("/static/") :]
                return self._send(200, static_file(name), STATIC[name])
            if path == "/api/models":
                return self._json(200, studio.describe())
            if match := _JOB.match(path):
                status = studio.status(match.group(1))
                if status is None:
                    return self._error(404, "no such job (finished jobs are kept for a while)")
                return self._json(200, status)
            if match := _RESULT.match(path):
                job_id, name = match.groups()
                file_path = studio.file(job_id, name)
                if file_path is None:
                    return self._error(404, "no such file")
                with open(file_path, "rb") as f:
                    body = f.read()
                suffix = name[name.rfind(".") :] if "." in name else ""
                kind = _TYPES.get(suffix) or mimetypes.guess_type(name)[0]
                kind = kind or "application/octet-stream"
                extra = {}
                if "download=1" in url.query.split("&"):
                    extra["Content-Disposition"] = f'attachment; filename="{name}"'
                return self._send(200, body, kind, extra)
            return self._error(404, "no such page")

        do_HEAD = do_GET

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            if urllib.parse.urlsplit(self.path).path != "/api/generate":
                return self._error(404, "no such page")
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                return self._error(411, "the request needs a Content-Length")
            size = int(length)
            if size > app.MAX_BODY_BYTES:
                if size <= _DRAIN_LIMIT:  # read it so the browser sees the answer, not a reset
                    left = size
                    while left > 0:
                        chunk = self.rfile.read(min(left, 1 << 16))
                        if not chunk:
                            break
                        left -= len(chunk)
                else:
                    self.close_connection = True
                limit = app.MAX_PRIMER_BYTES // 1024
                return self._error(
                    413, f"the upload is too large (a primer or melody may have {limit} KiB)"
                )
            try:
                request = json.loads(self.rfile.read(size) or b"null")
            except (ValueError, UnicodeDecodeError):
                return self._error(400, "the request is not JSON")
            try:
                job = studio.submit(request)
            except app.RequestError as e:
                code = 503 if "waiting already" in str(e) else 400
                return self._error(code, str(e))
            except app.UsageError as e:  # a key name, a style: the user can fix it
                return self._error(400, " ".join(str(e).split()))
            return self._json(202, {"job": job.id})

    return Handler


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, studio: app.Studio):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, handler)
        self.studio = studio

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def make_server(studio: app.Studio, host: str = "127.0.0.1", port: int = 8765) -> Server:
    """A server for `studio` bound to host:port (port 0: a free one); not started."""
    return Server((host, port), make_handler(studio), studio)


def serve(
    workdirs: list[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    results_dir: str | None = None,
    checkpoint: str = "best",
    soundfont: str | None = None,
) -> None:
    """Restores each workdir's model, prints the address and serves until Ctrl-C. Results go
    to `results_dir` (default: a new temporary folder, removed at the end)."""
    import shutil
    import tempfile

    temporary = results_dir is None
    results_dir = results_dir or tempfile.mkdtemp(prefix="jaxcomposer-studio-")
    studio = app.Studio(workdirs, results_dir, checkpoint=checkpoint, soundfont=soundfont)
    try:
        server = make_server(studio, host, port)
    except OSError as e:
        raise app.UsageError(
            f"--host={host} --port={port}: cannot listen there ({e.strerror})"
        ) from None
    if host not in LOOPBACK:
        print(
            f"warning: --host={host}: the studio is reachable from other machines and has no "
            "login; anyone who can reach it can run generations",
            flush=True,
        )
    names = ", ".join(m.name for m in studio.models.values())
    print(f"studio: {server.url} (models: {names}; results in {results_dir}; Ctrl-C stops)",
          flush=True)  # fmt: skip
    # SIGTERM (a service manager's stop, `kill`) ends the loop like Ctrl-C, so the temporary
    # results folder is removed either way.
    import signal

    def stop(signum, frame):
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
        studio.close()
        if temporary:
            shutil.rmtree(results_dir, ignore_errors=True)
