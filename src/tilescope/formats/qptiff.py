"""PerkinElmer / Akoya QPTIFF (Vectra, Polaris, PhenoImager): multichannel fluorescence pyramids.

Every page carries its own ``PerkinElmer-QPI-ImageDescription`` XML; its ``ImageType`` says what the
page is: ``FullResolution`` pages are the channels of level 0 (one page each, ``Name`` and ``Color``
in the XML), ``ReducedResolution`` pages the channels of the following levels (grouped by size),
``Thumbnail``, ``Overview`` and ``Label`` the associated images. Files without ImageType follow
tifffile's QPI page order (channels, thumbnail, halvings, macro, label). mpp comes from the TIFF
resolution (QPTIFF writes pixels per centimetre); magnification from ``Objective`` ("20x").
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING

from ..engine import Layout, Plane
from ..errors import CorruptDataError
from ..model import Scene, Slide, make_levels
from . import tiff

if TYPE_CHECKING:
    from tifffile import TiffPage

    from ..engine import Options
    from . import Probe

NAME = "QPTIFF"
OPENSLIDE_VENDOR = "qptiff"  # openslide's name for the format (detect_format, openslide.vendor)
_ASSOCIATED = {"thumbnail": "thumbnail", "overview": "macro", "macro": "macro", "label": "label"}


def detect(probe: Probe) -> bool:
    if not probe.is_tiff:
        return False
    page = probe.first_page()
    return "PerkinElmer-QPI-ImageDescription" in (page.description or "")[:1024]


def _fields(desc: str) -> dict[str, str]:
    import xml.etree.ElementTree as ET  # loaded by the formats that need it

    try:
        root = ET.fromstring(desc.encode("utf-8") if desc.lstrip().startswith("<?xml") else desc)
    except ET.ParseError:
        return {}
    return {el.tag: (el.text or "").strip() for el in root}


def _kind(page: TiffPage, fields: dict) -> str:
    kind = fields.get("ImageType", "").lower()
    if kind:
        return kind
    if not page.subfiletype:
        return "fullresolution"
    return "reducedresolution" if page.is_tiled else "associated"


def open(probe: Probe, options: Options) -> Slide:
    pages = probe.pages()
    infos = [(p, _fields(p.description or "")) for p in pages]
    if not infos[0][1]:
        raise CorruptDataError(f"{probe.path}: QPTIFF first page's PerkinElmer-QPI XML is malformed")
    base = [(p, f) for p, f in infos if _kind(p, f) == "fullresolution"]
    reduced = [(p, f) for p, f in infos if _kind(p, f) == "reducedresolution"]
    if not base:
        raise CorruptDataError(f"{probe.path}: QPTIFF has no FullResolution page")
    nc = len(base)
    groups: dict[tuple[int, int], list] = {}
    for p, _ in reduced:
        groups.setdefault((p.imagewidth, p.imagelength), []).append(p)
    specs = [_level([p for p, _ in base], probe, 0)]
    for i, (_, ps) in enumerate(sorted(groups.items(), key=lambda kv: -kv[0][0]), 1):
        if len(ps) != nc:
            raise CorruptDataError(f"{probe.path}: QPTIFF ReducedResolution level {i} has {len(ps)} pages, "
                                   f"not one per each of the {nc} channels")
        specs.append(_level(ps, probe, i))
    names = [f.get("Name") or f"C{c}" for c, (_, f) in enumerate(base)]
    colors = []
    for _, f in base:
        rgb = [int(v) for v in re.findall(r"\d+", f.get("Color", ""))][:3]
        colors.append("#" + "".join(f"{min(v, 255):02X}" for v in rgb) if len(rgb) == 3 else None)
    first = base[0][0]
    mpp = _mpp(first)
    mag = None
    with contextlib.suppress(ValueError, IndexError):
        mag = float(re.findall(r"(\d+(?:\.\d+)?)\s*[xX]", base[0][1].get("Objective", ""))[0])
    associated = {}
    for p, f in infos:
        name = _ASSOCIATED.get(_kind(p, f))
        if name and name not in associated:
            associated[name] = tiff.associated_image(p, probe, name)
    slide = Slide(probe.source, NAME, options, raw_metadata=first.description, vendor="akoya",
                  properties={"qptiff": base[0][1], "tiff": tiff.tag_properties(first)},
                  comment=first.description or None)
    scene = Scene(slide, name="main", levels=make_levels(specs), channel_names=names,
                  dtype=tiff.dtype_of(first, probe.path),
                  mpp=mpp, magnification=mag, **tiff.compression_of(first),
                  brightfield=nc == 1 and first.samplesperpixel >= 3, channel_colors=colors)
    slide.set_contents([scene], associated)
    return slide


def _level(pages, probe: Probe, i: int):
    planes: list[Plane] = []
    for c, p in enumerate(pages):
        planes += tiff.page_planes(p, probe, f"level {i} channel {c}")
    spp = pages[0].samplesperpixel
    cmap = tuple((c, s) for c in range(len(pages)) for s in range(spp)) if len(planes) == len(pages) else \
        tuple((k, 0) for k in range(len(planes)))
    layout = Layout({(0, 0): tuple(planes)}, cmap)
    return (pages[0].imagewidth, pages[0].imagelength), planes[0].tile, layout


def _mpp(page: TiffPage) -> tuple[float, float] | None:
    tags = page.tags
    unit = tags.get(296)  # ResolutionUnit (tags by code: a plain page has no names)
    um = {3: 1e4, 2: 25400.0}.get(int(unit.value) if unit is not None else 0)
    out = []
    for code in (282, 283):  # XResolution, YResolution
        tag = tags.get(code)
        if tag is None or um is None:
            return None
        num, den = tag.value
        if not num or not den:
            return None
        out.append(um * den / num)
    return out[0], out[1]
