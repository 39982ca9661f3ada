"""``tilescope serve``: the slides under a folder over HTTP, as an ASGI app (Starlette, on uvicorn).

Starlette rather than FastAPI: the app is a handful of routes that return bytes; FastAPI's
validation layer (pydantic) would add start-up time and a dependency for nothing we use.

URLs (``{path}``: a slide's path under the root, URL-encoded, ``/`` kept; for IIIF the identifier
is that path with ``/`` encoded as ``%2F``, as IIIF requires):

- ``GET /api/slides``: the slides under the root, ``[{"path", "driver", "size", "levels", "mpp"}]``
- ``GET /api/slides/{path}``: normalized metadata; ``.../thumbnail.png``, ``.../associated/{name}.png``
- ``GET /dz/{path}.dzi`` and ``/dz/{path}_files/{level}/{col}_{row}.{jpeg|png}``: Deep Zoom, pixels of
  ``tilescope.openslide.deepzoom.DeepZoomGenerator`` (``tile_size``, ``overlap``, ``limit_bounds``;
  ``scene``, ``channels``, ``z``, ``t``: a plane, through ``tilescope.openslide.OpenSlide.plane``)
- ``GET /iiif/{id}/info.json`` and ``/iiif/{id}/{region}/{size}/{rotation}/{quality}.{format}``:
  IIIF Image API 3.0 (level 1 and more: regions by px, pct and square, sizes w, ,h w,h !w,h pct:
  max ^, rotations by 90 and mirroring, qualities default/color/gray, jpg/png); query ``scene``,
  ``channels``, ``z``, ``t`` pick a plane of a multi-dimensional slide.

Only files under the root that tilescope detects are served; anything else, ``..`` included, is a
404. Requests must name an allowed host (DNS rebinding); a token, when set, is required as
``?token=`` or ``Authorization: Bearer``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import html
import io
import json
import os
import re
import threading
from collections import OrderedDict
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

import tilescope
from tilescope import TilescopeError
from tilescope.display import Display

_LISTED = 2000  # slides a listing shows at most
_OPEN = 32  # slides kept open


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Library:
    """The slides under ``root``: safe path resolution and a small LRU of open slides."""

    def __init__(self, root: str):
        self.root = os.path.realpath(root)
        self._open: OrderedDict[str, Any] = OrderedDict()
        self._known: dict[str, tuple[int, int]] = {}  # detected slides: path -> (size, mtime)
        self._lock = threading.Lock()

    def resolve(self, rel: str) -> str:
        """The file (or DICOM folder) ``rel`` names under the root; 404 for anything else. What
        was detected is remembered while the file's size and mtime stay (a tile request would
        otherwise detect the format again: ~1 ms)."""
        if "\0" in rel or rel.startswith(("/", "\\")) or not rel:
            raise _Refused(404, "not found")
        path = os.path.realpath(os.path.join(self.root, rel))
        if os.path.commonpath([path, self.root]) != self.root:
            raise _Refused(404, "not found")
        try:
            st = os.stat(path)
        except OSError:
            raise _Refused(404, "not found") from None
        stamp = (st.st_size, st.st_mtime_ns)
        if self._known.get(path) == stamp:
            return path
        try:
            if tilescope.detect(path) is None:
                raise _Refused(404, "not found")
        except TilescopeError:
            raise _Refused(404, "not found") from None
        with self._lock:
            if len(self._known) > 4 * _LISTED:
                self._known.clear()
            self._known[path] = stamp
        return path

    def identity(self, path: str) -> str:
        """What a response's ETag stands for: the file and its size and mtime (as resolved)."""
        stamp = self._known.get(path)
        if stamp is None:
            st = os.stat(path)
            stamp = st.st_size, st.st_mtime_ns
        return f"{path}:{stamp[0]}:{stamp[1]}"

    def slide(self, rel: str) -> Any:
        path = self.resolve(rel)
        with self._lock:
            s = self._open.get(path)
            if s is not None:
                self._open.move_to_end(path)
                return s
        s = tilescope.open(path)
        with self._lock:
            self._open[path] = s
            while len(self._open) > _OPEN:
                self._open.popitem(last=False)[1].close()
        return s

    def listing(self) -> list[dict]:
        out: list[dict] = []
        for folder, dirs, files in os.walk(self.root, followlinks=False):
            dirs.sort()
            dicom = False
            if {"zarr.json", ".zattrs", ".zgroup"} & set(files):  # a zarr store: one slide or none,
                dirs[:] = []  # and nothing to probe among its thousands of chunk files
                files = [f for f in files if f in ("zarr.json", ".zattrs")][:1]
            for name in sorted(files):
                full = os.path.join(folder, name)
                if os.path.islink(full) or len(out) >= _LISTED or (dicom and name.lower().endswith(".dcm")):
                    continue
                try:
                    driver = tilescope.detect(full)
                except TilescopeError:
                    continue
                if driver is None or (driver == "DICOM" and dicom):
                    continue
                # a DICOM slide is its folder's files, an OME-Zarr image its store: listed by the folder
                dicom = dicom or driver == "DICOM"
                rel = os.path.relpath(folder if driver in ("DICOM", "OMEZarr") else full, self.root)
                try:
                    s = self.slide(rel)
                except TilescopeError:
                    continue
                sc = s.scenes[0]
                out.append({"path": rel.replace(os.sep, "/"), "driver": s.driver, "size": list(sc.size),
                            "levels": len(sc.levels), "mpp": list(sc.mpp) if sc.mpp else None,
                            "scenes": len(s.scenes), "channels": list(sc.channel_names)})
        return out

    def close(self) -> None:
        with self._lock:
            for s in self._open.values():
                s.close()
            self._open.clear()


