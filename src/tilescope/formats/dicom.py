"""DICOM whole-slide images (VL Whole Slide Microscopy Image) from local files.

Opening a .dcm file (or a folder: its first DICOM file; or a list of files) gathers the instances
of the same slide: same Frame of Reference UID and Container Identifier (the series where there is
no frame of reference). VOLUME instances form the pyramid (instances of one size are one level:
concatenations, and optical paths or focal planes stored in instances of their own), a THUMBNAIL
smaller than all of them ends it; LABEL, OVERVIEW and THUMBNAIL are the associated images
``label``, ``macro`` and ``thumbnail``. Frames are pieces read from their own files (the engine
opens them on first use): TILED_FULL frames in the standard's order (columns, rows, focal planes,
optical paths), TILED_SPARSE frames (or frames with per-frame positions) placed by their plane
positions (absent tiles read as background). Encapsulated pixel data's items are found by
pydicom.encaps, each frame's fragments (one per frame, or several) by the Basic or Extended Offset
Table, else by codestream start markers; native pixel data is addressed directly. Transfer syntaxes: JPEG
baseline, JPEG 2000, JPEG-LS, RLE Lossless, explicit and implicit VR little endian.
Segmentations and Parametric Maps of the frame of reference are derived channels. Needs the
``[dicom]`` extra (pydicom).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import struct
import warnings
from collections import defaultdict
from typing import Any, NamedTuple

import numpy as np

from .. import codecs
from ..engine import GridPlane, Layout
from ..errors import CorruptDataError, InvalidRequestError, SourceNotFoundError, UnsupportedFormatError
from ..model import AssociatedImage, Scene, Slide, make_levels
from ..source import ByteRanges, FileSource

NAME = "DICOM"
OPENSLIDE_VENDOR = 'dicom'  # openslide's name for the format (detect_format, openslide.vendor)
MULTI_FILE = True  # a slide is several files: gathered from the folder, or given as a list (``files=``)
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"  # Label Map Segmentation (2024): segment numbers
SEGMENTATIONS = (SEG_SOP_CLASS, LABELMAP_SOP_CLASS)
PM_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.30"
DERIVED = (*SEGMENTATIONS, PM_SOP_CLASS)
_MALFORMED = (AttributeError, KeyError, IndexError, TypeError, ValueError)  # what missing attributes raise
_PIXELS = ((0x7FE00010, None), (0x7FE00008, np.float32), (0x7FE00009, np.float64))  # element, float type
_JPEG = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}
_J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
_JPEGLS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
_RLE = "1.2.840.10008.1.2.5"


def compression(syntax: str) -> str:
    """A transfer syntax's encoding in the one vocabulary of ``Scene.compression``."""
    for family, name in ((_JPEG, "jpeg"), (_J2K, "jpeg2000"), (_JPEGLS, "jpegls"), (_NATIVE, "none"),
                         ({_RLE}, "rle")):
        if syntax in family:
            return name
    return syntax


def is_dicom_file(path: str) -> bool:
    try:
        with builtins.open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def detect(probe) -> bool:
    return probe.source.head(132)[128:132] == b"DICM"


