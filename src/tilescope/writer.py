"""``tilescope.write``: any scene, slide or array as a pyramidal OME-TIFF, tiled TIFF, Aperio SVS,
OME-Zarr or DICOM WSI.

How a pyramid is made, with bounded memory whatever the image's size: level 0 is read from the
source tile by tile on worker threads; each worker encodes its tile and halves it (means of 2x2
blocks, rounded); the halves fill a band (one row of tiles) of level 1, which, once complete, is
cut into tiles, encoded and halved into level 2's band on the workers, and so on down. Memory: the
tiles in flight (4 per worker) and one band per level below 0 (at 512 px tiles, an RGB slide
40000 px wide holds 30 + 15 + 8 + ... MB of bands). TIFF files are written one level after the
other (tifffile), so level 0 goes to the file as its tiles come and the other levels' encoded
tiles wait in a spool file beside the output (about a third of the output's size) until then.
OME-Zarr chunks are files each worker writes as it makes them; DICOM is written by wsidicomizer
with tilescope as its source (:mod:`tilescope.dicomize`).

Passthrough (``compression="passthrough"``): a level whose tiles are stored as one regular grid of
JPEG tiles (``Scene.encoded_tiles``) is copied tile by tile, bytes and JPEG tables as they are:
decoded pixels equal the source's exactly. The output then has the source's levels.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from .codecs import block_mean
from .errors import InvalidRequestError, TilescopeError, UnsupportedFormatError, WriteError

FORMATS = ("ome-tiff", "tiff", "svs", "ome-zarr", "dicom")
COMPRESSIONS = ("jpeg", "jpeg2000", "jpegxl", "zstd", "deflate", "lzw", "none", "passthrough")
_IN_FLIGHT = 4  # tiles a worker has queued: enough to keep it busy, few enough to bound memory
# zstd level 1: on the bench slide's 512² RGB tiles 1.2 ms a tile against 4.2 ms at zstd's default
# level 3, for chunks 3 % larger
_ZSTD_LEVEL = 1


def format_for(path: str, format: str | None = None) -> str:
    """The output format ``write`` uses for ``path``: ``format`` if given, else from the suffix."""
    if format is not None:
        if format not in FORMATS:
            raise InvalidRequestError(f"{path}: format {format!r}: one of {', '.join(FORMATS)}")
        return format
    low = str(path).lower()
    for suffix, name in ((".ome.tif", "ome-tiff"), (".ome.tiff", "ome-tiff"), (".svs", "svs"),
                         (".tif", "tiff"), (".tiff", "tiff"), (".zarr", "ome-zarr"), (".dcm", "dicom"),
                         (".dicom", "dicom")):
        if low.rstrip("/").endswith(suffix):
            return name
    raise InvalidRequestError(f"{path}: no output format for this suffix (.ome.tif(f), .tif(f), .svs, "
                              f".zarr, .dcm / .dicom: a folder; or format=)")


# -- what is written: pages of one image, whatever the source ------------------------------------
@dataclass
class _Image:
    """The planes to write: ``pages`` of (h, w, samples) each, read by ``read(page, x, y, w, h)``
    at full resolution, outside the image filled with ``background``."""

    size: tuple[int, int]
    dtype: np.dtype
    samples: int  # per page: 3 for RGB, else 1 (a page per channel)
    pages: Sequence[tuple[tuple[int, ...], int, int]]  # (channels, z, t), C fastest, then Z, then T
    read: Callable[[int, int, int, int, int], np.ndarray]
    channel_names: list[str]
    channel_colors: list[str | None]
    sizes_czt: tuple[int, int, int]
    mpp: tuple[float, float] | None = None
    magnification: float | None = None
    z_resolution: float | None = None
    t_resolution: float | None = None
    name: str = "image"
    background: float = 0
    associated: dict[str, np.ndarray] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    scene: Any = None  # the source Scene, for passthrough


def _select(value: int | Sequence[int] | None, n: int, what: str) -> list[int]:
    if value is None:
        return list(range(n))
    chosen = [value] if isinstance(value, int) else list(value)
    for v in chosen:
        if not 0 <= v < n:
            raise InvalidRequestError(f"{what} {v} is out of range (0..{n - 1})")
    return chosen


def _from_scene(sc: Any, channels: Any, z: Any, t: Any) -> _Image:
    """A Scene, or any object with its read API: ``size``, ``dtype``, ``channel_names`` and
    ``read_level(level, rect, channels=, z=, t=)`` (the rest of a Scene's attributes where it has
    them: mpp, magnification, planes, colours, its slide's properties and associated images)."""
    from .model import Scene

    names = list(sc.channel_names)
    chans = sc.channel_indices(channels) if hasattr(sc, "channel_indices") else \
        _select(channels, len(names), "channel")
    zs, ts = _select(z, getattr(sc, "num_z_slices", 1), "z"), _select(t, getattr(sc, "num_t_frames", 1), "t")
    dtype, background = np.dtype(sc.dtype), float(getattr(sc, "background", 0))
    rgb = len(chans) == 3 and dtype == np.uint8 and (
        tuple(names[c] for c in chans) == ("R", "G", "B") or background == 255)
    groups = [tuple(chans)] if rgb else [(c,) for c in chans]
    pages = [(g, zz, tt) for tt in ts for zz in zs for g in groups]
    extra = {"threads": 1} if isinstance(sc, Scene) else {}  # the workers are the parallelism

    def read(page: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        g, zz, tt = pages[page]
        return np.ascontiguousarray(sc.read_level(0, (x, y, w, h), channels=list(g), z=zz, t=tt, **extra))

    slide = getattr(sc, "slide", None)
    props = {f"{group}.{k}": str(v) for group, values in getattr(slide, "properties", {}).items()
             for k, v in values.items() if not isinstance(v, (list, tuple, dict))}
    associated = {}
    if getattr(sc, "index", None) == 0 and slide is not None:
        for name in slide.associated:
            a = np.asarray(slide.associated[name])
            associated[name] = a if a.ndim == 3 else a[..., None]
    colors = getattr(sc, "channel_colors", None) or [None] * len(names)
    return _Image(tuple(sc.size), dtype, 3 if rgb else 1, pages, read, [names[c] for c in chans],
                  [colors[c] for c in chans], (len(chans), len(zs), len(ts)), getattr(sc, "mpp", None),
                  getattr(sc, "magnification", None), getattr(sc, "z_resolution", None),
                  getattr(sc, "t_resolution", None), str(getattr(sc, "name", "image")), background,
                  associated, props, sc if isinstance(sc, Scene) else None)


def _from_array(a: Any, mpp: Any, channel_names: Sequence[str] | None) -> _Image:
    """A (h, w) or (h, w, c) numpy or dask array."""
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise InvalidRequestError(f"an array to write is (h, w) or (h, w, c), not {a.shape}")
    h, w, c = a.shape
    dtype = np.dtype(a.dtype)
    rgb = c == 3 and dtype == np.uint8 and channel_names is None
    names = list(channel_names) if channel_names is not None else (
        ["R", "G", "B"] if rgb else [f"C{i}" for i in range(c)])
    if len(names) != c:
        raise InvalidRequestError(f"{len(names)} channel names for {c} channels")
    groups = [(0, 1, 2)] if rgb else [(i,) for i in range(c)]
    pages = [(g, 0, 0) for g in groups]

    def read(page: int, x: int, y: int, tw: int, th: int) -> np.ndarray:
        # contiguous: a fancy index on the last axis gives a transposed layout, which encoders refuse
        part = np.ascontiguousarray(a[y:y + th, x:x + tw, list(pages[page][0])])
        if part.shape[:2] != (th, tw):
            out = np.zeros((th, tw, part.shape[2]), dtype)
            out[:part.shape[0], :part.shape[1]] = part
            part = out
        return part

    return _Image((w, h), dtype, 3 if rgb else 1, pages, read, names, [None] * c, (c, 1, 1), _pair(mpp))


def _pair(mpp: float | Sequence[float] | None) -> tuple[float, float] | None:
    if mpp is None:
        return None
    if isinstance(mpp, (int, float)):
        return float(mpp), float(mpp)
    return float(mpp[0]), float(mpp[1])


# -- encoders ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Codec:
    tiff: int  # the TIFF Compression tag
    encode: Callable[[np.ndarray], bytes]
    photometric: str = "minisblack"
    subsampling: tuple[int, int] | None = None
    jpegtables: bytes | None = None


def _codec(compression: str, quality: int, samples: int, dtype: np.dtype, fmt: str) -> _Codec:
    import imagecodecs

    photometric = "rgb" if samples == 3 else "minisblack"
    if compression == "jpeg":
        if dtype != np.uint8 or samples not in (1, 3):
            raise InvalidRequestError(f"JPEG holds 8-bit grey or RGB, not {samples} x {dtype}: use "
                                      f"compression='zstd', 'deflate', 'lzw' or 'jpeg2000'")
        # 4:2:0 YCbCr, as libjpeg-turbo writes by default (and Aperio's scanners)
        return _Codec(7, lambda a: bytes(imagecodecs.jpeg8_encode(a, level=quality)),
                      "ycbcr" if samples == 3 else photometric, (2, 2) if samples == 3 else None)
    if compression in ("jpeg2000", "jpegxl") and dtype not in (np.uint8, np.uint16):
        raise InvalidRequestError(f"{compression} holds 8- or 16-bit integers here, not {dtype}: use "
                                  f"compression='zstd', 'deflate' or 'lzw'")
    if compression == "jpeg2000":
        lossless = quality >= 100
        # SVS keeps Aperio's code (openslide reads 33003/33005 only); elsewhere the registered one
        code = 33005 if fmt == "svs" and samples == 3 else 34712
        # imagecodecs' level is a target PSNR in dB: quality / 2 (90: 45 dB, about JPEG's Q90 error)
        return _Codec(code, lambda a: bytes(imagecodecs.jpeg2k_encode(
            a, level=None if lossless else round(quality / 2), reversible=lossless, codecformat="J2K")),
            photometric)
    if compression == "jpegxl":
        return _Codec(50002, lambda a: bytes(imagecodecs.jpegxl_encode(
            a, level=quality, lossless=quality >= 100)), photometric)
    byte_codecs: dict[str, tuple[int, Callable[[bytes], Any]]] = {
        "zstd": (50000, lambda b: imagecodecs.zstd_encode(b, level=_ZSTD_LEVEL)),
        "deflate": (8, imagecodecs.zlib_encode),
        "lzw": (5, imagecodecs.lzw_encode), "none": (1, bytes)}
    if compression not in byte_codecs:
        raise InvalidRequestError(f"compression {compression!r}: one of {', '.join(COMPRESSIONS)}")
    code, fn = byte_codecs[compression]
    return _Codec(code, lambda a: bytes(fn(np.ascontiguousarray(a).tobytes())), photometric)


# -- the pyramid ---------------------------------------------------------------------------------
class _Spool:
    """Encoded tiles of the levels below 0, in a temporary file beside the output, until their
    level is written: appended per level in the order they are made (by the pyramid maker's
    ``keep``, on the caller's thread only)."""

    def __init__(self, where: str):
        self._f = tempfile.TemporaryFile(dir=where, prefix=".tilescope-spool-")  # noqa: SIM115 (closed by close())
        self._end = 0
        self.index: dict[int, list[tuple[int, int]]] = {}

    def put(self, level: int, data: bytes) -> None:
        self._f.write(data)
        self.index.setdefault(level, []).append((self._end, len(data)))
        self._end += len(data)

    def tiles(self, level: int) -> Iterator[bytes]:
        fd = self._f.fileno()
        for offset, count in self.index.get(level, []):
            yield os.pread(fd, count, offset)

    def close(self) -> None:
        self._f.close()


def level_sizes(size: tuple[int, int], tile: int, levels: int | str) -> list[tuple[int, int]]:
    """Level sizes, halving (rounded up) from ``size``: ``levels`` of them, or with "auto" down to
    the first that fits in one tile."""
    sizes = [size]
    while (len(sizes) < levels if isinstance(levels, int) else max(sizes[-1]) > tile) and max(sizes[-1]) > 1:
        sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    return sizes


# what a tile becomes, on a worker: emit(level, page, tx, ty, pixels), and what is done with that
# in tile order on the caller's thread for the levels below 0: keep(level, result)
Emit = Callable[[int, int, int, int, np.ndarray], Any]


class _Pyramid:
    """Makes every tile of every level of one image and hands each to ``emit`` on the workers:
    level 0's results are yielded in order by ``level0()``, the others go to ``keep`` in order
    (see the module docstring)."""

    def __init__(self, image: _Image, tile: int, sizes: list[tuple[int, int]], pool: cf.ThreadPoolExecutor,
                 workers: int, emit: Emit, keep: Callable[[int, Any], None], done: Callable[[int], None]):
        self.image, self.tile, self.sizes = image, tile, sizes
        self.pool, self.workers, self.emit, self.keep, self.done = pool, workers, emit, keep, done

    def grid(self, level: int) -> tuple[int, int]:
        w, h = self.sizes[level]
        return -(-w // self.tile), -(-h // self.tile)

    def level0(self) -> Iterator[Any]:
        for page in range(len(self.image.pages)):
            yield from self._page(page)

    def _page(self, page: int) -> Iterator[Any]:
        ts, s, nl = self.tile, self.image.samples, len(self.sizes)
        # the band being filled at each level below 0: one row of tiles, full width
        bands = [np.full((ts, self.grid(k)[0] * ts, s), self.image.background, self.image.dtype)
                 for k in range(1, nl)]
        nx, ny = self.grid(0)
        jobs = ((tx, ty) for ty in range(ny) for tx in range(nx))
        window: list[tuple[int, int, cf.Future]] = []
        limit = _IN_FLIGHT * self.workers

        def make(tx: int, ty: int) -> tuple[Any, np.ndarray | None]:
            a = self.image.read(page, tx * ts, ty * ts, ts, ts)
            return self.emit(0, page, tx, ty, a), self._half(0, a, tx, ty) if nl > 1 else None

        for job in jobs:
            window.append((*job, self.pool.submit(make, *job)))
            if len(window) >= limit:
                yield from self._take(window.pop(0), page, bands, ny)
        while window:
            yield from self._take(window.pop(0), page, bands, ny)

    def _half(self, level: int, a: np.ndarray, tx: int, ty: int) -> np.ndarray:
        """Tile (tx, ty) of ``level`` halved: only its pixels inside the level, so an odd edge is
        the mean of the edge pixels repeated (block_mean's rule), not of the padding beyond."""
        w, h = self.sizes[level]
        return block_mean(a[:min(self.tile, h - ty * self.tile), :min(self.tile, w - tx * self.tile)], 2)

    def _take(self, item: tuple[int, int, cf.Future], page: int, bands: list[np.ndarray],
              ny: int) -> Iterator[Any]:
        tx, ty, fut = item
        data, half = fut.result()
        if half is not None:  # before the yield: a writer stops pulling after the last tile
            self._place(1, page, half, tx, ty, bands, last_row=ty == ny - 1,
                        last_col=tx == self.grid(0)[0] - 1)
        self.done(1)
        yield data

    def _place(self, level: int, page: int, half: np.ndarray, tx: int, ty: int, bands: list[np.ndarray],
               last_row: bool, last_col: bool) -> None:
        """Put the halved tile (tx, ty) of ``level - 1`` into ``level``'s band; process the band
        when its row of tiles is complete."""
        hh = self.tile // 2
        band = bands[level - 1]
        y0 = (ty % 2) * hh
        band[y0:y0 + half.shape[0], tx * hh:tx * hh + half.shape[1]] = half
        if last_col and (ty % 2 == 1 or last_row):
            self._band(level, page, ty // 2, bands, last_row)

    def _band(self, level: int, page: int, row: int, bands: list[np.ndarray], last_row: bool) -> None:
        """Encode ``level``'s complete band ``row`` (on the workers) and pass its halves down."""
        ts = self.tile
        band = bands[level - 1]
        nx = self.grid(level)[0]
        deeper = level + 1 < len(self.sizes)

        def make(tx: int) -> tuple[Any, np.ndarray | None]:
            a = np.ascontiguousarray(band[:, tx * ts:(tx + 1) * ts])
            return self.emit(level, page, tx, row, a), self._half(level, a, tx, row) if deeper else None

        results = list(self.pool.map(make, range(nx)))
        for tx, (data, half) in enumerate(results):
            self.keep(level, data)
            self.done(1)
            if half is not None:
                self._place(level + 1, page, half, tx, row, bands, last_row, tx == nx - 1)
        band[:] = self.image.background


# -- TIFF files ----------------------------------------------------------------------------------
def _ome_xml(image: _Image, extra: list[tuple[str, np.ndarray]]) -> str:
    """OME-XML (2016-06) for the image's pages (IFD 0..) and the associated images after them."""
    c, z, t = image.sizes_czt
    dtype = {"uint8": "uint8", "uint16": "uint16", "int8": "int8", "int16": "int16", "uint32": "uint32",
             "int32": "int32", "float32": "float", "float64": "double"}.get(image.dtype.name)
    if dtype is None:
        raise UnsupportedFormatError(f"OME-TIFF has no pixel type for {image.dtype}")
    attrs = [f'SizeX="{image.size[0]}"', f'SizeY="{image.size[1]}"', f'SizeC="{c}"', f'SizeZ="{z}"',
             f'SizeT="{t}"', f'Type="{dtype}"', 'DimensionOrder="XYCZT"',
             f'Interleaved="{"true" if image.samples > 1 else "false"}"',
             f'SignificantBits="{image.dtype.itemsize * 8}"']
    if image.mpp:
        # in µm, the schema's default unit
        attrs += [f'PhysicalSizeX="{image.mpp[0]!r}"', f'PhysicalSizeY="{image.mpp[1]!r}"']
    if image.z_resolution:
        attrs += [f'PhysicalSizeZ="{image.z_resolution!r}"']
    if image.t_resolution:
        attrs += [f'TimeIncrement="{image.t_resolution!r}"', 'TimeIncrementUnit="s"']
    if image.samples > 1:
        channels = [f'<Channel ID="Channel:0:0" SamplesPerPixel="{image.samples}"/>']
    else:
        channels = []
        for i, (name, color) in enumerate(zip(image.channel_names, image.channel_colors, strict=True)):
            col = ""
            if color:
                rgba = int(color.lstrip("#"), 16) << 8 | 0xFF
                col = f' Color="{rgba - (1 << 32) if rgba >= 1 << 31 else rgba}"'
            channels.append(f'<Channel ID="Channel:0:{i}" Name={quoteattr(name)} SamplesPerPixel="1"{col}/>')
    instrument, objective = "", ""
    if image.magnification:
        instrument = ('<Instrument ID="Instrument:0"><Objective ID="Objective:0:0" '
                      f'NominalMagnification="{float(image.magnification)!r}"/></Instrument>')
        objective = '<InstrumentRef ID="Instrument:0"/><ObjectiveSettings ID="Objective:0:0"/>'
    images = [f'<Image ID="Image:0" Name={quoteattr(image.name)}>{objective}'
              f'<Pixels ID="Pixels:0" {" ".join(attrs)}>{"".join(channels)}'
              f'<TiffData IFD="0" PlaneCount="{len(image.pages)}"/></Pixels>'
              + ('<AnnotationRef ID="Annotation:0"/>' if image.properties else "") + '</Image>']
    ifd = len(image.pages)
    for k, (name, a) in enumerate(extra, start=1):
        images.append(f'<Image ID="Image:{k}" Name={quoteattr(name)}><Pixels ID="Pixels:{k}" '
                      f'DimensionOrder="XYCZT" Type="uint8" SizeX="{a.shape[1]}" SizeY="{a.shape[0]}" '
                      f'SizeC="{a.shape[2]}" SizeZ="1" SizeT="1" Interleaved="true">'
                      f'<Channel ID="Channel:{k}:0" SamplesPerPixel="{a.shape[2]}"/>'
                      f'<TiffData IFD="{ifd}" PlaneCount="1"/></Pixels></Image>')
        ifd += 1
    annotations = ""
    if image.properties:  # the source's own metadata, key by key (README: "Writing and converting")
        # &#13;: XML parsers turn a literal CR LF (Aperio's descriptions) into LF
        values = "".join(f"<M K={quoteattr(k)}>{escape(v, {chr(13): '&#13;'})}</M>"
                         for k, v in image.properties.items())
        annotations = (f'<StructuredAnnotations><MapAnnotation ID="Annotation:0" '
                       f'Namespace="tilescope/source-properties"><Value>{values}</Value></MapAnnotation>'
                       f'</StructuredAnnotations>')
    from . import __version__

    return ('<?xml version="1.0" encoding="UTF-8"?>'
            '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xsi:schemaLocation="http://www.openmicroscopy.org/Schemas/OME/2016-06 '
            'http://www.openmicroscopy.org/Schemas/OME/2016-06/ome.xsd" '
            f'UUID="urn:uuid:{uuid.uuid4()}" Creator="tilescope {__version__}">'
            f'{instrument}{"".join(images)}{annotations}</OME>')


def _aperio(image: _Image, tile: int, level_size: tuple[int, int], compression: str, quality: int) -> str:
    """The ImageDescription openslide's aperio driver recognises (and reads MPP, AppMag from)."""
    w, h = image.size
    head = f"Aperio Image Library tilescope\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile})"
    if level_size != image.size:
        head += f" -> {level_size[0]}x{level_size[1]}"
    fields = [head + (f" JPEG/RGB Q={quality}" if compression == "jpeg" else f" {compression}")]
    if image.mpp:
        fields.append(f"MPP = {image.mpp[0]:.6g}")
    if image.magnification:
        fields.append(f"AppMag = {image.magnification:g}")
    return "|".join(fields)


@dataclass
class _Level:
    """One level to write: its size, tile, codec and its tiles' bytes (all pages, in order)."""

    size: tuple[int, int]
    tile: tuple[int, int]
    codec: _Codec
    tiles: Iterator[bytes]


def _passthrough(image: _Image) -> list[_Level]:
    """The source's levels as stored, from level 0 down while each is one grid of JPEG tiles a TIFF
    holds as they are; an error naming why when level 0 is not."""
    sc = image.scene
    if sc is None or len(image.pages) != 1 or image.samples != sc.image_channels:
        raise InvalidRequestError("passthrough copies one plane of a scene's stored tiles (all its image "
                                  "channels): choose a z, t and all channels, or re-encode")
    out = []
    _, zz, tt = image.pages[0]
    for i, lv in enumerate(sc.levels):
        enc = sc.encoded_tiles(i, z=zz, t=tt)
        why, photometric, sub = _copyable(enc)
        if why:
            if i == 0:
                raise InvalidRequestError(f"{sc.location}: level 0 cannot be copied into a TIFF ({why}): "
                                          f"re-encode")
            break
        assert enc is not None

        def tiles(enc: Any = enc) -> Iterator[bytes]:
            for ty in range(enc.grid[1]):
                for tx in range(enc.grid[0]):
                    data = enc.get(tx, ty)
                    if data is None:
                        raise InvalidRequestError(f"{sc.location}: a sparse level cannot be passed through")
                    yield data
        out.append(_Level(lv.size, enc.tile, _Codec(7, bytes, photometric, sub, enc.params.get("tables")),
                          tiles()))
    return out


def _copyable(enc: Any) -> tuple[str, str, tuple[int, int] | None]:
    """Why a level's stored tiles cannot go into a TIFF as they are ("" if they can), the TIFF
    photometric they keep and their chroma subsampling (YCbCrSubsampling must match the stream
    for libtiff's own decoder)."""
    if enc is None:
        return "not one grid of tiles", "", None
    if enc.codec != "jpeg" or enc.dtype != np.uint8 or enc.tile[0] % 16 or enc.tile[1] % 16:
        return f"{enc.codec} tiles of {enc.tile[0]}x{enc.tile[1]}", "", None
    photometric = {6: "ycbcr", 2: "rgb", 1: "minisblack"}.get(int(enc.params.get("photometric") or 0))
    if photometric is None or enc.params.get("planarconfig", 1) != 1:
        return "no TIFF photometric for them", "", None
    first = enc.get(0, 0)
    if first is None:
        return "a sparse level", "", None
    sampling, adobe_rgb = _jpeg_header(enc.params.get("tables"), first)
    if adobe_rgb and enc.params.get("colorspace") == "YCbCr":
        # YCbCr by the source's own rule (a DICOM attribute) against an Adobe marker inside saying
        # RGB: TIFF readers believe the marker
        return "the streams' Adobe marker says RGB where the source says YCbCr", "", None
    return "", photometric, sampling if photometric == "ycbcr" else None


def _jpeg_header(tables: bytes | None, tile: bytes) -> tuple[tuple[int, int], bool]:
    """A JPEG stream's chroma subsampling (luma's sampling factors, from its SOF) and whether an
    Adobe APP14 segment marks its components as untransformed (RGB)."""
    data = (tables[:-2] + tile[2:]) if tables else tile
    sampling, adobe_rgb, i = (2, 2), False, 2
    while i + 4 <= len(data) and data[i] == 0xFF and data[i + 1] != 0xDA:
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xC2 and i + 12 <= len(data):
            hv = data[i + 11]
            sampling = (hv >> 4, hv & 15)
        elif marker == 0xEE and data[i + 4:i + 9] == b"Adobe" and i + 15 <= len(data):
            adobe_rgb = data[i + 15] == 0
        i += 2 + length
    return sampling, adobe_rgb


def _write_tiff(path: str, image: _Image, fmt: str, levels: list[_Level], compression: str,
                quality: int, tile: int) -> None:
    import tifffile

    rgb = image.samples == 3
    extra = [(n, a) for n, a in image.associated.items() if a.dtype == np.uint8 and a.shape[2] in (1, 3)]
    npages = len(image.pages)
    def page_args(lv: _Level) -> dict[str, Any]:
        shape = (npages, lv.size[1], lv.size[0]) + ((image.samples,) if rgb else ())
        args: dict[str, Any] = dict(
            dtype=image.dtype, metadata=None, shape=shape, tile=(lv.tile[1], lv.tile[0]),
            compression=lv.codec.tiff, photometric=lv.codec.photometric, subsampling=lv.codec.subsampling,
            jpegtables=lv.codec.jpegtables)
        if image.mpp:  # pixels per cm at this level
            args["resolution"] = (1e4 * lv.size[0] / (image.mpp[0] * image.size[0]),
                                  1e4 * lv.size[1] / (image.mpp[1] * image.size[1]))
            args["resolutionunit"] = "CENTIMETER"
        if rgb:
            args["planarconfig"] = "contig"
        return args

    with tifffile.TiffWriter(path, bigtiff=True, ome=False) as tif:
        if fmt == "ome-tiff":
            tif.write(levels[0].tiles, **page_args(levels[0]), subifds=len(levels) - 1,
                      description=_ome_xml(image, extra).encode())  # OME-XML is UTF-8
            for lv in levels[1:]:
                tif.write(lv.tiles, **page_args(lv), subfiletype=1)
            for _, a in extra:
                tif.write(a, photometric="rgb" if a.shape[2] == 3 else "minisblack", compression="zlib",
                          metadata=None)
            return
        if fmt == "tiff":
            for k, lv in enumerate(levels):
                tif.write(lv.tiles, **page_args(lv), subfiletype=1 if k else 0)
            return
        # svs: level 0, the thumbnail, the other levels, the label, the macro (as Aperio writes)
        tif.write(levels[0].tiles, **page_args(levels[0]),
                  description=_aperio(image, tile, levels[0].size, compression, quality))
        thumb = image.associated.get("thumbnail")
        if thumb is not None and thumb.shape[2] == 3:
            size = (thumb.shape[1], thumb.shape[0])
            tif.write(thumb, photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                      metadata=None, description=_aperio(image, tile, size, compression, quality))
        for lv in levels[1:]:
            tif.write(lv.tiles, **page_args(lv),
                      description=_aperio(image, tile, lv.size, compression, quality))
        for name, subfile in (("label", 1), ("macro", 9)):
            im = image.associated.get(name)
            if im is not None and im.shape[2] == 3:
                tif.write(im, photometric="rgb", compression="lzw" if name == "label" else "jpeg",
                          subfiletype=subfile, metadata=None,
                          description=f"Aperio Image Library tilescope\r\n{name} {im.shape[1]}x{im.shape[0]}")


# -- OME-Zarr -------------------------------------------------------------------------------------
def _zarr_compressor(compression: str, zarr_format: int) -> Any:
    if compression == "none":
        return None
    if compression not in ("zstd", "deflate"):
        raise InvalidRequestError(f"OME-Zarr chunks are compressed with zstd, deflate (gzip) or none, "
                                  f"not {compression!r}")
    if zarr_format == 2:
        import numcodecs

        return numcodecs.Zstd(level=_ZSTD_LEVEL) if compression == "zstd" else numcodecs.GZip(level=6)
    from zarr.codecs import GzipCodec, ZstdCodec

    return ZstdCodec(level=_ZSTD_LEVEL) if compression == "zstd" else GzipCodec(level=6)


class _Shards:
    """Shard files written as their chunks come (zarr v3 ``sharding_indexed``, the index of
    (offset, nbytes) per inner chunk at the end with its crc32c, as zarr's metadata for the array
    declares): any worker appends a chunk to its shard; the last one in writes the index and
    closes it. No shard is held in memory; zarr's own write path would rewrite a whole shard for
    every chunk put into it."""

    def __init__(self) -> None:
        self._open: dict[str, list] = {}  # file -> [handle, index, end, count, lock]
        self._lock = threading.Lock()

    def put(self, file: str, inner: int, n: int, expected: int, data: bytes | bytearray) -> None:
        with self._lock:
            entry = self._open.get(file)
            if entry is None:
                os.makedirs(os.path.dirname(file), exist_ok=True)
                empty = np.full((n, 2), 2**64 - 1, "<u8")
                handle = open(file, "wb")  # noqa: SIM115 (closed with its last chunk, or by close())
                entry = self._open[file] = [handle, empty, 0, 0, threading.Lock()]
        with entry[4]:
            f, index = entry[0], entry[1]
            f.write(data)
            index[inner] = (entry[2], len(data))
            entry[2] += len(data)
            entry[3] += 1
            if entry[3] < expected:
                return
            import google_crc32c  # zarr's own checksum library (a zarr dependency)

            raw = index.tobytes()
            f.write(raw + np.uint32(google_crc32c.value(raw)).astype("<u4").tobytes())
            f.close()
        with self._lock:
            del self._open[file]

    def close(self) -> None:
        for entry in self._open.values():
            entry[0].close()


def _write_zarr(path: str, image: _Image, sizes: list[tuple[int, int]], tile: int, compression: str,
                zarr_format: int, workers: int, progress: bool | None, shards: int | None = None) -> None:
    """OME-NGFF 0.5 on zarr v3 (0.4 on v2): axes [t,] c, [z,] y, x; one array per level, a chunk
    per tile (RGB: the 3 samples in one chunk), or shards of ``shards`` x ``shards`` chunks (v3);
    each tile written by the worker that made it."""
    import imagecodecs
    import zarr

    from .progress import bar
    from .zarrstore import ngff_attributes, ngff_axes

    c, nz, nt = image.sizes_czt
    axes = ngff_axes(nz, nt)
    colors = image.channel_colors if image.samples == 1 else ["#FF0000", "#00FF00", "#0000FF"]
    channels: list[tuple[str, str | None]] = list(zip(image.channel_names, colors, strict=True))
    attrs = ngff_attributes(image.name, axes, [(image.size[0] / w, image.size[1] / h) for w, h in sizes],
                            image.mpp, image.z_resolution, image.t_resolution, channels, image.dtype,
                            "0.5" if zarr_format == 3 else "0.4")
    if image.properties:  # the source's own metadata (README: "Writing and converting")
        attrs["tilescope"] = {"source_properties": image.properties}
    root = zarr.open_group(path, mode="w-", zarr_format=zarr_format)  # type: ignore[arg-type]
    root.attrs.update(attrs)
    compressor = _zarr_compressor(compression, zarr_format)
    fill = image.background if image.dtype.kind == "f" else int(image.background)
    arrays = []
    for k, (w, h) in enumerate(sizes):
        full = {"t": nt, "c": c, "z": nz, "y": h, "x": w}
        chunk = {"t": 1, "c": image.samples, "z": 1, "y": min(tile, h), "x": min(tile, w)}
        kw: dict[str, Any] = {"dimension_names": axes} if zarr_format == 3 else \
            {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
        if shards:
            kw["shards"] = tuple(chunk[a] * shards if a in "yx" else chunk[a] for a in axes)
        arrays.append(root.create_array(str(k), shape=tuple(full[a] for a in axes),
                                        chunks=tuple(chunk[a] for a in axes), dtype=image.dtype,
                                        compressors=compressor, fill_value=fill, **kw))
    groups = 1 if image.samples > 1 else c

    # Chunks are written as files by the worker that made them, at the key zarr's own metadata
    # encodes, compressed as zarr's codec would (a zstd / gzip frame of the C-order bytes: zarr
    # and ome-zarr read them in the tests): zarr's per-chunk write path costs ~5 ms a chunk over
    # the compression itself (the bench slide to OME-Zarr: 48 s through it).
    compress = {"zstd": lambda b: imagecodecs.zstd_encode(b, level=_ZSTD_LEVEL), "none": bytes,
                "deflate": lambda b: imagecodecs.gzip_encode(b, level=6)}[compression]
    made: set[str] = set()
    sharded = _Shards()

    def emit(level: int, page: int, tx: int, ty: int, a: np.ndarray) -> None:
        w, h = sizes[level]
        if tx * tile >= w or ty * tile >= h:
            return
        chunk = {"t": page // (groups * nz), "z": (page // groups) % nz, "y": ty, "x": tx,
                 "c": 0 if image.samples > 1 else page % groups}
        # a whole chunk (edge chunks too, as zarr stores them; a level smaller than a tile is one
        # chunk of its own size), samples first
        data = np.ascontiguousarray(np.moveaxis(a[:min(tile, h), :min(tile, w)], -1, 0)).tobytes()
        if shards:  # its shard, its place there (C order), and how many of the shard's chunks exist
            nx, ny = -(-w // tile), -(-h // tile)
            where = {ax: (chunk[ax] // shards, chunk[ax] % shards) if ax in "yx" else (chunk[ax], 0)
                     for ax in axes}
            name = arrays[level].metadata.encode_chunk_key(tuple(where[ax][0] for ax in axes))
            inner = where["y"][1] * shards + where["x"][1]
            expected = min(shards, ny - where["y"][0] * shards) * min(shards, nx - where["x"][0] * shards)
            sharded.put(os.path.join(path, str(level), name), inner, shards * shards, expected,
                        compress(data))
            return
        name = arrays[level].metadata.encode_chunk_key(tuple(chunk[ax] for ax in axes))
        key = os.path.join(path, str(level), name)
        folder = os.path.dirname(key)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        with open(key, "wb") as f:
            f.write(compress(data))

    total = len(image.pages) * sum(-(-w // tile) * -(-h // tile) for w, h in sizes)
    try:
        with cf.ThreadPoolExecutor(workers, thread_name_prefix="tilescope-write") as pool, \
                bar(total, "tiles", enabled=progress) as b:
            pyramid = _Pyramid(image, tile, sizes, pool, workers, emit, lambda level, r: None, b.update)
            for _ in pyramid.level0():
                pass
    finally:
        sharded.close()


# -- the entry point -----------------------------------------------------------------------------
def write(source: Any, path: str | os.PathLike, *, format: str | None = None, tile_size: int = 512,
          compression: str | None = None, quality: int = 90, levels: int | str = "auto",
          channels: Any = None, z: int | Sequence[int] | None = None, t: int | Sequence[int] | None = None,
          workers: int | None = None, progress: bool | None = False,
          mpp: float | tuple[float, float] | None = None,
          channel_names: Sequence[str] | None = None, zarr_format: int = 3,
          shards: int | None = None) -> str:
    """Write ``source`` to ``path`` as a tiled pyramid; returns the path.

    ``source``: a Scene, a Slide (its first scene), any object with the Scene read API (``size``,
    ``dtype``, ``channel_names``, ``read_level``; more where it has them), or a numpy or dask array
    (h, w) or (h, w, c) with ``mpp`` and ``channel_names``.

    ``format``, by default from the suffix: "ome-tiff" (.ome.tif(f)), "tiff" (.tif(f): tiled
    BigTIFF, levels in the main IFD chain, as openslide's generic-tiff reads them), "svs" (Aperio,
    as openslide's aperio driver reads it), "ome-zarr" (.zarr: OME-NGFF 0.5 on zarr v3;
    ``zarr_format=2``: 0.4 on zarr v2; ``shards=N``: v3 shards of N x N tiles) or "dicom" (.dcm,
    .dicom: a folder, through wsidicomizer).
    ``compression`` (default "jpeg"; "zstd" for OME-Zarr): "jpeg" (8-bit grey or RGB),
    "jpeg2000" (lossless at quality 100), "jpegxl", "zstd", "deflate", "lzw", "none", or
    "passthrough" (the source's JPEG tiles copied as stored, with its levels); OME-Zarr takes zstd,
    deflate (gzip) or none; DICOM jpeg, jpeg2000 or passthrough. ``levels``: how many, or "auto"
    (halving until a level fits in one tile). ``channels``, ``z``, ``t``: what to write of a scene
    (default all). ``workers``: encoding threads (default one per core). ``progress``: a bar of
    tiles written (done / total, rate, ETA) on standard error; None: only on a terminal."""
    from .model import Scene, Slide

    path = os.fspath(path)
    fmt = format_for(path, format)
    if isinstance(source, Slide):
        source = source.scenes[0]
    if isinstance(source, Scene) or (hasattr(source, "read_level") and hasattr(source, "channel_names")):
        image = _from_scene(source, channels, z, t)
    elif hasattr(source, "shape") and hasattr(source, "dtype"):
        image = _from_array(source, mpp, channel_names)
    else:
        raise InvalidRequestError(f"cannot write a {type(source).__name__}: a Scene, a Slide, an object "
                                  f"with the Scene read API or an array")
    if mpp is not None and image.mpp is None:
        image.mpp = _pair(mpp)
    if not 16 <= tile_size <= 4096 or tile_size % 16:
        raise InvalidRequestError(f"tile_size {tile_size}: a multiple of 16 from 16 to 4096")
    if fmt == "svs" and (image.samples != 3 or len(image.pages) != 1):
        raise InvalidRequestError("SVS holds one RGB plane: write OME-TIFF for channels, z or t")
    workers = workers or os.cpu_count() or 1
    folder = fmt in ("ome-zarr", "dicom")
    if folder and os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise InvalidRequestError(f"{path}: exists and is not an empty folder (a {fmt} output is a new "
                                  f"folder: remove it first)")
    if fmt == "ome-zarr" and zarr_format not in (2, 3):
        raise InvalidRequestError(f"zarr_format {zarr_format}: 3 (OME-NGFF 0.5) or 2 (0.4)")
    if shards is not None and (fmt != "ome-zarr" or zarr_format != 3 or not 1 <= shards <= 64):
        raise InvalidRequestError(f"shards={shards}: 1 to 64 tiles a side, for OME-Zarr on zarr v3 only")
    try:
        if fmt == "dicom":
            _dicom(image, path, tile_size, compression or "jpeg", quality, workers)
        elif fmt == "ome-zarr":
            _write_zarr(path, image, level_sizes(image.size, tile_size, levels), tile_size,
                        compression or "zstd", zarr_format, workers, progress, shards)
        else:
            _tiff_family(path, image, fmt, compression or "jpeg", quality, tile_size, levels, workers,
                         progress)
    except BaseException as e:
        # nothing half-written stays behind: a reader would take a truncated pyramid for a slide
        if folder:
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)
        if isinstance(e, (TilescopeError, KeyboardInterrupt)) or not isinstance(e, Exception):
            raise
        raise WriteError(f"{path}: writing failed: {type(e).__name__}: {e}") from e
    return path


def _tiff_family(path: str, image: _Image, fmt: str, compression: str, quality: int, tile_size: int,
                 levels: int | str, workers: int, progress: bool | None) -> None:
    """OME-TIFF, tiled TIFF or SVS: re-encoded from the pyramid maker, or passed through."""
    from .progress import bar

    if compression == "passthrough":
        lvls = _passthrough(image)
        total = sum(math.prod((-(-lv.size[0] // lv.tile[0]), -(-lv.size[1] // lv.tile[1]))) for lv in lvls)
        with bar(total, "tiles", enabled=progress) as b:
            for lv in lvls:
                lv.tiles = _counted(lv.tiles, b.update)
            _write_tiff(path, image, fmt, lvls, "jpeg", quality, lvls[0].tile[0])
        return
    codec = _codec(compression, quality, image.samples, image.dtype, fmt)
    sizes = level_sizes(image.size, tile_size, levels)
    total = len(image.pages) * sum(-(-w // tile_size) * -(-h // tile_size) for w, h in sizes)
    spool = _Spool(os.path.dirname(os.path.abspath(path)))
    try:
        with cf.ThreadPoolExecutor(workers, thread_name_prefix="tilescope-write") as pool, \
                bar(total, "tiles", enabled=progress) as b:
            pyramid = _Pyramid(image, tile_size, sizes, pool, workers, lambda *args: codec.encode(args[-1]),
                               spool.put, b.update)
            lvls = [_Level(sizes[0], (tile_size, tile_size), codec, pyramid.level0())]
            lvls += [_Level(s, (tile_size, tile_size), codec, spool.tiles(k))
                     for k, s in enumerate(sizes[1:], 1)]
            _write_tiff(path, image, fmt, lvls, compression, quality, tile_size)
    finally:
        spool.close()


def _dicom(image: _Image, path: str, tile: int, compression: str, quality: int, workers: int) -> None:
    """A DICOM WSI folder through wsidicomizer (tilescope.dicomize)."""
    if image.scene is None or image.samples != 3 or len(image.pages) != 1:
        raise InvalidRequestError("DICOM output is of an RGB slide's scene (wsidicomizer's brightfield "
                                  "pyramid); write OME-TIFF or OME-Zarr for channels, z, t or arrays")
    if compression not in ("jpeg", "jpeg2000", "passthrough"):
        raise InvalidRequestError(f"DICOM output: jpeg, jpeg2000 or passthrough, not {compression!r}")
    try:
        from .dicomize import write_dicom
    except ImportError as e:
        raise UnsupportedFormatError(f"DICOM output needs the [dicom] extra (wsidicomizer): {e}") from None
    os.makedirs(path, exist_ok=True)
    write_dicom(image.scene, path, tile_size=tile, compression=compression, quality=quality, workers=workers)


def _counted(tiles: Iterator[bytes], done: Callable[[int], None]) -> Iterator[bytes]:
    for data in tiles:
        done(1)
        yield data
