"""A DICOMweb server on 127.0.0.1 that answers with whatever it is given: the DICOMweb harness's
and the regression tests' way to hand the driver hostile metadata and frame responses over real
HTTP."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import check

SPLIT = b"\n--tilescope-fuzz-frames--\n"  # a DICOMweb input: metadata JSON, SPLIT, multipart frames
MULTIPART = 'multipart/related; type="application/octet-stream"; boundary=BOUND'


def multipart(frames: list[bytes]) -> bytes:
    """A WADO-RS frames answer: one octet-stream part per frame (boundary BOUND)."""
    return b"".join(b"--BOUND\r\nContent-Type: application/octet-stream\r\n\r\n" + f + b"\r\n"
                    for f in frames) + b"--BOUND--"


def frames_of(body: bytes) -> list[bytes]:
    """The parts of a :func:`multipart` body."""
    return [p.split(b"\r\n\r\n", 1)[1][:-2] for p in body.split(b"--BOUND")[1:-1]]


class _Server(BaseHTTPRequestHandler):
    """A DICOMweb server answering every metadata request with the input's JSON and every frame
    request with its multipart body, as-is (malformed, truncated, oversized: whatever came)."""

    body: tuple[bytes, bytes] = (b"[]", b"")

    def do_GET(self) -> None:
        meta, frames = _Server.body
        if "/frames/" in self.path:
            data, ctype = frames, MULTIPART
        else:
            data, ctype = meta, "application/dicom+json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def dicomweb_input(meta: bytes, frames: bytes) -> bytes:
    return meta + SPLIT + frames


def dicomweb_target() -> tuple[str, Callable[[bytes], None]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"dicomweb+http://127.0.0.1:{server.server_address[1]}/dicom-web"

    def run(data: bytes) -> None:
        meta, _, frames = data.partition(SPLIT)
        _Server.body = (meta, frames)
        check.exercise_url(url, study="1.2.3", series="4.5.6")
    return url, run