class _Instance:
    whole = False  # DICOMweb: the server serves no single frames of it (see dicomweb.WholeInstance)
    ranges: tuple  # files: where each frame's bytes are (:func:`_frame_ranges`)

    def __init__(self, path: str, ds, syntax: str | None = None):
        self.path, self.ds = path, ds
        try:
            self._parse(syntax)
        except _MALFORMED as e:
            raise CorruptDataError(f"{path}: incomplete or malformed DICOM metadata "
                                   f"({type(e).__name__}: {e})") from None

    def _parse(self, syntax: str | None) -> None:
        ds = self.ds
        image_type = ds.get("ImageType") or []
        # no Image Type (OrthancWSIDicomizer 1.1 writes none): a level of the pyramid
        self.flavor = str(image_type[2]).upper() if len(image_type) > 2 else "VOLUME"
        self.size = (int(ds.get("TotalPixelMatrixColumns", ds.Columns)),
                     int(ds.get("TotalPixelMatrixRows", ds.Rows)))
        self.tile = (int(ds.Columns), int(ds.Rows))
        self.grid = (-(-self.size[0] // self.tile[0]), -(-self.size[1] // self.tile[1]))  # tile columns, rows
        self.frames = int(ds.get("NumberOfFrames", 1))
        self.syntax = syntax or str(ds.file_meta.TransferSyntaxUID)
        self.sop_class = str(ds.get("SOPClassUID", ""))
        self.pixel_tag, float_type = next(((t, f) for t, f in _PIXELS if t in ds), _PIXELS[0])
        bits, signed = int(ds.get("BitsAllocated", 8)), int(ds.get("PixelRepresentation", 0)) == 1
        integer = np.uint8 if bits <= 8 else f"{'i' if signed else 'u'}{bits // 8}"
        self.dtype = np.dtype(float_type or integer)


def _read(path: str):
    """The file's dataset (pixel data deferred); CorruptDataError when it does not parse or lacks
    its SOP Class UID (pydicom returns what it parsed of a truncated file, possibly nothing)."""
    try:
        import pydicom
    except ImportError:
        raise UnsupportedFormatError(f"{path}: reading DICOM needs the [dicom] extra (pydicom)") from None
    try:
        with warnings.catch_warnings():  # pydicom warns of what it finds broken: the errors below say it
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=1024)
    except Exception as e:
        raise CorruptDataError(f"{path}: not a readable DICOM file: {e}") from None
    if "SOPClassUID" not in ds:
        raise CorruptDataError(f"{path}: not a readable DICOM file: pydicom parsed none of its data set "
                               f"(truncated, or broken pixel data)")
    return ds


def _header(path: str):
    """What precedes the pixel data of a file that does not read whole (None if that fails too):
    enough to tell which instance a truncated file was."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return None
    return ds if "SOPClassUID" in ds else None


def _frame_ranges(inst: _Instance) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(offset, length, split, bit shift) of every frame of an instance's pixel data; a split frame
    spans several fragments, and its range holds their item headers too; a shifted frame starts
    that many bits into its first byte (1-bit frames are packed back to back across frames, so
    frame k of a 10x10 segmentation starts at bit 100 k). :class:`Frames` undoes both."""
    raw = inst.ds.get_item(inst.pixel_tag, keep_deferred=True)
    if raw is None:
        raise CorruptDataError(f"{inst.path}: no Pixel Data")
    start = raw.value_tell
    n = inst.frames
    if inst.syntax in _NATIVE:
        ds = inst.ds
        nbits = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated)
        need = -(-nbits * n // 8)
        if raw.length not in (None, 0xFFFFFFFF) and raw.length < need:
            raise CorruptDataError(f"{inst.path}: Pixel Data holds {raw.length} bytes, {n} frames of "
                                   f"{ds.Columns}x{ds.Rows} need {need}")
        if start + need > os.path.getsize(inst.path):
            raise CorruptDataError(f"{inst.path}: the file is truncated: its {n} frames end at byte "
                                   f"{start + need}, past its end")
        first_bit = np.arange(n, dtype=np.int64) * nbits
        shift = first_bit % 8
        return start + first_bit // 8, (shift + nbits + 7) // 8, np.zeros(n, bool), shift.astype(np.int8)
    from pydicom.encaps import parse_basic_offsets, parse_fragments

    with builtins.open(inst.path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(start)
        try:
            table = np.asarray(parse_basic_offsets(f), np.int64)
            count, found = parse_fragments(f)
        except (ValueError, struct.error) as e:
            raise CorruptDataError(f"{inst.path}: encapsulated pixel data is broken: {e}") from None
        if count == 0:
            raise CorruptDataError(f"{inst.path}: encapsulated pixel data without fragments")
        where = np.asarray(found, np.int64)
        # pydicom's parser stops quietly at the end of the file: the last item and the sequence
        # delimiter after it must be whole
        f.seek(int(where[-1]) + 4)
        end = int(where[-1]) + 8 + struct.unpack("<I", f.read(4).ljust(4, b"\xff"))[0]
        f.seek(end)
        if end + 8 > size or f.read(4) != b"\xfe\xff\xdd\xe0":
            raise CorruptDataError(f"{inst.path}: the file is truncated: encapsulated pixel data ends "
                                   f"without its sequence delimiter")
        eot = inst.ds.get("ExtendedOffsetTable")
        heads = []
        if eot is None and len(table) != inst.frames and count not in (inst.frames, 1):
            for at in where:  # no table: each fragment's first bytes tell where codestreams start
                f.seek(int(at) + 8)
                heads.append(f.read(8))
    if eot is not None:  # Extended Offset Table: 64-bit offsets from the first fragment's item
        table = np.frombuffer(bytes(eot), "<u8").astype(np.int64)
        if len(table) != inst.frames:
            raise CorruptDataError(f"{inst.path}: the Extended Offset Table lists {len(table)} of "
                                   f"{inst.frames} frames")
    ends = np.r_[where[1:], end]  # each item's end: the next item's start, the last one's length
    fragments = where
    if len(table) == inst.frames:  # an offset table: from the first fragment's item
        if not np.isin(where[0] + table, where).all():
            raise CorruptDataError(f"{inst.path}: the offset table does not point at fragments")
        first = np.searchsorted(where, where[0] + table)
    elif count == inst.frames:
        first = np.arange(inst.frames)
    elif inst.frames == 1:
        first = np.zeros(1, np.int64)
    else:  # no table: a frame starts at each fragment opening a JPEG / JPEG 2000 codestream
        first = np.flatnonzero([h[:2] == b"\xff\xd8" or h[:4] == b"\xff\x4f\xff\x51" or h[4:8] == b"jP  "
                                for h in heads])
        if len(first) != inst.frames:
            raise CorruptDataError(f"{inst.path}: {count} fragments for {inst.frames} frames and no "
                                   f"offset table to tell where each frame starts")
    last = np.r_[first[1:], len(fragments)] - 1
    split = last > first
    offsets = np.where(split, where[first], where[first] + 8)
    return offsets, ends[last] - offsets, split, np.zeros(n, np.int8)


def realign(data: bytes, shift: int) -> bytes:
    """Bits packed least significant first, from bit ``shift`` of ``data`` on, as whole bytes."""
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[shift:]
    return np.packbits(bits, bitorder="little").tobytes()


class Frames(ByteRanges):
    """Frames of a level, possibly in several files (concatenations); a frame split over several
    fragments is read in one range and its item headers are dropped; a 1-bit frame that starts
    inside a byte is shifted to start on one."""

    def __init__(self, offsets, counts, split, shift, files, label: str):
        super().__init__(offsets, counts, label, missing_ok=True, file=files[0])
        self.files, self.split, self.shift = files, split, shift

    def fetch(self, source, index: int) -> bytes:
        data = super().fetch(source, index)
        if self.shift[index]:
            return realign(data, int(self.shift[index]))
        if not self.split[index]:
            return data
        parts, pos = [], 0
        while pos + 8 <= len(data):
            length = struct.unpack_from("<I", data, pos + 4)[0]
            parts.append(data[pos + 8:pos + 8 + length])
            pos += 8 + length
        return b"".join(parts)


def _codec(inst: _Instance):
    ds, where = inst.ds, inst.path
    spp = int(ds.SamplesPerPixel)
    if int(ds.get("BitsAllocated", 8)) == 1:  # BINARY segmentations
        if inst.syntax not in _NATIVE:
            raise UnsupportedFormatError(f"{where}: 1-bit frames in transfer syntax {inst.syntax}")
        return codecs.bitmask()
    if inst.syntax in _JPEG:
        photometric = str(ds.PhotometricInterpretation)
        if spp == 3:  # the DICOM attribute rules over markers inside the JPEG (as openslide reads it)
            return codecs.jpeg(colorspace="RGB" if photometric == "RGB" else "YCbCr", outcolorspace="RGB")
        return codecs.jpeg(samples=1)
    if inst.syntax in _J2K:
        return codecs.jpeg2000(samples=spp, dtype=np.uint8 if ds.BitsAllocated == 8 else np.uint16)
    dtype = inst.dtype
    if inst.syntax in _JPEGLS:
        import imagecodecs

        return codecs.image("jpegls", imagecodecs.jpegls_decode, dtype=dtype, samples=spp)
    if inst.syntax in _NATIVE:
        return codecs.raw(dtype=dtype, samples=spp)
    if inst.syntax == _RLE:
        return codecs.dicom_rle(dtype=dtype, samples=spp)
    raise UnsupportedFormatError(f"{where}: transfer syntax {inst.syntax} is not supported")


def _positions(inst: _Instance) -> list[tuple[int, int, int, int]]:
    """(tile column, tile row, focal plane index, layer) of every frame; the layer is the optical
    path, or a segmentation's segment."""
    ds = inst.ds
    cols, rows = inst.grid
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    organization = str(ds.get("DimensionOrganizationType", "")).upper()
    # without a Dimension Organization Type (OrthancWSIDicomizer 1.1), per-frame positions place frames
    if organization == "TILED_FULL" or not (organization or (per_frame and "PlanePositionSlideSequence"
                                                                 in per_frame[0])):
        nz = int(ds.get("TotalPixelMatrixFocalPlanes", 1) or 1)
        first = int(ds.get("ConcatenationFrameOffsetNumber", 0) or 0)  # a concatenation's later part
        return [(i % cols, (i // cols) % rows, (i // (cols * rows)) % nz, i // (cols * rows * nz))
                for i in range(first, first + inst.frames)]
    out = []
    if len(per_frame) != inst.frames:
        raise CorruptDataError(f"{inst.path}: TILED_SPARSE with {len(per_frame)} per-frame groups for "
                               f"{inst.frames} frames")
    planes, spacing = focal_planes(ds)
    paths = _path_ids(ds)
    for item in per_frame:
        pos = item.PlanePositionSlideSequence[0]
        col = (int(pos.ColumnPositionInTotalImagePixelMatrix) - 1) // inst.tile[0]
        row = (int(pos.RowPositionInTotalImagePixelMatrix) - 1) // inst.tile[1]
        z = 0
        if len(planes) > 1 and spacing and "ZOffsetInSlideCoordinateSystem" in pos:
            z = round((float(pos.ZOffsetInSlideCoordinateSystem) - planes[0]) / spacing)
        segment = item.get("SegmentIdentificationSequence")  # a segmentation's frames: one segment each
        path = item.get("OpticalPathIdentificationSequence")
        if segment:
            layer = int(segment[0].ReferencedSegmentNumber) - 1
        elif path and str(path[0].OpticalPathIdentifier) in paths:
            layer = paths.index(str(path[0].OpticalPathIdentifier))
        else:
            layer = 0
        out.append((col, row, z, layer))
    return out


def focal_planes(ds) -> tuple[list[float], float | None]:
    """The focal planes of an instance as offsets in micrometres (Z offset of the origin, plus
    multiples of Spacing Between Slices), and that spacing (None if not recorded)."""
    nz = int(ds.get("TotalPixelMatrixFocalPlanes", 1) or 1)
    z0, spacing = 0.0, None
    with contextlib.suppress(*_MALFORMED):
        z0 = float(ds.TotalPixelMatrixOriginSequence[0].ZOffsetInSlideCoordinateSystem)
    with contextlib.suppress(*_MALFORMED):
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        spacing = float(measures.SpacingBetweenSlices) * 1000
    return [z0 + k * (spacing or 0.0) for k in range(nz)], spacing


class DicomScene(Scene):
    """A DICOM slide's Scene, with the slide coordinate system: millimetres on the glass (Total
    Pixel Matrix Origin, Image Orientation (Slide), Pixel Spacing) <-> pixel indices of any level.

    Its image channels are the optical paths' samples; segments of Segmentation instances and
    Parametric Map instances of the same frame of reference follow as derived channels (read when
    asked for by name or index, at the levels of their size). ``channel_info`` describes each
    channel: type OPTICAL_PATH (identifier, description, wavelength), SEGMENT (number, label,
    property_type, segmentation_type, max_fractional_value) or PARAMETER (label, unit)."""

    slide_origin: tuple[float, float] | None  # mm on the glass of level 0's top-left pixel
    image_orientation: tuple[float, ...] | None  # Image Orientation (Slide): row, column direction
    pixel_spacing_mm: tuple[float, float] | None  # (x, y): mm between columns, between rows

    def __init__(self, slide: Slide, *, ds, focal_planes: tuple[float, ...] = (0.0,), **scene):
        """A Scene (``scene``: its keywords) with the slide coordinate system of level-0 dataset
        ``ds`` and ``focal_planes`` (z index -> focal plane offset, micrometres)."""
        super().__init__(slide, **scene)
        self.focal_planes = tuple(focal_planes)
        try:
            o = ds.TotalPixelMatrixOriginSequence[0]
            self.slide_origin = (float(o.XOffsetInSlideCoordinateSystem),
                                 float(o.YOffsetInSlideCoordinateSystem))
            self.image_orientation = tuple(float(v) for v in ds.ImageOrientationSlide)
            sp = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
            self.pixel_spacing_mm = (float(sp[1]), float(sp[0]))  # DICOM lists rows' spacing first
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            self.slide_origin = self.image_orientation = self.pixel_spacing_mm = None

    def _matrix(self, level: int) -> np.ndarray:
        if self.pixel_spacing_mm is None or self.image_orientation is None or self.slide_origin is None:
            raise UnsupportedFormatError(f"{self.location}: no slide coordinate system (origin, orientation, "
                                         f"spacing) in the DICOM metadata")
        sx, sy = self.levels[self.level_index(level)].scale
        r, c = np.asarray(self.image_orientation[:3]), np.asarray(self.image_orientation[3:])
        dc, dr = self.pixel_spacing_mm
        # x_mm = origin + column * (column spacing) * row direction + row * (row spacing) * column direction
        return np.array([[r[0] * dc * sx, c[0] * dr * sy, self.slide_origin[0]],
                         [r[1] * dc * sx, c[1] * dr * sy, self.slide_origin[1]], [0.0, 0.0, 1.0]])

    @property
    def physical_size(self) -> tuple[float, float] | None:
        """(width, height) of the imaged area in mm: level 0's columns x column spacing, rows x
        row spacing (its offset on the glass is ``slide_origin``)."""
        if self.pixel_spacing_mm is None:
            return None
        return self.size[0] * self.pixel_spacing_mm[0], self.size[1] * self.pixel_spacing_mm[1]

    def pixel_to_slide(self, indices, level: int = 0) -> np.ndarray:
        """(N, 2) (column, row) pixel indices of ``level`` -> (N, 2) (x, y) slide coordinates, mm."""
        p = np.atleast_2d(np.asarray(indices, np.float64))
        return (self._matrix(level) @ np.c_[p, np.ones(len(p))].T).T[:, :2]

    def slide_to_pixel(self, coordinates, level: int = 0) -> np.ndarray:
        """(N, 2) (x, y) slide coordinates in mm -> (N, 2) fractional (column, row) of ``level``."""
        p = np.atleast_2d(np.asarray(coordinates, np.float64))
        return (np.linalg.inv(self._matrix(level)) @ np.c_[p, np.ones(len(p))].T).T[:, :2]

    def find_optical_paths(self, identifier: str | None = None, description: str | None = None) -> list[str]:
        """Names of the image channels of the optical paths matching ``identifier`` and
        ``description`` (all paths when neither is given)."""
        return self._find("OPTICAL_PATH", identifier=identifier, description=description)

    def find_segments(self, number: int | None = None, label: str | None = None,
                      property_type: str | None = None) -> list[str]:
        """Names of the segment channels (from DICOM Segmentation instances of this slide's frame
        of reference) matching segment ``number``, ``label`` and segmented ``property_type``."""
        return self._find("SEGMENT", number=number, label=label, property_type=property_type)

    def find_parameters(self, label: str | None = None) -> list[str]:
        """Names of the parametric map channels whose content label is ``label`` (all if None)."""
        return self._find("PARAMETER", label=label)

    def _find(self, kind: str, **match) -> list[str]:
        return [str(c["name"]) for c in self.channel_info if c["type"] == kind
                and all(v is None or c.get(k) == v for k, v in match.items())]

    def read_slide_region(self, x: float, y: float, width: float, height: float, size=None,
                          **kw) -> np.ndarray:
        """The region of the glass [x, x + width) x [y, y + height) (mm), as level-0 pixels of the
        smallest pixel rectangle covering it (rotated slides: the image stays in pixel orientation),
        at ``size`` (default: its pixel size); ``kw`` as for :meth:`read`."""
        corners = self.slide_to_pixel([(x, y), (x + width, y), (x, y + height), (x + width, y + height)])
        x0, y0 = np.floor(corners.min(axis=0) + 1e-9).astype(int)
        x1, y1 = np.ceil(corners.max(axis=0) - 1e-9).astype(int)
        return self.read((int(x0), int(y0), int(x1 - x0), int(y1 - y0)), size, **kw)


class _Folder(NamedTuple):
    """The slides among a set of DICOM files: each slide's whole-slide instances (by slide key, in
    order of their first file), the derived instances, and the files that could not be read
    (path -> (reason, dataset or None when not even the header reads))."""

    slides: dict[tuple, list[_Instance]]
    derived: list[_Instance]
    skipped: dict[str, tuple[str, object]]


def _gather(paths: list[str], strict: bool) -> _Folder:
    """The instances of ``paths``: whole-slide images, segmentations and parametric maps; other
    objects (structured reports, annotations, presentation states, ...) are not part of a slide
    and left out, as is a second copy of an instance. An instance that cannot be read (broken
    header or metadata, truncated pixel data) is skipped with a warning, or with ``strict`` (files
    the caller named) raises its CorruptDataError."""
    slides: dict[tuple, list[_Instance]] = {}
    derived: list[_Instance] = []
    skipped: dict[str, tuple[str, object]] = {}
    seen: set[str] = set()
    for p in paths:
        ds = None
        try:
            ds = _read(p)
            sop = str(ds.get("SOPClassUID", ""))
            if sop != WSI_SOP_CLASS and sop not in DERIVED:
                if strict:
                    raise InvalidRequestError(f"{p}: a DICOM {sop or '?'} instance, not a whole-slide image, "
                                              f"segmentation or parametric map")
                continue
            uid = str(ds.get("SOPInstanceUID", ""))
            if uid in seen:
                continue
            inst = _Instance(p, ds)
            inst.ranges = _frame_ranges(inst)
        except CorruptDataError as e:
            if strict:
                raise
            reason = str(e).removeprefix(f"{p}: ")
            warnings.warn(f"{p}: skipped, it cannot be read: {reason}", stacklevel=4)
            skipped[p] = (reason, ds if ds is not None and "SOPClassUID" in ds else _header(p))
            continue
        seen.add(uid)
        if sop == WSI_SOP_CLASS:
            slides.setdefault(slide_key(ds), []).append(inst)
        else:
            derived.append(inst)
    return _Folder(slides, derived, skipped)


def _dicom_files(folder: str) -> list[str]:
    return [p for p in (os.path.join(folder, n) for n in sorted(os.listdir(folder)))
            if os.path.isfile(p) and is_dicom_file(p)]


def open(probe, options, files: list[str] | None = None) -> Slide:
    """The slide of the DICOM file ``probe`` reads, with the instances of its folder (or of
    ``files``: then every one must belong to the slide). Where the folder itself was opened
    (``probe.folder``), its first slide, whatever file came first."""
    path = probe.path
    if files is not None:
        missing = [p for p in files if not os.path.isfile(p)]
        if missing:
            raise SourceNotFoundError(f"{missing[0]}: no such file")
        found = _gather(files, strict=True)
    else:
        folder = os.path.dirname(os.path.abspath(path))
        found = _gather(_dicom_files(folder), strict=False)
    if files is None and probe.folder:
        if not found.slides:
            if found.skipped:
                bad, (reason, _) = next(iter(found.skipped.items()))
                raise CorruptDataError(f"{bad}: {reason} (the only whole-slide image instances of "
                                       f"{probe.folder} cannot be read)")
            raise UnsupportedFormatError(f"{probe.folder}: no VL Whole Slide Microscopy Image instance in "
                                         f"the folder")
        key = next(iter(found.slides))
        if len(found.slides) > 1:
            warnings.warn(f"{probe.folder}: the folder holds {len(found.slides)} slides; opened the first "
                          f"(frame of reference {key[0]}, container {key[1]}); tilescope.dicom.find_slides "
                          f"lists them all", stacklevel=3)
    else:
        if path in found.skipped:
            raise CorruptDataError(f"{path}: {found.skipped[path][0]}")
        first = _read(path)
        sop = str(first.get("SOPClassUID", ""))
        if sop == WSI_SOP_CLASS:
            key = slide_key(first)
        else:  # a segmentation or map opens the slide of its frame of reference
            derived_from = next((k for k in found.slides if sop in DERIVED and k[0] is not None
                                 and k[0] == first.get("FrameOfReferenceUID")), None)
            if derived_from is None:
                raise UnsupportedFormatError(f"{path}: a DICOM {sop or '?'} instance, not a VL Whole Slide "
                                             f"Microscopy Image (nor one derived from a slide beside it)")
            key = derived_from
        if files is not None and len(found.slides) > 1:
            other = next(i for k, insts in found.slides.items() if k != key for i in insts)
            raise InvalidRequestError(f"{other.path}: not an instance of the slide of {path} (another frame "
                                      f"of reference, container or series)")
    return _slide(probe.source, options, key, found, "the files given" if files is not None else
                  os.path.dirname(os.path.abspath(path)))


def _slide(source, options, key: tuple, found: _Folder, where: str) -> Slide:
    instances = found.slides.get(key, [])
    derived = [i for i in found.derived if key[0] is not None and i.ds.get("FrameOfReferenceUID") == key[0]]
    _check_needed(key, instances, found.skipped)
    levels = volume_levels(instances, f"{source.path}: no VOLUME instance of this slide in {where}")
    base = levels[0][0].ds
    props: dict[str, Any] = {**attributes(base),
                             "instances": [os.path.basename(i.path) for i in instances + derived]}
    if found.skipped:
        props["skipped"] = {os.path.basename(p): reason for p, (reason, _) in found.skipped.items()}
    slide = Slide(source, NAME, options, raw_metadata=_header_text(base), vendor="dicom",
                  properties={"dicom": props}, icc_profile=_icc(base))
    return assemble(slide, levels, instances, derived, _level)


def _check_needed(key: tuple, instances: list[_Instance], skipped: dict) -> None:
    """CorruptDataError when a skipped file held part of the slide's pyramid: a VOLUME instance of
    the slide that no readable file holds, or (headers unreadable) a concatenation left incomplete."""
    have = {str(i.ds.SOPInstanceUID) for i in instances}
    unknown = []
    for p, (reason, ds) in skipped.items():
        if ds is None or str(ds.get("SOPClassUID", "")) != WSI_SOP_CLASS:
            unknown.append(p)
            continue
        image_type = ds.get("ImageType") or []
        volume = len(image_type) < 3 or str(image_type[2]).upper() == "VOLUME"
        if volume and slide_key(ds) == key and str(ds.get("SOPInstanceUID", "")) not in have:
            raise CorruptDataError(f"{p}: part of the slide's pyramid cannot be read: {reason}")
    concatenations: dict = defaultdict(list)
    for inst in instances:
        if inst.ds.get("ConcatenationUID"):
            concatenations[inst.ds.ConcatenationUID].append(inst)

    def misses_parts(parts: list[_Instance]) -> bool:
        """Parts missing by the declared total (Orthanc writes none), by a gap in the part numbers,
        or by fewer frames than the full tile grid (a sparse concatenation may legitimately have)."""
        numbers = sorted(int(i.ds.get("InConcatenationNumber", 0) or 0) for i in parts)
        total = int(parts[0].ds.get("InConcatenationTotalNumber", 0) or 0)
        nz, layers = _stack(parts[0])
        full = parts[0].grid[0] * parts[0].grid[1] * nz * layers
        return (len(parts) < total or numbers != list(range(1, len(parts) + 1))
                or sum(i.frames for i in parts) < full)
    incomplete = [uid for uid, parts in concatenations.items() if misses_parts(parts)]
    if incomplete and unknown:
        raise CorruptDataError(f"{unknown[0]}: cannot be read ({skipped[unknown[0]][0]}), and concatenation "
                               f"{incomplete[0]} of the slide's pyramid misses parts")


def find_slides(folder: str, options) -> list[Slide]:
    """Every slide among the DICOM files of ``folder``, opened (in order of their first file)."""
    found = _gather(_dicom_files(folder), strict=False)
    slides = []
    try:
        for key, insts in found.slides.items():
            if not any(i.flavor == "VOLUME" for i in insts):
                continue
            source = FileSource(insts[0].path)
            try:
                slides.append(_slide(source, options, key, found, folder))
            except BaseException:
                source.close()
                raise
    except BaseException:
        for s in slides:
            s.close()
        raise
    return slides


def slide_key(ds) -> tuple:
    """What the instances of one slide share: Frame of Reference UID and Container Identifier, or
    where there are none (OrthancWSIDicomizer 1.1 writes neither) the series."""
    if ds.get("FrameOfReferenceUID"):
        return ds.FrameOfReferenceUID, ds.get("ContainerIdentifier")
    return None, ds.get("SeriesInstanceUID")


_NOT_TEXT = {"OB", "OW", "OF", "OD", "OL", "OV", "UN", "AT"}  # binary values: not properties
_NOT_PROPERTIES = {"PerFrameFunctionalGroupsSequence", "FileMetaInformationGroupLength"}  # bulky or noise


def attributes(ds, prefix: str = "") -> dict[str, str]:
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
                    tag in (t for t, _ in _PIXELS):
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


def _header_text(ds) -> str:
    """The dataset as text without its pixel data (printing that would read it all)."""
    import pydicom

    return str(pydicom.Dataset({t: ds[t] for t in list(ds.keys()) if t not in (p for p, _ in _PIXELS)}))


def volume_levels(instances: list[_Instance], none: str) -> list[list[_Instance]]:
    """The pyramid's instances by level, largest first (a level's concatenated parts in order):
    VOLUME instances, and a THUMBNAIL smaller than all of them that shows the whole slide (it
    extends the pyramid downwards; it stays the associated image ``thumbnail`` too)."""
    volumes: dict[tuple[int, int], list[_Instance]] = defaultdict(list)
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


def assemble(slide: Slide, levels: list[list[_Instance]], instances: list[_Instance],
             derived: list[_Instance], make_level) -> Slide:
    """The slide's scene (levels, optical paths, focal planes, derived layers) and associated
    images, from files or a DICOMweb series alike: ``make_level(instances, label)`` gives a level's
    (size, tile, layout)."""
    try:
        return _assemble(slide, levels, instances, derived, make_level)
    except _MALFORMED as e:
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
                                               _icc(inst.ds))
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
    slide._set_contents([scene], associated)
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


def _segments(ds) -> list:
    return sorted(ds.get("SegmentSequence", []) or [], key=lambda q: int(q.SegmentNumber))


def _derived_channels(inst: _Instance) -> list[dict]:
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
                                     for q in _segments(ds)},
                        "instance": uid})
        for seg in _segments(ds):
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


