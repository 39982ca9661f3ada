"""Byte sources: where encoded pieces come from.

A file is read with ``os.pread`` on one descriptor, which needs no lock and no seek, so any number
of threads read one slide at once. Drivers hand the engine a :class:`Pieces` per plane of a level:
its encoded pieces and where each is read from (:class:`Home`); :class:`ByteRanges` is the byte
range table most formats are, :class:`PieceList` the defaults for pieces of another kind.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np

from .errors import CorruptDataError, SlideClosedError, SourceNotFoundError, UnsupportedFormatError
from .remote import RemoteSource, is_remote


class FileSource:
    """A read-only file read by offset. Thread-safe; ``close()`` is idempotent."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self._fd: int | None = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except (FileNotFoundError, NotADirectoryError):  # not there, or a component is a file
            raise SourceNotFoundError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise UnsupportedFormatError(f"{self.path}: is a directory, not an image file") from None
        st = os.fstat(self._fd)
        if stat.S_ISDIR(st.st_mode):
            os.close(self._fd)
            raise UnsupportedFormatError(f"{self.path}: is a directory, not an image file")
        self.size = st.st_size
        # what identifies this file's content for the parsed-slide cache
        self.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        self._lock = threading.Lock()
        self._inflight = 0  # reads using the descriptor now: close() waits for them

    def _after_fork(self) -> None:
        # (called by the Reader that reads it) the inherited descriptor reads on (pread moves
        # no shared offset); the parent's reads in flight are not the child's
        self._lock = threading.Lock()
        self._inflight = 0

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _acquire(self) -> int:
        """The descriptor, counted as in use until :meth:`_release`: close() waits for reads in
        flight, so a descriptor number is never reused under a read. (A plain lock and counter:
        this runs on every piece read, where a Condition and a context manager cost ~2 µs.)"""
        with self._lock:
            fd = self._fd
            if fd is None:
                raise SlideClosedError(f"{self.path}: slide is closed")
            self._inflight += 1
        return fd

    def _release(self) -> None:
        with self._lock:
            self._inflight -= 1

    def _outside(self, offset: int, count: int) -> CorruptDataError:
        return CorruptDataError(f"{self.path}: file is truncated or a size in it is forged: wanted "
                                f"{count} bytes at offset {offset}, file has {self.size} bytes")

    def pread(self, offset: int, count: int) -> bytes:
        if offset < 0 or count < 0 or offset + count > self.size:  # before allocating ``count`` bytes
            raise self._outside(offset, count)
        fd = self._acquire()
        try:
            data = os.pread(fd, count, offset)
        except OSError as e:
            raise CorruptDataError(f"{self.path}: cannot read {count} bytes at {offset}: {e}") from e
        finally:
            self._release()
        if len(data) != count:  # the file shrank since it was opened
            raise self._outside(offset, count)
        return data

    def readinto(self, offset: int, buffer: Any) -> None:
        """Fill the writable ``buffer`` with the bytes at ``offset``: straight from the page cache
        into the caller's memory (an output array), no intermediate bytes object."""
        view = memoryview(buffer).cast("B")
        done = 0
        fd = self._acquire()
        try:
            while done < len(view):
                n = os.preadv(fd, [view[done:]], offset + done)
                if n <= 0:
                    break
                done += n
        except OSError as e:
            raise CorruptDataError(f"{self.path}: cannot read {len(view)} bytes at {offset}: {e}") from e
        finally:
            self._release()
        if done != len(view):
            raise self._outside(offset, len(view))

    def head(self, n: int = 4096) -> bytes:
        """Up to ``n`` bytes from the start (fewer for a short file)."""
        return self.pread(0, min(n, self.size))

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        while self._inflight:  # rare: a read of another thread still in flight; reads take µs
            time.sleep(0.0002)
        if fd is not None:
            os.close(fd)


class Source(Protocol):
    """Where a slide's own bytes are: a local file (:class:`FileSource`), a DICOMweb server
    (``formats.dicomweb.UrlSource``), an object store tomorrow. The engine reads only through the
    :class:`Pieces` of a level; a Source is what their ``fetch`` gets when they live in the
    slide's own source, and what ``close()`` ends."""

    path: str

    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...


class ByteSource(Source, Protocol):
    """A Source read by byte offset (a local file today, HTTP or an object store tomorrow): what
    file drivers parse and :class:`ByteRanges` fetch from. Short reads are a CorruptDataError."""

    size: int

    def pread(self, offset: int, count: int) -> bytes: ...

    def readinto(self, offset: int, buffer: Any) -> None: ...

    def head(self, n: int = 4096) -> bytes: ...


