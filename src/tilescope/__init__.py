"""tilescope: read whole-slide and multi-dimensional microscopy images.

>>> import tilescope
>>> with tilescope.open("slide.svs") as slide:
...     scene = slide.scenes[0]
...     thumb = scene.read(size=(1024, 0))        # whole scene, 1024 px wide, (h, w, 3)
...     patch = scene.read((1000, 2000, 512, 512))  # level-0 pixels
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType
from typing import Any, cast

import numpy as np

from . import formats, remote
from .cache import TileCache
from .engine import DEFAULT_CACHE, Options
from .errors import (
    CorruptDataError,
    InvalidRequestError,
    NotFoundError,
    RemoteError,
    SlideClosedError,
    SourceChangedError,
    SourceNotFoundError,
    TilescopeError,
    TooLargeError,
    UnsupportedFormatError,
    WriteError,
)
from .model import Level, Scene, Slide, clone
from .procs import Ticket
from .source import ByteSource, FileSource, local

__version__ = "0.1.0"
__all__ = [
    "CorruptDataError",
    "InvalidRequestError",
    "Level",
    "NotFoundError",
    "Options",
    "RemoteError",
    "Scene",
    "Slide",
    "SlideClosedError",
    "SourceChangedError",
    "SourceNotFoundError",
    "TileCache",
    "TilescopeError",
    "TooLargeError",
    "UnsupportedFormatError",
    "WriteError",
    "detect",
    "drivers",
    "open",
    "options",
    "write",
]

def __getattr__(name: str) -> Any:
    # tilescope.write (tilescope.writer.write), loaded when first asked: opening slides does not
    # pay for the writers' imports
    if name == "write":
        from .writer import write

        return write
    raise AttributeError(f"module 'tilescope' has no attribute {name!r}")


#: Process-wide defaults for every ``open()``; each field can be overridden per slide.
options = Options()
_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(Options))

# Parsed slides by file identity (device, inode, size, mtime) and forced driver, with the folder's
# mtime for slides gathered from their folder (DICOM): data loaders re-open a slide for every
# sample, and a re-open then costs an open() and an fstat(). Bounded in slides and in the memory
# they hold (a 40000x30000 SVS holds ~330 KiB; a forged 10^6² px DICOM level 15 M tiles: ~380 MB
# of piece tables; a fuzzing run kept such slides until glibc's heap grew past 2 GB).
_PARSED: OrderedDict = OrderedDict()  # key -> (slide, folder mtime, bytes it holds or None: not yet measured)
_PARSED_MAX = 128
_PARSED_BYTES = 64 << 20
_PARSED_ONE = 16 << 20  # a slide holding more is not kept: its reads cost far more than its parse
_parsed_lock = threading.Lock()


def _reset_parsed_lock() -> None:  # a parent thread may have held it at the fork
    global _parsed_lock
    _parsed_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_parsed_lock)


def _folder_mtime(path: str) -> int:
    return os.stat(os.path.dirname(os.path.abspath(path))).st_mtime_ns


def drivers() -> list[str]:
    """Driver names: file formats in detection order, then the drivers of URLs."""
    return [m.NAME for m in formats.modules() + formats.url_modules()]


def _probe_driver(source: ByteSource) -> formats.Probe:
    probe = formats.Probe(source)
    if not probe.head:
        probe.close()
        raise UnsupportedFormatError(f"{source.path}: file is empty")
    return probe


def _options(overrides: dict[str, Any]) -> Options:
    """The process defaults with this slide's ``overrides``; unknown names are an error."""
    unknown = set(overrides) - _OPTION_NAMES
    if unknown:
        raise InvalidRequestError(f"unknown option(s) {sorted(unknown)}; known: {sorted(_OPTION_NAMES)}")
    opts = clone(options)  # dataclasses.replace costs a re-open a third of its time
    opts.__dict__.update(overrides)
    return opts


def _in_folder(source: str) -> str:
    """A folder stands for its slide: the first file (by name) of a format whose slides span several
    files (DICOM; the driver gathers the rest and chooses among the folder's slides), else the
    first file any driver recognizes."""
    first = None
    for name in sorted(os.listdir(source)):
        path = os.path.join(source, name)
        mod = _detect_file(path) if os.path.isfile(path) else None
        if mod is not None and getattr(mod, "MULTI_FILE", False):
            return path
        if first is None and mod is not None:
            first = path
    if first is None:
        raise UnsupportedFormatError(f"{os.fspath(source)}: a folder with no file tilescope reads")
    return first


