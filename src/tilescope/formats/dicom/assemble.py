"""A slide from its instances, for files and DICOMweb alike: levels, optical paths and focal
planes, derived channels (segmentations, parametric maps), associated images, properties."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ...engine import Layout
from ...errors import CorruptDataError
from ...model import AssociatedImage, Slide, make_levels
from .frames import slide_axes
from .instance import (
    LABELMAP_SOP_CLASS,
    MALFORMED,
    PIXELS,
    SEGMENTATIONS,
    Instance,
    compression,
    segments,
)
from .scene import DicomScene

if TYPE_CHECKING:
    from pydicom import Dataset

    from ...model import LevelSpec

_NOT_TEXT = {"OB", "OW", "OF", "OD", "OL", "OV", "UN", "AT"}  # binary values: not properties
_NOT_PROPERTIES = {"PerFrameFunctionalGroupsSequence", "FileMetaInformationGroupLength"}  # bulky or noise


def attributes(ds: Dataset, prefix: str = "") -> dict[str, str]:
    """A dataset's attributes as text under openslide's names: ``Keyword``, ``Keyword[i]`` for
    each value of a multi-valued one, ``Sequence[i].Keyword`` inside sequences (the file meta
    group too, for files). Binary values, pixel data and per-frame groups are left out; nothing
    deferred is read."""
    from pydicom.datadict import keyword_for_tag
    from pydicom.valuerep import DSdecimal, DSfloat

    def text(v) -> str:
        if v is None:
            return ""
        if isinstance(v, float) and not isinstance(v, (DSfloat, DSdecimal)):  # FL / FD
            return f"{float(v):.17g}"  # as openslide prints them
        return str(v)

    out: dict[str, str] = {}
    meta = getattr(ds, "file_meta", None) if not prefix else None
    for source in ((meta,) if meta is not None else ()) + (ds,):
        for tag in list(source.keys()):
            raw = source.get_item(tag, keep_deferred=True)
            keyword = keyword_for_tag(tag)
            if not keyword or raw.VR in _NOT_TEXT or keyword in _NOT_PROPERTIES or \
                    tag in (t for t, _ in PIXELS):
                continue
            elem = source[tag]
            name = prefix + keyword
            if elem.VR == "SQ":
                for i, item in enumerate(elem.value or []):
                    out.update(attributes(item, f"{name}[{i}]."))
            elif elem.VM > 1:
                out.update({f"{name}[{i}]": text(v) for i, v in enumerate(elem.value)})
            else:
                out[name] = text(elem.value)
    return out


def header_text(ds: Dataset) -> str:
    """The dataset as text without its pixel data (printing that would read it all)."""
    import pydicom

    return str(pydicom.Dataset({t: ds[t] for t in list(ds.keys()) if t not in (p for p, _ in PIXELS)}))


def volume_levels(instances: list[Instance], none: str) -> list[list[Instance]]:
    """The pyramid's instances by level, largest first (a level's concatenated parts in order):
    VOLUME instances, and a THUMBNAIL smaller than all of them that shows the whole slide (it
    extends the pyramid downwards; it stays the associated image ``thumbnail`` too)."""
    volumes: dict[tuple[int, int], list[Instance]] = defaultdict(list)
    for inst in instances:
        if inst.flavor == "VOLUME":
            volumes[inst.size].append(inst)
    if not volumes:
        raise CorruptDataError(none)
    (w0, h0), smallest = max(volumes), min(volumes)
    for inst in instances:
        (w, h), d = inst.size, w0 / inst.size[0]
        if inst.flavor == "THUMBNAIL" and w < smallest[0] and h < smallest[1] and abs(h0 / h - d) <= 0.02 * d:
            volumes[inst.size].append(inst)
            break
    return [sorted(volumes[size], key=lambda i: int(i.ds.get("ConcatenationFrameOffsetNumber", 0) or 0))
            for size in sorted(volumes, key=lambda s: -s[0])]


def assemble(slide: Slide, levels: list[list[Instance]], instances: list[Instance],
             derived: list[Instance], make_level: Callable[[list[Instance], str], LevelSpec]) -> Slide:
    """The slide's scene (levels, optical paths, focal planes, derived layers) and associated
    images, from files or a DICOMweb series alike: ``make_level(instances, label)`` gives a level's
    (size, tile, layout)."""
    try:
        return _assemble(slide, levels, instances, derived, make_level)
    except MALFORMED as e:
        raise CorruptDataError(f"{slide.path}: incomplete or malformed DICOM metadata "
                               f"({type(e).__name__}: {e})") from None


def _assemble(slide: Slide, levels, instances, derived, make_level) -> Slide:
    base = levels[0][0].ds
    axes = slide_axes(levels)
    specs = [make_level(insts, f"level {li}", axes) for li, insts in enumerate(levels)]
    associated = {}
    for flavor, name in (("LABEL", "label"), ("OVERVIEW", "macro"), ("THUMBNAIL", "thumbnail")):
        inst = next((i for i in instances if i.flavor == flavor), None)
        if inst is not None:
            size, _, layout = make_level([inst], name)
            associated[name] = AssociatedImage(size, layout, np.dtype(np.uint8), len(layout.channel_map),
                                               icc_profile_of(inst.ds))
    spp = int(base.SamplesPerPixel)
    mpp = objective = None
    with contextlib.suppress(AttributeError, IndexError, KeyError, TypeError):
        sp = base.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        mpp = (float(sp[1]) * 1000, float(sp[0]) * 1000)
    with contextlib.suppress(AttributeError, IndexError, TypeError, ValueError):
        objective = float(axes.items[0].ObjectiveLensPower)
    names = channel_names(axes.items, spp)
    info = _optical_paths(axes.items, names)
    image_channels = len(names)
    dtypes = [levels[0][0].dtype] * image_channels
    specs, unplaced = _with_derived(specs, derived, make_level, names, dtypes, info)
    scene = DicomScene(slide, ds=base, focal_planes=tuple(axes.planes), name="main",
                       levels=make_levels(specs), channel_names=names,
                       dtype=levels[0][0].dtype, mpp=mpp, magnification=objective,
                       compression=compression(levels[0][0].syntax), compression_raw=levels[0][0].syntax,
                       num_z_slices=len(axes.planes),
                       z_resolution=axes.spacing, brightfield=spp == 3 and image_channels == 3,
                       image_channels=image_channels, channel_dtypes=dtypes, channel_info=info)
    if unplaced:
        slide.properties["dicom"]["unplaced"] = unplaced
    slide.set_contents([scene], associated)
    return slide


def _optical_paths(paths: list, names: list[str]) -> list[dict]:
    """Each image channel's optical path: identifier, description, illumination wavelength (nm)."""
    per = max(1, len(names) // max(1, len(paths)))
    out = []
    for c, name in enumerate(names):
        p = paths[c // per] if paths else {}
        wavelength = p.get("IlluminationWaveLength") if paths else None
        out.append({"name": name, "type": "OPTICAL_PATH",
                    "identifier": str(p.get("OpticalPathIdentifier", "")),
                    "description": str(p.get("OpticalPathDescription", "")),
                    "wavelength": float(wavelength) if wavelength is not None else None})
    return out


def _derived_channels(inst: Instance) -> list[dict]:
    """A segmentation's segments (in segment number order; a label map's segment numbers first)
    or a parametric map, as channel info."""
    ds = inst.ds
    uid = str(ds.SOPInstanceUID)
    if inst.sop_class in SEGMENTATIONS:
        out: list[dict[str, Any]] = []
        if inst.sop_class == LABELMAP_SOP_CLASS:
            label = str(ds.get("ContentLabel") or "labelmap")
            out.append({"name": label, "type": "LABELMAP", "label": label,
                        "description": str(ds.get("ContentDescription", "")),
                        "segments": {int(q.SegmentNumber): str(q.get("SegmentLabel", ""))
                                     for q in segments(ds)},
                        "instance": uid})
        for seg in segments(ds):
            kind = seg.get("SegmentedPropertyTypeCodeSequence")
            out.append({"name": str(seg.get("SegmentLabel") or f"segment {seg.SegmentNumber}"),
                        "type": "SEGMENT", "number": int(seg.SegmentNumber),
                        "label": str(seg.get("SegmentLabel", "")),
                        "description": str(seg.get("SegmentDescription", "")),
                        "property_type": str(kind[0].CodeMeaning) if kind else "",
                        "segmentation_type": str(ds.get("SegmentationType", "")),
                        "max_fractional_value": int(ds.get("MaximumFractionalValue", 1) or 1),
                        "instance": uid})
        return out
    unit = ""
    with contextlib.suppress(AttributeError, IndexError, KeyError, TypeError):
        mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        unit = str(mapping.MeasurementUnitsCodeSequence[0].CodeMeaning)
    label = str(ds.get("ContentLabel") or "parameter")
    return [{"name": label, "type": "PARAMETER", "label": label,
             "description": str(ds.get("ContentDescription", "")), "unit": unit, "instance": uid}]


def _with_derived(specs, derived: list[Instance], make_level, names: list[str], dtypes: list, info: list):
    """Level specs with segmentations and parametric maps as extra channels at the level of their
    size (absent at others); appends their names, dtypes and info. Returns (specs, instance UIDs
    that fit no level)."""
    extra: list[list] = [[] for _ in specs]  # per level: layouts of the derived instances there
    order: list[tuple[int, int]] = []  # (level, index in extra[level]) per derived instance, in channel order
    unplaced = []

    def rank(i):  # segmentations, then parametric maps, by series
        return (i.sop_class not in SEGMENTATIONS, int(i.ds.get("SeriesNumber", 0) or 0),
                str(i.ds.SOPInstanceUID))
    for inst in sorted(derived, key=rank):
        li = next((k for k, sp in enumerate(specs) if sp[0] == inst.size), None)
        if li is None:
            unplaced.append(str(inst.ds.SOPInstanceUID))
            continue
        layout = make_level([inst], f"{inst.ds.get('Modality', 'derived')} {inst.ds.SOPInstanceUID}")[2]
        for ch, (p, _) in zip(_derived_channels(inst), layout.channel_map, strict=False):
            name, k = ch["name"], 2
            while ch["name"] in names:  # names stay unique: read(channels=name) finds one
                ch["name"], k = f"{name} ({k})", k + 1
            names.append(ch["name"])
            dtypes.append(layout.planes[0, 0][p].codec.dtype)
            info.append(ch)
        order.append((li, len(extra[li])))
        extra[li].append(layout)
    if not order:
        return specs, unplaced
    out = []
    for li, (size, tile, layout) in enumerate(specs):
        maps, planes = list(layout.channel_map), {zt: list(ps) for zt, ps in layout.planes.items()}
        for lj, k in order:
            lay = extra[lj][k]
            if lj != li:
                maps += [None] * len(lay.channel_map)
                continue
            for ps in planes.values():
                ps += lay.planes[0, 0]
            first = len(next(iter(planes.values()))) - len(lay.planes[0, 0])
            maps += [(first + p, s) for p, s in lay.channel_map]
        out.append((size, tile, Layout({zt: tuple(ps) for zt, ps in planes.items()}, tuple(maps))))
    return out, unplaced


def icc_profile_of(ds: Dataset) -> bytes | None:
    try:
        return bytes(ds.OpticalPathSequence[0].ICCProfile)
    except (AttributeError, IndexError, TypeError):
        return bytes(ds.ICCProfile) if "ICCProfile" in ds else None


def channel_names(paths: list, spp: int) -> list[str]:
    """R, G, B for one colour optical path; else a channel per path (and sample), named by the
    path's description or identifier."""
    names = [str(p.get("OpticalPathDescription") or p.get("OpticalPathIdentifier") or i)
             for i, p in enumerate(paths)] or ["Y"]
    if spp == 3:
        return ["R", "G", "B"] if len(names) == 1 else [f"{n}:{c}" for n in names for c in "RGB"]
    return names
