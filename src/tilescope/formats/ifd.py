"""A TIFF's IFDs read directly, for the first open of plain files.

Why not tifffile here: a fresh process's first open of an SVS spent ~9 M of its ~11 M
instructions in tifffile's TiffPage (a Python parse per tag, and tag registries it builds on
first use); reading the entries with ``struct`` and the values on demand costs ~0.3 M.
tifffile stays the authority: :func:`read` answers None for anything it treats specially
(ImageDepth, OJPEG and CCITT quirks, LSM/STK/NDPI/ImageJ/Vista/Indica files, per-sample bit
depths that differ, sample types outside the plain integer and float ones, an unknown tag type,
a value outside the file) and the driver then uses tifffile's pages. :class:`Page` has the
attribute names and meanings of the ``tifffile.TiffPage`` attributes the TIFF helpers use
(tests/test_tiff_ifd.py compares them on files tifffile wrote).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile

from ..errors import TilescopeError, TooLargeError
from ..source import TableRef

if TYPE_CHECKING:
    from ..source import ByteSource

MAX_PAGES = 1 << 16  # pages (IFDs) a slide's TIFF may list; a longer chain is refused
_WINDOW = 4096  # bytes read at once around IFDs (see File.pread)

# TIFF type -> struct code, values per item (rationals are two numbers)
_TYPES = {1: ("B", 1), 2: ("s", 1), 3: ("H", 1), 4: ("I", 1), 5: ("I", 2), 6: ("b", 1), 7: ("s", 1),
          8: ("h", 1), 9: ("i", 1), 10: ("i", 2), 11: ("f", 1), 12: ("d", 1), 13: ("I", 1),
          16: ("Q", 1), 17: ("q", 1), 18: ("Q", 1)}
_TUPLE = {273, 279, 282, 283, 324, 325, 330, 338}  # tifffile keeps these as tuples at count 1
# tags tifffile reads specially (ImageDepth, TileDepth, JPEGInterchangeFormat, LSM, STK, ImageJ,
# NDPI): their files take tifffile's path
_SPECIAL = {32997, 32998, 513, 34412, 33628, 50839, 65420, 65426}
_DTYPES = {(1, 8): "u1", (1, 16): "u2", (1, 32): "u4", (1, 64): "u8", (2, 8): "i1", (2, 16): "i2",
           (2, 32): "i4", (2, 64): "i8", (3, 16): "f2", (3, 32): "f4", (3, 64): "f8"}


class _Unplain(Exception):
    """The file needs tifffile's reading."""


class Tag:
    """One IFD entry; ``value`` is read and decoded on first use, as tifffile decodes it."""

    __slots__ = ("_file", "_raw", "_value", "code", "count", "dtype", "valueoffset")

    def __init__(self, file: File, code: int, dtype: int, count: int, valueoffset: int, raw: bytes | None):
        self._file, self.code, self.dtype, self.count = file, code, dtype, count
        self.valueoffset = valueoffset
        self._raw = raw  # the value's bytes when stored in the entry, else None
        self._value: Any = _UNSET

    @property
    def value(self) -> Any:
        if self._value is _UNSET:
            self._value = self._decode(self._bytes())
        return self._value

    def _bytes(self) -> bytes:
        if self._raw is not None:
            return self._raw
        code, per = _TYPES[self.dtype]
        return self._file.pread(self.valueoffset, self.count * per * struct.calcsize(code))

    def _decode(self, raw: bytes) -> Any:
        if self.dtype in (1, 7):
            return raw
        if self.dtype == 2:  # ASCII: possibly several NUL-ended strings
            raw = raw.rstrip(b"\0")
            for codec in ("utf-8", "cp1252"):
                try:
                    return raw.decode(codec).strip()
                except UnicodeDecodeError:
                    pass
            return raw
        code, per = _TYPES[self.dtype]
        values = struct.unpack(f"{self._file.byteorder}{self.count * per}{code}", raw)
        enum = _ENUMS.get(self.code)
        if enum is not None:
            values = tuple(_member(enum, v) for v in values)
        return values[0] if len(values) == 1 and self.code not in _TUPLE else values

    def table(self, count: int) -> TableRef:
        """The first ``count`` values (offsets or byte counts), where they lie in the file, in the
        file's integer type: read when first used, as a view of their bytes (no converted copy)."""
        code, per = _TYPES[self.dtype]
        if per != 1 or code in "sfd":
            raise _Unplain
        return TableRef(self.valueoffset, min(count, self.count), f"{self._file.byteorder}{code}")


_UNSET = object()
# the tags whose values tifffile gives as its enums
_ENUMS = {254: tifffile.FILETYPE, 255: tifffile.OFILETYPE, 259: tifffile.COMPRESSION,
          262: tifffile.PHOTOMETRIC, 266: tifffile.FILLORDER, 274: tifffile.ORIENTATION,
          284: tifffile.PLANARCONFIG, 296: tifffile.RESUNIT, 317: tifffile.PREDICTOR,
          338: tifffile.EXTRASAMPLE, 339: tifffile.SAMPLEFORMAT}