def _with_derived(specs, derived: list[_Instance], make_level, names: list[str], dtypes: list, info: list):
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


def _icc(ds) -> bytes | None:
    try:
        return bytes(ds.OpticalPathSequence[0].ICCProfile)
    except (AttributeError, IndexError, TypeError):
        return bytes(ds.ICCProfile) if "ICCProfile" in ds else None


class Axes(NamedTuple):
    """A slide's optical paths (identifiers, in channel order, and their Optical Path Sequence
    items) and focal planes (micrometres, ascending) over all its VOLUME instances: one instance
    may hold every path and plane, or one each."""

    paths: list[str]
    items: list
    planes: list[float]
    spacing: float | None  # between focal planes, micrometres


def _path_ids(ds) -> list[str]:
    items = list(ds.get("OpticalPathSequence", []) or [])
    return [str(p.get("OpticalPathIdentifier", k)) for k, p in enumerate(items)] or [""]


def slide_axes(levels: list[list[_Instance]]) -> Axes:
    """The optical paths in order of first appearance (largest level first) and the focal planes."""
    paths: list[str] = []
    items: list = []
    planes: set[float] = set()
    spacing: float | None = None
    for inst in (i for insts in levels for i in insts):
        seq = list(inst.ds.get("OpticalPathSequence", []) or []) or [None]
        for ident, item in zip(_path_ids(inst.ds), seq, strict=True):
            if ident not in paths:
                paths.append(ident)
                items.append(item)
        offsets, sp = focal_planes(inst.ds)
        planes.update(round(z, 4) for z in offsets)
        spacing = spacing or sp
    return Axes(paths, [i for i in items if i is not None], sorted(planes), spacing)