class SourceFile(io.RawIOBase):
    """A ByteSource as a read-only binary file, for libraries that parse from a file object
    (tifffile, pydicom) when the bytes are not in a local file."""

    def __init__(self, source: ByteSource):
        super().__init__()
        self.source, self.name, self._pos = source, source.path, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = 0 if whence == 0 else self._pos if whence == 1 else self.source.size
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self.source.size - self._pos))
        if n:
            self.source.readinto(self._pos, view[:n])
            self._pos += n
        return n


def local(source: Source) -> str | None:
    """The local path of ``source``, or None when its bytes are elsewhere (a server, a bucket)."""
    return source.path if isinstance(source, FileSource) else None


class Detached:
    """The source of a parsed slide kept without an open file (the parse cache): closed."""

    closed = True

    def __init__(self, path: str):
        self.path = path

    def close(self) -> None:
        pass


class Handle(Protocol):
    """Anything a piece is fetched from: a Source, another file, a library's open dataset."""

    def close(self) -> None: ...


@dataclass(frozen=True, eq=False)
class Home:
    """Where some pieces are read from when not the slide's own source: another file, a server,
    a library handle. The reader opens one handle per ``key`` on first use (one per thread and key
    with ``per_thread``: libraries whose handles are not thread-safe) and closes it with the slide."""

    key: Hashable
    open: Callable[[], Handle]
    per_thread: bool = False
    fork_safe: bool = False  # a forked child may keep using the handle (pread on a descriptor)


class Pieces(Protocol):
    """The encoded pieces of one plane, indexed row-major over its grid (or in drawing order for
    placed pieces): how many, which are missing, where each is read from and how its bytes (or
    decoded array, for libraries that decode themselves) are fetched. Pieces name no open handle,
    so a parsed slide can be re-bound to a new descriptor."""

    label: str  # names the plane in error messages ("level 1")
    missing_ok: bool  # a missing piece is background (sparse formats), not an error
    prefetches: bool  # fetches are cheaper together: the engine calls ``prefetch`` before decoding

    def __len__(self) -> int: ...

    def is_missing(self, index: int) -> bool: ...

    def home(self, index: int) -> Home | None:
        """Where piece ``index`` is read from; None: the slide's own source."""
        ...

    def fetch(self, handle: Any, index: int) -> bytes | np.ndarray: ...

    def prefetch(self, handle: Any, indices: list[int]) -> None:
        """Start fetching ``indices`` (one read's uncached pieces, in decoding order)."""
        ...

    def check(self, where: str) -> None:
        """CorruptDataError (naming ``where``) if the table is inconsistent; run once, at open."""
        ...


class PieceList:
    """Defaults for :class:`Pieces`: every piece present, in the slide's own source, no prefetch."""

    missing_ok = False
    prefetches = False

    def __init__(self, n: int, label: str):
        self._n, self.label = n, label

    def __len__(self) -> int:
        return self._n

    def is_missing(self, index: int) -> bool:
        return False

    def home(self, index: int) -> Home | None:
        return None

    def prefetch(self, handle: Any, indices: list[int]) -> None:
        pass

    def check(self, where: str) -> None:
        pass


def open_file(path: str, remote_options: Any = None) -> ByteSource:
    """The file ``path``: a local one, or one on a server or in a bucket (a URL, read with
    ``remote_options``: the slide's own, its credentials and settings)."""
    return RemoteSource(path, remote_options) if is_remote(path) else FileSource(path)


def file_home(path: str, remote_options: Any = None) -> Home:
    """Pieces in another file (local, or at a URL), opened by offset like the slide's own. Both
    kinds stay usable in a forked child (a descriptor's pread; a remote source resets itself)."""
    return Home(path, functools.partial(open_file, path, remote_options), fork_safe=True)


@dataclass(frozen=True)
class TableRef:
    """A piece table still in the slide's own file: ``count`` integers of numpy type ``dtype`` at
    byte ``offset``, read on the first fetch of one of its pieces (a first open then reads no
    table of a level it may never read: ~0.15 ms of a fresh process's open of a 20000-tile SVS)."""

    offset: int
    count: int
    dtype: str

    def __len__(self) -> int:
        return self.count

    @property
    def nbytes(self) -> int:
        return self.count * np.dtype(self.dtype).itemsize

    def part(self, start: int, count: int) -> TableRef:
        """Values ``start`` to ``start + count`` (a planar-separate page's planes)."""
        count = max(0, min(count, self.count - start))
        return TableRef(self.offset + start * np.dtype(self.dtype).itemsize, count, self.dtype)

    def read(self, source: ByteSource, count: int | None = None) -> np.ndarray:
        """The table (or its first ``count`` values), a read-only view of the bytes read."""
        n = self.count if count is None else min(count, self.count)
        return np.frombuffer(source.pread(self.offset, n * np.dtype(self.dtype).itemsize), self.dtype)


