"""Leica SCN (SCN400, Aperio Versa exports): a BigTIFF whose first ImageDescription is an XML
``collection`` of images, each with a position and size on the glass (nanometres) and pyramid
``dimension``s pointing at TIFF directories.

The macro image (at (0, 0), as large as the collection) is the associated image ``macro``; every
other image is a Scene named by its ``name``, with its ``rect`` in its own pixels on the collection
(offset / pixel size), its levels from its dimensions (``r`` order; focal plane 0), fluorescence
channels (``c``) as channels. mpp from the view size over the pixel size; magnification from the
image's ``objective``; collection and image facts as ``leica`` properties (openslide's keys where
openslide has them: barcode decoded from Base64, objective, aperture, device, creation date); the
collection in the first main image's pixels is the slide's ``canvas``, the barcode its ``barcode``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from typing import TYPE_CHECKING

from ..engine import Layout, Plane
from ..errors import CorruptDataError
from ..model import AssociatedImage, Scene, Slide, make_levels
from . import parse_xml, tiff

if TYPE_CHECKING:
    from ..engine import Options
    from . import Probe

NAME = "SCN"
OPENSLIDE_VENDOR = "leica"  # openslide's name for the format (detect_format, openslide.vendor)
_NAMESPACES = ("http://www.leica-microsystems.com/scn/2010/10/01",
               "http://www.leica-microsystems.com/scn/2010/03/10")


def detect(probe: Probe) -> bool:
    if not probe.is_tiff:
        return False
    desc = probe.first_page().description or ""
    return any(ns in desc[:1024] for ns in _NAMESPACES)


def _int(el, attr: str, where: str) -> int:
    try:
        return int(el.get(attr))
    except (TypeError, ValueError):
        raise CorruptDataError(f"{where}: <{el.tag.rpartition('}')[2]}> has no valid {attr}") from None


def open(probe: Probe, options: Options) -> Slide:
    first = probe.first_page()
    root = parse_xml(first.description, probe.path, "Leica SCN XML")
    ns = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""
    where = f"{probe.path}: Leica SCN XML"
    coll = root.find(f"{ns}collection")
    if coll is None:
        raise CorruptDataError(f"{where}: no <collection> element")
    cw, ch = _int(coll, "sizeX", where), _int(coll, "sizeY", where)
    props: dict = {}
    barcode = (coll.findtext(f"{ns}barcode") or "").strip()
    if barcode:
        with contextlib.suppress(binascii.Error, UnicodeDecodeError):
            if "2010/10/01" in ns:  # Base64 in this namespace (openslide >= 3.4.1 decodes it too)
                barcode = base64.b64decode(barcode, validate=True).decode("utf-8")
        props["barcode"] = barcode
    pages = probe.pages()
    scenes: list[Scene] = []
    associated: dict[str, AssociatedImage] = {}
    slide = Slide(probe.source, NAME, options, raw_metadata=first.description, vendor="leica",
                  properties={"leica": props}, barcode=props.get("barcode"))
    for k, image in enumerate(coll.findall(f"{ns}image")):
        name = image.get("name") or f"Image {k}"
        iw = f"{where}: <image> {name!r}"
        view, pixels = image.find(f"{ns}view"), image.find(f"{ns}pixels")
        if view is None or pixels is None:
            raise CorruptDataError(f"{iw} has no <view> or <pixels> element")
        vw, vh = _int(view, "sizeX", iw), _int(view, "sizeY", iw)
        vx, vy = _int(view, "offsetX", iw), _int(view, "offsetY", iw)
        dims = []
        for d in pixels.findall(f"{ns}dimension"):
            if int(d.get("z", 0)):
                continue  # focal planes other than 0
            ifd = _int(d, "ifd", iw)
            if not 0 <= ifd < len(pages):
                raise CorruptDataError(f"{iw}: <dimension ifd=\"{ifd}\"> names a TIFF directory that does "
                                       f"not exist ({len(pages)} directories)")
            dims.append((_int(d, "r", iw), int(d.get("c", 0)), ifd))
        if not dims:
            raise CorruptDataError(f"{iw} has no <dimension> element")
        is_macro = vx == 0 and vy == 0 and vw == cw and vh == ch
        if is_macro:
            if "macro" not in associated:
                best = min(dims, key=lambda d: d[0])
                associated["macro"] = tiff.associated_image(pages[best[2]], probe, "macro")
            continue
        if not scenes:
            first_ifd = min(dims)[2]
        scenes.append(_scene(slide, probe, pages, image, ns, name, dims, (vx, vy, vw, vh), props, not scenes))
    if not scenes:
        raise CorruptDataError(f"{where}: no image besides the macro")
    # TIFF tags of the first main image's level 0 (as openslide); the collection in its pixels: the
    # canvas openslide composites the main images on
    tags = tiff.tag_properties(pages[first_ifd])
    tags.pop("ImageDescription", None)  # the XML: raw_metadata (openslide lists no tiff.ImageDescription)
    slide.properties["tiff"] = tags
    mpp = scenes[0].mpp
    canvas = (round(cw / (mpp[0] * 1000)), round(ch / (mpp[1] * 1000))) if mpp else None
    slide.set_contents(scenes, associated, canvas)
    return slide


def _scene(slide, probe: Probe, pages, image, ns, name, dims, view, props, first: bool) -> Scene:
    vx, vy, vw, vh = view
    channels = sorted({c for _, c, _ in dims})
    specs = []
    for r in sorted({r for r, _, _ in dims}):
        planes: list[Plane] = []
        cmap: list[tuple[int, int]] = []
        for c in channels:
            ifd = next((i for rr, cc, i in dims if rr == r and cc == c), None)
            if ifd is None:
                raise CorruptDataError(f"{probe.path}: Leica <image> {name!r} has no <dimension> r={r} "
                                       f"for channel c={c}")
            ps = tiff.page_planes(pages[ifd], probe, f"image {name!r} r={r} c={c}")
            cmap += [(len(planes) + m[0], m[1]) for m in tiff.page_layout(pages[ifd], probe, name).channel_map
                     if m is not None]
            planes += ps
        page = pages[next(i for rr, _, i in dims if rr == r)]
        specs.append(((page.imagewidth, page.imagelength), planes[0].tile, Layout({(0, 0): tuple(planes)},
                                                                                  tuple(cmap))))
    (w, h) = specs[0][0]
    nm_x, nm_y = vw / w, vh / h
    settings = image.find(f"{ns}scanSettings")
    objective = settings.findtext(f"{ns}objectiveSettings/{ns}objective") if settings is not None else None
    illum = settings.find(f"{ns}illuminationSettings") if settings is not None else None
    source = illum.findtext(f"{ns}illuminationSource") if illum is not None else None
    device = image.find(f"{ns}device")
    facts = {"objective": objective, "aperture": illum.findtext(f"{ns}numericalAperture") if illum is not None
             else None, "illumination-source": source, "creation-date": image.findtext(f"{ns}creationDate"),
             "device-model": device.get("model") if device is not None else None,
             "device-version": device.get("version") if device is not None else None}
    facts = {k: v.strip() for k, v in facts.items() if v}
    if first:  # as openslide: the first main image's facts are the slide's
        props.update(facts)
    mag = None
    with contextlib.suppress(TypeError, ValueError):
        mag = float(objective) if objective is not None else None
    page0 = pages[next(i for rr, _, i in dims if rr == min(r for r, _, _ in dims))]
    brightfield = (source or "brightfield").lower() == "brightfield" and len(channels) == 1
    names = tiff.channel_names(page0) if len(channels) == 1 else [f"C{c}" for c in channels]
    return Scene(slide, name=name, levels=make_levels(specs), channel_names=names, dtype=page0.dtype,
                 mpp=(nm_x / 1000, nm_y / 1000), magnification=mag, **tiff.compression_of(page0),
                 rect=(round(vx / nm_x), round(vy / nm_y), w, h), brightfield=brightfield)
