"""Byte sources: where encoded pieces come from.

A file is read with ``os.pread`` on one descriptor, which needs no lock and no seek, so any number
of threads read one slide at once. Drivers hand the engine a :class:`Pieces` per plane of a level:
the byte ranges of its encoded pieces in one source.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading

import numpy as np

from .errors import CorruptDataError, SlideClosedError, SourceNotFoundError, UnsupportedFormatError


class FileSource:
    """A read-only file read by offset. Thread-safe; ``close()`` is idempotent."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self._fd: int | None = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
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
        self._cond = threading.Condition()
        self._inflight = 0

    @property
    def closed(self) -> bool:
        return self._fd is None

    @contextlib.contextmanager
    def _using_fd(self):
        """The descriptor, counted as in use: close() waits for reads in flight, so a descriptor
        number is never reused under a read."""
        with self._cond:
            fd = self._fd
            if fd is None:
                raise SlideClosedError(f"{self.path}: slide is closed")
            self._inflight += 1
        try:
            yield fd
        finally:
            with self._cond:
                self._inflight -= 1
                if not self._inflight:
                    self._cond.notify_all()

    def pread(self, offset: int, count: int) -> bytes:
        with self._using_fd() as fd:
            try:
                data = os.pread(fd, count, offset)
            except OSError as e:
                raise CorruptDataError(f"{self.path}: cannot read {count} bytes at {offset}: {e}") from e
        if len(data) != count:
            raise CorruptDataError(
                f"{self.path}: file is truncated: wanted {count} bytes at offset {offset}, "
                f"file has {self.size} bytes")
        return data

    def readinto(self, offset: int, buffer) -> None:
        """Fill the writable ``buffer`` with the bytes at ``offset``: straight from the page cache
        into the caller's memory (an output array), no intermediate bytes object."""
        view = memoryview(buffer).cast("B")
        done = 0
        with self._using_fd() as fd:
            try:
                while done < len(view):
                    n = os.preadv(fd, [view[done:]], offset + done)
                    if n <= 0:
                        break
                    done += n
            except OSError as e:
                raise CorruptDataError(f"{self.path}: cannot read {len(view)} bytes at {offset}: {e}") from e
        if done != len(view):
            raise CorruptDataError(f"{self.path}: file is truncated: wanted {len(view)} bytes at offset "
                                   f"{offset}, file has {self.size} bytes")

    def head(self, n: int = 4096) -> bytes:
        """Up to ``n`` bytes from the start (fewer for a short file)."""
        return self.pread(0, min(n, self.size))

    def close(self) -> None:
        with self._cond:
            fd, self._fd = self._fd, None
            self._cond.wait_for(lambda: not self._inflight)
        if fd is not None:
            os.close(fd)


class Pieces:
    """The encoded pieces of one plane: byte ranges in the slide's file, indexed row-major over
    the grid. They name no open file, so a parsed slide can be re-bound to a new descriptor.

    ``label`` names the plane in error messages (for example ``"level 1"``). ``file`` names
    another file the bytes are in, for formats spread over several files; the slide's reader opens
    it on first use and closes it with the slide.
    A piece with no bytes is missing: an error, unless ``missing_ok`` (sparse formats), in which
    case the engine fills it with background.
    """

    def __init__(self, offsets, counts, label: str, missing_ok: bool = False, file: str | None = None):
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.label = label
        self.missing_ok = missing_ok
        self.file = file  # None: the slide's own file; else another file's path (AFI channels)
        self.files: list[str] | None = None  # per piece, when a plane's pieces span several files

    # what the reader opens for ``file``, and whether one per thread (libraries whose handles are
    # not thread-safe); ``fetch`` gets it as its ``source``
    per_thread = False

    def opener(self, path: str):
        return FileSource(path)

    # pieces whose fetches are cheaper together (a network round trip) define
    # ``prefetch(source, indices)``: the engine calls it with every piece a read is about to decode
    prefetch = None

    def __len__(self) -> int:
        return len(self.offsets)

    def is_missing(self, index: int) -> bool:
        return self.counts[index] <= 0 or self.offsets[index] <= 0

    def fetch(self, source: FileSource, index: int) -> bytes:
        """The encoded bytes of piece ``index``; CorruptDataError if it is missing or truncated."""
        count = int(self.counts[index])
        offset = int(self.offsets[index])
        if count <= 0 or offset <= 0:
            raise CorruptDataError(
                f"{source.path}: {self.label}: piece {index} has no data "
                f"(offset {offset}, {count} bytes)")
        if offset + count > source.size:
            raise CorruptDataError(
                f"{source.path}: {self.label}: piece {index} ends at byte {offset + count}, "
                f"past the end of the file ({source.size} bytes): the file is truncated")
        return source.pread(offset, count)