_MEMBERS: dict[tuple[Any, int], Any] = {}  # (enum, value) -> member: an Enum call costs ~1 µs


def _member(enum: Any, v: int) -> Any:
    m = _MEMBERS.get((enum, v), _UNSET)
    if m is _UNSET:
        try:
            m = enum(v)
        except ValueError:
            m = v
        if len(_MEMBERS) < 4096:  # a forged file's values do not grow it without end
            _MEMBERS[enum, v] = m
    return m


class File:
    """The file's byte order and layout (``page.parent``), and its reading."""

    def __init__(self, source: ByteSource, head: bytes):
        self.source, self.size = source, source.size
        self.byteorder = {b"II": "<", b"MM": ">"}[head[:2]]
        self.big = head[2:4] in (b"+\x00", b"\x00+")
        if self.big and struct.unpack(self.byteorder + "HH", head[4:8]) != (8, 0):
            raise _Unplain
        self.entry, self.ptr, self.count_fmt, self.threshold = \
            (20, "Q", "Q", 8) if self.big else (12, "I", "H", 4)
        self.first = struct.unpack_from(self.byteorder + self.ptr, head, 8 if self.big else 4)[0]
        self._window: tuple[int, bytes] = (0, b"")

    def pread(self, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset``, from the last window read when they lie in it: an IFD's
        entries and the small values written beside them come in one read (a first open of an SVS
        made ~55 reads, ~20 now); larger values are read alone."""
        start, window = self._window
        if start <= offset and offset + n <= start + len(window):
            return window[offset - start:offset - start + n]
        if n >= _WINDOW:
            return self.source.pread(offset, n)
        window = self.source.pread(offset, min(_WINDOW, self.size - offset))
        self._window = offset, window
        return window[:n]

    def read(self, offset: int, n: int) -> bytes:
        if offset < 8 or offset + n > self.size:
            raise _Unplain
        try:
            raw = self.pread(offset, n)
        except TilescopeError:
            raise _Unplain from None
        if len(raw) != n:
            raise _Unplain
        return raw

    def ifd(self, offset: int) -> tuple[dict[int, Tag], int]:
        """(the IFD's tags, first of each code, the next IFD's offset)."""
        bo, nsize = self.byteorder, 8 if self.big else 2
        (n,) = struct.unpack(bo + self.count_fmt, self.read(offset, nsize))
        if not 0 < n <= 4096:
            raise _Unplain
        raw = self.read(offset + nsize, n * self.entry + (8 if self.big else 4))
        entry = bo + ("HHQ8s" if self.big else "HHI4s")
        tags: dict[int, Tag] = {}
        for i in range(n):
            code, dtype, count, value = struct.unpack_from(entry, raw, i * self.entry)
            if code in tags:
                continue
            if dtype not in _TYPES:
                raise _Unplain
            fmt, per = _TYPES[dtype]
            size = count * per * struct.calcsize(fmt)
            where = offset + nsize + i * self.entry + (12 if self.big else 8)
            if size > self.threshold:
                where = struct.unpack(bo + self.ptr, value)[0]
                if where < 8 or where + size > self.size:
                    continue  # as tifffile: a value outside the file drops the tag
                tags[code] = Tag(self, code, dtype, count, where, None)
            else:
                tags[code] = Tag(self, code, dtype, count, where, value[:size])
        (nxt,) = struct.unpack_from(bo + self.ptr, raw, n * self.entry)
        return tags, nxt


class Page:
    """One plain IFD with the ``tifffile.TiffPage`` attributes the TIFF helpers read."""

    def __init__(self, file: File, offset: int):
        self.parent, self.offset, self.keyframe = file, offset, self
        tags, self.next = file.ifd(offset)
        self.tags = tags
        if _SPECIAL & tags.keys() or 256 not in tags or 257 not in tags:
            raise _Unplain

        def get(code: int, default: Any) -> Any:
            tag = tags.get(code)
            return default if tag is None else tag.value

        self.imagewidth, self.imagelength = get(256, 0), get(257, 0)
        self.subfiletype = get(254, 0)
        if self.subfiletype == 0:
            self.subfiletype = {2: 1, 3: 2}.get(get(255, 0), 0)
        self.compression, self.photometric = get(259, 1), get(262, 0)
        self.samplesperpixel, self.planarconfig = get(277, 1), get(284, 1)
        self.predictor, self.extrasamples = get(317, 1), get(338, ())
        self.jpegtables, self.subifds = get(347, None), get(330, None)
        self.imagedepth = 1
        desc, soft = get(270, ""), get(305, "")
        self.description = desc if isinstance(desc, str) else ""
        self.software = soft if isinstance(soft, str) else ""
        self.bitspersample = self._same(get(258, 1))
        self.sampleformat = self._same(get(339, 1))
        ints = (self.imagewidth, self.imagelength, self.subfiletype, self.compression,
                self.photometric, self.samplesperpixel, self.planarconfig, self.predictor,
                self.bitspersample, self.sampleformat)
        # tifffile's quirks: CCITT byte counts, OJPEG, superres, ISS Vista, IndicaLabs, sizes from JPEG
        if not all(isinstance(v, int) for v in ints) or self.compression in (2, 3, 4, 6) or \
                self.compression >= 65000 or self.software == "ISS Vista" or \
                self.software.startswith("IndicaLabsImageWriter") or \
                not (self.imagewidth or self.imagelength):
            raise _Unplain
        dtype = _DTYPES.get((self.sampleformat, self.bitspersample))
        if dtype is None:
            raise _Unplain
        self.dtype = np.dtype(dtype)
        self.is_tiled = 322 in tags
        self.tilewidth, self.tilelength = get(322, 0), get(323, 0)
        if self.is_tiled != (323 in tags) or (self.is_tiled and not (self.tilewidth and self.tilelength)):
            raise _Unplain
        offsets, counts = (tags.get(324), tags.get(325)) if self.is_tiled else (tags.get(273), tags.get(279))
        if offsets is None or counts is None:
            raise _Unplain
        most = max(offsets.count, counts.count)
        self.rowsperstrip = 0
        if not self.is_tiled:
            rps = tags.get(278)
            rows = self.imagelength if rps is None or rps.count > 1 else rps.value
            if not isinstance(rows, int):
                raise _Unplain
            self.rowsperstrip = min(rows, self.imagelength)
            if self.imagelength and self.rowsperstrip:  # as tifffile: extra strips are dropped
                most = -(-self.imagelength // self.rowsperstrip)
                if self.planarconfig == 2:
                    most *= self.samplesperpixel
        self.tables = offsets.table(most), counts.table(most)
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self._pages: list[Page] | None = None

    @property
    def dataoffsets(self) -> np.ndarray:
        return self._read_tables()[0]

    @property
    def databytecounts(self) -> np.ndarray:
        return self._read_tables()[1]

    def _read_tables(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = self.tables[0].read(self.parent.source), self.tables[1].read(self.parent.source)
        return self._arrays

    def _same(self, value: Any) -> Any:
        """One number for a per-sample tag whose samples agree (as tifffile keeps it)."""
        if isinstance(value, tuple):
            value = value[:self.samplesperpixel]
            if not value or any(v != value[0] for v in value):
                raise _Unplain
            return value[0]
        return value

    @property
    def resolutionunit(self) -> int:
        tag = self.tags.get(296)
        return 2 if tag is None else tag.value

    def get_resolution(self) -> tuple[float, float]:
        """Pixels per resolution unit, X then Y (tifffile's ``get_resolution()``)."""
        out = []
        for code in (282, 283):
            tag = self.tags.get(code)
            try:
                n, d = (1, 1) if tag is None else tag.value
                out.append(n if d == 0 else n // d if n % d == 0 else n / d)
            except Exception:  # as tifffile: a value that is not one rational counts as 1
                out.append(1.0)
        return out[0], out[1]

    @property
    def pages(self) -> list[Page]:
        """The SubIFDs as pages."""
        if self._pages is None:
            self._pages = [Page(self.parent, int(o)) for o in self.subifds or ()]
        return self._pages


class Pages:
    """A plain TIFF's IFD chain, parsed page by page as asked."""

    def __init__(self, file: File):
        self.file = file
        self.first = Page(file, file.first)

    def all(self) -> list[Page]:
        """Every page of the chain (stopping at a loop or a link out of the file, as tifffile's
        walk does); TooLargeError past MAX_PAGES."""
        out, seen = [self.first], {self.first.offset}
        nxt = self.first.next
        while nxt and nxt not in seen and nxt + 2 <= self.file.size:
            if len(seen) == MAX_PAGES:
                raise TooLargeError(f"{self.file.source.path}: more than {MAX_PAGES} TIFF pages (IFDs): "
                                    f"refusing to list them")
            seen.add(nxt)
            page = Page(self.file, nxt)
            out.append(page)
            nxt = page.next
        return out


def read(source: ByteSource, head: bytes) -> Pages | None:
    """The file's pages when it is a plain TIFF (its first page parses), else None."""
    try:
        return Pages(File(source, head))
    except _ODD:
        return None


def all_pages(pages: Pages) -> list[Page] | None:
    """Every page, or None when one of them needs tifffile."""
    try:
        return pages.all()
    except TilescopeError:  # too many pages: refused, whoever would read them
        raise
    except _ODD:
        return None


# what a hostile IFD can raise here (values of the wrong type or size): tifffile decides then
_ODD = (_Unplain, struct.error, KeyError, TypeError, ValueError, OverflowError, IndexError)
