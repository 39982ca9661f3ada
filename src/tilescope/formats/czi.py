"""Zeiss CZI (ZISRAW): subblocks placed anywhere, indexed by a directory of dimension entries.

A CZI file is a chain of segments (a 16-byte ID, allocated and used sizes, then the body). The file
header points at the subblock directory, the XML metadata and the attachment directory. Each
directory entry gives a subblock's pixel type, compression, file position and its dimensions: X and
Y (start in the file's global pixels, logical size, stored size), and indices C, Z, T, S (scene),
M (mosaic tile), ... A subblock whose stored size is smaller than its logical size belongs to a
pyramid layer (zoom = stored / logical).

This driver only describes: one Scene per S index (its rect is the bounding box of its subblocks),
one level per pyramid zoom, one placed-piece plane per (level, C, Z, T) with the subblocks in
drawing order (by M index, a later tile over an earlier one); the engine does the rest, touching
only the subblocks that intersect a request. Pixels: Gray8/16/32Float, Bgr24/48, Bgra32 (BGR turned
to RGB); compression: none, JPEG, JPEG XR, zstd0 and zstd1 (with its hi-lo byte packing), all
decoded by imagecodecs.
"""

from __future__ import annotations

import contextlib
import math
import struct
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import imagecodecs
import numpy as np
import simplejpeg

from .. import codecs
from ..codecs import Codec, scratch
from ..engine import GridPlane, Layout, PlacedPlane, Plane
from ..errors import CorruptDataError, UnsupportedFormatError
from ..model import AssociatedImage, Scene, Slide, make_levels
from ..source import ByteRanges, PieceList
from . import parse_xml

if TYPE_CHECKING:
    from ..engine import Options
    from ..source import ByteSource
    from . import Probe

NAME = "CZI"
OPENSLIDE_VENDOR = "zeiss"  # openslide's name for the format (detect_format, openslide.vendor)
MAGIC = b"ZISRAWFILE"

# pixel type -> (dtype, samples, stored as BGR(A))
_PIXEL_TYPES = {0: ("Gray8", np.uint8, 1), 1: ("Gray16", np.uint16, 1), 2: ("Gray32Float", np.float32, 1),
                3: ("Bgr24", np.uint8, 3), 4: ("Bgr48", np.uint16, 3), 8: ("Bgr96Float", np.float32, 3),
                9: ("Bgra32", np.uint8, 4), 12: ("Gray32", np.uint32, 1), 13: ("Gray64", np.float64, 1)}
_COMPRESSIONS = {0: "none", 1: "jpeg", 2: "lzw", 4: "jpegxr", 5: "zstd0", 6: "zstd1"}
_VOCABULARY = {"zstd0": "zstd", "zstd1": "zstd"}  # Scene.compression's names of CZI's own
_ENTRY = struct.Struct("<2siqiiB5xi")  # DV schema, pixel type, file position, part, compression, pyramid
_DIM = struct.Struct("<4siifi")  # dimension, start, size, start coordinate, stored size


def detect(probe: Probe) -> bool:
    return probe.head[:10] == MAGIC


def _segment(source: ByteSource, pos: int, want: bytes, what: str, extra: int = 0) -> tuple[int, bytes]:
    """Check the segment at ``pos`` has ID ``want``; its used size and the first ``extra`` bytes
    of its body."""
    if pos <= 0 or pos + 32 + extra > source.size:
        raise CorruptDataError(f"{source.path}: CZI {what} position {pos} is outside the file")
    head = source.pread(pos, 32 + extra)
    sid, _alloc, used = struct.unpack_from("<16sqq", head)
    if sid.rstrip(b"\0") != want:
        raise CorruptDataError(f"{source.path}: CZI {what} at {pos} is a {sid.rstrip(bytes(1))!r} segment, "
                               f"not {want.decode()}")
    return used, head[32:]