def frames_by_tile(insts: list[_Instance], axes: Axes | None = None):
    """(focal plane, layer, tile index, instance, frame index) of every frame of a level's
    instances (concatenations, other paths and planes included); with ``axes``, planes and layers
    are the slide's (optical paths), else each instance's own (a segmentation's segments)."""
    for inst in insts:
        cols, rows = inst.grid
        if axes is not None:  # the instance's own planes and paths -> the slide's
            planes = [round(z, 4) for z in focal_planes(inst.ds)[0]]
            zmap = {k: axes.planes.index(z) for k, z in enumerate(planes) if z in axes.planes}
            opmap = {k: axes.paths.index(p) for k, p in enumerate(_path_ids(inst.ds)) if p in axes.paths}
        for k, (col, row, z, op) in enumerate(_positions(inst)):
            if 0 <= col < cols and 0 <= row < rows:
                if axes is not None:
                    if z not in zmap or op not in opmap:
                        continue
                    z, op = zmap[z], opmap[op]
                yield z, op, row * cols + col, inst, k


def _stack(inst: _Instance) -> tuple[int, int]:
    """(focal planes, layers: optical paths or segments) of one instance."""
    ds = inst.ds
    nz = int(ds.get("TotalPixelMatrixFocalPlanes", 1) or 1)
    if inst.sop_class == SEG_SOP_CLASS:
        return nz, len(ds.get("SegmentSequence", []) or [None])
    if inst.sop_class == LABELMAP_SOP_CLASS:
        return nz, 1
    if inst.sop_class == PM_SOP_CLASS:
        return nz, 1
    return nz, int(ds.get("NumberOfOpticalPaths", 1) or 1)