def _encode(a: Any, fmt: str, quality: int = 90) -> bytes:
    """An array (h, w, c) or a PIL image as JPEG or PNG bytes. JPEG through imagecodecs: the bytes
    Pillow writes (libjpeg-turbo, the same tables), in 40 % of its time and without the GIL, which
    Pillow's encoder holds (a sixth of a loaded server's GIL time went there)."""
    import imagecodecs
    from PIL import Image

    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if fmt in ("jpg", "jpeg"):
        return bytes(imagecodecs.jpeg8_encode(a, level=quality))
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


_MEDIA = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"}


# -- IIIF ------------------------------------------------------------------------------------------
def iiif_region(text: str, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x, y, w, h) in level-0 pixels, clipped to the image; 400 when empty or malformed."""
    w, h = size
    try:
        if text == "full":
            box = (0.0, 0.0, float(w), float(h))
        elif text == "square":
            side = min(w, h)
            box = ((w - side) / 2, (h - side) / 2, float(side), float(side))
        elif text.startswith("pct:"):
            px, py, pw, ph = (float(v) for v in text[4:].split(","))
            box = (px * w / 100, py * h / 100, pw * w / 100, ph * h / 100)
        else:
            box = tuple(float(int(v)) for v in text.split(","))  # type: ignore[assignment]
    except ValueError:
        raise _Refused(400, f"bad region {text!r}") from None
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0 or min(box) < 0:
        raise _Refused(400, f"bad region {text!r}")
    x0, y0 = round(box[0]), round(box[1])
    x1, y1 = min(round(box[0] + box[2]), w), min(round(box[1] + box[3]), h)
    if x1 <= x0 or y1 <= y0:
        raise _Refused(400, f"region {text!r} lies outside the {w}x{h} image")
    return x0, y0, x1 - x0, y1 - y0


def iiif_size(text: str, region: tuple[int, int], max_area: int) -> tuple[int, int]:
    """Output (w, h) of ``region`` (w, h) for a IIIF size; 400 when malformed or an upscale is not
    asked for with ``^``."""
    rw, rh = region
    up = text.startswith("^")
    body = text[1:] if up else text
    try:
        if body == "max":
            w, h = rw, rh
            if w * h > max_area:
                f = (max_area / (w * h)) ** 0.5
                w, h = max(1, int(w * f)), max(1, int(h * f))
        elif body.startswith("pct:"):
            f = float(body[4:]) / 100
            w, h = max(1, round(rw * f)), max(1, round(rh * f))
        elif body.startswith("!"):
            bw, bh = (int(v) for v in body[1:].split(","))
            f = min(bw / rw, bh / rh)
            w, h = max(1, round(rw * f)), max(1, round(rh * f))
        else:
            sw, sh = body.split(",")
            if sw and sh:
                w, h = int(sw), int(sh)
            elif sw:
                w = int(sw)
                h = max(1, round(rh * w / rw))
            elif sh:
                h = int(sh)
                w = max(1, round(rw * h / rh))
            else:
                raise ValueError
    except ValueError:
        raise _Refused(400, f"bad size {text!r}") from None
    if w <= 0 or h <= 0:
        raise _Refused(400, f"bad size {text!r}")
    if not up and (w > rw or h > rh):
        raise _Refused(400, f"size {text!r} is larger than the region: ask with ^ to upscale")
    if w * h > max_area:
        raise _Refused(400, f"size {text!r} is above the largest area served ({max_area} pixels)")
    return w, h


def _scene(slide: Any, query: Any) -> Any:
    """The scene ``?scene=`` names (an index; default 0)."""
    try:
        index = int(query.get("scene", 0))
    except ValueError:
        raise _Refused(400, "scene is an index") from None
    return slide.scene(index)  # InvalidRequestError (400) for one not there


def _plane(scene: Any, query: Any) -> tuple[list[int] | None, int, int]:
    channels = query.get("channels")
    try:
        chosen = scene.channel_indices([int(c) if c.isdigit() else c for c in channels.split(",")]) \
            if channels else None
        return chosen, int(query.get("z", 0)), int(query.get("t", 0))
    except (TilescopeError, ValueError) as e:
        raise _Refused(400, str(e)) from None


def create_app(root: str, *, allowed_hosts: list[str] | None = None, token: str | None = None,
               cors: bool = False, max_area: int = 4096 * 4096, quality: int = 90) -> Any:
    """The ASGI app serving the slides under ``root`` (see the module docstring)."""
    import anyio.to_thread
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Mount, Route

    from tilescope.openslide import OpenSlide, open_slide
    from tilescope.openslide.deepzoom import DeepZoomGenerator

    lib = Library(root)
    generators: dict[tuple, Any] = {}  # Deep Zoom generators by slide and parameters, the oldest dropped
    displays: dict[tuple, Display] = {}  # a plane's colours and windows: estimated once, not per tile
    lock = threading.Lock()
    # pixel work on as many threads as cores: more only share the cores and their caches (16 clients
    # on 2 cores: 460-480 tiles/s on 2 threads, 350-380 on 8, ~290 on anyio's default 40)
    limiter = anyio.CapacityLimiter(os.cpu_count() or 2)

    async def work(fn: Any, *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    def display(s: Any, sc: Any, channels: list[int] | None, z: int, t: int) -> Display:
        key = (s.path, sc.index, tuple(channels or ()), z, t)
        with lock:
            d = displays.get(key)
        if d is None:
            d = Display(sc, channels, z, t)
            with lock:
                if len(displays) > 4 * _OPEN:
                    displays.clear()
                displays[key] = d
        return d

    def guard(request: Request) -> None:
        if token is None:
            return
        given = request.query_params.get("token") or request.headers.get("authorization", "").removeprefix(
            "Bearer ")
        if given != token:
            raise _Refused(401, "a token is required")

    async def cached(request: Request, media: str, prepare: Any) -> Response:
        """An image: ``prepare()`` gives its cache key and the function making its bytes; both run
        on one worker thread (one hop a request), ``make`` only when the client lacks the ETag."""
        given = request.headers.get("if-none-match")

        def run() -> tuple[str, bytes | None]:
            key, make = prepare()
            etag = '"' + hashlib.sha1(key.encode()).hexdigest() + '"'
            return etag, None if given == etag else make()
        etag, body = await work(run)
        if body is None:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(body, media_type=media,
                        headers={"ETag": etag, "Cache-Control": "public, max-age=3600"})

    def identity(s: Any) -> str:
        return lib.identity(s.path)

    def handler(fn: Any) -> Any:
        @functools.wraps(fn)
        async def run(request: Request) -> Response:
            try:
                guard(request)
                return await fn(request)
            except _Refused as e:
                return JSONResponse({"error": str(e)}, status_code=e.status)
            except tilescope.NotFoundError as e:
                return JSONResponse({"error": str(e)}, status_code=404)
            except tilescope.InvalidRequestError as e:  # bad level, channel, size (TooLargeError too)
                return JSONResponse({"error": str(e)}, status_code=400)
            except TilescopeError as e:  # a damaged file: named, not a crash
                return JSONResponse({"error": str(e)}, status_code=422)
        return run

    @handler
    async def listing(request: Request) -> Response:
        return JSONResponse(await work(lib.listing))

    @handler
    async def slides(request: Request) -> Response:
        rest = request.path_params["rest"]
        m = re.fullmatch(r"(.+)/associated/([^/]+)\.png", rest)
        if m:
            def associated() -> tuple[str, Any]:
                s, name = lib.slide(m.group(1)), m.group(2)
                if name not in s.associated:
                    raise _Refused(404, f"no associated image {name!r}")
                return identity(s) + "/a/" + name, lambda: _encode(np.asarray(s.associated[name]), "png")
            return await cached(request, "image/png", associated)
        if rest.endswith("/thumbnail.png"):
            def thumbnail() -> tuple[str, Any]:
                s = lib.slide(rest[:-len("/thumbnail.png")])
                sc = s.scenes[0]
                try:
                    side = min(int(request.query_params.get("size", 256)), 2048, max(sc.size))
                except ValueError:
                    raise _Refused(400, "size is an integer") from None
                w, h = sc.size
                return f"{identity(s)}/t/{side}", lambda: _encode(
                    display(s, sc, None, 0, 0)(sc.read(size=(side, 0) if w >= h else (0, side))), "png")
            return await cached(request, "image/png", thumbnail)
        s = await work(lib.slide, rest)
        return JSONResponse({"path": rest, **s.metadata})

    def generator(rel: str, query: Any) -> tuple[Any, str]:
        """The Deep Zoom generator of ``rel`` with the query's parameters, and the file's identity."""
        try:
            args = (int(query.get("tile_size", 254)), int(query.get("overlap", 1)),
                    query.get("limit_bounds", "1").lower() in ("1", "true", "yes"))
        except ValueError:
            raise _Refused(400, "tile_size and overlap are integers") from None
        if not 1 <= args[0] <= 4096 or not 0 <= args[1] <= 64:
            raise _Refused(400, "tile_size is 1..4096, overlap 0..64")
        path = lib.resolve(rel)
        plane = tuple(query.get(k) for k in ("scene", "channels", "z", "t"))
        key = (path, *args, *plane)
        with lock:
            dz = generators.get(key)
        if dz is None:
            osr = open_slide(path)
            if any(v is not None for v in plane):  # a plane of a multi-dimensional slide
                if not isinstance(osr, OpenSlide):
                    raise _Refused(400, "a plain image has no scenes, channels, z or t")
                scene = _scene(lib.slide(rel), query)
                channels, z, t = _plane(scene, query)
                osr = osr.plane(scene.index, channels, z, t)
            dz = DeepZoomGenerator(osr, *args)
            with lock:
                generators[key] = dz
                while len(generators) > 4 * _OPEN:
                    generators.pop(next(iter(generators)))
        return dz, lib.identity(path)

    @handler
    async def deepzoom(request: Request) -> Response:
        rest = request.path_params["rest"]
        if rest.endswith(".dzi"):
            dz, _ = await work(generator, rest[:-4], request.query_params)
            return Response(dz.get_dzi("jpeg"), media_type="application/xml")
        m = re.fullmatch(r"(.+)_files/(\d+)/(\d+)_(\d+)\.(jpeg|jpg|png)", rest)
        if not m:
            raise _Refused(404, "not found")
        level, col, row, fmt = int(m.group(2)), int(m.group(3)), int(m.group(4)), m.group(5)

        def tile() -> tuple[str, Any]:
            dz, ident = generator(m.group(1), request.query_params)
            if not 0 <= level < dz.level_count or not (0 <= col < dz.level_tiles[level][0]) or \
                    not (0 <= row < dz.level_tiles[level][1]):
                raise _Refused(404, f"no tile {level}/{col}_{row}")
            return (f"{ident}:{request.url.query}/{level}/{col}/{row}/{fmt}",
                    lambda: _encode(dz.get_tile(level, (col, row)), fmt, quality))  # an RGB image
        return await cached(request, _MEDIA[fmt], tile)

    @handler
    async def iiif(request: Request) -> Response:
        raw = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
        parts = raw.split("?", 1)[0].split("/")[2:]  # after "", "iiif"
        if not parts or not parts[0]:
            raise _Refused(404, "not found")
        rel = unquote(parts[0])
        s = await work(lib.slide, rel)
        sc = _scene(s, request.query_params)
        base = str(request.base_url).rstrip("/") + "/iiif/" + quote(rel, safe="")
        if parts[1:] == ["info.json"] or parts[1:] == []:
            w, h = sc.size
            tile = sc.levels[0].tile_size
            factors = sorted({max(1, round(lv.downsample)) for lv in sc.levels})
            info = {"@context": "http://iiif.io/api/image/3/context.json", "id": base,
                    "type": "ImageService3", "protocol": "http://iiif.io/api/image", "profile": "level1",
                    "width": w, "height": h, "maxArea": max_area,
                    "sizes": [{"width": lv.size[0], "height": lv.size[1]} for lv in reversed(sc.levels)],
                    "tiles": [{"width": tile[0], "height": tile[1], "scaleFactors": factors}],
                    "extraFormats": ["png"], "extraQualities": ["color", "gray"],
                    "extraFeatures": ["regionByPct", "regionSquare", "sizeByPct", "sizeByConfinedWh",
                                      "sizeByWh", "sizeUpscaling", "rotationBy90s", "mirroring"]}
            return Response(json.dumps(info), media_type="application/ld+json")
        if len(parts) != 5:
            raise _Refused(404, "not found")
        region_t, size_t, rot_t, last = (unquote(p) for p in parts[1:])
        iq, _, fmt = last.rpartition(".")
        if fmt not in ("jpg", "png") or iq not in ("default", "color", "gray"):
            raise _Refused(400, f"quality.format {last!r}: default|color|gray . jpg|png")
        mirror = rot_t.startswith("!")
        if rot_t.lstrip("!") not in ("0", "90", "180", "270"):
            raise _Refused(400, f"rotation {rot_t!r}: 0, 90, 180, 270, with ! to mirror")
        rect = iiif_region(region_t, sc.size)
        out = iiif_size(size_t, rect[2:], max_area)
        channels, z, t = _plane(sc, request.query_params)
        key = f"{identity(s)}/{request.url.path}?{request.url.query}"

        def make() -> bytes:
            a = display(s, sc, channels, z, t)(sc.read(rect, out, channels=channels, z=z, t=t))
            if mirror:
                a = a[:, ::-1]
            a = np.rot90(a, -int(rot_t.lstrip("!")) // 90)
            if iq == "gray" and a.shape[-1] == 3:
                a = np.rint(a @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None]
            return _encode(np.ascontiguousarray(a), fmt, quality)
        return await cached(request, _MEDIA[fmt], lambda: (key, make))

    hosts = allowed_hosts or ["127.0.0.1", "localhost", "[::1]", "testserver"]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts)]
    if cors:
        from starlette.middleware.cors import CORSMiddleware

        middleware.append(Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET"]))
    static = os.path.join(os.path.dirname(__file__), "static")

    @handler
    async def view(request: Request) -> Response:
        await work(lib.resolve, request.path_params["rest"])  # 404 unless a slide
        with open(os.path.join(static, "viewer.html"), "rb") as f:
            return Response(f.read(), media_type="text/html")

    @handler
    async def index(request: Request) -> Response:
        rows = "".join(f'<li><a href="/view/{quote(e["path"])}">{html.escape(e["path"])}</a> '
                       f'{e["driver"]}, {e["size"][0]} x {e["size"][1]}</li>'
                       for e in await work(lib.listing))
        return Response(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>tilescope</title></head>"
                        f"<body><h1>Slides</h1><ul>{rows}</ul></body></html>", media_type="text/html")

    from starlette.staticfiles import StaticFiles

    routes = [Route("/", index), Route("/view/{rest:path}", view),
              Route("/api/slides", listing), Route("/api/slides/{rest:path}", slides),
              Route("/dz/{rest:path}", deepzoom), Route("/iiif/{rest:path}", iiif),
              Mount("/static", StaticFiles(directory=static), name="static")]
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        lib.close()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.library = lib
    return app