class Subblocks(PieceList):
    """Subblock segments: the pixel data's place is read from each segment's own header when the
    piece is fetched, so opening a file reads the directory only."""

    def __init__(self, positions, ndims, label: str):
        super().__init__(len(positions), label)
        self.positions = np.asarray(positions, np.int64)
        self.ndims = np.asarray(ndims, np.int64)

    def fetch(self, source: ByteSource, index: int) -> bytes:
        pos = int(self.positions[index])
        used, head = _segment(source, pos, b"ZISRAWSUBBLOCK", f"{self.label} subblock {index}", 16)
        meta, _att, size = struct.unpack("<iiq", head)
        start = pos + 32 + max(256, 16 + _ENTRY.size + _DIM.size * int(self.ndims[index])) + meta
        if meta < 0 or size < 0 or start + size > pos + 32 + used or start + size > source.size:
            raise CorruptDataError(f"{source.path}: {self.label}: subblock {index} at {pos} claims "
                                   f"{size} bytes of data past its segment or the file's end")
        return source.pread(start, size)


def _zstd1(data: bytes) -> tuple[memoryview, bool]:
    """CZI's zstd1: a small header (its own size first; chunk 1 = hi-lo byte packing flag)."""
    n = data[0]
    hilo = n >= 3 and data[1] == 1 and bool(data[2] & 1)
    return memoryview(data)[n:], hilo


def _codec(pixel_type: int, compression: int, where: str) -> Codec:
    if pixel_type not in _PIXEL_TYPES:
        raise UnsupportedFormatError(f"{where}: CZI pixel type {pixel_type} is not supported")
    if compression not in _COMPRESSIONS or compression == 2:
        raise UnsupportedFormatError(f"{where}: CZI compression {compression} is not supported")
    name, stored, samples = _PIXEL_TYPES[pixel_type]
    dtype = np.dtype(stored)
    bgr = samples >= 3
    order = [2, 1, 0, 3][:samples]

    def unpacked(h: int, w: int, out: np.ndarray | None) -> np.ndarray:
        if out is None or out.shape != (h, w, samples) or out.dtype != dtype:
            out = np.empty((h, w, samples), dtype)
        return out

    def decode(data: Any, h: int, w: int, out: np.ndarray | None) -> np.ndarray:
        nbytes = h * w * samples * dtype.itemsize
        if compression == 1:
            return imagecodecs.jpeg8_decode(data)  # JPEG gives RGB itself
        if compression == 4:
            a = imagecodecs.jpegxr_decode(data)
            a = a.reshape(*a.shape[:2], -1)
            return a[..., order] if bgr else a
        hilo = False
        target = None
        if compression == 0:
            raw = data
        else:  # zstd straight into the output (or, for hi-lo packing, a per-thread scratch)
            zdata: Any  # imagecodecs reads and writes any buffer (its hints say bytes)
            into: Any
            zdata, hilo = _zstd1(data) if compression == 6 else (data, False)
            hilo = hilo and dtype.itemsize == 2
            target = None if hilo or bgr else unpacked(h, w, out)
            into = scratch(nbytes, "zstd") if target is None else target.reshape(-1).view(np.uint8)
            raw = imagecodecs.zstd_decode(zdata, out=into)
        if len(raw) != nbytes:
            raise ValueError(f"{len(raw)} bytes for a {w}x{h}x{samples} {name} subblock")
        if target is not None:
            return target  # zstd wrote the pixels in place
        src = np.frombuffer(raw, np.uint8 if hilo else dtype.newbyteorder("<"))
        a = unpacked(h, w, out)
        if hilo:  # low bytes of every sample first, then the high bytes
            flat = a.reshape(-1)
            half = src.size // 2
            np.left_shift(src[half:], 8, out=flat, dtype=dtype)
            flat |= src[:half]
            if bgr:
                a[:] = a[..., order]
        else:
            a[:] = src.reshape(h, w, samples)[..., order] if bgr else src.reshape(h, w, samples)
        return a

    return Codec(f"czi-{_COMPRESSIONS[compression]}", dtype, samples, decode, writes_out=True)


class _Entry:
    """One subblock directory entry: pixel type, file position, compression, dimension indices,
    X/Y start, size and stored size."""

    __slots__ = ("compression", "h", "idx", "ndims", "pixel_type", "pos", "sh", "sw", "w", "x", "y")
    pixel_type: int
    pos: int
    compression: int
    ndims: int
    idx: dict[str, int]
    x: int
    y: int
    w: int
    h: int
    sw: int
    sh: int


