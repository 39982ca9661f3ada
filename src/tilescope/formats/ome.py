"""OME-TIFF: each OME Image is a Scene (or an associated image when named label/macro/thumbnail).

tifffile maps the OME-XML's TiffData onto pages and SubIFD pyramids (``TiffFile.series``); this
driver turns each page into planes at its (c, z, t) and reads names, physical sizes and the
objective from the XML itself.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import numpy as np
from tifffile import TiffPage

from ..engine import Layout
from ..errors import CorruptDataError, UnsupportedFormatError
from ..model import Scene, Slide, make_levels
from . import parse_xml, tiff

if TYPE_CHECKING:
    from ..engine import Options
    from . import Probe

NAME = "OME"
OPENSLIDE_VENDOR = "ome-tiff"  # openslide's name for the format (detect_format, openslide.vendor)

_ASSOCIATED = {"label": "label", "label image": "label", "macro": "macro", "macro image": "macro",
               "overview": "macro", "thumbnail": "thumbnail"}
_LENGTH_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "nm": 1e-3, "pm": 1e-6, "Å": 1e-4}
_TIME_S = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}


def detect(probe: Probe) -> bool:
    if not probe.is_tiff:
        return False
    desc = probe.first_page().description or ""
    return "<OME" in desc[:4096] and desc.rstrip().endswith("OME>")


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(el, name: str) -> list:
    return [c for c in el if _local(c.tag) == name]


def _quantity(el, attr: str, units: dict[str, float], default_unit: str) -> float | None:
    v = el.get(attr)
    if v is None:
        return None
    try:
        x = float(v) * units[el.get(attr + "Unit", default_unit)]
    except (ValueError, KeyError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def _objectives(root) -> dict[str, float]:
    out = {}
    for inst in _children(root, "Instrument"):
        for obj in _children(inst, "Objective"):
            mag = obj.get("NominalMagnification")
            if mag and obj.get("ID"):
                with contextlib.suppress(ValueError):
                    out[obj.get("ID")] = float(mag)
    return out


def open(probe: Probe, options: Options) -> Slide:
    tf = probe.tiff()
    xml = tf.pages.first.description
    root = parse_xml(xml, probe.path, "OME-XML")
    images = _children(root, "Image")
    series = [s for s in tf.series if s.kind.lower() == "ome"]
    if not images or len(series) != len(images):
        raise CorruptDataError(f"{probe.path}: OME-XML describes {len(images)} Image element(s) but "
                               f"{len(series)} could be mapped onto the TIFF's pages")
    objectives = _objectives(root)
    slide = Slide(probe.source, NAME, options, raw_metadata=xml, vendor="ome",
                  properties={"tiff": tiff.tag_properties(tf.pages.first)},
                  icc_profile=tiff.icc_profile(tf.pages.first))
    scenes, associated = [], {}
    for i, (image, s) in enumerate(zip(images, series, strict=True)):
        name = image.get("Name") or f"Image:{i}"
        label = _ASSOCIATED.get(name.strip().lower())
        if label and label not in associated and len(s.pages) == 1 and isinstance(s.pages[0], TiffPage):
            associated[label] = tiff.associated_image(s.pages[0], probe, label)
            continue
        scenes.append(_scene(slide, probe, image, s, name, objectives))
    if not scenes:
        raise CorruptDataError(f"{probe.path}: OME-XML has no image besides associated ones")
    slide.set_contents(scenes, associated)
    return slide


def _scene(slide, probe: Probe, image, series, name, objectives) -> Scene:
    pixels = _children(image, "Pixels")
    if not pixels:
        raise CorruptDataError(f"{probe.path}: OME Image {name!r} has no Pixels element")
    px = pixels[0]
    axes = series.axes
    plane_axes = [a for a in axes if a not in "YXS"]
    for a in plane_axes:
        if a not in "CZT" and series.shape[axes.index(a)] > 1:
            raise UnsupportedFormatError(f"{probe.path}: OME Image {name!r} has an unsupported axis {a!r}")
    dims = {a: series.shape[axes.index(a)] for a in plane_axes}
    nc, nz, nt = dims.get("C", 1), dims.get("Z", 1), dims.get("T", 1)
    key = series.keyframe
    spp = key.samplesperpixel
    specs = []
    for li, level in enumerate(series.levels):
        planes: dict[tuple[int, int], list] = {}
        pages = level.pages
        if len(pages) != math.prod(dims.values()) or any(p is None for p in pages):
            raise CorruptDataError(f"{probe.path}: OME Image {name!r} level {li} lacks some of its "
                                   f"{math.prod(dims.values())} planes")
        for pi, page in enumerate(pages):
            idx = dict(zip(plane_axes, np.unravel_index(pi, [dims[a] for a in plane_axes]), strict=True))
            c, z, t = int(idx.get("C", 0)), int(idx.get("Z", 0)), int(idx.get("T", 0))
            label = f"scene {name!r} level {li} c={c} z={z} t={t}"
            planes.setdefault((z, t), [None] * nc)[c] = tiff.page_planes(page, probe, label)
        # channel c*spp + s is sample s of page c; a planar-separate page gives one plane per sample
        flat = {k: tuple(p for ps in v for p in ps) for k, v in planes.items()}
        if spp > 1 and len(flat[(0, 0)]) == nc * spp:
            cmap = tuple((c * spp + s, 0) for c in range(nc) for s in range(spp))
        else:
            cmap = tuple((c, s) for c in range(nc) for s in range(spp))
        kf = level.keyframe
        first = flat[(0, 0)][0]
        specs.append(((kf.imagewidth, kf.imagelength), first.tile, Layout(flat, cmap)))
    channel_names = []
    chans = _children(px, "Channel")
    for c in range(nc):
        el = chans[c] if c < len(chans) else None
        base = (el.get("Name") if el is not None else None) or f"C{c}"
        if spp == 1:
            channel_names.append(base)
        else:
            rgb = spp <= 4 and tiff.is_brightfield(key)
            names = ["R", "G", "B", "A"] if rgb else [str(s) for s in range(spp)]
            channel_names.extend(names[:spp] if nc == 1 else [f"{base}:{n}" for n in names[:spp]])
    mx = _quantity(px, "PhysicalSizeX", _LENGTH_UM, "µm")
    my = _quantity(px, "PhysicalSizeY", _LENGTH_UM, "µm")
    mag = None
    for os_ in _children(image, "ObjectiveSettings"):
        mag = objectives.get(os_.get("ID"))
    return Scene(slide, name=name, levels=make_levels(specs), channel_names=channel_names, dtype=key.dtype,
                 mpp=(mx, my) if mx and my else None, magnification=mag,
                 **tiff.compression_of(key), num_z_slices=nz, num_t_frames=nt,
                 z_resolution=_quantity(px, "PhysicalSizeZ", _LENGTH_UM, "µm"),
                 t_resolution=_quantity(px, "TimeIncrement", _TIME_S, "s"),
                 brightfield=spp > 1 and tiff.is_brightfield(key))
