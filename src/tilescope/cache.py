"""A byte-bounded LRU of decoded pieces, shared by every slide that uses it."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class TileCache:
    """Thread-safe LRU keyed by anything hashable, bounded by the total ``nbytes`` it holds.

    A capacity of 0 disables caching. Pieces larger than a quarter of the capacity are not kept,
    so one huge strip cannot flush everything else.
    """

    def __init__(self, capacity_bytes: int = 64 << 20):
        self._lock = threading.Lock()
        self._items: OrderedDict = OrderedDict()
        self._bytes = 0
        self.capacity = int(capacity_bytes)
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key) -> np.ndarray | None:
        with self._lock:
            v = self._items.get(key)
            if v is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return v

    def put(self, key, value: np.ndarray) -> None:
        n = value.nbytes
        if n * 4 > self.capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = value
            self._bytes += n
            while self._bytes > self.capacity:
                _, v = self._items.popitem(last=False)
                self._bytes -= v.nbytes

    def resize(self, capacity_bytes: int) -> None:
        with self._lock:
            self.capacity = int(capacity_bytes)
            while self._bytes > self.capacity and self._items:
                _, v = self._items.popitem(last=False)
                self._bytes -= v.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
