"""tilescope: read whole-slide and multi-dimensional microscopy images.

>>> import tilescope
>>> with tilescope.open("slide.svs") as slide:
...     scene = slide.scenes[0]
...     thumb = scene.read(size=(1024, 0))        # whole scene, 1024 px wide, (h, w, 3)
...     patch = scene.read((1000, 2000, 512, 512))  # level-0 pixels
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence

from . import formats
from .cache import TileCache
from .engine import DEFAULT_CACHE, Options
from .errors import (
    CorruptDataError,
    InvalidRequestError,
    RemoteError,
    SlideClosedError,
    SourceNotFoundError,
    TilescopeError,
    TooLargeError,
    UnsupportedFormatError,
)
from .model import Level, Scene, Slide
from .source import FileSource

__version__ = "0.1.0"
__all__ = [
    "CorruptDataError",
    "InvalidRequestError",
    "Level",
    "Options",
    "RemoteError",
    "Scene",
    "Slide",
    "SlideClosedError",
    "SourceNotFoundError",
    "TileCache",
    "TilescopeError",
    "TooLargeError",
    "UnsupportedFormatError",
    "detect",
    "drivers",
    "open",
    "options",
]

#: Process-wide defaults for every ``open()``; each field can be overridden per slide.
options = Options()

# Parsed slides by file identity (device, inode, size, mtime) and forced driver, with the folder's
# mtime for slides gathered from their folder (DICOM): data loaders re-open a slide for every
# sample, and a re-open then costs an open() and an fstat().
_PARSED: OrderedDict = OrderedDict()
_PARSED_MAX = 128
_parsed_lock = threading.Lock()


def _folder_mtime(path) -> int:
    return os.stat(os.path.dirname(os.path.abspath(path))).st_mtime_ns


def drivers() -> list[str]:
    """Driver names, in detection order."""
    return [m.NAME for m in formats.modules()]


def _probe_driver(source: FileSource):
    probe = formats.Probe(source)
    if not probe.head:
        probe.close()
        raise UnsupportedFormatError(f"{source.path}: file is empty")
    return probe


def _checked(overrides: dict) -> dict:
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Options)}
    if unknown:
        raise InvalidRequestError(f"unknown option(s) {sorted(unknown)}; known: "
                                  f"{sorted(f.name for f in dataclasses.fields(Options))}")
    return overrides


def _in_folder(source):
    """A folder stands for its slide: the first file (by name) of a format whose slides span several
    files (DICOM; the driver gathers the rest and chooses among the folder's slides), else the
    first file any driver recognizes."""
    if not os.path.isdir(source):
        return source
    first = None
    for name in sorted(os.listdir(source)):
        path = os.path.join(source, name)
        mod = _detect_file(path) if os.path.isfile(path) else None
        if mod is not None and getattr(mod, "MULTI_FILE", False):
            return path
        first = first or (mod and path)
    if first is None:
        raise UnsupportedFormatError(f"{os.fspath(source)}: a folder with no file tilescope reads")
    return first


def _detect_file(path):
    """The driver module that recognizes the file ``path``, or None."""
    try:
        src = FileSource(path)
    except TilescopeError:
        return None
    try:
        probe = formats.Probe(src)
        try:
            return formats.detect(probe) if probe.head else None
        except CorruptDataError:
            return None
        finally:
            probe.close()
    finally:
        src.close()


def detect(source: str | os.PathLike) -> str | None:
    """The name of the driver that would open ``source`` (a file, or a folder: see :func:`open`),
    or None if no driver recognizes it."""
    if os.path.isdir(source):
        try:
            source = _in_folder(source)
        except UnsupportedFormatError:
            return None
    mod = _detect_file(source)
    if mod is None and not os.path.exists(source):
        raise SourceNotFoundError(f"{os.fspath(source)}: no such file")
    return mod.NAME if mod else None


def open(source: str | os.PathLike | Sequence[str | os.PathLike], driver: str | None = None,
         **overrides) -> Slide:
    """Open an image file and return a :class:`Slide`.

    The format is detected from the content (magic bytes, TIFF tags, ImageDescription); ``driver``
    forces one (see :func:`drivers`). A folder stands for its first file a driver recognizes; a
    list of files is the instances of one DICOM slide. ``overrides`` are :class:`Options` fields
    for this slide: ``max_read_bytes``, ``band_bytes``, ``threads``, ``cache`` (a
    :class:`TileCache`; by default one process-wide cache of 64 MiB is shared).
    """
    if isinstance(source, str) and source.startswith("dicomweb+"):
        from .formats import dicomweb

        web = {k: overrides.pop(k) for k in ("study", "series", "headers", "verify", "timeout", "retries",
                                              "batch", "connections", "whole_study") if k in overrides}
        return dicomweb.open_url(source, dataclasses.replace(options, **_checked(overrides)), **web)
    files = None
    if isinstance(source, (list, tuple)):
        if not source:
            raise InvalidRequestError("open: an empty list of files")
        files = [os.fspath(p) for p in source]
        given = files[0]
    else:
        given = os.fspath(source)  # type: ignore[arg-type]  # a str or PathLike here
    folder = given if files is None and os.path.isdir(given) else None
    path = _in_folder(given)
    fields = {f.name for f in dataclasses.fields(Options)}
    unknown = set(overrides) - fields
    if unknown:
        raise InvalidRequestError(f"unknown option(s) {sorted(unknown)}; known: {sorted(fields)}")
    opts = dataclasses.replace(options, **overrides)
    src = FileSource(path)
    probe = None
    key = (src.identity, driver.upper() if driver else None, folder is not None)
    with _parsed_lock:
        parsed, mtime = _PARSED.get(key, (None, None)) if files is None else (None, None)
        if parsed is not None:
            _PARSED.move_to_end(key)
    # a slide gathered from its folder is parsed again once the folder changed (files added)
    if parsed is not None and (mtime is None or mtime == _folder_mtime(path)):
        return parsed._bind(src, opts)
    try:
        probe = _probe_driver(src)
        probe.folder = folder  # the folder the caller opened (drivers of several files choose in it)
        mod = formats.by_name(driver) if driver else formats.detect(probe)
        if mod is None:
            raise UnsupportedFormatError(
                f"{src.path}: not a format tilescope reads (starts with {probe.head[:8]!r}; "
                f"drivers: {', '.join(drivers())})")
        if driver and not mod.detect(probe):
            raise UnsupportedFormatError(f"{src.path}: is not a {mod.NAME} file")
        multi = getattr(mod, "MULTI_FILE", False)
        if files is not None and not multi:
            raise InvalidRequestError(f"{src.path}: a list of files is read as the files of one slide "
                                      f"(DICOM instances); a {mod.NAME} slide is opened by its file")
        try:
            if files is not None:
                return mod.open(probe, opts, files=files)
            mtime = _folder_mtime(path) if multi else None  # before the parse: changes during it count
            slide = mod.open(probe, opts)
            with _parsed_lock:
                _PARSED[key] = slide._bind(None, opts), mtime
                while len(_PARSED) > _PARSED_MAX:
                    _PARSED.popitem(last=False)
            return slide
        except TilescopeError:
            raise
        except Exception as e:  # a library's parse error on damaged structure: ours, naming the file
            raise CorruptDataError(f"{src.path}: cannot read the {mod.NAME} structure: "
                                   f"{type(e).__name__}: {e}") from e
    except BaseException:
        src.close()
        raise
    finally:
        if probe is not None:
            probe.close()


def set_cache_size(nbytes: int) -> None:
    """Resize the process-wide decoded-tile cache (0 disables it)."""
    DEFAULT_CACHE.resize(nbytes)