def _directory(source: ByteSource, pos: int, base: int = 0) -> list[_Entry]:
    """The subblock directory at ``pos``; file positions in it are relative to ``base`` (an
    embedded CZI's start) and come back absolute."""
    used, _ = _segment(source, pos, b"ZISRAWDIRECTORY", "subblock directory")
    body = source.pread(pos + 32, used) if used > 0 else b""
    if len(body) < 128:
        raise CorruptDataError(f"{source.path}: CZI subblock directory at {pos} is truncated")
    count = struct.unpack_from("<i", body)[0]
    entries, off = [], 128
    for i in range(max(0, count)):
        if off + _ENTRY.size > len(body):
            raise CorruptDataError(f"{source.path}: CZI directory is truncated at entry {i} of {count}")
        schema, ptype, fpos, _part, comp, _pyr, nd = _ENTRY.unpack_from(body, off)
        off += _ENTRY.size
        if schema != b"DV" or not 0 <= nd <= 64 or off + nd * _DIM.size > len(body):
            raise CorruptDataError(f"{source.path}: CZI directory entry {i} is malformed")
        e = _Entry()
        e.pixel_type, e.pos, e.compression, e.ndims, e.idx = ptype, base + fpos, comp, nd, {}
        x = y = None
        for _ in range(nd):
            dim, start, size, _coord, stored = _DIM.unpack_from(body, off)
            off += _DIM.size
            d = dim.rstrip(b"\0").decode("ascii", "replace")
            if d == "X":
                x = (start, size, stored)
            elif d == "Y":
                y = (start, size, stored)
            else:
                e.idx[d] = start
        if x is None or y is None or min(x[1], x[2], y[1], y[2]) <= 0:
            raise CorruptDataError(f"{source.path}: CZI directory entry {i} has no valid X/Y extent")
        e.x, e.w, e.sw = x
        e.y, e.h, e.sh = y
        entries.append(e)
    return entries


def _metadata(source: ByteSource, pos: int) -> str:
    if pos <= 0:
        return ""
    size = struct.unpack("<i", _segment(source, pos, b"ZISRAWMETADATA", "metadata", 4)[1])[0]
    if size < 0 or pos + 32 + 256 + size > source.size:
        raise CorruptDataError(f"{source.path}: CZI metadata at {pos} claims {size} bytes past the end")
    return source.pread(pos + 32 + 256, size).decode("utf-8", "replace")


def _micrometres(root) -> dict[str, float]:
    """Scaling/Items/Distance values. Zeiss writes metres (2.2e-07); some writers (pylibCZIrw)
    write micrometres: values below 1e-3 are taken as metres."""
    out = {}
    for d in root.iterfind("Metadata/Scaling/Items/Distance"):
        with contextlib.suppress(TypeError, ValueError):
            v = float(d.findtext("Value"))
            if math.isfinite(v) and v > 0:
                out[d.get("Id")] = v * 1e6 if v < 1e-3 else v
    return out


def _parse(source: ByteSource, base: int = 0):
    """(subblock entries, XML text, parsed XML root, attachment directory position) of the CZI
    file starting at ``base`` (0, or an embedded CZI attachment's data)."""
    head = source.pread(base, 112)
    if len(head) < 112 or head[:10] != MAGIC:
        raise CorruptDataError(f"{source.path}: CZI file header at {base} is truncated or not ZISRAWFILE")
    dir_pos, meta_pos = struct.unpack_from("<qq", head, 32 + 52)
    att_pos = struct.unpack_from("<q", head, 32 + 72)[0]
    entries = _directory(source, base + dir_pos, base)
    if not entries:
        raise CorruptDataError(f"{source.path}: CZI file at {base} has no subblocks")
    xml = _metadata(source, base + meta_pos) if meta_pos > 0 else ""
    root = parse_xml(xml, source.path, "CZI metadata XML") if xml else None
    return entries, xml, root, base + att_pos if att_pos > 0 else 0


