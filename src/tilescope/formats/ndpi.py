"""Hamamatsu NDPI: each level (and focal plane) is one JPEG stored as a single TIFF strip, often
far larger than a JPEG decoder should take whole; restart markers cut it into intervals.

The driver describes every restart interval as a piece: its bytes (from the McuStarts tag, or by
scanning the strip for RST markers when the tag is missing or wrong), behind a copy of the JPEG
header whose frame size is set to one interval (interval MCUs x one MCU row) and with EOI in place
of the next RST marker, so each piece is a small complete JPEG the engine decodes on its own (as
openslide does). Files use NDPI's 64-bit extension of classic TIFF (tifffile reads it with
``is_ndpi``; offsets above 4 GB come from the high-bits words and McuStarts' high-bytes tag).
SourceLens > 0 pages are levels, grouped by focal plane (tag 65424) into z; SourceLens -1 is the
macro. mpp from the resolution (cm), magnification from SourceLens, the property map as
``hamamatsu`` properties (openslide's keys).
"""

from __future__ import annotations

import struct

import numpy as np

from .. import codecs
from ..engine import GridPlane, Layout, Plane
from ..errors import CorruptDataError, UnsupportedFormatError
from ..model import Scene, Slide, make_levels
from ..source import ByteRanges
from . import tiff

NAME = "NDPI"
OPENSLIDE_VENDOR = "hamamatsu"  # openslide's name for the format (detect_format, openslide.vendor)
_FORMAT_FLAG, _SOURCE_LENS, _X_OFFSET, _Y_OFFSET, _FOCAL_PLANE = 65420, 65421, 65422, 65423, 65424
_MCU_STARTS, _REFERENCE, _MCU_STARTS_HIGH, _PROPERTY_MAP = 65426, 65427, 65432, 65449


def detect(probe) -> bool:
    return probe.is_tiff and probe.head[:2] == b"II" and _FORMAT_FLAG in probe.tiff().pages.first.tags


def _tag(page, code, default=None):
    t = page.tags.get(code)
    return default if t is None else t.value


class _Header:
    """What of a level's JPEG header the pieces need: the header bytes up to the scan data, where
    the frame size sits in it, the MCU size and the restart interval."""

    def __init__(self, data: bytes, where: str):
        pos, sof, dri, mcu = 2, None, 0, (8, 8)
        if data[:2] != b"\xff\xd8":
            raise CorruptDataError(f"{where}: the strip is not a JPEG")
        while pos + 4 <= len(data):
            marker, length = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2):
                sof = pos + 5
                n = data[pos + 9]
                hs = [data[pos + 11 + 3 * c] >> 4 for c in range(n)]
                vs = [data[pos + 11 + 3 * c] & 15 for c in range(n)]
                mcu = (8 * max(hs), 8 * max(vs)) if n > 1 else (8, 8)
            elif marker == 0xDD:
                dri = int.from_bytes(data[pos + 4:pos + 6], "big")
            pos += 2 + length
            if marker == 0xDA:
                break
        else:
            raise CorruptDataError(f"{where}: no start of scan in the JPEG header")
        if sof is None:
            raise CorruptDataError(f"{where}: no frame header (SOF) in the JPEG")
        self.bytes, self.sof, self.dri, self.mcu, self.end = data[:pos], sof, dri, mcu, pos
        self.height, self.width = struct.unpack(">HH", data[sof:sof + 4])

    def tile_header(self, tw: int, th: int) -> bytes:
        b = bytearray(self.bytes)
        b[self.sof:self.sof + 4] = struct.pack(">HH", th, tw)
        return bytes(b)


class RestartIntervals(ByteRanges):
    """The restart intervals of one JPEG strip as pieces: header + interval data + EOI."""

    def __init__(self, starts: np.ndarray, stops: np.ndarray, header: bytes, label: str):
        super().__init__(starts, stops - starts, label)
        self.header = header

    def fetch(self, source, index: int) -> bytes:
        data = super().fetch(source, index)
        if data[-2:-1] != b"\xff":
            raise CorruptDataError(f"{source.path}: {self.label}: restart interval {index} does not "
                                   f"end at a marker")
        return self.header + data[:-1] + b"\xd9"  # the next RST marker (or EOI) becomes EOI


