"""Philips TIFF exports: a tiled TIFF/BigTIFF pyramid whose Software starts with "Philips" and
whose first ImageDescription is a ``DPUfsImport`` XML document of DICOM-keyed attributes.

As openslide reads them: every tiled page is a level; a level's TIFF size is padded to whole tiles
(so levels are not proportional) and its true downsample comes from its pixel spacing in the XML
(``PixelDataRepresentation`` objects); tiles outside the scanned regions are left out (offset and
byte count 0) and read as background; mpp is 1000 x ``DICOM_PIXEL_SPACING`` (mm, row then column)
of the WSI image. Label and macro are the stripped pages described "Label"/"Macro", else the Base64
JPEGs of the ``LABELIMAGE``/``MACROIMAGE`` objects. Every attribute becomes a property, nested
sequences as ``NAME[i].SUB`` (openslide's ``philips.`` keys).
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import codecs
from ..engine import GridPlane, Layout
from ..errors import CorruptDataError
from ..model import AssociatedImage, Level, Scene, Slide
from ..source import PieceList
from . import parse_xml, tiff

if TYPE_CHECKING:
    from tifffile import TiffPage

    from ..engine import Options
    from ..source import ByteSource
    from . import Probe

NAME = "Philips"
OPENSLIDE_VENDOR = "philips"  # openslide's name for the format (detect_format, openslide.vendor)


def detect(probe: Probe) -> bool:
    if not probe.is_tiff:
        return False
    page = probe.first_page()
    desc = (page.description or "").lstrip()
    return (page.software or "").startswith("Philips") and desc.startswith("<") and \
        'ObjectType="DPUfsImport"' in desc[:512]


def _attributes(obj, prefix: str, out: dict, images: list) -> None:
    """Flatten a DataObject's attributes into ``out``; collect DPScannedImage objects."""
    for attr in obj.findall("Attribute"):
        name = attr.get("Name", "")
        array = attr.find("Array")
        if array is None:
            out[prefix + name] = (attr.text or "").strip()
            continue
        for i, child in enumerate(array.findall("DataObject")):
            if child.get("ObjectType") == "DPScannedImage":
                images.append(child)
            else:
                _attributes(child, f"{prefix}{name}[{i}].", out, images)


def _numbers(text: str | None) -> list[float]:
    try:
        return [float(v) for v in (text or "").replace('"', " ").split()]
    except ValueError:
        return []


class _Bytes(PieceList):
    """One piece held in memory (a Base64 JPEG from the XML)."""

    def __init__(self, data: bytes, label: str):
        super().__init__(1, label)
        self.data = data

    def fetch(self, source: ByteSource, index: int) -> bytes:
        return self.data


def open(probe: Probe, options: Options) -> Slide:
    first = probe.first_page()
    root = parse_xml(first.description, probe.path, "Philips XML")
    props: dict[str, str] = {}
    images: list = []
    _attributes(root, "", props, images)
    kinds: dict[str, Any] = {}
    for im in images:
        kind = next((a.text for a in im.findall("Attribute") if a.get("Name") == "PIM_DP_IMAGE_TYPE"),
                    None)
        kinds.setdefault((kind or "").strip(), im)
    wsi = kinds.get("WSI")
    if wsi is None:
        raise CorruptDataError(f"{probe.path}: Philips XML has no DPScannedImage with PIM_DP_IMAGE_TYPE WSI")
    _attributes(wsi, "", props, [])
    # the pyramid: every tiled page; a level's scale from its pixel spacing when the XML has one
    spacing: dict[int, list[float]] = {}
    for key, value in props.items():
        seq = "PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE"
        if key.startswith(seq + "[") and key.endswith("].DICOM_PIXEL_SPACING"):
            i = int(key.split("[", 1)[1].split("]", 1)[0])
            number = props.get(f"{seq}[{i}].PIIM_PIXEL_DATA_REPRESENTATION_NUMBER")
            sp = _numbers(value)
            if len(sp) == 2:
                spacing[int(number) if number and number.isdigit() else i] = sp
    pages = [p for p in probe.pages() if p.is_tiled]
    base_sp = spacing.get(0)
    w0, h0 = pages[0].imagewidth, pages[0].imagelength
    levels = []
    for i, page in enumerate(pages):
        size, tile, layout = _level(page, probe, f"level {i}")
        level_sp = spacing.get(i)
        if i and base_sp and level_sp:  # the padding is cut off: level 0's size over the true downsample
            scale = (level_sp[1] / base_sp[1], level_sp[0] / base_sp[0])
            size = (min(size[0], round(w0 / scale[0])), min(size[1], round(h0 / scale[1])))
        else:
            scale = (w0 / size[0], h0 / size[1])
        levels.append(Level(i, size, (scale[0] + scale[1]) / 2, tile, scale, layout))
    mpp_sp = _numbers(props.get("DICOM_PIXEL_SPACING"))
    mpp = (1000 * mpp_sp[1], 1000 * mpp_sp[0]) if len(mpp_sp) == 2 and min(mpp_sp) > 0 else None
    tags = tiff.tag_properties(first)
    tags.pop("ImageDescription", None)  # the XML: raw_metadata and the philips properties (as openslide)
    slide = Slide(probe.source, NAME, options, raw_metadata=first.description, vendor="philips",
                  properties={"philips": props, "tiff": tags},
                  icc_profile=tiff.icc_profile(first))
    scene = Scene(slide, name="main", levels=levels, channel_names=tiff.channel_names(first),
                  dtype=tiff.dtype_of(first, probe.path), mpp=mpp, **tiff.compression_of(first),
                  brightfield=tiff.is_brightfield(first))
    slide.set_contents([scene], _associated(probe, kinds))
    return slide


def _level(page: TiffPage, probe: Probe, label: str):
    layout = tiff.page_layout(page, probe, label, missing_ok=True)  # tiles outside the regions
    return (page.imagewidth, page.imagelength), layout.planes[(0, 0)][0].tile, layout


def _associated(probe: Probe, kinds) -> dict[str, AssociatedImage]:
    out = {}
    for page in probe.pages()[1:]:
        desc = (page.description or "").strip().lower()
        for name in ("label", "macro"):
            if not page.is_tiled and desc.startswith(name) and name not in out:
                out[name] = tiff.associated_image(page, probe, name)
    for name, kind in (("label", "LABELIMAGE"), ("macro", "MACROIMAGE")):
        im = kinds.get(kind)
        if name in out or im is None:
            continue
        text = next((a.text for a in im.findall("Attribute") if a.get("Name") == "PIM_DP_IMAGE_DATA"), "")
        try:
            data = base64.b64decode((text or "").strip(), validate=False)
            h, w = _jpeg_size(data)
        except (binascii.Error, ValueError) as e:
            raise CorruptDataError(f"{probe.path}: Philips {kind} PIM_DP_IMAGE_DATA is not a Base64 JPEG: "
                                   f"{e}") from None
        plane = GridPlane(_Bytes(data, name), codecs.jpeg(outcolorspace="RGB"), (w, h), (w, h))
        out[name] = AssociatedImage((w, h), Layout.single(plane), np.dtype(np.uint8), 3)
    return out


def _jpeg_size(data: bytes) -> tuple[int, int]:
    import simplejpeg

    if data[:2] != b"\xff\xd8":
        raise ValueError("no JPEG start marker")
    return simplejpeg.decode_jpeg_header(data)[:2]
