"""The one read path every format shares.

A driver describes each level as :class:`Plane` objects (a grid of encoded pieces + a codec) and a
channel map; this module turns a request into pixels: pick the level, find the intersecting
pieces, fetch and decode them on the thread pool (cache in front), paste each into the output with
one copy, fill what lies outside with background, and area-resample when the output is smaller.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from . import procs
from .cache import DEFAULT_CACHE, TileCache
from .codecs import Codec
from .errors import CorruptDataError, InvalidRequestError, SlideClosedError, TilescopeError, TooLargeError
from .geometry import LEVEL_TOLERANCE, best_level
from .pool import Helpers
from .source import Pieces, Source

_uid = itertools.count()
# a paste task: (plane, piece index, x0, y0, x1, y1 of its place in the plane, (samples, channels))
Task = tuple["Plane", int, int, int, int, int, tuple[Any, Any]]
Selection = tuple[Any, Any]  # (source samples, output channels): index lists or slices


@dataclass(eq=False)
class Plane:
    """One plane of one level: its pieces, their codec, the image ``size`` (w, h) in level pixels
    and the typical piece size ``tile``. Two kinds: :class:`GridPlane` (a regular grid) and
    :class:`PlacedPlane` (pieces anywhere); each knows which of its pieces a box needs
    (:meth:`tasks`), what a piece decodes to (:meth:`piece_shape`) and where its pixels land
    (:meth:`landing`), so the engine's read loop has no kind-shaped branches."""

    pieces: Pieces
    codec: Codec
    size: tuple[int, int]
    tile: tuple[int, int]
    uid: int = field(default_factory=lambda: next(_uid))  # its pieces' cache key (copies keep it)
    _reduced: dict = field(default_factory=dict, init=False, repr=False)
    prefills = False  # reads must fill background first (pieces may leave gaps)

    def tasks(self, box: tuple[int, int, int, int], sel: Selection) -> tuple[list[Task], list[Task]]:
        """The pieces intersecting ``box`` ((x0, y0, x1, y1) within the plane) as paste tasks
        (plane, index, x0, y0, x1, y1, sel): (any order, in drawing order)."""
        raise NotImplementedError

    def piece_shape(self, index: int) -> tuple[int, int, int, int]:
        """(w, h) of the buffer piece ``index`` decodes into, then (w, h) it decodes from."""
        raise NotImplementedError

    def landing(self, index: int, a: np.ndarray, own: bool, x0: int, y0: int, x1: int, y1: int
                ) -> tuple[np.ndarray, bool, int, int]:
        """Decoded piece ``index`` (placed at x0, y0) as pasted (a part of it, for some placed
        pieces), whether it is still the caller's own buffer, and its place's right and bottom edges."""
        return a, own, x1, y1

    def check(self, where: str) -> None:
        """Make sure a driver's description is one the engine can read, once, at open: sizes as
        positive ints, enough pieces for the plane, a codec with samples. Values come from the
        file, so anything else is a CorruptDataError naming ``where`` and the plane."""
        label = f"{where}: {self.pieces.label}"
        self.size = check_size(self.size, f"{label}: image size")
        self.tile = check_size(self.tile, f"{label}: piece size")
        if not 1 <= self.codec.samples <= _MAX_SAMPLES:
            raise CorruptDataError(f"{label}: {self.codec.samples} samples per pixel")
        self.pieces.check(where)

    def reduced(self, k: int) -> Plane | None:
        """This plane decoded at 1/k per axis (the same pieces, with their own cache entries), or
        None where it cannot be."""
        if k not in self._reduced:
            self._reduced[k] = self._reduce(k)
        return self._reduced[k]

    def _reduce(self, k: int) -> Plane | None:
        raise NotImplementedError


