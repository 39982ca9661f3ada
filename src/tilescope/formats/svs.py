"""Aperio SVS: a TIFF whose first ImageDescription starts with "Aperio".

Layout by Aperio's conventions (as openslide reads them): every tiled page is a pyramid level; the
second page, when stripped, is the thumbnail; later stripped pages are the label and the macro,
told apart by their description ("label", "macro") or else NewSubfileType (1 label, 9 macro).
The description's ``key = value`` pairs become properties; MPP and AppMag give mpp and
magnification, read tolerantly (decimal commas, empty values, truncated text).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..model import Scene, Slide, make_levels
from . import tiff

if TYPE_CHECKING:
    from tifffile import TiffPage

    from ..engine import Options
    from . import Probe

NAME = "SVS"
OPENSLIDE_VENDOR = "aperio"  # openslide's name for the format (detect_format, openslide.vendor)


def detect(probe: Probe) -> bool:
    if not probe.is_tiff:
        return False
    desc = probe.first_page().description or ""
    return desc.startswith("Aperio")


def parse_description(desc: str) -> dict[str, str]:
    """Aperio ImageDescription -> {"Header": first part, key: value, ...} (values as text)."""
    parts = desc.split("|")
    props = {"Header": parts[0].strip()}
    for item in parts[1:]:
        key, sep, value = item.partition("=")
        key = key.strip()
        if sep and key:
            props[key] = value.strip()
    return props


def number(text: str | None) -> float | None:
    """A positive finite number from Aperio text ("0.4990", "0,4990"), else None."""
    if not text:
        return None
    try:
        v = float(text.strip().replace(",", "."))
    except ValueError:
        return None
    return v if math.isfinite(v) and v > 0 else None


def _associated_name(index: int, page: TiffPage) -> str | None:
    if index == 1:
        return "thumbnail"
    desc = (page.description or "").lower()
    for name in ("label", "macro"):
        if name in desc:
            return name
    return {1: "label", 9: "macro"}.get(int(page.subfiletype))


def open(probe: Probe, options: Options) -> Slide:
    pages = probe.pages()
    p0 = pages[0]
    desc = p0.description or ""
    props = parse_description(desc)
    props.pop("Header")  # the description's first part: in comment and raw_metadata, not a key/value
    level_pages = [p for p in pages if tiff.is_tiled(p)]
    slide = Slide(probe.source, NAME, options, raw_metadata=desc, vendor="aperio",
                  properties={"aperio": props, "tiff": tiff.tag_properties(p0)},
                  icc_profile=tiff.icc_profile(p0), comment=desc or None,
                  quickhash=tiff.quickhash1(p0, level_pages[-1], probe) if level_pages else None)
    levels = make_levels([tiff.level_spec(p, probe, f"level {i}") for i, p in enumerate(level_pages)])
    associated = {}
    for i, page in enumerate(pages):
        if tiff.is_tiled(page):
            continue
        name = _associated_name(i, page)
        if name and name not in associated:
            associated[name] = tiff.associated_image(page, probe, name)
    mpp = number(props.get("MPP"))
    scene = Scene(slide, name="main", levels=levels, channel_names=tiff.channel_names(p0),
                  dtype=tiff.dtype_of(p0, probe.path),
                  mpp=(mpp, mpp) if mpp else None, magnification=number(props.get("AppMag")),
                  **tiff.compression_of(p0), brightfield=True)
    slide.set_contents([scene], associated)
    return slide
