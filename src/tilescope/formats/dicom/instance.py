"""DICOM instances: SOP classes and transfer syntaxes, reading a file's data set, what one
instance holds (size, tiling, frames, encoding) and its codec."""

from __future__ import annotations

import builtins
import dataclasses
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ... import codecs
from ...engine import MAX_SIDE
from ...errors import CorruptDataError, UnsupportedFormatError

MAX_GRID = 1 << 24  # tiles a level may have (a 1,000,000² px slide in 256² tiles has 15.3 million)

if TYPE_CHECKING:
    from pydicom import Dataset

    from ...codecs import Codec
    from ...source import ByteSource

NAME = "DICOM"
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"  # Label Map Segmentation (2024): segment numbers
SEGMENTATIONS = (SEG_SOP_CLASS, LABELMAP_SOP_CLASS)
PM_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.30"
DERIVED = (*SEGMENTATIONS, PM_SOP_CLASS)
MALFORMED = (AttributeError, KeyError, IndexError, TypeError, ValueError)  # what missing attributes raise
PIXELS = ((0x7FE00010, None), (0x7FE00008, np.float32), (0x7FE00009, np.float64))  # element, float type
MAX_FRAMES = 1 << 24  # 16.7 M frames: a 10^6 x 10^6 pixel level in 256² tiles has 15 M
MAX_FOCAL_PLANES = 1 << 12
_JPEG = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}
_J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
_JPEGLS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
RLE = "1.2.840.10008.1.2.5"


def quickhash1(series_uid: Any) -> Callable[[Any], str]:
    """openslide's ``quickhash-1`` of a DICOM slide: SHA-256 of its Series Instance UID, NUL-ended."""
    import hashlib

    digest = hashlib.sha256(str(series_uid).encode() + b"\0").hexdigest()
    return lambda source: digest


def compression(syntax: str) -> str:
    """A transfer syntax's encoding in the one vocabulary of ``Scene.compression``."""
    for family, name in ((_JPEG, "jpeg"), (_J2K, "jpeg2000"), (_JPEGLS, "jpegls"), (NATIVE, "none"),
                         ({RLE}, "rle")):
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