@dataclass(eq=False)
class GridPlane(Plane):
    """A regular grid of pieces (tiles, or strips as full-width tiles): piece ``ty * nx + tx``
    covers ``[tx*tw, (tx+1)*tw) x [ty*th, (ty+1)*th)`` clipped to the image."""

    @property
    def grid(self) -> tuple[int, int]:
        return -(-self.size[0] // self.tile[0]), -(-self.size[1] // self.tile[1])

    def tasks(self, box: tuple[int, int, int, int], sel: Selection) -> tuple[list[Task], list[Task]]:
        ix0, iy0, ix1, iy1 = box
        (tw, th), (pw, ph), (nx, _) = self.tile, self.size, self.grid
        return [(self, ty * nx + tx, tx * tw, ty * th, min((tx + 1) * tw, pw), min((ty + 1) * th, ph), sel)
                for ty in range(iy0 // th, (iy1 - 1) // th + 1)
                for tx in range(ix0 // tw, (ix1 - 1) // tw + 1)], []

    def piece_shape(self, index: int) -> tuple[int, int, int, int]:
        return (*self.tile, *self.tile)

    def check(self, where: str) -> None:
        super().check(where)
        nx, ny = self.grid
        if len(self.pieces) < nx * ny:
            (w, h), (tw, th) = self.size, self.tile
            raise CorruptDataError(
                f"{where}: {self.pieces.label}: {len(self.pieces)} pieces, but a {w}x{h} image in "
                f"{tw}x{th} pieces needs {nx}x{ny} = {nx * ny}")

    def _reduce(self, k: int) -> Plane | None:
        """Where the codec decodes at 1/k (JPEG's DCT scaling) and the pieces divide evenly."""
        (w, h), (tw, th) = self.size, self.tile
        codec = self.codec.scaled(k) if tw % k == 0 and th % k == 0 else None
        if codec is None:
            return None
        return GridPlane(self.pieces, codec, (-(-w // k), -(-h // k)), (tw // k, th // k))


@dataclass(eq=False, kw_only=True)
class PlacedPlane(Plane):
    """Pieces placed anywhere (mosaics): piece ``i`` covers ``rects[i]`` ((n, 4) ints: x, y, w, h
    in level pixels, in drawing order); places may overlap (a later piece is drawn over an earlier
    one) or leave gaps (background), and ``tile`` is only the typical piece size. A piece decodes
    from ``piece_sizes[i]`` (w, h; default its rect's) and its rect shows the part from
    ``crops[i]`` (x, y; Ventana's lower levels hold several camera tiles per TIFF tile)."""

    rects: np.ndarray
    piece_sizes: np.ndarray | None = None
    crops: np.ndarray | None = None
    prefills = True

    def tasks(self, box: tuple[int, int, int, int], sel: Selection) -> tuple[list[Task], list[Task]]:
        ix0, iy0, ix1, iy1 = box
        r = self.rects
        x0, y0, x1, y1 = r[:, 0], r[:, 1], r[:, 0] + r[:, 2], r[:, 1] + r[:, 3]
        hit = np.flatnonzero((x0 < ix1) & (x1 > ix0) & (y0 < iy1) & (y1 > iy0))
        mine: list[Task] = [(self, int(i), int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i]), sel) for i in hit]
        return ([], mine) if _overlap(r[hit]) else (mine, [])

    def check(self, where: str) -> None:
        super().check(where)
        label, n = f"{where}: {self.pieces.label}", len(self.pieces)
        for name, a, cols, low in (("rects", self.rects, 4, None), ("piece sizes", self.piece_sizes, 2, 1),
                                   ("crops", self.crops, 2, 0)):
            if a is None:
                continue
            if a.shape != (n, cols) or a.dtype.kind not in "iu":
                raise CorruptDataError(f"{label}: {name} {a.shape} {a.dtype} do not match its {n} pieces")
            if (np.abs(a) > MAX_SIDE).any() or (low is not None and (a < low).any()):
                raise CorruptDataError(f"{label}: {name} hold values outside {low}..{MAX_SIDE}")
        if n and (self.rects[:, 2:] < 1).any():
            raise CorruptDataError(f"{label}: a piece has no width or height")

    def piece_shape(self, index: int) -> tuple[int, int, int, int]:
        tw, th = (int(v) for v in self.rects[index, 2:])
        dw, dh = (int(v) for v in self.piece_sizes[index]) if self.piece_sizes is not None else (tw, th)
        return tw, th, dw, dh

    def landing(self, index: int, a: np.ndarray, own: bool, x0: int, y0: int, x1: int, y1: int
                ) -> tuple[np.ndarray, bool, int, int]:
        """The piece's stored size rules where it ends; a crop starts inside it."""
        if self.crops is not None:
            cx, cy = self.crops[index]
            a, own = a[cy:, cx:], False
        return a, own, min(x1, x0 + a.shape[1]), min(y1, y0 + a.shape[0])

    def _reduce(self, k: int) -> Plane | None:
        """Any codec: a mosaic has no stored pyramid to fall back on, so its pieces reduce by block
        means after decoding, placed at their origin // k."""
        (w, h), (tw, th), r = self.size, self.tile, self.rects
        rects = np.stack([r[:, 0] // k, r[:, 1] // k, -(-r[:, 2] // k), -(-r[:, 3] // k)], axis=1)
        return PlacedPlane(self.pieces, self.codec.reduced(k), (-(-w // k), -(-h // k)),
                           (max(1, tw // k), max(1, th // k)), rects=rects,
                           piece_sizes=self.piece_sizes if self.piece_sizes is not None else r[:, 2:],
                           crops=self.crops // k if self.crops is not None else None)


@dataclass(eq=False)
class Layout:
    """Where a level's channels are: ``planes[(z, t)]`` lists planes, and channel ``c`` is sample
    ``channel_map[c][1]`` of plane ``channel_map[c][0]`` of that list (None: not at this level)."""

    planes: Mapping[tuple[int, int], tuple[Plane, ...]]
    channel_map: tuple[tuple[int, int] | None, ...]

    def reduced(self, k: int) -> Layout | None:
        """The level decoded at 1/k (see :meth:`Plane.reduced`), or None if a plane cannot be."""
        planes: dict[tuple[int, int], tuple[Plane, ...]] = {}
        for zt, ps in self.planes.items():
            rs = [p.reduced(k) for p in ps]
            if any(r is None for r in rs):
                return None
            planes[zt] = tuple(r for r in rs if r is not None)
        return Layout(planes, self.channel_map)

    def check(self, where: str) -> None:
        """See :meth:`Plane.check`; also that every channel names a stored plane and sample."""
        for ps in self.planes.values():
            for p in ps:
                p.check(where)
            for entry in self.channel_map:
                if entry is not None and not (0 <= entry[0] < len(ps) and
                                              0 <= entry[1] < ps[entry[0]].codec.samples):
                    raise CorruptDataError(f"{where}: channel at plane {entry[0]}, sample {entry[1]} "
                                           f"is not stored")

    def select(self, channels: list[int]) -> Layout | None:
        """A layout of just ``channels`` (in that order), or None if one is not stored at this
        level (``channel_map`` entry None: a derived layer kept at other levels only)."""
        where = [self.channel_map[c] for c in channels]
        if any(w is None for w in where):
            return None
        stored = [w for w in where if w is not None]
        used = sorted({p for p, _ in stored})
        index = {p: i for i, p in enumerate(used)}
        planes = {zt: tuple(ps[p] for p in used) for zt, ps in self.planes.items()}
        return Layout(planes, tuple((index[p], s) for p, s in stored))

    @classmethod
    def single(cls, plane: Plane) -> Layout:
        """A level of one plane whose samples are the channels (RGB, or grey)."""
        return cls({(0, 0): (plane,)}, tuple((0, s) for s in range(plane.codec.samples)))


@dataclass
class Options:
    """Engine settings; ``tilescope.options`` holds the defaults, ``open(**options)`` overrides."""

    max_read_bytes: int = 2 << 30  # largest array one read may return
    # largest piece (tile, strip, a whole PNG/JPEG) decoded in one go: a decompression-bomb guard
    max_decode_pixels: int = 1 << 28
    max_decode_bytes: int = 1 << 30  # the same piece's decoded bytes (all its samples)
    band_bytes: int = 64 << 20  # intermediate memory of a resampled read, per band
    threads: int = os.cpu_count() or 1  # threads one read's pieces are decoded on
    # reads at scale may decode JPEG at 1/2, 1/4 or 1/8 in the DCT domain (libjpeg's scaled IDCT,
    # 2-3x cheaper) before the area resample, instead of decoding full size
    dct_scaling: bool = True
    # RGB reads (scene R, G, B together, and associated images) converted from the slide's ICC
    # profile to sRGB (littleCMS through Pillow, the profile's default rendering intent)
    srgb: bool = False
    cache: TileCache | None = None  # None: the process-wide cache


_REDUCTIONS = (2, 4, 8, 16, 32)  # DCT scaling stops at 8; block means (mosaics) go on


# the calling thread decodes one share itself, so cpu_count - 1 helpers fill the cores
_helpers = Helpers(max(1, (os.cpu_count() or 2) - 1), "tilescope")


class Reader:
    """Reads levels of one slide: its open file, options and cache."""

    def __init__(self, source: Source, options: Options):
        self.source = source
        self.path = source.path
        self.options = options
        self.cache = options.cache if options.cache is not None else DEFAULT_CACHE
        self._big: tuple | None = None  # the last piece too large for the shared cache (key, array)
        self._files: dict = {}  # other files (or library handles) pieces live in, opened on first use
        self._fork_safe: set = set()  # keys of the handles a forked child keeps
        self._files_lock = threading.Lock()
        # a source read by request (a server, a bucket) gets each read's byte ranges first
        self._batches = getattr(source, "batches", False)
        procs.reset_after_fork(self)

    def _after_fork(self) -> None:
        # handles that are not fork-safe (HTTP sessions, a library's file position, thread
        # pools) are forgotten, not closed: closing might touch the parent's connections or
        # locks; the child opens its own on first use
        self._files_lock = threading.Lock()
        self._files = {k: f for k, f in self._files.items() if k in self._fork_safe}
        for src in (self.source, *self._files.values()):  # their locks and in-flight counts
            if hasattr(src, "_after_fork"):
                src._after_fork()

    def _source_of(self, pieces: Pieces, index: int = 0) -> Any:
        """Where piece ``index`` is read from: the slide's own source, or its home (another file, a
        server, a library handle; one per thread where the library needs it) opened on first use."""
        home = pieces.home(index)
        if home is None:
            return self.source
        key = (home.key, threading.get_ident()) if home.per_thread else home.key
        src = self._files.get(key)
        if src is None:
            with self._files_lock:
                if self.source.closed:  # closing the slide closes these: open none after it
                    raise SlideClosedError(f"{self.path}: slide is closed")
                src = self._files.get(key)
                if src is None:
                    src = self._files[key] = home.open()
                    if home.fork_safe:
                        self._fork_safe.add(key)
        return src

    def close(self) -> None:
        with self._files_lock:
            self.source.close()
            files, self._files = list(self._files.values()), {}
        for f in files:
            f.close()

    # -- pieces --------------------------------------------------------------------------------
    def encoded(self, plane: Plane, index: int) -> bytes | None:
        """Piece ``index`` as stored (not decoded), None where a sparse plane has none."""
        pieces = plane.pieces
        if pieces.missing_ok and pieces.is_missing(index):
            return None
        return bytes(pieces.fetch(self._source_of(pieces, index), index))

    def _piece(self, plane: Plane, index: int) -> tuple[np.ndarray | None, bool]:
        """Piece ``index`` decoded, and whether it is the caller's alone (not in the cache)."""
        key = (plane.uid, index)
        a = self.cache.get(key)
        if a is not None:
            return a, False
        big = self._big
        if big is not None and big[0] == key:
            return big[1], False
        pieces = plane.pieces
        if pieces.missing_ok and pieces.is_missing(index):
            return None, False
        tw, th, dw, dh = plane.piece_shape(index)
        codec = plane.codec
        # before reading or decoding anything: a decompression bomb, or a forged piece size
        if dw * dh > self.options.max_decode_pixels or \
                max(tw * th, dw * dh) * codec.samples * codec.dtype.itemsize > self.options.max_decode_bytes:
            raise TooLargeError(
                f"{self.path}: {pieces.label}: piece {index} is {dw}x{dh} pixels x {codec.samples} samples, "
                f"above max_decode_pixels ({self.options.max_decode_pixels}) or max_decode_bytes "
                f"({self.options.max_decode_bytes}): refusing to decode it (a decompression bomb?)")
        t0 = time.perf_counter()
        data = pieces.fetch(self._source_of(pieces, index), index)
        out = self.cache.buffer((th, tw, codec.samples), codec.dtype) if codec.writes_out else None
        try:
            a = codec.decode(data, dh, dw, out)
        except TilescopeError:
            raise
        except Exception as e:  # every codec's own error type becomes ours, naming the piece
            raise CorruptDataError(
                f"{self.path}: {pieces.label}: piece {index} ({plane.codec.name}, {len(data)} bytes) "
                f"cannot be decoded: {e}") from e
        cost = (time.perf_counter() - t0) / (dw * dh or 1)
        old = _COST.get(codec.name)  # a running mean: one slow piece does not decide the next reads
        _COST[codec.name] = cost if old is None else old + (cost - old) / 16
        if self.cache.put(key, a):
            return a, False
        if self.cache.capacity and a is not out:  # too large to share: this slide keeps the last one
            self._big = (key, a)
            return a, False
        return a, a is out

    # -- one level, exact ----------------------------------------------------------------------
    def read_level(self, layout: Layout, rect: tuple[int, int, int, int], channels: list[int],
                   z: int, t: int, dtype: np.typing.DTypeLike, background: float | np.ndarray,
                   threads: int | None = None,
                   out: np.ndarray | None = None) -> np.ndarray:
        """Level pixels of ``rect`` (level coordinates, may extend outside) as (h, w, len(channels)),
        into ``out`` when given."""
        x, y, w, h = rect
        planes = layout.planes.get((z, t))
        if planes is None:
            raise InvalidRequestError(f"{self.path}: no plane at z={z}, t={t}")
        # group requested channels by plane: plane index -> (samples, output channels)
        groups: dict[int, tuple[list[int], list[int]]] = {}
        for oc, c in enumerate(channels):
            stored = layout.channel_map[c]
            if stored is None:
                raise InvalidRequestError(f"{self.path}: channel {c} is not stored at this level")
            p, s = stored
            groups.setdefault(p, ([], []))[0].append(s)
            groups[p][1].append(oc)
        if out is None:
            out = np.empty((h, w, len(channels)), dtype)
        tasks: list[tuple] = []
        ordered: list[tuple] = []  # placed pieces that overlap each other: pasted in drawing order
        filled = False
        for p, (samples, ocs) in groups.items():
            plane = planes[p]
            pw, ph = plane.size
            if not filled and (plane.prefills or not (x >= 0 and y >= 0 and x + w <= pw and y + h <= ph)):
                out[...] = background  # what no piece covers
                filled = True
            ix0, iy0, ix1, iy1 = max(x, 0), max(y, 0), min(x + w, pw), min(y + h, ph)
            if ix1 <= ix0 or iy1 <= iy0:
                continue
            anyhow, in_order = plane.tasks((ix0, iy0, ix1, iy1),
                                           _selector(samples, ocs, plane.codec.samples, len(channels)))
            tasks += anyhow
            ordered += in_order

        if self._batches or any(planes[p].pieces.prefetches for p in groups):
            self._prefetch(tasks + ordered)

        def run(batch: list[Task]) -> None:
            for task in batch:
                self._paste(out, rect, *task, background)

        threads = self.options.threads if threads is None else threads
        if threads > 1:
            threads = _threads_for(tasks + ordered, threads)
        self._parallel(tasks, run, threads)
        if ordered:  # decode on the pool, then paste one by one so overlaps resolve in order
            pieces = {}

            def decode(batch: list[Task]) -> None:
                for plane, index, *_ in batch:
                    pieces[plane.uid, index] = self._piece(plane, index)
            self._parallel(ordered, decode, threads)
            for plane, index, x0, y0, x1, y1, sel in ordered:
                self._paste(out, rect, plane, index, x0, y0, x1, y1, sel, background,
                            pieces[plane.uid, index])
        return out

    def _prefetch(self, tasks: list) -> None:
        """Hand network pieces (DICOMweb frames, byte ranges on a server) their read's uncached
        indices at once, so they can be asked for in few requests before the decoding threads
        want them."""
        wanted: dict = {}
        for plane, index, *_ in tasks:
            if (self._batches or plane.pieces.prefetches) and (plane.uid, index) not in self.cache:
                wanted.setdefault(plane.uid, (plane, []))[1].append(index)
        for plane, todo in wanted.values():
            plane.pieces.prefetch(self._source_of(plane.pieces, todo[0]), todo)

    def _paste(self, out: np.ndarray, rect: tuple[int, int, int, int], plane: Plane, index: int,
               x0: int, y0: int, x1: int, y1: int, sel: Selection, background: float | np.ndarray,
               piece: tuple[np.ndarray | None, bool] | None = None) -> None:
        """Paste piece ``index``, whose place is [x0, x1) x [y0, y1) in level pixels (clipped to the
        plane), into ``out`` holding ``rect``."""
        x, y, w, h = rect
        a, own = self._piece(plane, index) if piece is None else piece
        if a is not None:
            a, own, x1, y1 = plane.landing(index, a, own, x0, y0, x1, y1)
        ix0 = x if x > x0 else x0
        iy0 = y if y > y0 else y0
        ix1 = x + w if x + w < x1 else x1
        iy1 = y + h if y + h < y1 else y1
        if ix1 <= ix0 or iy1 <= iy0:
            return
        src_sel, dst_sel = sel
        if a is None:  # a sparse format's missing piece
            out[iy0 - y:iy1 - y, ix0 - x:ix1 - x, dst_sel] = \
                background if np.ndim(background) == 0 else np.asarray(background)[dst_sel]
            return
        if a.shape[0] < iy1 - y0 or a.shape[1] < ix1 - x0:
            raise CorruptDataError(
                f"{self.path}: {plane.pieces.label}: piece {index} decoded to {a.shape[1]}x{a.shape[0]} "
                f"pixels, smaller than its {x1 - x0}x{y1 - y0} place in the image")
        if src_sel is _ALL and dst_sel is _ALL:  # the common case: plain slices copy fastest
            out[iy0 - y:iy1 - y, ix0 - x:ix1 - x] = a[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
        else:
            out[iy0 - y:iy1 - y, ix0 - x:ix1 - x, dst_sel] = a[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0, src_sel]
        if own:  # not cached: its buffer decodes the next piece
            self.cache.give_back(a)

    @staticmethod
    def _parallel(tasks: list, run: Callable[[Any], None], threads: int) -> None:
        """``run(iterable_of_tasks)`` on ``threads`` threads (the caller and idle helpers) sharing
        one iterator: a thread takes the next task when it is free, so tissue tiles (2-3x slower to
        decode than background) do not leave one thread idle at the end."""
        n = min(threads, len(tasks))
        if n <= 1:
            run(tasks)
        else:  # a list iterator's next() is atomic under the GIL
            _helpers.run(run, iter(tasks), n)

    # -- any region at any output size ---------------------------------------------------------
    def read(self, levels: Sequence[tuple[float, float, Layout]], rect: Sequence[float],
             out_size: tuple[int, int], channels: list[int], planes: list[tuple[int, int]],
             dtype: np.typing.DTypeLike, background: float | np.ndarray, threads: int | None = None
             ) -> np.ndarray:
        """``rect`` in level-0 pixels (may be fractional) resampled to ``out_size``, for each (z, t)
        in ``planes``; ``levels`` is a sequence of (scale_x, scale_y, layout)."""
        x, y, w, h = rect
        ow, oh = out_size
        nbytes = ow * oh * len(channels) * np.dtype(dtype).itemsize * len(planes)
        if nbytes > self.options.max_read_bytes:
            raise TooLargeError(
                f"{self.path}: reading {ow}x{oh} pixels x {len(channels)} channels x {len(planes)} planes "
                f"needs {nbytes / 2**20:.0f} MiB, above the {self.options.max_read_bytes / 2**20:.0f} MiB "
                f"budget (max_read_bytes)")
        ds = min(w / ow, h / oh)
        sx, sy, layout = levels[best_level([(sx, sy) for sx, sy, _ in levels], ds)]
        if self.options.dct_scaling and ds >= 2 * max(sx, sy):
            sx, sy, layout = self._reduced_level(levels, ds)
        # unit conversions leave 1e-12 errors on what are whole level pixels: snap them
        bx0, by0, bx1, by1 = (round(v) if abs(v - round(v)) < 1e-6 else v
                              for v in (x / sx, y / sy, (x + w) / sx, (y + h) / sy))
        box = (bx0, by0, bx1, by1)
        out = np.empty((len(planes), oh, ow, len(channels)), dtype)
        for i, (z, t) in enumerate(planes):
            self._read_box(layout, box, (ow, oh), channels, z, t, dtype, background, threads, out[i])
        return out

    @staticmethod
    def _reduced_level(levels: Sequence[tuple[float, float, Layout]], ds: float
                       ) -> tuple[float, float, Layout]:
        """The cheapest way to reach downsample ``ds`` when DCT-scaled decodes count as levels:
        the coarsest candidate not above ``ds``; among near-equal ones, the least reduced (a
        coarser stored level at 1/2 decodes 16x fewer pieces than a finer one at 1/8)."""
        cands = [(sx, sy, layout, 1) for sx, sy, layout in levels]
        for sx, sy, layout in levels:
            for k in _REDUCTIONS:
                if k * max(sx, sy) <= ds * (1 + LEVEL_TOLERANCE) and (red := layout.reduced(k)):
                    cands.append((sx * k, sy * k, red, k))
        ok = [c for c in cands if max(c[0], c[1]) <= ds * (1 + LEVEL_TOLERANCE)] or cands[:1]
        top = max(max(c[0], c[1]) for c in ok)
        near = [c for c in ok if max(c[0], c[1]) * 1.05 >= top]
        sx, sy, layout, _ = min(near, key=lambda c: (c[3], -max(c[0], c[1])))
        return sx, sy, layout

    def _read_box(self, layout: Layout, box: tuple[float, float, float, float], out_size: tuple[int, int],
                  channels: list[int], z: int, t: int, dtype: np.typing.DTypeLike,
                  background: float | np.ndarray, threads: int | None, out: np.ndarray) -> None:
        bx0, by0, bx1, by1 = box
        ow, oh = out_size
        if all(isinstance(v, int) for v in box) and (bx1 - bx0, by1 - by0) == (ow, oh):
            self.read_level(layout, (int(bx0), int(by0), ow, oh), channels, z, t, dtype, background, threads,
                            out)
            return
        # resample in bands of output rows so intermediate memory stays bounded
        fy = (by1 - by0) / oh
        row_bytes = (math.ceil(bx1) - math.floor(bx0)) * len(channels) * np.dtype(np.float32).itemsize
        rows = max(1, int(self.options.band_bytes // max(1, row_bytes * (fy + 2))))
        if row_bytes * (fy + 2) > self.options.max_read_bytes:
            raise TooLargeError(f"{self.path}: one output row of this read needs more than "
                                f"max_read_bytes of source pixels")
        ix0, ix1 = math.floor(bx0), math.ceil(bx1)
        for r0 in range(0, oh, rows):
            r1 = min(oh, r0 + rows)
            sy0, sy1 = by0 + r0 * fy, by0 + r1 * fy
            iy0, iy1 = math.floor(sy0), math.ceil(sy1)
            src = self.read_level(layout, (ix0, iy0, ix1 - ix0, iy1 - iy0), channels, z, t, dtype,
                                  background, threads)
            resample(src, (bx0 - ix0, sy0 - iy0, bx1 - ix0, sy1 - iy0), out[r0:r1],
                     self.options.threads if threads is None else threads)


def _overlap(rects: np.ndarray) -> bool:
    """Whether any two of these (x, y, w, h) rects overlap."""
    if len(rects) < 2:
        return False
    x0, y0 = rects[:, 0], rects[:, 1]
    x1, y1 = x0 + rects[:, 2], y0 + rects[:, 3]
    m = (x0[:, None] < x1[None]) & (x1[:, None] > x0[None])
    m &= (y0[:, None] < y1[None]) & (y1[:, None] > y0[None])
    np.fill_diagonal(m, False)
    return bool(m.any())


_ALL = slice(None)  # every sample / channel: _paste copies with plain slices
MAX_SIDE = 1 << 31  # image and piece sides, per axis (10^6 x 10^6 slides and more are fine)
_MAX_SAMPLES = 1 << 16


def check_whole(v: Any, what: str) -> int:
    """A structural value from a file as a positive Python int up to MAX_SIDE; CorruptDataError
    naming ``what`` for anything else (a tag stored as bytes, a float, NaN, zero...)."""
    if isinstance(v, int | np.integer) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE:
        return int(v)
    raise CorruptDataError(f"{what} is {v!r}, not a whole number in 1..{MAX_SIDE}")


def check_size(v: Any, what: str) -> tuple[int, int]:
    """(w, h) as positive Python ints (see :func:`check_whole`)."""
    try:
        w, h = v
    except (TypeError, ValueError):
        raise CorruptDataError(f"{what} {v!r} is not a width and a height") from None
    return check_whole(w, what), check_whole(h, what)

# The threading rule. A read hands pieces to other threads only when each thread gets at least
# _MIN_WORK of fetching and decoding: waking a parked thread costs ~70 µs here, and two threads
# decoding at once each run ~1.5x slower than one alone, so a second thread on one or two tiles
# adds more CPU time than it saves wall time. Measured in fresh processes on 256² JPEG tiles
# (benchmarks/RESULTS.md, 2026-12-02): 500 random 256² reads (4 tiles each) on 2 threads -20..-30 %
# wall for +20..25 % CPU; 1024² reads (16-25 tiles) -30..-35 % wall for +10..15 % CPU; a read of
# one or two tiles slower on 2 threads than on 1. The work is estimated from the pieces' pixels
# and each codec's measured seconds per pixel (a running mean over the pieces it decoded; 8-bit
# JPEG's until it has decoded one).
_MIN_WORK = 0.3e-3
_COST: dict[str, float] = {}  # codec name -> seconds per pixel to fetch and decode a piece
_FIRST_COST = 4e-9  # 8-bit JPEG on one core here


def _threads_for(tasks: list[Task], threads: int) -> int:
    """How many of ``threads`` the pieces of ``tasks`` keep busy (see _MIN_WORK)."""
    work, enough = 0.0, threads * _MIN_WORK
    for plane, *_ in tasks:
        tw, th = plane.tile
        work += tw * th * _COST.get(plane.codec.name, _FIRST_COST)
        if work >= enough:
            break
    return max(1, min(threads, len(tasks), int(work / _MIN_WORK)))


def _selector(samples: list[int], ocs: list[int], nsamples: int, nout: int) -> Selection:
    """Index pair (source samples, output channels), as slices where they are contiguous runs."""
    def idx(v: list[int], n: int) -> list[int] | slice:
        if v == list(range(v[0], v[0] + len(v))):
            return slice(v[0], v[0] + len(v)) if len(v) != n or v[0] != 0 else _ALL
        return v
    return idx(samples, nsamples), idx(ocs, nout)


_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


_RESAMPLE_ROWS = 128  # output rows per resample task: fixed, so any thread count gives equal pixels


def resample(src: np.ndarray, box: tuple[float, float, float, float], out: np.ndarray,
             threads: int = 1) -> np.ndarray:
    """Box-filter resample of ``src`` (h, w, c) over ``box`` (source pixels) into ``out`` (h', w', c).

    Pillow's BOX filter: at whole factors each output pixel is the exact mean of its block; at
    fractional factors each source pixel counts wholly towards the output pixel its centre falls in.
    uint8 images with 1, 3 or 4 channels are resampled as one Pillow image; anything else channel
    by channel in 32-bit float, rounded back to integers. Row groups run on ``threads`` threads
    (Pillow releases the GIL).
    """
    c = src.shape[2]
    oh, ow = out.shape[:2]
    x0, y0, x1, y1 = box
    fy = (y1 - y0) / oh
    pil = src.dtype == np.uint8 and c in _PIL_MODES
    if pil:
        ims: list[tuple[slice | int, Image.Image]] = [
            (slice(None), Image.fromarray(src[..., 0] if c == 1 else src, _PIL_MODES[c]))]
    else:
        ims = [(i, Image.fromarray(np.ascontiguousarray(src[..., i], dtype=np.float32), "F"))
               for i in range(c)]
    integer = not pil and np.issubdtype(src.dtype, np.integer)

    def run(parts: list[tuple[int, int]]) -> None:
        for r0, r1 in parts:
            sub = (x0, y0 + r0 * fy, x1, y0 + r1 * fy)
            for i, im in ims:
                r = np.asarray(im.resize((ow, r1 - r0), Image.Resampling.BOX, box=sub))
                if integer:
                    info = np.iinfo(src.dtype)
                    r = np.clip(np.rint(r), info.min, info.max)
                out[r0:r1, :, i] = r.reshape(r1 - r0, ow, -1) if pil else r

    Reader._parallel([(r, min(oh, r + _RESAMPLE_ROWS)) for r in range(0, oh, _RESAMPLE_ROWS)], run, threads)
    return out