def open(probe: Probe, options: Options) -> Slide:
    source = probe.source
    entries, xml, root, att_pos = _parse(source)
    slide = Slide(source, NAME, options, raw_metadata=xml, vendor="zeiss",
                  properties=_properties(root))
    by_scene: dict[int, list[_Entry]] = defaultdict(list)
    for e in entries:
        by_scene[e.idx.get("S", 0)].append(e)
    path = "Metadata/Information/Image/Dimensions/S/Scenes/Scene"
    names = [el.get("Name") for el in root.iterfind(path)] if root is not None else []
    scenes = [_scene(slide, source, root, s, es, names[s] if s < len(names) and names[s] else f"Scene #{s}")
              for s, es in sorted(by_scene.items())]
    slide.set_contents(scenes, _attachments(slide, source, att_pos))
    return slide


_ASSOCIATED = {"Label": "label", "SlidePreview": "macro", "Thumbnail": "thumbnail"}


def _attachments(slide, source: ByteSource, pos: int) -> dict[str, AssociatedImage]:
    """Label, slide preview and thumbnail attachments: embedded CZI files or JPEGs."""
    if pos <= 0:
        return {}
    used, body = _segment(source, pos, b"ZISRAWATTDIR", "attachment directory", 4)
    count = struct.unpack("<i", body)[0]
    if count < 0 or 256 + 128 * count > used:
        raise CorruptDataError(f"{source.path}: CZI attachment directory at {pos} is malformed")
    table = source.pread(pos + 32 + 256, 128 * count)
    out = {}
    for i in range(count):
        e = table[128 * i:128 * (i + 1)]
        fpos = struct.unpack_from("<q", e, 12)[0]
        kind = e[40:48].rstrip(b"\0").decode("ascii", "replace")
        name = _ASSOCIATED.get(e[48:128].split(b"\0")[0].decode("utf-8", "replace"))
        if name is None or name in out or kind not in ("CZI", "JPG"):
            continue
        _, att = _segment(source, fpos, b"ZISRAWATTACH", f"attachment {name}", 4)
        size = struct.unpack("<i", att)[0]
        start = fpos + 32 + 256
        if size <= 0 or start + size > source.size:
            raise CorruptDataError(f"{source.path}: CZI attachment {name!r} ends past the file's end")
        if kind == "CZI":
            entries, _, root, _ = _parse(source, start)
            sc = _scene(slide, source, root, 0, entries, name)
            out[name] = AssociatedImage(sc.size, sc.levels[0].layout, sc.dtype, sc.num_channels)
        else:
            h, w = simplejpeg.decode_jpeg_header(source.pread(start, min(size, 1 << 16)))[:2]
            plane = GridPlane(ByteRanges([start], [size], f"attachment {name}"),
                              codecs.jpeg(outcolorspace="RGB"), (w, h), (w, h))
            out[name] = AssociatedImage((w, h), Layout.single(plane), np.dtype(np.uint8), 3)
    return out


def _properties(root) -> dict:
    if root is None:
        return {}
    props = {}
    for key, path in (("application", "Metadata/Information/Application/Name"),
                      ("application-version", "Metadata/Information/Application/Version"),
                      ("title", "Metadata/Information/Document/Title")):
        v = root.findtext(path)
        if v:
            props[key] = v
    return {"czi": props}


def _levels(entries: list[_Entry]) -> list[tuple[float, list[_Entry]]]:
    """Subblocks grouped by pyramid zoom: (logical / stored size, entries), finest first."""
    groups: list[tuple[float, list[_Entry]]] = []
    for e in sorted(entries, key=lambda e: e.w / e.sw):
        r = e.w / e.sw
        if groups and abs(math.log(r / groups[-1][0])) < 0.1:
            groups[-1][1].append(e)
        else:
            groups.append((r, [e]))
    return [(float(np.median([e.w / e.sw for e in es])), es) for _, es in groups]