def _detect_file(path: str) -> ModuleType | None:
    """The driver module that recognizes the file ``path``, or None."""
    try:
        src = FileSource(path)
    except TilescopeError:
        return None
    return _detect_source(src)


def _detect_source(src: ByteSource) -> ModuleType | None:
    """The driver module that recognizes ``src`` (closed after), or None."""
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


def detect(source: str | bytes | os.PathLike) -> str | None:
    """The name of the driver that would open ``source`` (a file, a folder: see :func:`open`, the
    URL of a file on a server or in a bucket, or a URL a driver opens by its scheme, such as
    ``dicomweb+https://``), or None if no driver recognizes it."""
    source = os.fsdecode(source)
    if (web := formats.for_url(source)) is not None:  # named by its scheme: nothing is fetched
        return web.NAME
    if remote.is_remote(source):
        mod = _detect_source(_remote_file(cast(str, source), remote.RemoteOptions()))
        return mod.NAME if mod else None
    if os.path.isdir(source):
        try:
            source = _in_folder(os.fspath(source))
        except UnsupportedFormatError:
            return None
    mod = _detect_file(os.fspath(source))
    if mod is None and not os.path.exists(source):
        raise SourceNotFoundError(f"{os.fspath(source)}: no such file")
    return mod.NAME if mod else None


def open(source: str | bytes | os.PathLike | Sequence[str | os.PathLike], driver: str | None = None,
         **overrides: Any) -> Slide:
    """Open an image and return a :class:`Slide`.

    ``source`` is one of:

    - a file (str, bytes or os.PathLike; the format is detected from the content: magic bytes, TIFF
      tags, ImageDescription; ``driver`` forces one, by our name, slideio's (``OMETIFF``, ``DCM``)
      or openslide's vendor (``aperio``): see :func:`drivers`);
    - a folder (its DICOM slide, or its first file a driver recognizes), or a list of files (the
      instances of one DICOM slide);
    - the URL of a file on a web server or in an object store (``https://``, ``s3://``, ``gs://``,
      ``az://``; a prefix ending in ``/`` for a DICOM folder): keywords ``storage_options``
      (``headers``, ``verify`` for HTTP; fsspec's for object stores), ``connections``,
      ``cache_bytes``, ``min_read``, ``gap``, ``max_span``, ``timeout``, ``retries``,
      ``max_download`` (:class:`tilescope.remote.RemoteOptions`);
    - a DICOMweb server: ``dicomweb+http(s)://host/path`` (an ``http(s)://`` URL given ``study=``
      or ``series=`` is taken as one too), keywords ``study``, ``series``, ``headers``, ``verify``,
      ``timeout``, ``retries``, ``max_response_bytes``, ``batch``, ``connections``, ``whole_study``.

    ``overrides`` are :class:`Options` fields for this slide: ``max_read_bytes``, ``band_bytes``,
    ``threads``, ``cache`` (a :class:`TileCache`; by default one process-wide cache of 64 MiB is
    shared), ``srgb``, ``dct_scaling``, ... See the README for each.
    """
    if isinstance(source, str) and source.startswith(remote.HTTP_SCHEMES) and \
            {"study", "series"} & overrides.keys():  # a DICOMweb server named without its prefix
        source = "dicomweb+" + source
    if isinstance(source, str) and (web := formats.for_url(source)) is not None:
        ticket = Ticket(source, driver, dict(overrides))
        names = {f.name for f in dataclasses.fields(web.URL_OPTIONS)}
        url_options = web.URL_OPTIONS(**{k: overrides.pop(k) for k in list(overrides) if k in names})
        slide = web.open_url(source, _options(overrides), url_options)
        slide._ticket = ticket
        return slide
    if remote.is_remote(source[0] if isinstance(source, (list, tuple)) and source else source):
        return _open_remote(source, driver, overrides)
    path, folder, files = _resolve(source)
    opts = _options(overrides)
    src = FileSource(path)
    key = (src.identity, driver.upper() if driver else None, folder is not None)
    slide = _bind_or_parse(src, opts, driver, folder, files, key, path)
    # what a pickle of it re-opens: absolute paths (another process may work elsewhere)
    where = [_absolute(f) for f in files] if files is not None else _absolute(folder or path)
    slide._ticket = Ticket(where, driver, overrides, src.identity[2:])
    return slide


