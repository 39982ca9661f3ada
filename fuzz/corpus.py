"""The corruption corpus: small, named damages to seed files, in the categories OpenSlide's test
suite uses (truncated, zero-length and missing tiles, bad compression, directory loops, bad JPEG
markers, images that are too large, inconsistent tables, ...), each with what must happen:

- ``MUST_FAIL``: (family, seed, damage, step, error class): ``fuzz.check.exercise`` on the damaged
  copy reports a failure at ``step`` (a prefix: "open", "scene 0 region", ...) with that class,
  and its message names the file;
- ``MUST_READ``: (family, seed, damage, steps allowed to fail): damage a reader survives (a broken
  label does not stop the slide; a bad tile in one level does not stop the others).

A damage edits a copy of the seed in place (``damage(path)``)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import tifffile

from tilescope import CorruptDataError, TooLargeError, UnsupportedFormatError

Damage = Callable[[str], None]


def _tag(page: int, name: str, index: int | None, value: object) -> Damage:
    """Overwrite a TIFF tag's value (one element of it when ``index`` is given)."""
    def damage(path: str) -> None:
        with tifffile.TiffFile(path, mode="r+b") as tf:
            t = tf.pages[page].tags[name]
            v: object = value
            if index is not None:
                vs = list(t.value)
                vs[index] = value
                v = vs
            t.overwrite(v)
    return damage


def _entry_count(page: int, name: str, count: int) -> Damage:
    """Forge a TIFF tag's count field (the value offset stays): a table that claims ``count`` entries."""
    def damage(path: str) -> None:
        with tifffile.TiffFile(path) as tf:
            t, big, bo = tf.pages[page].tags[name], tf.is_bigtiff, tf.byteorder
        with open(path, "r+b") as f:
            f.seek(t.offset + 4)
            f.write(struct.pack(bo + ("Q" if big else "I"), count))
    return damage


def _piece_bytes(page: int, index: int, edit: Callable[[bytes], bytes]) -> Damage:
    """Rewrite the bytes of a TIFF page's piece ``index`` in place (same length)."""
    def damage(path: str) -> None:
        with tifffile.TiffFile(path) as tf:
            off, n = tf.pages[page].dataoffsets[index], tf.pages[page].databytecounts[index]
        with open(path, "r+b") as f:
            f.seek(off)
            data = f.read(n)
            f.seek(off)
            f.write(edit(data)[:n].ljust(n, b"\0"))
    return damage


def _truncate_in_piece(page: int, index: int, fraction: float = 0.5) -> Damage:
    def damage(path: str) -> None:
        with tifffile.TiffFile(path) as tf:
            cut = tf.pages[page].dataoffsets[index] + int(tf.pages[page].databytecounts[index] * fraction)
        os.truncate(path, cut)
    return damage


def _next_ifd(page: int, to_page: int) -> Damage:
    """Point a page's next-IFD link at another page's IFD (a loop when ``to_page <= page``)."""
    def damage(path: str) -> None:
        with tifffile.TiffFile(path) as tf:
            p, target, big, bo = tf.pages[page], tf.pages[to_page].offset, tf.is_bigtiff, tf.byteorder
            n = len(p.tags)
        link = p.offset + (8 + n * 20 if big else 2 + n * 12)
        with open(path, "r+b") as f:
            f.seek(link)
            f.write(struct.pack(bo + ("Q" if big else "I"), target))
    return damage


def _no_sos(data: bytes) -> bytes:
    """A JPEG whose start-of-scan marker is gone."""
    i = data.find(b"\xff\xda")
    return data[:i] + b"\xff\x00" + data[i + 2:]


def _dicom_attr(keyword: str, value: object) -> Damage:
    def damage(path: str) -> None:
        import pydicom

        ds = pydicom.dcmread(path)
        setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return damage


def _truncate_at(fraction: float) -> Damage:
    def damage(path: str) -> None:
        os.truncate(path, int(os.path.getsize(path) * fraction))
    return damage