Table = Sequence[int] | np.ndarray | TableRef  # what ByteRanges takes as a piece table


def table_values(table: np.ndarray | TableRef, source: ByteSource) -> np.ndarray:
    """A piece table's values: as they are, or read from ``source`` when still in the file."""
    return table.read(source) if isinstance(table, TableRef) else table


def _table(values: Table) -> np.ndarray | TableRef:
    """A piece table as an integer array: kept in the type it came in (a view of a file's table
    bytes), else int64; or a :class:`TableRef` read later. Readers take ``int()`` of its items
    before any arithmetic."""
    if isinstance(values, TableRef) or (isinstance(values, np.ndarray) and values.dtype.kind in "iu"):
        return values
    return np.asarray(values, dtype=np.int64)


class ByteRanges(PieceList):
    """Pieces that are byte ranges of a file: the slide's own, or ``file`` (AFI channels, DICOM
    instances), or per piece ``files`` (a level spread over several files). A piece with no bytes
    is missing: an error, unless ``missing_ok`` (sparse formats: background). ``offsets`` and
    ``counts`` are arrays, or :class:`TableRef` until :meth:`tables` first reads them (only for
    the slide's own file, never with ``missing_ok``)."""

    def __init__(self, offsets: Table, counts: Table, label: str, missing_ok: bool = False,
                 file: str | None = None):
        self.offsets, self.counts = _table(offsets), _table(counts)
        if isinstance(self.offsets, TableRef) and (missing_ok or file is not None):
            raise ValueError("a table read later is for pieces of the slide's own file, none missing")
        super().__init__(len(self.offsets), label)
        self.missing_ok = missing_ok
        self.file = file
        self.files: list[str] | None = None
        self.remote_options: Any = None  # how the files are read when they are URLs
        self._homes: dict[str, Home] = {}

    def tables(self, source: ByteSource) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, counts) as arrays, reading them from ``source`` (the slide's own) the first
        time. Threads that race here read the same bytes; either result is kept."""
        offsets, counts = table_values(self.offsets, source), table_values(self.counts, source)
        self.offsets, self.counts = offsets, counts
        return offsets, counts

    def __sizeof__(self) -> int:  # the parse cache's measure counts the tables not read yet
        return object.__sizeof__(self) + sum(t.nbytes for t in (self.offsets, self.counts)
                                             if isinstance(t, TableRef))

    def is_missing(self, index: int) -> bool:  # only asked with missing_ok: arrays, never TableRef
        offsets, counts = cast(np.ndarray, self.offsets), cast(np.ndarray, self.counts)
        return bool(counts[index] <= 0 or offsets[index] <= 0)

    def check(self, where: str) -> None:
        if len(self.counts) != len(self.offsets) or \
                any(isinstance(t, np.ndarray) and t.ndim != 1 for t in (self.offsets, self.counts)):
            raise CorruptDataError(f"{where}: {self.label}: {len(self.offsets)} piece offsets but "
                                   f"{len(self.counts)} byte counts")
        if self.files is not None and len(self.files) != len(self.offsets):
            raise CorruptDataError(f"{where}: {self.label}: {len(self.offsets)} pieces but "
                                   f"{len(self.files)} files")

    def home(self, index: int) -> Home | None:
        path = self.files[index] if self.files is not None else self.file
        if path is None:
            return None
        home = self._homes.get(path)
        if home is None:
            home = self._homes[path] = file_home(path, self.remote_options)
        return home

    def prefetch(self, handle: Any, indices: list[int]) -> None:
        """Hand a source read by request (``remote.RemoteSource.prefetch``) the pieces' byte ranges."""
        warm = getattr(handle, "prefetch", None)
        if warm is not None:
            offsets, counts = self.tables(handle)
            warm([(int(offsets[i]), int(counts[i])) for i in indices])

    def fetch(self, handle: ByteSource, index: int) -> bytes:
        """The encoded bytes of piece ``index``; CorruptDataError if it is missing or truncated."""
        offsets, counts = self.offsets, self.counts
        if not isinstance(counts, np.ndarray) or not isinstance(offsets, np.ndarray):
            offsets, counts = self.tables(handle)
        count = int(counts[index])
        offset = int(offsets[index])
        if count <= 0 or offset <= 0:
            raise CorruptDataError(
                f"{handle.path}: {self.label}: piece {index} has no data "
                f"(offset {offset}, {count} bytes)")
        if offset + count > handle.size:
            raise CorruptDataError(
                f"{handle.path}: {self.label}: piece {index} ends at byte {offset + count}, "
                f"past the end of the file ({handle.size} bytes): the file is truncated")
        return handle.pread(offset, count)