def _open_remote(source: Any, driver: str | None, overrides: dict[str, Any]) -> Slide:
    """A slide on a web server or in an object store (:mod:`.remote`): a file's URL, a list of
    URLs (the instances of a DICOM slide) or an object store's prefix ending in ``/`` (a folder:
    its first DICOM file stands for it); parsed from the bytes as a file is, through the block
    cache; the parse cache knows a file by URL, size and ETag."""
    given = dict(overrides)
    names = {f.name for f in dataclasses.fields(remote.RemoteOptions)}
    ropts = remote.RemoteOptions(**{k: overrides.pop(k) for k in list(overrides) if k in names})
    opts = _options(overrides)
    files = [os.fspath(u) for u in source] if isinstance(source, (list, tuple)) else None
    folder = source if files is None and source.endswith("/") and not _is_zarr(source) else None
    src = _first_dicom(folder, ropts) if folder else _remote_file(files[0] if files else source, ropts)
    key = (src.identity, driver.upper() if driver else None, folder is not None)
    slide = _bind_or_parse(src, opts, driver, folder, files, key, src.path)
    one = files is None and folder is None
    slide._ticket = Ticket(source, driver, given, src.identity[2:] if one else None)
    return slide


def _is_zarr(url: str) -> bool:
    return url.rstrip("/").endswith(".zarr")


def _remote_file(url: str, options: remote.RemoteOptions) -> remote.RemoteSource:
    """The object a URL stands for, opened: itself, or for a zarr store (a URL ending in ``.zarr``)
    its group's metadata, ``zarr.json`` (v3) else ``.zattrs`` (v2)."""
    if not _is_zarr(url):
        return remote.RemoteSource(url, options)
    try:
        return remote.RemoteSource(url.rstrip("/") + "/zarr.json", options)
    except SourceNotFoundError:
        return remote.RemoteSource(url.rstrip("/") + "/.zattrs", options)


def _first_dicom(folder: str, options: remote.RemoteOptions) -> remote.RemoteSource:
    """The first object under an object store's prefix that is a DICOM file, opened."""
    for url in remote.listing(folder, options=options):
        src = remote.RemoteSource(url, options)
        if src.head(132)[128:132] == b"DICM":
            return src
        src.close()
    raise UnsupportedFormatError(f"{folder}: no DICOM file under this prefix")


def _bind_or_parse(src: ByteSource, opts: Options, driver: str | None, folder: str | None,
                   files: list[str] | None, key: Hashable, where: str) -> Slide:
    """The parse cache's slide of ``key`` bound to ``src``, or ``src`` parsed (closed on failure)."""
    parsed = _cached(key, where) if files is None else None
    if parsed is not None:
        return parsed._bind(src, opts)
    try:
        return _parse(src, opts, driver, folder, files, key)
    except BaseException:
        src.close()
        raise


def _absolute(path: str) -> str:
    # abspath asks the kernel for the working directory: only where needed (re-opens cost ~15 µs)
    return path if path.startswith(os.sep) else os.path.abspath(path)