def _czi_segment(sid: bytes, what: str, value: int) -> Damage:
    """Forge a field of the first CZI segment with ID ``sid``: "used" (its used size) or, for the
    file header, "directory" (the subblock directory's position), or "body" (its first 32-bit
    field: the metadata's XML size)."""
    def damage(path: str) -> None:
        with open(path, "r+b") as f:
            b = f.read()
            at = b.find(sid.ljust(16, b"\0"))
            f.seek(at + {"used": 24, "directory": 32 + 52, "body": 32}[what])
            f.write(struct.pack("<i" if what == "body" else "<q", value))
    return damage


def _czi_subblock_garbage(path: str) -> None:
    """The second subblock's metadata and data overwritten with 0xFF."""
    with open(path, "r+b") as f:
        b = f.read()
        first = b.find(b"ZISRAWSUBBLOCK")
        pos = b.find(b"ZISRAWSUBBLOCK", first + 16)
        used = struct.unpack_from("<q", b, pos + 24)[0]
        f.seek(pos + 32 + 256)
        f.write(b"\xff" * (used - 256))


def _write(data: bytes) -> Damage:
    def damage(path: str) -> None:
        with open(path, "wb") as f:
            f.write(data)
    return damage


def _png_size(w: int, h: int) -> Damage:
    """A PNG whose header claims ``w`` x ``h`` (its CRC fixed, so only the size is wrong)."""
    def damage(path: str) -> None:
        import zlib

        with open(path, "r+b") as f:
            b = bytearray(f.read())
            b[16:24] = struct.pack(">II", w, h)
            b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
            f.seek(0)
            f.write(b)
    return damage


def _replace(old: bytes, new: bytes) -> Damage:
    def damage(path: str) -> None:
        with open(path, "rb") as f:
            b = f.read()
        with open(path, "wb") as f:
            f.write(b.replace(old, new))
    return damage


