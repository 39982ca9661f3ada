"""Ventana / Roche BIF (and Ventana TIFF): a tiled BigTIFF whose camera tiles overlap.

The first page's XMP holds an ``iScan`` element (Magnification, ScanRes, scanner facts); pages
described ``level=N mag=M`` are the levels (downsample = level 0's mag / M). Level 0's XMP holds
``EncodeInfo``: per scanned area (``ImageInfo`` with ``AOIScanned``, its tile grid, position, and an
``AoiOrigin`` entry giving its first TIFF tile) the ``TileJointInfo`` overlaps between neighbouring
camera tiles (numbered bottom-up, every second row right to left). As openslide does, the
confidence-weighted mean overlap gives one tile advance for the slide; every camera tile is placed
at its area's position plus its grid position times that advance (areas' Pos-Y measured from the
bottom), later tiles drawn over earlier ones. A lower level's TIFF tile holds downsample x
downsample camera tiles, each placed by itself (engine crops). Files without EncodeInfo are plain
tiled pyramids. "Label Image" is the macro, "Thumbnail" the thumbnail.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import numpy as np

from ..engine import GridPlane, Layout, PlacedPlane
from ..errors import CorruptDataError
from ..model import Level, Scene, Slide
from ..source import ByteRanges
from . import parse_xml, tiff

if TYPE_CHECKING:
    from tifffile import TiffPage

    from ..engine import Options
    from . import Probe

NAME = "Ventana"
OPENSLIDE_VENDOR = "ventana"  # openslide's name for the format (detect_format, openslide.vendor)
_XMP = 700


def _xmp(page: TiffPage) -> str:
    tag = page.tags.get(_XMP)
    if tag is None:
        return ""
    v = tag.value
    return v.decode("utf-8", "replace") if isinstance(v, bytes | bytearray) else str(v)


def detect(probe: Probe) -> bool:
    return probe.is_tiff and "iScan" in _xmp(probe.first_page())


def _iscan(xml: str, where: str):
    root = parse_xml(xml, where, "Ventana iScan XMP")
    if root.tag == "iScan":
        return root
    node = root.find("iScan")
    if node is None:
        raise CorruptDataError(f"{where}: Ventana XMP has no <iScan> element")
    return node


def _num(el, attr: str, where: str, kind=int):
    try:
        return kind(float(el.get(attr)))
    except (TypeError, ValueError):
        raise CorruptDataError(f"{where}: Ventana <{el.tag}> has no valid {attr}") from None


def _areas(xml: str, tile: tuple[int, int], where: str):
    """Scanned areas as (x, y, start_col, start_row, cols, rows) and the tile advance (x, y)."""
    root = parse_xml(xml, where, "Ventana EncodeInfo XMP")
    infos = root.findall("SlideStitchInfo/ImageInfo")
    aoi = root.find("AoiOrigin")
    origins = list(aoi) if aoi is not None else []
    if not infos or len(infos) != len(origins):
        raise CorruptDataError(f"{where}: Ventana EncodeInfo has {len(infos)} <ImageInfo> but "
                               f"{len(origins)} <AoiOrigin> entries")
    tw, th = tile
    areas, sums = [], {"x": [0.0, 0], "y": [0.0, 0]}
    for info, origin in zip(infos, origins, strict=True):
        if not _num(info, "AOIScanned", where):
            continue
        if (_num(info, "Width", where), _num(info, "Height", where)) != (tw, th):
            raise CorruptDataError(f"{where}: Ventana <ImageInfo> tile size differs from the TIFF's "
                                   f"{tw}x{th}")
        ox, oy = _num(origin, "OriginX", where), _num(origin, "OriginY", where)
        if ox % tw or oy % th:
            raise CorruptDataError(f"{where}: Ventana area origin {ox},{oy} is not on the tile grid")
        cols, rows = _num(info, "NumCols", where), _num(info, "NumRows", where)
        for joint in info.findall("TileJointInfo"):
            conf = _num(joint, "Confidence", where)
            direction = joint.get("Direction")
            axis = "y" if direction == "UP" else "x" if direction in ("LEFT", "RIGHT") else None
            if axis is None:
                raise CorruptDataError(f"{where}: Ventana <TileJointInfo> has direction {direction!r}")
            sums[axis][0] -= conf * _num(joint, "OverlapX" if axis == "x" else "OverlapY", where, float)
            sums[axis][1] += conf
        areas.append([_num(info, "Pos-X", where, float), _num(info, "Pos-Y", where, float),
                      ox // tw, oy // th, cols, rows])
    adv = tuple(t + (s[0] / s[1] if s[1] else 0.0)
                for t, s in zip((tw, th), (sums["x"], sums["y"]), strict=True))
    # Pos-Y is measured from below every area to the area's bottom: flip to top-down
    heights = [(a[5] - 1) * adv[1] + th for a in areas]
    top = max((a[1] + h for a, h in zip(areas, heights, strict=True)), default=0)
    for a, h in zip(areas, heights, strict=True):
        a[1] = top - a[1] - h
    return areas, adv


def _placed_level(page: TiffPage, probe: Probe, areas, adv, ds: int, label: str):
    """A level's camera tiles as placed pieces."""
    base = tiff.page_planes(page, probe, label, missing_ok=True)[0]
    assert isinstance(base, GridPlane) and isinstance(base.pieces, ByteRanges)  # a TIFF page's tiles
    tw, th = base.tile
    nx = base.grid[0]
    pieces_idx, rects, crops = [], [], []
    sw, sh = tw // ds, th // ds
    for x, y, c0, r0, cols, rows in areas:
        for r in range(rows):
            for c in range(cols):
                col, row = c0 + c, r0 + r
                pieces_idx.append((row // ds) * nx + col // ds)
                crops.append(((col % ds) * sw, (row % ds) * sh))
                px, py = (x + c * adv[0]) / ds, (y + r * adv[1]) / ds
                rects.append((math.floor(px + 0.5), math.floor(py + 0.5), sw, sh))
    placed = np.asarray(rects, np.int64).reshape(-1, 4)
    offsets, counts = base.pieces.tables(probe.source)
    offsets, counts = offsets[pieces_idx], counts[pieces_idx]
    pieces = ByteRanges(offsets, counts, label, missing_ok=True)
    size = (int(placed[:, 0].max() + sw), int(placed[:, 1].max() + sh)) if len(placed) else (1, 1)
    full = np.tile(np.array([[tw, th]], np.int64), (len(placed), 1))
    return PlacedPlane(pieces, base.codec, size, (sw, sh), rects=placed, piece_sizes=full,
                       crops=np.asarray(crops, np.int64).reshape(-1, 2))


def open(probe: Probe, options: Options) -> Slide:
    pages = probe.pages()
    iscan = _iscan(_xmp(pages[0]), probe.path)
    props = {k: v for k, v in iscan.attrib.items() if v}
    levels, associated = [], {}
    for page in pages:
        desc = page.description or ""
        m = re.search(r"level=(\d+)", desc)
        if m and page.is_tiled:
            found = re.search(r"mag=([0-9.]+)", desc)
            levels.append((int(m.group(1)), float(found.group(1)) if found else None, page))
        elif desc.startswith(("Label Image", "Label_Image")) and "macro" not in associated:
            associated["macro"] = tiff.associated_image(page, probe, "macro")
        elif desc.startswith("Thumbnail") and "thumbnail" not in associated:
            associated["thumbnail"] = tiff.associated_image(page, probe, "thumbnail")
    if not levels:
        raise CorruptDataError(f"{probe.path}: Ventana file has no page described level=N")
    levels.sort(key=lambda t: t[0])
    page0 = levels[0][2]
    encode = _xmp(page0) if "EncodeInfo" in _xmp(page0) else ""
    specs = []
    if encode:
        tile = (page0.tilewidth, page0.tilelength)
        areas, adv = _areas(encode, tile, probe.path)
        mag0 = levels[0][1]
        for i, (_, level_mag, page) in enumerate(levels):
            ds = round(mag0 / level_mag) if mag0 and level_mag else 2 ** i
            plane = _placed_level(page, probe, areas, adv, ds, f"level {i}")
            specs.append(Level(i, plane.size, float(ds), plane.tile, (float(ds), float(ds)),
                               Layout.single(plane)))
    else:  # Ventana TIFF: no areas or overlaps
        for i, (_, _, page) in enumerate(levels):
            size, tile, layout = tiff.level_spec(page, probe, f"level {i}")
            s = (page0.imagewidth / size[0], page0.imagelength / size[1])
            specs.append(Level(i, size, (s[0] + s[1]) / 2, tile, s, layout))
    mpp = mag = None
    try:
        res = float(props.get("ScanRes", "nan"))
        mpp = (res, res) if res > 0 else None
        mag = float(props["Magnification"]) if "Magnification" in props else None
    except ValueError:
        pass
    raw = _xmp(pages[0]) + ("\n" + encode if encode else "")
    slide = Slide(probe.source, NAME, options, raw_metadata=raw, vendor="ventana",
                  properties={"ventana": props, "tiff": tiff.tag_properties(page0)},
                  comment=page0.description or None)
    scene = Scene(slide, name="main", levels=specs, channel_names=tiff.channel_names(page0),
                  dtype=tiff.dtype_of(page0, probe.path), mpp=mpp, magnification=mag,
                  **tiff.compression_of(page0), brightfield=True)
    slide.set_contents([scene], associated)
    return slide