def _scene(slide, source: ByteSource, root, s: int, entries: list[_Entry], name: str) -> Scene:
    where = f"{source.path}: CZI scene {name!r}"
    base = [e for e in entries if e.sw == e.w and e.sh == e.h] or entries
    x0, y0 = min(e.x for e in base), min(e.y for e in base)
    w0, h0 = max(e.x + e.w for e in base) - x0, max(e.y + e.h for e in base) - y0
    cs = sorted({e.idx.get("C", 0) for e in entries})
    zs = sorted({e.idx.get("Z", 0) for e in entries})
    ts = sorted({e.idx.get("T", 0) for e in entries})
    ptypes = {c: {e.pixel_type for e in entries if e.idx.get("C", 0) == c} for c in cs}
    if any(len(p) != 1 for p in ptypes.values()):
        raise UnsupportedFormatError(f"{where}: a channel mixes pixel types {sorted(ptypes.values())}")
    samples = {_PIXEL_TYPES.get(next(iter(p)), (None, None, 1))[2] for p in ptypes.values()}
    if len(samples) != 1:
        raise UnsupportedFormatError(f"{where}: channels mix grey and colour pixel types")
    spp = samples.pop()
    specs = []
    for li, (zoom, es) in enumerate(_levels(entries)):
        lw, lh = max(1, math.ceil(w0 / zoom)), max(1, math.ceil(h0 / zoom))
        cells: dict[tuple[int, int, int], list[_Entry]] = defaultdict(list)
        for e in es:
            cells[e.idx.get("C", 0), e.idx.get("Z", 0), e.idx.get("T", 0)].append(e)
        planes: dict[tuple[int, int], list[Plane]] = {}
        tile = (es[0].sw, es[0].sh)
        for zi, z in enumerate(zs):
            for ti, t in enumerate(ts):
                row: list[Plane] = []
                for c in cs:
                    cell = sorted(cells.get((c, z, t), []), key=lambda e: e.idx.get("M", 0))
                    label = f"scene {name!r} level {li} c={c} z={z} t={t}"
                    comps = {e.compression for e in cell} or {0}
                    if len(comps) > 1:
                        raise UnsupportedFormatError(f"{where}: {label} mixes compressions {sorted(comps)}")
                    codec = _codec(next(iter(ptypes[c])), comps.pop(), f"{where}: {label}")
                    rects = np.array([(round((e.x - x0) / zoom), round((e.y - y0) / zoom), e.sw, e.sh)
                                      for e in cell], np.int64).reshape(-1, 4)
                    row.append(PlacedPlane(Subblocks([e.pos for e in cell], [e.ndims for e in cell], label),
                                           codec, (lw, lh), tile, rects=rects))
                planes[(zi, ti)] = row
        cmap = tuple((ci, si) for ci in range(len(cs)) for si in range(spp))
        specs.append(((lw, lh), tile, Layout({k: tuple(v) for k, v in planes.items()}, cmap)))
    dtypes = [np.dtype(_PIXEL_TYPES[next(iter(ptypes[c]))][1]) for c in cs]
    um = _micrometres(root) if root is not None else {}
    mpp = (um["X"], um["Y"]) if "X" in um and "Y" in um else None
    names, colors = _channel_names(root, cs, spp), _channel_colors(root, cs, spp)
    step, offsets = _times(root, len(ts))
    stored = _COMPRESSIONS.get(entries[0].compression, "?")
    return Scene(slide, name=name, levels=make_levels(specs), channel_names=names,
                 dtype=np.result_type(*dtypes), mpp=mpp, magnification=_magnification(root),
                 compression=_VOCABULARY.get(stored, stored), compression_raw=stored, rect=(x0, y0, w0, h0),
                 num_z_slices=len(zs), num_t_frames=len(ts), z_resolution=um.get("Z"),
                 t_resolution=step, t_offsets=offsets, brightfield=spp >= 3, channel_colors=colors,
                 channel_info=_channel_info(root, cs, names, colors, np.result_type(*dtypes)))


_CHANNELS = "Metadata/Information/Image/Dimensions/Channels/Channel"


def _channel_names(root, cs: list[int], spp: int) -> list[str]:
    """The XML's channel names; a colour channel's samples as name:R, name:G, name:B (R, G, B for
    a single one, as every brightfield scene)."""
    els = list(root.iterfind(_CHANNELS)) if root is not None else []
    names = [(els[c].get("Name") if c < len(els) else None) or f"C{c}" for c in cs]
    if spp >= 3:
        rgb = ["R", "G", "B", "A"][:spp]
        return rgb if len(cs) == 1 else [f"{n}:{s}" for n in names for s in rgb]
    return names