def level_layout(insts: list[_Instance], axes: Axes | None, make_pieces):
    """(size, tile, layout) of a level: z = focal planes, channels = layers (optical paths, or
    without ``axes`` an instance's own layers) x samples. ``make_pieces(z, layer, owner, frames)``
    gives each plane's pieces from its frames [(tile index, instance, frame index)]; ``owner`` is
    the instance whose tiling and encoding the layer has (the first that holds it)."""
    inst0 = insts[0]
    nz, nop = _stack(inst0)
    if axes is not None:
        nz, nop = len(axes.planes), len(axes.paths)
    frames: dict = defaultdict(list)
    owners: list = [None] * nop
    for z, op, i, inst, k in frames_by_tile(insts, axes):
        frames[z, op].append((i, inst, k))
        owners[op] = owners[op] or inst
    owners = [o or inst0 for o in owners]  # a path absent at this level: background
    codecs_ = [_codec(o) for o in owners]
    if len({(c.samples, np.dtype(c.dtype)) for c in codecs_}) > 1:
        raise UnsupportedFormatError(f"{inst0.path}: the optical paths of one level differ in samples per "
                                     f"pixel or pixel type")
    planes = {(z, 0): tuple(GridPlane(make_pieces(z, op, owners[op], frames[z, op]), codecs_[op], inst0.size,
                                  owners[op].tile) for op in range(nop)) for z in range(nz)}
    channel_map = tuple((op, s) for op in range(nop) for s in range(codecs_[op].samples))
    if inst0.sop_class == LABELMAP_SOP_CLASS and axes is None:
        # each segment a 0/1 channel of its own, decoded from the same frames: value == number
        numbers = [int(q.SegmentNumber) for q in _segments(inst0.ds)]
        planes = {zt: (p, *(GridPlane(p.pieces, codecs.equal_to(p.codec, n), p.size, p.tile)
                            for n in numbers)) for zt, (p,) in planes.items()}
        channel_map += tuple((1 + k, 0) for k in range(len(numbers)))
    return inst0.size, owners[0].tile, Layout(planes, channel_map)


def channel_names(paths: list, spp: int) -> list[str]:
    """R, G, B for one colour optical path; else a channel per path (and sample), named by the
    path's description or identifier."""
    names = [str(p.get("OpticalPathDescription") or p.get("OpticalPathIdentifier") or i)
             for i, p in enumerate(paths)] or ["Y"]
    if spp == 3:
        return ["R", "G", "B"] if len(names) == 1 else [f"{n}:{c}" for n in names for c in "RGB"]
    return names


def _level(insts: list[_Instance], label: str, axes: Axes | None = None):
    """(size, tile, layout) of one level from its instances' frames, read from their files."""
    ranges = {inst.path: inst.ranges for inst in insts}

    def make_pieces(z, op, owner, frames):
        n = owner.grid[0] * owner.grid[1]
        offsets, counts, split, shift, files = np.zeros(n, np.int64), np.zeros(n, np.int64), \
            np.zeros(n, bool), np.zeros(n, np.int8), [owner.path] * n
        for i, inst, k in frames:
            offsets[i], counts[i], split[i], shift[i] = (r[k] for r in ranges[inst.path])
            files[i] = inst.path
        return Frames(offsets, counts, split, shift, files, f"{label} z={z} layer={op}")
    return level_layout(insts, axes, make_pieces)