_BIG = 10 ** 9
# (family, seed, damage name, damage, failing step prefix, error class)
MUST_FAIL: list[tuple[str, str, str, Damage, str, type]] = [
    ("tiff", "svs.svs", "zero-length tile", _tag(0, "TileByteCounts", 0, 0), "scene 0 level 0", CorruptDataError),
    ("tiff", "svs.svs", "missing tile", _tag(0, "TileOffsets", 0, 0), "scene 0 level 0", CorruptDataError),
    ("tiff", "svs.svs", "tile past the end", _tag(0, "TileOffsets", 0, _BIG), "scene 0 level 0", CorruptDataError),
    ("tiff", "svs.svs", "truncated tile", _truncate_in_piece(0, 3), "scene 0 region", CorruptDataError),
    ("tiff", "svs.svs", "bad JPEG markers", _piece_bytes(0, 0, _no_sos), "scene 0 level 0", CorruptDataError),
    ("tiff", "svs.svs", "garbage tile", _piece_bytes(0, 0, lambda d: b"\0" * len(d)), "scene 0 level 0",
     CorruptDataError),
    ("tiff", "svs.svs", "bad compression", _tag(0, "Compression", None, 34661), "open", UnsupportedFormatError),
    ("tiff", "svs.svs", "broken JPEGTables", _tag(0, "JPEGTables", None, b"\xff\xd8\xff\xd9"), "scene 0 level 0",
     CorruptDataError),
    ("tiff", "svs.svs", "image too large", _tag(0, "ImageWidth", None, _BIG), "open", CorruptDataError),
    ("tiff", "svs.svs", "tile width 0", _tag(0, "TileWidth", None, 0), "open", CorruptDataError),
    ("tiff", "svs.svs", "tile table too short", _entry_count(0, "TileOffsets", 2), "open", CorruptDataError),
    ("tiff", "svs.svs", "2^31-entry tile table", _entry_count(0, "TileOffsets", 1 << 31), "open",
     CorruptDataError),
    ("tiff", "svs.svs", "byte counts shorter than offsets", _entry_count(0, "TileByteCounts", 3), "open",
     CorruptDataError),
    ("tiff", "svs.svs", "samples per pixel forged", _tag(0, "SamplesPerPixel", None, 65535), "open",
     CorruptDataError),
    ("tiff", "stripped.tif", "rows per strip 0", _tag(0, "RowsPerStrip", None, 0), "scene 0 region",
     CorruptDataError),
    ("tiff", "stripped.tif", "truncated in the IFD", _truncate_at(0.0003), "open", CorruptDataError),
    ("tiff", "planar.tiff", "zstd garbage", _piece_bytes(0, 0, lambda d: b"\x28\xb5\x2f\xfd" + b"\xff" * 64),
     "scene 0 level 0", CorruptDataError),
    ("tiff", "small.ndpi", "truncated strip", _truncate_in_piece(0, 0, 0.1), "open", CorruptDataError),
    ("czi", "mosaic.czi", "directory past the end", _czi_segment(b"ZISRAWFILE", "directory", _BIG), "open",
     CorruptDataError),
    ("czi", "mosaic.czi", "directory size forged", _czi_segment(b"ZISRAWDIRECTORY", "used", 5 * 10 ** 18),
     "open", CorruptDataError),
    ("czi", "mosaic.czi", "metadata size forged", _czi_segment(b"ZISRAWMETADATA", "body", 2**31 - 1), "open",
     CorruptDataError),
    ("czi", "mosaic.czi", "garbage subblock", _czi_subblock_garbage, "scene 0 thumbnail", CorruptDataError),
    ("czi", "mosaic.czi", "truncated in the directory", _truncate_at(0.97), "open", CorruptDataError),
    ("pillow", "png", "truncated PNG", _truncate_at(0.5), "scene 0 thumbnail", CorruptDataError),
    ("pillow", "png", "PNG claims 10^5 x 10^5", _png_size(100_000, 100_000), "open", TooLargeError),
    ("pillow", "jpg", "JPEG without its end", _truncate_at(0.3), "open", CorruptDataError),
    ("afi", "slide.afi", "malformed XML", _replace(b"</ImageList>", b"</Image"), "open", CorruptDataError),
]
DICOM_FAIL: list[tuple[str, Damage, str, type]] = [  # damages to the level-0 instance, opened alone
    ("number of frames forged", _dicom_attr("NumberOfFrames", 800_000_000), "open", CorruptDataError),
    ("focal planes forged", _dicom_attr("TotalPixelMatrixFocalPlanes", 800_000_000), "open", CorruptDataError),
    ("tile size 0", _dicom_attr("Columns", 0), "open", CorruptDataError),
    ("truncated pixel data", _truncate_at(0.6), "open", CorruptDataError),
    ("truncated data set", _truncate_at(0.02), "open", CorruptDataError),
]
# (family, seed, damage name, damage, steps that may fail: prefixes)
MUST_READ: list[tuple[str, str, str, Damage, tuple[str, ...]]] = [
    ("tiff", "svs.svs", "broken label", _tag(3, "StripOffsets", 0, 0), ("associated label",)),
    ("tiff", "svs.svs", "label too large", _tag(3, "ImageWidth", None, 40000), ("associated label",)),
    ("tiff", "svs.svs", "bad tile in level 1", _tag(2, "TileByteCounts", 0, 0), ("scene 0 level 1",
                                                                               "scene 0 thumbnail")),
    ("tiff", "svs.svs", "directory loop", _next_ifd(4, 0), ()),
    ("tiff", "pages.tiff", "level with other samples (not a level)", _tag(1, "SamplesPerPixel", None, 1), ()),
    ("tiff", "svs.svs", "directory pointing at itself", _next_ifd(2, 2), ()),
    ("tiff", "pages.tiff", "directory loop", _next_ifd(1, 0), ()),
    ("tiff", "small.ndpi", "McuStarts wrong (restarts found by scanning)", _tag(0, 65426, 1, _BIG), ()),
    ("tiff", "philips.tiff", "first directory pointing at itself", _next_ifd(0, 0), ()),
]