def _resolve(source: str | bytes | os.PathLike | Sequence[str | os.PathLike]
             ) -> tuple[str, str | None, list[str] | None]:
    """(the file to open, the folder it stands for or None, the list of files or None)."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise InvalidRequestError("open: an empty list of files")
        files = [os.fsdecode(p) for p in source]
        return files[0], None, files
    given = os.fsdecode(source)  # type: ignore[arg-type]  # str, bytes or os.PathLike (lists handled above)
    if not os.path.isdir(given):
        return given, None, None
    return _in_folder(given), given, None


def _cached(key: Hashable, path: str) -> Slide | None:
    """The parsed slide of an unchanged file (and, for slides gathered from their folder, an
    unchanged folder: files added are seen), or None."""
    with _parsed_lock:
        parsed, mtime, _ = _PARSED.get(key, (None, None, 0))
        if parsed is not None:
            _PARSED.move_to_end(key)
    if parsed is not None and (mtime is None or mtime == _folder_mtime(path)):
        return parsed
    return None


def _parse(src: ByteSource, opts: Options, driver: str | None, folder: str | None, files: list[str] | None,
           key: Hashable) -> Slide:
    probe = _probe_driver(src)
    probe.folder = folder  # the folder the caller opened (drivers of several files choose in it)
    try:
        mod = formats.by_name(driver) if driver else formats.detect(probe)
        if mod is None:
            raise UnsupportedFormatError(
                f"{src.path}: not a format tilescope reads (starts with {probe.head[:8]!r}; "
                f"drivers: {', '.join(drivers())})")
        if driver and not mod.detect(probe):
            raise UnsupportedFormatError(f"{src.path}: is not a {mod.NAME} file")
        multi = getattr(mod, "MULTI_FILE", False)
        if local(src) is None and getattr(mod, "LOCAL_ONLY", False):
            raise UnsupportedFormatError(f"{src.path}: {mod.NAME} slides are read from local files only (the "
                                         "driver opens files by path), not from a server or a bucket")
        if files is not None and not multi:
            raise InvalidRequestError(f"{src.path}: a list of files is read as the files of one slide "
                                      f"(DICOM instances); a {mod.NAME} slide is opened by its file")
        try:
            if files is not None:
                return mod.open(probe, opts, files=files)
            # before the parse: changes during it count
            mtime = _folder_mtime(src.path) if multi and local(src) else None
            slide = mod.open(probe, opts)
        except TilescopeError:
            raise
        except Exception as e:  # a library's parse error on damaged structure: ours, naming the file
            raise CorruptDataError(f"{src.path}: cannot read the {mod.NAME} structure: "
                                   f"{type(e).__name__}: {e}") from e
        _keep_parsed(key, slide._bind(None, opts), mtime)
        return slide
    finally:
        probe.close()


_SHARED = (type, ModuleType, FunctionType, BuiltinFunctionType, MethodType, TileCache)
_LEAVES = frozenset((int, float, str, bytes, bool, type(None)))  # no references to follow


def _footprint(root: Any) -> int:
    """About the bytes held by the objects reachable from ``root`` (numpy arrays by their data),
    not counting what is shared with everything else: modules, classes, functions, the tile cache.
    A list or tuple of more than 4096 items is judged by 1024 of them (a forged file's list of
    millions would take a second to walk)."""
    seen: set[int] = set()
    todo, total = [root], 0
    getsize, referents = sys.getsizeof, gc.get_referents
    while todo:
        o = todo.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        kind = type(o)
        if kind in _LEAVES:  # most of what a parsed slide holds: sized without a referents call
            total += getsize(o)
            continue
        if isinstance(o, _SHARED):
            continue
        if isinstance(o, np.ndarray):  # its data, or the buffer it views
            if o.base is None:
                total += o.nbytes
            else:
                todo.append(o.base)
            continue
        total += getsize(o)
        if isinstance(o, (list, tuple)) and len(o) > 4096:
            sample = o[::len(o) // 1024]
            distinct = list({id(x): x for x in sample}.values())  # [path] * n holds one path
            more = len(o) * len(distinct) // len(sample) - len(distinct)
            total += sum(map(getsize, distinct)) * more // len(distinct)
            todo.extend(distinct)
        else:
            todo.extend(referents(o))
    return total


def _keep_parsed(key: Hashable, parsed: Slide, mtime: Any) -> None:
    """Keep a parsed slide for re-opens. What it holds is measured (a walk: ~0.2 ms) when the next
    slide is parsed, not now: until then the caller's open slide holds the same structure, so the
    bound is the same, and a process's first open pays no walk. Then a slide holding more than
    ``_PARSED_ONE`` is dropped, and the oldest go while all hold more than ``_PARSED_BYTES``."""
    with _parsed_lock:
        pending = [(k, e[0]) for k, e in _PARSED.items() if e[2] is None]
    sizes = [(k, p, _footprint(p)) for k, p in pending]  # outside the lock: opens go on meanwhile
    with _parsed_lock:
        for k, p, size in sizes:
            entry = _PARSED.get(k)
            if entry is not None and entry[0] is p:
                if size > _PARSED_ONE:
                    del _PARSED[k]
                else:
                    _PARSED[k] = p, entry[1], size
        _PARSED[key] = parsed, mtime, None
        total = sum(e[2] or 0 for e in _PARSED.values())
        while len(_PARSED) > _PARSED_MAX or total > _PARSED_BYTES:
            total -= _PARSED.popitem(last=False)[1][2] or 0


def set_cache_size(nbytes: int) -> None:
    """Resize the process-wide decoded-tile cache (0 disables it)."""
    DEFAULT_CACHE.resize(nbytes)
