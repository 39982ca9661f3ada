"""Decoded pieces: a byte-bounded, self-sizing LRU shared by every slide that uses it, and the
recycled, decoder-friendly buffers pieces are decoded into."""

from __future__ import annotations

import functools
import math
import mmap
import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np

from . import procs

_PAGE = mmap.PAGESIZE
_FREE_MAX = 8  # recycled buffers kept: a few per decoding thread is all the steady state uses


def aligned_empty(shape: tuple[int, ...], dtype: np.typing.DTypeLike) -> np.ndarray:
    """An uninitialised array whose data starts 16 bytes past a page boundary: libjpeg-turbo writes
    there measurably faster (~20 % per tile here) than to page-aligned or arbitrary addresses."""
    dtype = np.dtype(dtype)
    n = math.prod(shape) * dtype.itemsize
    raw = np.empty(n + _PAGE, np.uint8)
    start = (16 - raw.ctypes.data) % _PAGE
    return raw[start:start + n].view(dtype).reshape(shape)


def _recyclable(a: np.ndarray) -> bool:
    return a.flags.c_contiguous and a.flags.writeable and (a.ctypes.data - 16) % _PAGE == 0


class TileCache:
    """Thread-safe LRU of decoded pieces keyed by anything hashable, bounded by the ``nbytes`` held.

    ``capacity`` is the most it holds. It holds at least ``min(floor, capacity)`` and grows toward
    ``capacity`` only while reads come back for pieces it had to drop (it remembers the keys of
    dropped pieces); pieces dropped without ever being hit shrink it again. Random access over a
    large slide thus costs little memory, and repeated or overlapping access gets the whole budget.
    A capacity of 0 disables caching; ``floor=capacity`` makes the size fixed. Pieces larger than
    a quarter of the capacity are not kept, so one huge strip cannot flush everything else.

    Evicted pieces nobody references any more are recycled as decode buffers (:meth:`buffer`), so
    steady-state reading allocates (and page-faults) no fresh memory per piece.
    """

    def __init__(self, capacity_bytes: int = 64 << 20, *, floor_bytes: int = 1 << 20):
        self._lock = threading.Lock()
        self.capacity = int(capacity_bytes)
        self.floor = int(floor_bytes)
        self._empty()
        self.hits = self.misses = 0
        procs.reset_after_fork(self)

    def _empty(self) -> None:
        self._items: OrderedDict = OrderedDict()  # key -> [array, was_hit]
        self._ghosts: OrderedDict = OrderedDict()  # keys of dropped pieces -> their nbytes
        self._ghost_bytes = 0
        self._free: dict[tuple, list[np.ndarray]] = {}
        self._nfree = 0
        self._bytes = 0
        self.limit = min(self.floor, self.capacity)

    def _after_fork(self) -> None:
        # a parent thread may have been halfway through an update at the fork: start empty
        self._lock = threading.Lock()
        self._empty()

    def __reduce__(self) -> tuple:
        # the settings, not the pieces; the process-wide cache is the other process's own
        if self is DEFAULT_CACHE:
            return _default_cache, ()
        return functools.partial(TileCache, floor_bytes=self.floor), (self.capacity,)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                n = self._ghosts.pop(key, None)
                if n is not None:  # dropped too early: this access pattern reuses more than we hold
                    self._ghost_bytes -= n
                    self.limit = min(self.capacity, self.limit + n)
                return None
            self._items.move_to_end(key)
            item[1] = True
            self.hits += 1
            return item[0]

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is held, without counting a hit or a miss or touching its recency."""
        with self._lock:
            return key in self._items

    def put(self, key: Hashable, value: np.ndarray) -> bool:
        """Keep ``value``; False if it is not kept (too large, or caching is off)."""
        n = value.nbytes
        if n * 4 > self.capacity:
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[0].nbytes
            self._items[key] = [value, False]
            self._bytes += n
            self._evict()
            return True

    def _evict(self) -> None:
        floor = min(self.floor, self.capacity)
        while self._bytes > self.limit and len(self._items) > 1:
            key, (v, hit) = self._items.popitem(last=False)
            n = v.nbytes
            self._bytes -= n
            if not hit:  # held for nothing: hold less
                self.limit = max(floor, self.limit - n // 2)
            self._ghosts[key] = n
            self._ghost_bytes += n
            while self._ghost_bytes > self.capacity:
                self._ghost_bytes -= self._ghosts.popitem(last=False)[1]
            # 2 = this frame's name + getrefcount's argument: no reader is still pasting from it
            if sys.getrefcount(v) == 2 and self._nfree < _FREE_MAX and _recyclable(v):
                self._free.setdefault((v.shape, v.dtype), []).append(v)
                self._nfree += 1

    def buffer(self, shape: tuple[int, ...], dtype: np.typing.DTypeLike) -> np.ndarray:
        """An uninitialised array to decode a piece into: a recycled one, or a new aligned one."""
        dtype = np.dtype(dtype)
        with self._lock:
            free = self._free.get((shape, dtype))
            if free:
                self._nfree -= 1
                return free.pop()
        return aligned_empty(shape, dtype)

    def give_back(self, a: np.ndarray) -> None:
        """Return a buffer from :meth:`buffer` that was not kept and is referenced nowhere else."""
        with self._lock:
            if self._nfree < _FREE_MAX and _recyclable(a):
                self._free.setdefault((a.shape, a.dtype), []).append(a)
                self._nfree += 1

    def resize(self, capacity_bytes: int) -> None:
        with self._lock:
            self.capacity = int(capacity_bytes)
            self.limit = min(max(self.limit, self.floor), self.capacity)
            self._evict()
            if not self.capacity:
                self._items.clear()
                self._bytes = 0

    def clear(self) -> None:
        with self._lock:
            self._empty()


DEFAULT_CACHE = TileCache(64 << 20)  # the process-wide cache slides share unless given their own


def _default_cache() -> TileCache:
    return DEFAULT_CACHE