class Instance:
    whole = False  # DICOMweb: the server serves no single frames of it (see dicomweb.WholeInstance)
    ranges: tuple  # files: where each frame's bytes are (:func:`frame_ranges`)
    source: ByteSource | None = None  # a file at a URL: its source while the slide is parsed

    def __init__(self, path: str, ds: Dataset, syntax: str | None = None):
        self.path, self.ds = path, ds
        try:
            self._parse(syntax)
        except MALFORMED as e:
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
        self.frames = int(ds.get("NumberOfFrames", 1))
        focal = int(ds.get("TotalPixelMatrixFocalPlanes", 1) or 1)
        # values every list and array of frames is sized by, checked before any is built
        for name, v, top in (("TotalPixelMatrixColumns", self.size[0], MAX_SIDE),
                             ("TotalPixelMatrixRows", self.size[1], MAX_SIDE),
                             ("Columns", self.tile[0], 1 << 16),
                             ("Rows", self.tile[1], 1 << 16), ("NumberOfFrames", self.frames, MAX_FRAMES),
                             ("TotalPixelMatrixFocalPlanes", focal, MAX_FOCAL_PLANES)):
            if not 1 <= v <= top:
                raise CorruptDataError(f"{self.path}: {name} is {v}, outside 1..{top}")
        self.grid = (-(-self.size[0] // self.tile[0]), -(-self.size[1] // self.tile[1]))  # tile columns, rows
        if self.grid[0] * self.grid[1] > MAX_GRID:  # each plane's piece table has a cell per tile
            raise CorruptDataError(f"{self.path}: a {self.size[0]}x{self.size[1]} matrix in "
                                   f"{self.tile[0]}x{self.tile[1]} tiles is {self.grid[0] * self.grid[1]} "
                                   f"tiles, above {MAX_GRID}")
        self.syntax = syntax or str(ds.file_meta.TransferSyntaxUID)
        self.sop_class = str(ds.get("SOPClassUID", ""))
        self.pixel_tag, float_type = next(((t, f) for t, f in PIXELS if t in ds), PIXELS[0])
        bits, signed = int(ds.get("BitsAllocated", 8)), int(ds.get("PixelRepresentation", 0)) == 1
        integer = np.uint8 if bits <= 8 else f"{'i' if signed else 'u'}{bits // 8}"
        self.dtype = np.dtype(float_type or integer)


def read_dataset(path: str, fileobj: Any = None) -> Dataset:
    """The file's dataset (pixel data deferred), from ``fileobj`` where given (a file at a URL:
    open while the slide is parsed); CorruptDataError when it does not parse or lacks its SOP
    Class UID (pydicom returns what it parsed of a truncated file, possibly nothing)."""
    try:
        import pydicom
    except ImportError:
        raise UnsupportedFormatError(f"{path}: reading DICOM needs the [dicom] extra (pydicom)") from None
    try:
        with warnings.catch_warnings():  # pydicom warns of what it finds broken: the errors below say it
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path if fileobj is None else fileobj, defer_size=1024)
    except Exception as e:
        raise CorruptDataError(f"{path}: not a readable DICOM file: {e}") from None
    if "SOPClassUID" not in ds:
        raise CorruptDataError(f"{path}: not a readable DICOM file: pydicom parsed none of its data set "
                               f"(truncated, or broken pixel data)")
    return ds


def read_header(path: str, fileobj: Any = None) -> Dataset | None:
    """What precedes the pixel data of a file that does not read whole (None if that fails too):
    enough to tell which instance a truncated file was."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fileobj is not None:
                fileobj.seek(0)
            ds = pydicom.dcmread(path if fileobj is None else fileobj, stop_before_pixels=True)
    except Exception:
        return None
    return ds if "SOPClassUID" in ds else None


def codec_of(inst: Instance) -> Codec:
    ds, where = inst.ds, inst.path
    spp = int(ds.SamplesPerPixel)
    if int(ds.get("BitsAllocated", 8)) == 1:  # BINARY segmentations
        if inst.syntax not in NATIVE:
            raise UnsupportedFormatError(f"{where}: 1-bit frames in transfer syntax {inst.syntax}")
        return codecs.bitmask()
    if inst.syntax in _JPEG:
        photometric = str(ds.PhotometricInterpretation)
        if spp == 3:  # the DICOM attribute rules over markers inside the JPEG (as openslide reads it)
            codec = codecs.jpeg(colorspace="RGB" if photometric == "RGB" else "YCbCr", outcolorspace="RGB")
            if photometric.startswith("YBR"):  # how a writer copying the frames labels them (TIFF: YCbCr)
                codec = dataclasses.replace(codec, params={**codec.params, "photometric": 6})
            return codec
        return codecs.jpeg(samples=1)
    if inst.syntax in _J2K:
        return codecs.jpeg2000(samples=spp, dtype=np.uint8 if ds.BitsAllocated == 8 else np.uint16)
    dtype = inst.dtype
    if inst.syntax in _JPEGLS:
        import imagecodecs

        return codecs.image("jpegls", imagecodecs.jpegls_decode, dtype=dtype, samples=spp)
    if inst.syntax in NATIVE:
        return codecs.raw(dtype=dtype, samples=spp)
    if inst.syntax == RLE:
        return codecs.dicom_rle(dtype=dtype, samples=spp)
    raise UnsupportedFormatError(f"{where}: transfer syntax {inst.syntax} is not supported")


def segments(ds: Dataset) -> list:
    """A segmentation's Segment Sequence items, by segment number."""
    return sorted(ds.get("SegmentSequence", []) or [], key=lambda q: int(q.SegmentNumber))
