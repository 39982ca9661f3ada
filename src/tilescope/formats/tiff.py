"""Generic tiled or stripped TIFF and BigTIFF; also the TIFF helpers the TIFF dialects share.

Levels are page 0 and its SubIFDs when it has them, else page 0 and the following pages that are
smaller versions of it (same samples and type), as pyramid writers lay them out. Any compression
imagecodecs decodes is read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict, cast

import numpy as np

from .. import codecs
from ..engine import GridPlane, Layout, Plane, check_whole
from ..errors import CorruptDataError, TilescopeError, TooLargeError, UnsupportedFormatError
from ..model import AssociatedImage, Scene, Slide, make_levels
from ..source import ByteRanges, TableRef, local, table_values
from .ifd import MAX_PAGES  # pages a slide's TIFF may list (ScanImage walks longer stacks itself)

if TYPE_CHECKING:
    from tifffile import TiffFile, TiffPage

    from ..engine import Options
    from ..model import LevelSpec
    from ..source import ByteSource
    from . import Probe

NAME = "TIFF"
OPENSLIDE_VENDOR = "generic-tiff"  # openslide's name for the format (detect_format, openslide.vendor)

# by code: a lookup by name builds tifffile's name registry, ~1 ms of a first open
_TEXT_TAGS = {270: "ImageDescription", 305: "Software", 306: "DateTime", 271: "Make", 272: "Model",
              315: "Artist", 33432: "Copyright", 316: "HostComputer", 269: "DocumentName"}
_PIECE_TYPES = {3: "u2", 4: "u4", 13: "u4", 16: "u8", 18: "u8"}  # TIFF SHORT, LONG, IFD, LONG8, IFD8
_BRIGHTFIELD = {2, 6}  # RGB, YCbCr


def detect(probe: Probe) -> bool:
    return probe.is_tiff


def dtype_of(page: TiffPage, where: str) -> np.dtype:
    """The page's sample type; UnsupportedFormatError for one numpy has no type for."""
    kf = page.keyframe
    if kf.dtype is None:
        raise UnsupportedFormatError(f"{where}: sample format {kf.sampleformat} with {kf.bitspersample} "
                                     f"bits per sample is not supported")
    return kf.dtype


