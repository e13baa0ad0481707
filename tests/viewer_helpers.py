"""OHIF, the open-source DICOMweb viewer, served for tests/test_viewer.py: same origin, no download.

``make viewer`` unpacks the prebuilt viewer of the npm package ``@ohif/app`` (pinned version) into the
gitignored ``.cache/ohif/<version>/dist``. :class:`ViewerServer` serves that folder on 127.0.0.1 from a
thread (a single-page app: an unknown path gets ``index.html``) with our own ``app-config.js``: one
DICOMweb data source whose QIDO, WADO-RS and WADO-URI roots are this origin's ``/dicom-web``, which the
server forwards to the test Orthanc's DICOMweb root. Page and data share one origin, so there is no
CORS to configure in Orthanc. The configuration keys are OHIF's (``platform/app/public/config/default.js``
of OHIF 3.13) with the values Orthanc's own OHIF plugin uses for its DICOMweb plugin.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OHIF_VERSION = "3.13.2"                                   # the Makefile's OHIF_VERSION
OHIF_DIST = ROOT / ".cache" / "ohif" / OHIF_VERSION / "dist"
DICOMWEB_PATH = "/dicom-web"

_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
          ".css": "text/css", ".json": "application/json", ".html": "text/html; charset=utf-8",
          ".svg": "image/svg+xml", ".woff2": "font/woff2", ".png": "image/png", ".ico": "image/x-icon",
          ".map": "application/json", ".jsonc": "application/json"}
_FORWARDED_REQUEST = ("Accept", "Content-Type", "Range", "If-None-Match")
_FORWARDED_RESPONSE = ("Content-Type", "ETag", "Content-Range", "Content-Disposition")


def app_config(dicomweb_root: str = DICOMWEB_PATH) -> str:
    """``window.config`` for OHIF: one DICOMweb source at ``dicomweb_root`` (this origin), the study
    list on, no service worker, no public demo server, nothing loaded from a URL parameter."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "test Orthanc (DICOMweb)",
            "name": "orthanc",
            "wadoUriRoot": dicomweb_root,
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": True,
            "singlepart": "bulkdata,video",
            "acceptHeader": ["multipart/related; type=application/octet-stream; transfer-syntax=*"],
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {"ohif.tours": {"$set": []}},   # no onboarding tour over the viewport
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "showErrorDetails": "always",
        "defaultDataSourceName": "dicomweb",
        "dataSources": [source],
    }
    return "/** written by tests/viewer_helpers.py */\nwindow.config = " + json.dumps(config, indent=2) + ";\n"


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args) -> None:           # quiet; requests are kept in server.requests
        pass

    def _record(self, status: int) -> None:
        with self.server.lock:
            self.server.requests.append((self.command, self.path, status))

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._record(status)

    def do_GET(self) -> None:                            # noqa: N802 - http.server's name
        path = urllib.parse.urlsplit(self.path).path
        if path == DICOMWEB_PATH or path.startswith(DICOMWEB_PATH + "/"):
            return self._proxy()
        if path == "/app-config.js":
            return self._send(200, self.server.config.encode(), {"Content-Type": "text/javascript"})
        if path in ("/init-service-worker.js", "/sw.js"):  # no service worker: nothing cached between runs
            return self._send(200, b"", {"Content-Type": "text/javascript"})
        return self._static(path)

    do_HEAD = do_GET

    def do_POST(self) -> None:                           # noqa: N802
        if urllib.parse.urlsplit(self.path).path.startswith(DICOMWEB_PATH + "/"):
            return self._proxy()
        self._send(405, b"", {})

    def _static(self, path: str) -> None:
        dist = self.server.dist
        target = (dist / urllib.parse.unquote(path).lstrip("/")).resolve()
        if dist not in target.parents or not target.is_file():
            target = dist / "index.html"                 # the single-page app routes it (/viewer, ...)
        ctype = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self._send(200, target.read_bytes(), {"Content-Type": ctype})

    def _proxy(self) -> None:
        upstream = self.server.upstream
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: self.headers[k] for k in _FORWARDED_REQUEST if self.headers.get(k)}
        rest = self.path[len(DICOMWEB_PATH):]
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=120)
        try:
            conn.request(self.command, upstream.path.rstrip("/") + rest, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = {k: resp.getheader(k) for k in _FORWARDED_RESPONSE if resp.getheader(k)}
            self._send(resp.status, data, out)
        except OSError as exc:
            self._send(502, f"proxy error: {type(exc).__name__}".encode(), {"Content-Type": "text/plain"})
        finally:
            conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    dist: Path
    config: str
    upstream: urllib.parse.SplitResult
    requests: list
    lock: threading.Lock


class ViewerServer:
    """OHIF's ``dist`` and ``/dicom-web`` (forwarded to ``dicomweb_upstream``) on 127.0.0.1, from a thread.

    ``with ViewerServer(dist, "http://127.0.0.1:8042/dicom-web") as viewer: page.goto(viewer.url + ...)``
    """

    def __init__(self, dist: Path, dicomweb_upstream: str) -> None:
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.dist = Path(dist).resolve()
        self.httpd.config = app_config()
        self.httpd.upstream = urllib.parse.urlsplit(dicomweb_upstream)
        self.httpd.requests = []
        self.httpd.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="ohif-server", daemon=True)

    def __enter__(self) -> "ViewerServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request answered so far."""
        with self.httpd.lock:
            return list(self.httpd.requests)

    def failed(self) -> list[tuple[str, str, int]]:
        return [r for r in self.requests() if r[2] >= 400]