def _channel_info(root, cs: list[int], names: list[str], colors, dtype: np.dtype) -> list[dict]:
    """Per channel: XML id, fluorophore (Fluor, else the display settings' DyeName), excitation and
    emission wavelengths (nm), colour, and the display window the file stores (``window``: Low and
    High of its display settings, fractions of the declared bit range (ComponentBitCount, else the
    sample type's), as sample values)."""
    els = list(root.iterfind(_CHANNELS)) if root is not None else []
    shown = list(root.iterfind("Metadata/DisplaySetting/Channels/Channel")) if root is not None else []
    dyes = {el.get("Id"): (el.findtext("DyeName") or "").strip() for el in shown}
    bits = _float(root, "Metadata/Information/Image/ComponentBitCount") if root is not None else None
    full = 2 ** int(bits) - 1 if bits and dtype.kind in "ui" else (
        np.iinfo(dtype).max if dtype.kind in "ui" else 1.0)
    windows = {}
    for i, el in enumerate(shown):
        high = _float(el, "High")
        if high is not None and high > (low := _float(el, "Low") or 0.0):
            windows[el.get("Id") or f"#{i}"] = (low * full, high * full)
    per = max(1, len(names) // max(1, len(cs)))
    out = []
    for k, name in enumerate(names):
        c = cs[k // per]
        el = els[c] if c < len(els) else None
        ident = el.get("Id") if el is not None else None
        fluor = ((el.findtext("Fluor") or "").strip() if el is not None else "") or dyes.get(ident) or None
        window = windows.get(ident) if ident in windows else windows.get(f"#{c}")
        out.append({"name": name, "id": ident, "fluor": fluor,
                    "excitation_wavelength": _float(el, "ExcitationWavelength"),
                    "emission_wavelength": _float(el, "EmissionWavelength"),
                    "color": colors[k] if colors else None, "window": window})
    return out


def _float(el, path: str) -> float | None:
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        v = float(el.findtext(path))
        if math.isfinite(v):
            return v
    return None


def _channel_colors(root, cs: list[int], spp: int) -> list[str | None] | None:
    """'#RRGGBB' per channel from Information/.../Channel/Color or DisplaySetting (Zeiss writes
    '#AARRGGBB'), matched by Channel Id, else by position."""
    if root is None or spp != 1:
        return None
    found: dict[str, str] = {}
    order: list[str] = []
    for path in ("Metadata/Information/Image/Dimensions/Channels/Channel",
                 "Metadata/DisplaySetting/Channels/Channel"):
        for i, el in enumerate(root.iterfind(path)):
            key = el.get("Id") or f"#{i}"
            if key not in order:
                order.append(key)
            color = (el.findtext("Color") or "").strip()
            if key not in found and len(color) in (7, 9) and color.startswith("#"):
                found[key] = "#" + color[-6:].upper()
    return [found.get(order[c]) if c < len(order) else None for c in cs]


def _times(root, n: int) -> tuple[float | None, list[float] | None]:
    """(seconds between time points, each time point's offset in seconds where listed) from the T
    dimension: Positions/Interval/Increment, or a Positions/List of offsets (then the mean step)."""
    t = root.find("Metadata/Information/Image/Dimensions/T") if root is not None else None
    if t is None:
        return None, None
    step = _float(t, "Positions/Interval/Increment")
    if step is not None and step > 0:
        return step, None
    with contextlib.suppress(AttributeError, ValueError):
        offsets = [float(v) for v in (t.findtext("Positions/List/Offsets") or "").split()]
        if len(offsets) == n > 1 and all(map(math.isfinite, offsets)) and offsets[-1] > offsets[0]:
            return (offsets[-1] - offsets[0]) / (n - 1), [v - offsets[0] for v in offsets]
    return None, None


def _magnification(root) -> float | None:
    if root is None:
        return None
    for obj in root.iterfind("Metadata/Information/Instrument/Objectives/Objective"):
        with contextlib.suppress(TypeError, ValueError):
            v = float(obj.findtext("NominalMagnification"))
            if math.isfinite(v) and v > 0:
                return v
    return None
