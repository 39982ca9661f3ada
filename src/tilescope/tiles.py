"""Access patterns on top of the public Scene API: tile iteration, a grid sampler and numpy-style
slicing of a level. Nothing here decodes by itself; every pixel comes from the engine.

Tile geometry (``Scene.tiles``): the region is cut, at the iteration scale, into a grid of
``tile_size`` cores starting at the region's top-left. Each tile adds ``overlap`` pixels of context
on every side. With ``edges="clip"`` tiles stop at the region's edge (the last column/row is
narrower, and no overlap is added beyond the edge); with ``edges="pad"`` every tile is
``tile_size + 2 * overlap`` and what lies beyond the scene is background. ``Tile.overlap`` says
what was applied on each side.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from .errors import InvalidRequestError
from .geometry import Channels, PlaneIndex, RectLike, best_level
from .pool import LazyPool
from .tissue import TissueMask

if TYPE_CHECKING:
    import PIL.Image

    from .model import Scene
    from .units import ScaleLike, Units

# separate from the engine's decode pool: these tasks call Scene.read, which waits on decodes
_prefetch_executor = LazyPool(os.cpu_count() or 2, "tilescope-prefetch")


@dataclass(eq=False)
class Tile:
    """One tile of an iteration. ``x, y, w, h`` (``rect``) are output pixels at the iteration
    scale (the returned array's place in the scene at that scale), ``level0_rect`` the same place
    as (x, y, w, h) level-0 pixels, ``col, row`` the grid position and ``index`` the position in
    the iteration."""

    index: int
    col: int
    row: int
    x: int
    y: int
    w: int
    h: int
    level0_rect: tuple[float, float, float, float]
    level: int
    scale: tuple[float, float]
    magnification: float | None  # stated by the file, at this scale
    native_magnification: float | None  # stated or derived from mpp, at this scale
    mpp: tuple[float, float] | None
    overlap: dict[str, int]
    _tiles: Tiles = field(repr=False)
    _future: Future | None = field(default=None, repr=False)
    _array: np.ndarray | None = field(default=None, repr=False)

    @property
    def rect(self) -> tuple[int, int, int, int]:
        """(x, y, w, h) in output pixels at the iteration scale."""
        return self.x, self.y, self.w, self.h

    @property
    def array(self) -> np.ndarray:
        """The pixels, (h, w, c) (with leading z/t axes for ranges), decoded on first access."""
        return self.load()

    def load(self, threads: int | None = None) -> np.ndarray:
        """:attr:`array`, decoded now (if not yet) on at most ``threads`` threads (default: the
        slide's option): a worker of a job that is itself one of many in parallel asks for 1."""
        if self._array is None:
            if self._future is not None:
                self._array, self._future = self._future.result(), None
            else:
                self._array = self._tiles._load(self, threads)
        return self._array

    def image(self) -> PIL.Image.Image:
        """The pixels as a PIL image (8-bit grey, RGB or RGBA tiles)."""
        from PIL import Image

        a = self.array
        return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)


class Tiles(Sequence):
    """A grid of tiles over a region at one scale: ``len()`` before iterating, ``tiles[i]`` or
    ``tiles.tile(col, row)`` for one tile, iteration with ordered, bounded prefetch."""

    def __init__(self, scene: Scene, tile_size: int | Sequence[int] = 256, overlap: int | Sequence[int] = 0,
                 *, region: RectLike = None, units: Units = "px", scale: ScaleLike = None,
                 channels: Channels = None, z: PlaneIndex = 0, t: PlaneIndex = 0, edges: str = "clip",
                 tissue: float | None = None, tissue_mask: TissueMask | None = None,
                 positions: Sequence[tuple[int, int]] | None = None, prefetch: int | None = None):
        where = scene.location
        self.scene = scene
        self.tile_size = _pair(tile_size, "tile_size", where, minimum=1)
        self.overlap_px = _pair(overlap, "overlap", where, minimum=0)
        if edges not in ("clip", "pad"):
            raise InvalidRequestError(f"{where}: edges must be 'clip' or 'pad', got {edges!r}")
        self.edges = edges
        self.channels, self.z, self.t = channels, z, t
        scene.channel_indices(channels)
        scene.planes(z, t)  # validate now, not on the first tile
        self.scale = scene.scale_factor(scale)
        rx, ry, rw, rh = scene.to_base(region, units)
        fx, fy = self.scale
        eps = 1e-9
        ox0, oy0 = math.floor(rx / fx + eps), math.floor(ry / fy + eps)
        ox1, oy1 = math.ceil((rx + rw) / fx - eps), math.ceil((ry + rh) / fy - eps)
        self.region = (ox0, oy0, ox1 - ox0, oy1 - oy0)  # (x, y, w, h), output pixels at the scale
        tw, th = self.tile_size
        self.grid = (max(1, -(-(ox1 - ox0) // tw)), max(1, -(-(oy1 - oy0) // th)))
        self.level = best_level([lv.scale for lv in scene.levels], min(fx, fy))
        lv0 = scene.levels[0]
        # as for levels: the stated magnification at this scale, and the stated-or-derived one
        self.magnification = scene.magnification / fx if scene.magnification else None
        self.native_magnification = scene.native_magnification / fx if scene.native_magnification else None
        self.mpp = (lv0.mpp[0] * fx, lv0.mpp[1] * fy) if lv0.mpp else None
        if positions is None:
            cells = [(c, r) for r in range(self.grid[1]) for c in range(self.grid[0])]
        else:
            try:
                cells = [(int(c), int(r)) for c, r in positions]
            except (TypeError, ValueError):
                raise InvalidRequestError(f"{where}: positions must be (col, row) pairs, got {positions!r}"
                                          ) from None
            for c, r in cells:
                if not (0 <= c < self.grid[0] and 0 <= r < self.grid[1]):
                    raise InvalidRequestError(f"{where}: grid position {(c, r)} is outside {self.grid}")
        if tissue is not None:
            mask = tissue_mask or scene.tissue_mask()
            cells = [p for p in cells if mask.fraction(self._geometry(*p)[1]) >= tissue]
        self.tissue_mask = tissue_mask
        self.positions = cells
        self.prefetch = (os.cpu_count() or 2) + 1 if prefetch is None else int(prefetch)

    def __repr__(self) -> str:
        return (f"<Tiles {len(self)} of grid {self.grid[0]}x{self.grid[1]}, tile {self.tile_size}, "
                f"overlap {self.overlap_px}, scale {self.scale}, level {self.level}>")

    def _geometry(self, col: int, row: int
                  ) -> tuple[tuple[int, int, int, int], tuple[float, float, float, float], dict[str, int]]:
        """(output rect, base rect, applied overlap) of grid position (col, row)."""
        ox0, oy0, rw, rh = self.region
        ox1, oy1 = ox0 + rw, oy0 + rh
        tw, th = self.tile_size
        ovx, ovy = self.overlap_px
        cx, cy = ox0 + col * tw, oy0 + row * th
        if self.edges == "pad":
            cw, ch = tw, th
            left = right = ovx
            top = bottom = ovy
        else:
            cw, ch = min(tw, ox1 - cx), min(th, oy1 - cy)
            left, top = min(ovx, cx - ox0), min(ovy, cy - oy0)
            right, bottom = min(ovx, ox1 - cx - cw), min(ovy, oy1 - cy - ch)
        x, y, w, h = cx - left, cy - top, cw + left + right, ch + top + bottom
        fx, fy = self.scale
        return (x, y, w, h), (x * fx, y * fy, w * fx, h * fy), \
            {"left": left, "top": top, "right": right, "bottom": bottom}

    def _make(self, index: int, col: int, row: int) -> Tile:
        (x, y, w, h), level0, ov = self._geometry(col, row)
        return Tile(index, col, row, x, y, w, h, level0, self.level, self.scale, self.magnification,
                    self.native_magnification, self.mpp, ov, self)

    def _load(self, tile: Tile, threads: int | None = None) -> np.ndarray:
        return self.scene.read_box(tile.level0_rect, (tile.w, tile.h), self.channels,
                                self.z, self.t, threads)

    def __len__(self) -> int:
        return len(self.positions)

    @overload
    def __getitem__(self, index: int) -> Tile: ...
    @overload
    def __getitem__(self, index: slice) -> list[Tile]: ...

    def __getitem__(self, index: int | slice) -> Tile | list[Tile]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"tile {index} is outside 0..{n - 1}")
        index %= n
        return self._make(index, *self.positions[index])

    def tile(self, col: int, row: int) -> Tile:
        """The tile at grid position (col, row), whether or not the iteration keeps it."""
        if not (0 <= col < self.grid[0] and 0 <= row < self.grid[1]):
            raise InvalidRequestError(
                f"{self.scene.location}: grid position {(col, row)} is outside {self.grid}")
        return self._make(-1, col, row)

    def __iter__(self) -> Iterator[Tile]:
        if self.prefetch <= 0:
            for i in range(len(self)):
                yield self[i]
            return
        # decode ahead in order; each prefetch task decodes its tile on one thread, so the
        # prefetch workers (one per core) fill the machine without splitting small reads
        ex = _prefetch_executor()
        window: deque[Tile] = deque()
        pending: deque = deque()  # decodes in flight, bounded even if tiles are never looked at
        for i in range(len(self)):
            tile = self[i]
            while len(pending) > self.prefetch:
                futures.wait([pending.popleft()])
            tile._future = ex.submit(self._load, tile, 1)
            pending.append(tile._future)
            window.append(tile)
            if len(window) > self.prefetch:
                yield window.popleft()
        while window:
            yield window.popleft()


def _pair(v: int | Sequence[int], what: str, where: str, minimum: int) -> tuple[int, int]:
    vals = (v, v) if isinstance(v, int | np.integer) else tuple(v) if isinstance(v, Sequence) else None
    if vals is None or len(vals) != 2 or not all(isinstance(i, int | np.integer) and not isinstance(i, bool)
                                                 and i >= minimum for i in vals):
        raise InvalidRequestError(f"{where}: {what} must be an int >= {minimum} or a pair of them, got {v!r}")
    return int(vals[0]), int(vals[1])


# -- numpy-style level views ------------------------------------------------------------------------
class LevelView:
    """``scene.view(i)[y0:y1, x0:x1]`` reads just those pixels of level ``i`` (numpy semantics:
    slices clip at the edges, negative indices count from the end, steps subsample, an integer
    drops its axis). The third axis selects channels. ``np.asarray(view)`` reads the whole level."""

    def __init__(self, scene: Scene, level: int, channels: Channels = None, z: PlaneIndex = 0,
                 t: PlaneIndex = 0):
        self.scene, self.index = scene, scene.level_index(level)
        self._channels = scene.channel_indices(channels)
        if scene.planes(z, t)[1]:
            raise InvalidRequestError(f"{scene.location}: a level view takes one z and one t index")
        self._z, self._t = z, t
        w, h = scene.levels[self.index].size
        self.shape = (h, w, len(self._channels))
        self.dtype = scene.dtype
        self.ndim = 3

    def __repr__(self) -> str:
        return f"<LevelView level {self.index} shape {self.shape} {self.dtype}>"

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: np.typing.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        a = self[:, :, :]
        return a if dtype is None else a.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > 3:
            raise IndexError(f"too many indices for a 3-D level view: {key!r}")
        key = key + (slice(None),) * (3 - len(key))
        ranges, drop = [], []
        for axis, (k, n) in enumerate(zip(key, self.shape, strict=True)):
            if isinstance(k, slice):
                ranges.append(range(*k.indices(n)))
            elif isinstance(k, int | np.integer) and not isinstance(k, bool):
                if not -n <= k < n:
                    raise IndexError(f"index {k} is out of bounds for axis {axis} with size {n}")
                ranges.append(range(k % n, k % n + 1))
                drop.append(axis)
            else:
                raise IndexError(f"level views take ints and slices, got {k!r}")
        ry, rx, rc = ranges
        chans = [self._channels[i] for i in rc]
        if not len(ry) or not len(rx) or not chans:
            out = np.empty((len(ry), len(rx), len(chans)), self.dtype)
        else:
            y0, y1 = min(ry[0], ry[-1]), max(ry[0], ry[-1]) + 1
            x0, x1 = min(rx[0], rx[-1]), max(rx[0], rx[-1]) + 1
            a = self.scene.read_level(self.index, (x0, y0, x1 - x0, y1 - y0), channels=chans,
                                      z=self._z, t=self._t)
            out = a[np.asarray(ry) - y0][:, np.asarray(rx) - x0] if (ry.step != 1 or rx.step != 1) else a
        return out.squeeze(axis=tuple(drop)) if drop else out
