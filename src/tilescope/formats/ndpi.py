"""Hamamatsu NDPI: each level (and focal plane) is one JPEG stored as a single TIFF strip, often
far larger than a JPEG decoder should take whole; restart markers cut it into intervals.

The driver describes every restart interval as a piece: its bytes (tifffile's intervals from the
McuStarts tag, or found by scanning the strip for RST markers when the tag is missing or wrong),
behind tifffile's copy of the JPEG header whose frame size is set to one interval (interval MCUs
x one MCU row), with EOI in place of the next RST marker, so each piece is a small complete JPEG
the engine decodes on its own (as openslide does). Files use NDPI's 64-bit extension of classic
TIFF (tifffile reads it with ``is_ndpi``; offsets above 4 GB come from the high-bits words and
McuStarts' high-bytes tag). SourceLens > 0 pages are levels, grouped by focal plane (tag 65424)
into z; SourceLens -1 is the macro. mpp from the resolution (cm), magnification from SourceLens,
the property map as ``hamamatsu`` properties (openslide's keys).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import numpy as np

from .. import codecs
from ..engine import GridPlane, Layout, Plane
from ..errors import CorruptDataError, UnsupportedFormatError
from ..model import Scene, Slide, make_levels
from ..source import ByteRanges
from . import tiff

if TYPE_CHECKING:
    from tifffile import TiffPage

    from ..engine import Options
    from ..source import ByteSource
    from . import Probe

NAME = "NDPI"
OPENSLIDE_VENDOR = "hamamatsu"  # openslide's name for the format (detect_format, openslide.vendor)
_FORMAT_FLAG, _SOURCE_LENS, _X_OFFSET, _Y_OFFSET, _FOCAL_PLANE = 65420, 65421, 65422, 65423, 65424
_REFERENCE, _PROPERTY_MAP = 65427, 65449


def detect(probe: Probe) -> bool:
    return probe.is_tiff and probe.head[:2] == b"II" and _FORMAT_FLAG in probe.first_page().tags


def _tag(page: TiffPage, code, default=None):
    t = page.tags.get(code)
    return default if t is None else t.value


class RestartIntervals(ByteRanges):
    """The restart intervals of one JPEG strip as pieces: header + interval data + EOI."""

    def __init__(self, starts: np.ndarray, stops: np.ndarray, header: bytes, label: str):
        super().__init__(starts, stops - starts, label)
        self.header = header

    def fetch(self, source: ByteSource, index: int) -> bytes:
        data = super().fetch(source, index)
        if data[-2:-1] != b"\xff":
            raise CorruptDataError(f"{source.path}: {self.label}: restart interval {index} does not "
                                   f"end at a marker")
        return self.header + data[:-1] + b"\xd9"  # the next RST marker (or EOI) becomes EOI


def _level_plane(page: TiffPage, source: ByteSource, where: str) -> Plane:
    from tifffile.tifffile import ndpi_jpeg_tile  # public function, not re-exported by the package

    w, h = page.imagewidth, page.imagelength
    offs, cnts = np.atleast_1d(_tag(page, 273)), np.atleast_1d(_tag(page, 279))
    if len(offs) != 1 or int(_tag(page, 259, 0)) != 7:
        raise UnsupportedFormatError(f"{where}: an NDPI level must be one JPEG strip")
    start, count = int(offs[0]), int(cnts[0])
    codec = codecs.jpeg(outcolorspace="RGB")
    if page.jpegheader is not None:  # tifffile found McuStarts and made the one-interval header
        header, th, tw = page.jpegheader, page.tilelength, page.tilewidth
    else:
        head = source.pread(start, min(count, 1 << 16))
        if head[:2] != b"\xff\xd8":
            raise CorruptDataError(f"{where}: the strip is not a JPEG")
        try:
            th, tw, header = ndpi_jpeg_tile(head)
        except (ValueError, struct.error):  # no restart markers (or not baseline): one piece
            return GridPlane(ByteRanges([start], [count], where), codec, (w, h), (w, h))
    n = -(-w // tw) * -(-h // th)
    starts = _interval_starts(page, source, start, count, len(header), n, where)
    stops = np.append(starts[1:], start + count)
    return GridPlane(RestartIntervals(starts, stops, header, where), codec, (w, h), (tw, th))


def _interval_starts(page: TiffPage, source: ByteSource, start: int, count: int, scan: int, n: int,
                     where: str) -> np.ndarray:
    """Absolute offsets of the n restart intervals: tifffile's (from McuStarts) when it has n entries
    that each follow an RST marker, else found by scanning the strip from the scan data at ``scan``
    once (files whose McuStarts tag is missing or wrong)."""
    starts = np.asarray(page.dataoffsets, np.int64)
    if page.jpegheader is not None and len(starts) == n and starts[0] == start + scan:
        def at_marker(i: int) -> bool:
            if not start + 2 <= starts[i] <= start + count:
                return False
            m = source.pread(int(starts[i]) - 2, 2)
            return m[0] == 0xFF and 0xD0 <= m[1] <= 0xD7
        if all(at_marker(i) for i in (1, n // 2, n - 1) if 0 < i < n):
            return starts
    data = source.pread(start, count)
    found, k = [start + scan], data.find(b"\xff", scan)
    while k != -1 and k + 1 < len(data) and len(found) < n:
        if 0xD0 <= data[k + 1] <= 0xD7:
            found.append(start + k + 2)
        k = data.find(b"\xff", k + 2)
    if len(found) != n:
        raise CorruptDataError(f"{source.path}: {where}: the NDPI JPEG at {start} has {len(found)} "
                               f"restart intervals, its size needs {n}")
    return np.asarray(found, np.int64)


def open(probe: Probe, options: Options) -> Slide:

    source = probe.source
    with probe.tifffile(is_ndpi=True) as tf:
        pages = tiff.pages(tf)
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
                (zi, 0): (_level_plane(by_z[z][li], source, f"level {li} z={z}"),)
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
                      properties={"hamamatsu": props, "tiff": tags}, comment=tags.get("ImageDescription"),
                      quickhash=tiff.quickhash1(pages[0], by_z[zs[0]][-1], probe))
        scene = Scene(slide, name="main", levels=make_levels(specs), channel_names=["R", "G", "B"],
                      dtype=np.uint8, mpp=mpp, magnification=props["SourceLens"], compression="jpeg",
                      num_z_slices=len(zs), brightfield=True)
    slide.set_contents([scene], associated)
    return slide


def _mpp(page: TiffPage) -> tuple[float, float] | None:
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
