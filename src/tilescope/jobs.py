"""Jobs over the tiles of many slides on dask.distributed (extra ``[dask]``): a layer over the public
Scene API. The caller lists each slide's tiles (grid, scale, tissue filter); the tiles go to the
workers in batches of one slide each, as the scene (which pickles as what to open: each worker
process opens a slide once, re-opens cost ~20 µs from its parse cache) and grid positions. A
worker that dies mid-job has its batches re-run by Dask elsewhere; results come back in slide and
tile order, the same as a serial run."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InvalidRequestError, TilescopeError
from .units import Scale

if TYPE_CHECKING:
    import pandas

    from .model import Scene
    from .tiles import Tile

SlideLike = Any  # a path, a Slide (its scene 0) or a Scene


class JobError(TilescopeError):
    """``fn`` failed on a tile: names the slide, the scene and the tile (the cause is chained)."""


@dataclass(frozen=True)
class Grid:
    """How a job cuts each slide into tiles (``Scene.tiles``' arguments)."""

    tile_size: int | tuple[int, int] = 256
    overlap: int | tuple[int, int] = 0
    scale: Scale | None = None
    tissue: float | None = None
    edges: str = "clip"

    def tiles(self, scene: Scene, positions: Sequence[tuple[int, int]] | None = None) -> Any:
        return scene.tiles(self.tile_size, self.overlap, scale=self.scale, edges=self.edges,
                           tissue=None if positions is not None else self.tissue, positions=positions,
                           prefetch=0)


@contextlib.contextmanager
def _scene(s: SlideLike) -> Iterator[Scene]:
    """The scene a job item stands for; a path is opened here and closed after (its tiles are
    listed; what the tasks carry is what to open)."""
    import tilescope

    if isinstance(s, tilescope.Scene):
        yield s
    elif isinstance(s, tilescope.Slide):
        yield s.scenes[0]
    else:
        with tilescope.open(s) as slide:
            yield slide.scenes[0]


COLUMNS = ("slide", "scene", "col", "row", "x", "y", "w", "h", "level", "mpp")


def record(scene: Scene, tile: Tile, result: Any) -> dict[str, Any]:
    """One row of a job's table (:data:`COLUMNS`): where the tile is (level-0 px), at which scale
    (the level read, µm per output pixel), and fn's result (a dict's items become columns)."""
    x, y, w, h = tile.level0_rect
    values = (scene.slide.path, scene.name, tile.col, tile.row, round(x), round(y), round(w), round(h),
              tile.level, tile.mpp[0] if tile.mpp else None)
    row = dict(zip(COLUMNS, values, strict=True))
    row.update(result if isinstance(result, dict) else {"result": result})
    return row


def run_batch(fn: Callable[[Any, Tile], Any], scene: Scene, grid: Grid,
              positions: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """``fn(array, tile)`` on each tile at ``positions``, serially and on one thread (a worker
    process is one of many)."""
    out = []
    for tile in grid.tiles(scene, positions):
        try:
            result = fn(tile.load(threads=1), tile)
        except Exception as e:
            raise JobError(f"{scene.location}: tile (col {tile.col}, row {tile.row}) at level-0 "
                           f"{tuple(round(v) for v in tile.level0_rect)}: {type(e).__name__}: {e}") from e
        out.append(record(scene, tile, result))
    return out


@contextlib.contextmanager
def local_client(workers: int | None = None) -> Iterator[Any]:
    """A ``LocalCluster`` on 127.0.0.1: one single-threaded worker process per core, no dashboard,
    tilescope imported in each worker before the client is handed out."""
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(importlib.import_module, "tilescope")  # at start-up, not in the first tasks
        yield client


def submit(fn: Callable[[Any, Tile], Any], scene: Scene, grid: Grid, client: Any,
           batch: int = 256) -> list[Any]:
    """Start ``fn`` on every tile of one scene: one future per ``batch`` tiles (in tile order),
    each resolving to that batch's rows."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidRequestError(f"batch must be an int >= 1, got {batch!r}")
    positions = grid.tiles(scene).positions
    return [client.submit(run_batch, fn, scene, grid, list(positions[k:k + batch]), pure=False)
            for k in range(0, len(positions), batch)]


def map_tiles(fn: Callable[[Any, Tile], Any], slides: Sequence[SlideLike], *,
              tile_size: int | tuple[int, int] = 256, overlap: int | tuple[int, int] = 0,
              mpp: float | None = None, magnification: float | None = None, level: int | None = None,
              tissue: float | None = None, edges: str = "clip", client: Any = None,
              batch: int = 256) -> pandas.DataFrame:
    """``fn(array, tile)`` on every tile of every slide (paths, Slides or Scenes), on a
    ``dask.distributed.Client`` (``client``, else a :func:`local_client` for the call). Tiles of
    ``tile_size`` output pixels at ``mpp``, ``magnification`` or ``level`` (default level 0),
    ``overlap`` px of context, ``tissue`` the least tissue fraction kept. Returns a pandas
    DataFrame, one row per tile in slide then tile order: slide, scene, col, row, x, y, w, h
    (level-0 px), level, mpp, and fn's result (``result``, or a returned dict's keys)."""
    import pandas as pd

    grid = Grid(tile_size, overlap, Scale(level=level, magnification=magnification, mpp=mpp), tissue, edges)
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(local_client())
        futures = []
        for s in slides:
            with _scene(s) as scene:
                futures += submit(fn, scene, grid, client, batch)
        rows = [row for part in client.gather(futures) for row in part]
    return pd.DataFrame(rows, columns=None if rows else list(COLUMNS))