def _level_plane(page, probe, source, where: str) -> Plane:
    w, h = page.imagewidth, page.imagelength
    # the strip itself (tifffile presents NDPI restart intervals as tiles; we read them our way)
    offs, cnts = np.atleast_1d(_tag(page, 273)), np.atleast_1d(_tag(page, 279))
    if len(offs) != 1 or int(_tag(page, 259, 0)) != 7:
        raise UnsupportedFormatError(f"{where}: an NDPI level must be one JPEG strip")
    start, count = int(offs[0]), int(cnts[0])
    hdr = _Header(source.pread(start, min(count, 1 << 16)), where)
    codec = codecs.jpeg(outcolorspace="RGB")
    (mw, mh), per_row = hdr.mcu, -(-w // hdr.mcu[0])
    if not hdr.dri or per_row % hdr.dri:  # no usable restart markers: the whole strip is one piece
        return GridPlane(ByteRanges([start], [count], where), codec, (w, h), (w, h))
    tw, th = hdr.dri * mw, mh
    n = per_row // hdr.dri * -(-h // mh)
    starts = _mcu_starts(page, source, start, count, hdr, n)
    stops = np.append(starts[1:], start + count)
    return GridPlane(RestartIntervals(starts, stops, hdr.tile_header(tw, th), where), codec, (w, h), (tw, th))


def _mcu_starts(page, source, start: int, count: int, hdr: _Header, n: int) -> np.ndarray:
    """Absolute offsets of the n restart intervals: McuStarts (+ high bytes) when it has n entries
    that each follow an RST marker, else found by scanning the strip once."""
    rec = _tag(page, _MCU_STARTS)
    if rec is not None and np.size(rec) == n:
        rel = np.asarray(rec, np.int64).reshape(-1)
        high = _tag(page, _MCU_STARTS_HIGH)
        if high is not None and np.size(high) == n:
            rel = rel + (np.asarray(high, np.int64).reshape(-1) << 32)
        starts = start + rel
        probe_idx = [i for i in (1, n // 2, n - 1) if 0 < i < n]
        def at_marker(i):
            m = source.pread(int(starts[i]) - 2, 2)
            return m[0] == 0xFF and 0xD0 <= m[1] <= 0xD7
        if starts[0] == start + hdr.end and all(at_marker(i) for i in probe_idx):
            return starts
    data = source.pread(start, count)
    found, k = [start + hdr.end], data.find(b"\xff", hdr.end)
    while k != -1 and k + 1 < len(data) and len(found) < n:
        if 0xD0 <= data[k + 1] <= 0xD7:
            found.append(start + k + 2)
        k = data.find(b"\xff", k + 2)
    if len(found) != n:
        raise CorruptDataError(f"{source.path}: NDPI JPEG at {start} has {len(found)} restart "
                               f"intervals, its size needs {n}")
    return np.asarray(found, np.int64)


def open(probe, options) -> Slide:
    import tifffile

    source = probe.source
    with tifffile.TiffFile(probe.path, is_ndpi=True) as tf:
        pages = list(tf.pages)
        levels: dict[int, list] = {}
        macro = None
        for page in pages:
            lens = _tag(page, _SOURCE_LENS)
            if lens is None:
                continue
            if lens > 0:
                levels.setdefault(int(_tag(page, _FOCAL_PLANE, 0)), []).append(page)
            elif lens == -1 and macro is None:
                macro = page
        if not levels:
            raise CorruptDataError(f"{probe.path}: NDPI has no page with SourceLens > 0")
        zs = sorted(levels)
        by_z = {z: sorted(ps, key=lambda p: -p.imagewidth) for z, ps in levels.items()}
        sizes = [(p.imagewidth, p.imagelength) for p in by_z[zs[0]]]
        for z in zs[1:]:
            if [(p.imagewidth, p.imagelength) for p in by_z[z]] != sizes:
                raise CorruptDataError(f"{probe.path}: NDPI focal plane {z} has other level sizes than "
                                       f"plane {zs[0]}")
        specs = []
        for li, size in enumerate(sizes):
            planes: dict[tuple[int, int], tuple[Plane, ...]] = {
                (zi, 0): (_level_plane(by_z[z][li], probe, source, f"level {li} z={z}"),)
                for zi, z in enumerate(zs)}
            tile = planes[(0, 0)][0].tile
            specs.append((size, tile, Layout(planes, tuple((0, s) for s in range(3)))))
        first = by_z[zs[0]][0]
        props = {"SourceLens": float(_tag(first, _SOURCE_LENS)), "Reference": _tag(first, _REFERENCE),
                 "XOffsetFromSlideCentre": _tag(first, _X_OFFSET),
                 "YOffsetFromSlideCentre": _tag(first, _Y_OFFSET)}
        for line in str(_tag(pages[0], _PROPERTY_MAP, "")).split("\r\n"):
            key, sep, value = line.partition("=")
            if sep and key and value:
                props[key] = value
        props = {k: v for k, v in props.items() if v is not None}
        associated = {"macro": tiff.associated_image(macro, probe, "macro")} if macro is not None else {}
        mpp = _mpp(first)
        tags = tiff.tag_properties(first)
        slide = Slide(source, NAME, options, vendor="hamamatsu",
                      properties={"hamamatsu": props, "tiff": tags}, comment=tags.get("ImageDescription"))
        scene = Scene(slide, name="main", levels=make_levels(specs), channel_names=["R", "G", "B"],
                      dtype=np.uint8, mpp=mpp, magnification=props["SourceLens"], compression="jpeg",
                      num_z_slices=len(zs), brightfield=True)
    slide._set_contents([scene], associated)
    return slide


def _mpp(page) -> tuple[float, float] | None:
    unit = _tag(page, 296)
    if unit is None or int(unit) != 3:
        return None
    out = []
    for code in (282, 283):
        v = _tag(page, code)
        if not v or not v[0] or not v[1]:
            return None
        out.append(1e4 * v[1] / v[0])
    return out[0], out[1]