def page_planes(page: TiffPage, probe: Probe, label: str, missing_ok: bool = False) -> tuple[Plane, ...]:
    """The planes of one TIFF page or frame: one, or one per sample for planar-separate pages."""
    kf = page.keyframe
    where = f"{probe.path}: {label}"
    if kf.imagedepth > 1:
        raise UnsupportedFormatError(f"{where}: volumetric (ImageDepth > 1) TIFF tiles are not supported")
    w = check_whole(kf.imagewidth, f"{where}: ImageWidth")
    h = check_whole(kf.imagelength, f"{where}: ImageLength")
    if not kf.is_tiled and is_tiled(page):
        raise CorruptDataError(f"{where}: TileWidth x TileLength is {kf.tilewidth}x{kf.tilelength}")
    if kf.is_tiled:
        tile = (check_whole(kf.tilewidth, f"{where}: TileWidth"),
                check_whole(kf.tilelength, f"{where}: TileLength"))
    else:
        tile = (w, min(check_whole(kf.rowsperstrip or h, f"{where}: RowsPerStrip"), h))
    spp = check_whole(kf.samplesperpixel, f"{where}: SamplesPerPixel")
    separate = kf.planarconfig == 2 and spp > 1
    codec = codecs.from_tiff(
        kf.compression, dtype=dtype_of(page, where), samples=1 if separate else spp,
        photometric=kf.photometric, planarconfig=kf.planarconfig, predictor=kf.predictor,
        bits=kf.bitspersample, byteorder=kf.parent.byteorder, jpegtables=kf.jpegtables,
        extrasamples=kf.extrasamples,
        jfif=kf.compression == 7 and _is_jfif(page, probe.source), where=where)
    # tables read at the first fetch: from a local file (one read then), never sparse ones
    later = not missing_ok and local(probe.source) is not None
    offsets, counts = piece_table(page, probe.source, later)
    nplanes = spp if separate else 1
    n = len(offsets) // nplanes
    kind = "Tile" if kf.is_tiled else "Strip"
    if len(counts) != len(offsets):
        raise CorruptDataError(f"{where}: {kind}Offsets has {len(offsets)} values, {kind}ByteCounts "
                               f"{len(counts)}")
    need = -(-w // tile[0]) * -(-h // tile[1])
    if n < need:
        raise CorruptDataError(f"{where}: {kind}Offsets has {len(offsets)} values; a {w}x{h} image in "
                               f"{tile[0]}x{tile[1]} {kind.lower()}s needs {need * nplanes}")

    def part(t: np.ndarray | TableRef, i: int) -> np.ndarray | TableRef:
        return t.part(i * n, n) if isinstance(t, TableRef) else t[i * n:(i + 1) * n]
    return tuple(GridPlane(ByteRanges(part(offsets, i), part(counts, i), label, missing_ok), codec, (w, h),
                           tile) for i in range(nplanes))


def is_tiled(page: TiffPage) -> bool:
    """Whether the page has tile tags (tifffile reads a page whose tile size is broken as
    stripped: the tags say what the writer meant)."""
    tags = getattr(page, "tags", None)
    return page.is_tiled or (tags is not None and (322 in tags or 323 in tags))


def piece_table(page: TiffPage, source: ByteSource, later: bool = False
                ) -> tuple[np.ndarray | TableRef, np.ndarray | TableRef]:
    """The page's piece offsets and byte counts as integer arrays, or for a plain page (ifd.Page)
    with ``later``, where they lie in the file (:class:`TableRef`: read at the first fetch).
    A plain page's arrays are views of the file's tables, in their stored type. tifffile's pages'
    long tables are read again from the file in one go: turning tifffile's tuples of Python ints
    into arrays costs ~0.4 ms per 20000 pieces; a table that does not match the tuple's ends
    (NDPI's 64-bit extensions of 32-bit tags, say) is converted from the tuple."""
    plain = getattr(page, "tables", None)
    if plain is not None:
        return cast("tuple[TableRef, TableRef]", plain) if later else \
            (cast(np.ndarray, page.dataoffsets), cast(np.ndarray, page.databytecounts))
    tags = getattr(page, "tags", None)  # a TiffFrame has none: its tuples are all there is
    out = []
    for codes, values in (((324, 273), page.dataoffsets), ((325, 279), page.databytecounts)):
        tag = next((tags[c] for c in codes if c in tags), None) if tags is not None else None
        a = _table_from_file(tag, len(values), page.parent.byteorder, source) if tag is not None else None
        if a is None or a[0] != values[0] or a[-1] != values[-1]:
            a = np.asarray(values, np.int64)
        out.append(a)
    return out[0], out[1]


def _table_from_file(tag: Any, n: int, byteorder: str, source: ByteSource) -> np.ndarray | None:
    """A long integer tag's values read from the file as int64, or None where that cannot be."""
    kind = _PIECE_TYPES.get(int(tag.dtype))
    if kind is None or n <= 256 or tag.count != n:
        return None
    try:
        raw = source.pread(tag.valueoffset, n * int(kind[1]))
    except TilescopeError:
        return None
    return np.frombuffer(raw, byteorder + kind).astype(np.int64)


def _is_jfif(page: TiffPage, source: ByteSource) -> bool:
    """Whether the first stored piece (sparse files may leave the first ones out) starts with a
    JFIF APP0 segment; a broken offset just means "not JFIF"."""
    plain = getattr(page, "tables", None)  # a plain page: its first entries, not the whole tables
    offsets, counts = (plain[0].read(source, 64).tolist(), plain[1].read(source, 64).tolist()) \
        if plain is not None else (page.dataoffsets, page.databytecounts)
    if plain is not None and len(offsets) == 64 and not any(offsets):
        offsets, counts = page.dataoffsets, page.databytecounts  # sparse: look further
    for off, n in zip(offsets, counts, strict=False):
        if off > 0 and n > 0:
            try:
                head = source.pread(int(off), min(int(n), 32))
            except Exception:
                return False
            return head[:2] == b"\xff\xd8" and b"JFIF\0" in head
    return False


def page_layout(page: TiffPage, probe: Probe, label: str, missing_ok: bool = False) -> Layout:
    planes = page_planes(page, probe, label, missing_ok)
    if len(planes) == 1:
        return Layout.single(planes[0])
    return Layout({(0, 0): planes}, tuple((i, 0) for i in range(len(planes))))


def level_spec(page: TiffPage, probe: Probe, label: str) -> LevelSpec:
    """(size, tile_size, layout) of a page used as a pyramid level."""
    kf = page.keyframe
    layout = page_layout(page, probe, label)
    plane = layout.planes[(0, 0)][0]
    return (kf.imagewidth, kf.imagelength), plane.tile, layout


def associated_image(page: TiffPage, probe: Probe, name: str) -> AssociatedImage:
    kf = page.keyframe
    return AssociatedImage((kf.imagewidth, kf.imagelength), page_layout(page, probe, name),
                           dtype_of(page, f"{probe.path}: {name}"),
                           kf.samplesperpixel)


class Compression(TypedDict):
    compression: str
    compression_raw: str


def compression_of(page: TiffPage) -> Compression:
    """Scene keywords: the page's compression in the one vocabulary (:data:`codecs.COMPRESSIONS`)
    and, raw, its TIFF Compression tag (value and tifffile's name for it)."""
    kf = page.keyframe
    code = int(kf.compression)
    return Compression(compression=codecs.tiff_compression(code),
                       compression_raw=f"{code} {getattr(kf.compression, 'name', '')}".strip())


def channel_names(page: TiffPage) -> list[str]:
    kf = page.keyframe
    spp = kf.samplesperpixel
    if kf.photometric in _BRIGHTFIELD and spp in (3, 4):
        return ["R", "G", "B", "A"][:spp]
    if spp == 1:
        return ["Y"] if kf.photometric in (0, 1) else ["C0"]
    return [f"C{i}" for i in range(spp)]


def is_brightfield(page: TiffPage) -> bool:
    return page.keyframe.photometric in _BRIGHTFIELD


def resolution_mpp(page: TiffPage) -> tuple[float, float] | None:
    """Micrometres per pixel from XResolution/YResolution when the unit is cm or inch."""
    kf = page.keyframe
    try:
        unit = int(kf.resolutionunit)
        rx, ry = kf.get_resolution()
    except Exception:
        return None
    per_unit = {2: 25400.0, 3: 10000.0}.get(unit)
    if per_unit is None or not rx or not ry or rx <= 0 or ry <= 0:
        return None
    return per_unit / rx, per_unit / ry


def tag_properties(page: TiffPage) -> dict[str, Any]:
    """Textual TIFF tags of a page, as openslide exposes them (``tiff.*``)."""
    props: dict[str, Any] = {}
    for code, name in _TEXT_TAGS.items():
        tag = page.tags.get(code)
        if tag is not None and isinstance(tag.value, str):
            props[name] = tag.value
    kf = page.keyframe
    for code, name in ((282, "XResolution"), (283, "YResolution")):
        tag = kf.tags.get(code)
        if tag is not None:
            num, den = tag.value
            props[name] = num / den if den else None
    tag = kf.tags.get(296)  # ResolutionUnit: as openslide, "inch" (TIFF's default) when absent
    unit = 2 if tag is None else int(tag.value)
    props["ResolutionUnit"] = {1: "none", 2: "inch", 3: "centimeter"}.get(unit, "unknown")
    return props


# the text tags openslide hashes into quickhash-1, in its order, with its property names
_HASHED = ((270, "ImageDescription"), (271, "Make"), (272, "Model"), (305, "Software"), (306, "DateTime"),
           (315, "Artist"), (316, "HostComputer"), (33432, "Copyright"), (269, "DocumentName"))
_HASH_MAX = 5 << 20  # openslide hashes no level whose pieces hold more (a non-pyramidal file)


def quickhash1(first: TiffPage, smallest: TiffPage, probe: Probe) -> Callable[[ByteSource], str | None]:
    """openslide's ``quickhash-1`` of a TIFF-like slide, computed when asked (from the slide's
    source then): SHA-256 over the raw pieces of the smallest level, in order (as its offset and
    byte-count tags list them), then each hashed
    text tag of the first page as its property name and value (as a C string, up to the first
    NUL), each NUL-ended; None where the smallest level's pieces hold more than 5 MiB."""
    texts = []
    for code, name in _HASHED:
        tag = first.tags.get(code)
        where = (int(tag.valueoffset), int(tag.count)) if tag is not None and int(tag.dtype) == 2 else None
        texts.append((f"tiff.{name}".encode(), where))
    offsets: np.ndarray | TableRef
    counts: np.ndarray | TableRef
    plain = getattr(smallest, "tables", None)
    if plain is not None:
        offsets, counts = plain
    else:  # the tags' own values: tifffile reports an NDPI strip as the MCU runs it is cut into
        tags = smallest.tags
        codes = (324, 325) if 324 in tags else (273, 279)
        offsets, counts = (np.asarray(tags[c].value if c in tags else (), np.int64).reshape(-1)
                           for c in codes)

    def compute(source: ByteSource) -> str | None:
        import hashlib

        offs, lens = table_values(offsets, source), table_values(counts, source)
        if not len(offs) or len(offs) != len(lens) or int(np.sum(lens, dtype=np.int64)) > _HASH_MAX:
            return None
        h = hashlib.sha256()
        for off, n in zip(offs.tolist(), lens.tolist(), strict=True):
            h.update(source.pread(off, n))
        for name, where in texts:
            value = source.pread(*where).split(b"\0", 1)[0] if where is not None else b""
            h.update(name + b"\0" + value + b"\0")
        return h.hexdigest()
    return compute


def icc_profile(page: TiffPage) -> bytes | None:
    tag = page.tags.get(34675)  # InterColorProfile
    return bytes(tag.value) if tag is not None and tag.value else None


def pages(tf: TiffFile) -> list[TiffPage]:
    """The file's pages (tifffile yields TiffFrames only when asked to, which we never do);
    TooLargeError for a chain of more than MAX_PAGES IFDs, counted before tifffile parses one."""
    # by index up to the count: tifffile's own iteration runs forever on some loops
    return cast("list[TiffPage]", [tf.pages[i] for i in range(_count_pages(tf))])




def _count_pages(tf: TiffFile) -> int:
    """Walk the IFD chain reading only each IFD's entry count and next link (~1 µs an IFD here,
    where tifffile parses each page in ~50 µs): a forged chain of 10^6 IFDs is refused at once.
    A loop or a broken link ends the walk."""
    fmt, fh = tf.tiff, tf.filehandle
    offset, seen = tf.pages.first.offset, set[int]()
    while offset and offset not in seen:
        if len(seen) == MAX_PAGES:
            raise TooLargeError(f"{fh.path}: more than {MAX_PAGES} TIFF pages (IFDs): refusing to list them")
        fh.seek(offset)
        raw = fh.read(fmt.tagnosize)
        if len(raw) != fmt.tagnosize:
            break
        seen.add(offset)
        (n,) = struct.unpack(fmt.tagnoformat, raw)
        fh.seek(offset + fmt.tagnosize + n * fmt.tagsize)
        raw = fh.read(fmt.offsetsize)
        if len(raw) != fmt.offsetsize:
            break
        (offset,) = struct.unpack(fmt.offsetformat, raw)
    return len(seen)


def pyramid_pages(probe: Probe) -> list[TiffPage]:
    """Page 0 and the pages that are its reduced-resolution copies."""
    p0 = probe.first_page()
    if p0.subifds:
        return [p0, *cast("list[TiffPage]", p0.pages)]
    levels = [p0]
    for page in probe.pages()[1:]:
        prev = levels[-1].keyframe
        kf = page.keyframe
        if (kf.samplesperpixel, kf.dtype, kf.photometric, kf.is_tiled) != \
                (p0.samplesperpixel, p0.dtype, p0.photometric, p0.is_tiled):
            continue
        if kf.imagewidth < prev.imagewidth and kf.imagelength < prev.imagelength:
            levels.append(page)
    return levels


def open(probe: Probe, options: Options) -> Slide:
    pages = pyramid_pages(probe)
    p0 = pages[0]
    slide = Slide(probe.source, NAME, options, raw_metadata=p0.description or "", vendor=None,
                  properties={"tiff": tag_properties(p0)}, icc_profile=icc_profile(p0),
                  comment=p0.description or None,
                  # openslide's levels are the main IFD chain's: SubIFD levels are not hashed
                  quickhash=quickhash1(p0, p0 if p0.subifds else pages[-1], probe))
    levels = make_levels([level_spec(p, probe, f"level {i}") for i, p in enumerate(pages)])
    scene = Scene(slide, name="main", levels=levels, channel_names=channel_names(p0),
                  dtype=dtype_of(p0, probe.path),
                  mpp=resolution_mpp(p0), **compression_of(p0), brightfield=is_brightfield(p0))
    slide.set_contents([scene], {})
    return slide
