"""Patch export for a cohort (``tilescope tiles``; extra ``[dask]``): a layer over :mod:`tilescope.jobs`.

Each slide's tiles go to ``OUT/<name>/`` as one file per tile (``c<col>_r<row>.png`` and so on)
or one zarr array ``OUT/<name>/tiles.zarr`` of shape (rows, cols, h, w, c), chunk = one tile;
every tile has the same size (``edges="pad"``: past the scene's edge is background). A slide is
complete when its ``manifest.csv`` exists (written atomically once all its tiles are): a re-run
skips complete slides and redoes the others. ``OUT/manifest.csv`` lists every tile of every
complete slide; ``OUT/settings.json`` holds the grid, and a re-run with other settings is refused
rather than mixing two grids in one folder. Workers write the files themselves: on a remote
scheduler, ``OUT`` must be a path every worker sees (a shared filesystem).
"""

from __future__ import annotations

import csv
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import InvalidRequestError, TilescopeError

FORMATS = ("png", "jpeg", "npy", "zarr")


def save(path: str, a: np.ndarray) -> None:
    """Write an (h, w, c) array as PNG/JPEG (Pillow), TIFF (tifffile) or .npy, by extension."""
    low = path.lower()
    if low.endswith(".npy"):
        np.save(path, a)
    elif low.endswith((".tif", ".tiff")):
        import tifffile

        photometric = "rgb" if a.ndim == 3 and a.shape[-1] in (3, 4) and a.dtype == np.uint8 else "minisblack"
        tifffile.imwrite(path, a, photometric=photometric, compression="zlib")
    else:
        from PIL import Image

        _check_image(path, a.dtype, a.shape, jpeg=low.endswith((".jpg", ".jpeg")))
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(path)


def _check_image(path: str, dtype: np.dtype, shape: tuple[int, ...], jpeg: bool) -> None:
    """What Pillow writes: PNG 8-bit grey/RGB(A) or 16-bit grey, JPEG 8-bit grey/RGB."""
    channels = shape[-1] if len(shape) == 3 else 0
    ok = (dtype == np.uint8 and channels in ((1, 3) if jpeg else (1, 3, 4))) or \
        (not jpeg and dtype == np.uint16 and channels == 1)
    if not ok:
        what = "JPEG takes 8-bit grey/RGB" if jpeg else "PNG takes 8-bit grey/RGB(A) or 16-bit grey"
        raise TilescopeError(f"{path}: {what}; got {dtype} with shape {shape}: write .tiff or .npy instead")


def _write_file(folder: str, ext: str, array: np.ndarray, tile: Any) -> dict[str, str]:
    name = f"c{tile.col}_r{tile.row}.{ext}"
    save(os.path.join(folder, name), array)
    return {"file": name}


@functools.lru_cache(maxsize=8)
def _zarr_array(path: str) -> Any:  # opened once per worker process, not per tile
    import zarr

    return zarr.open_array(path, mode="r+")


def _write_zarr(path: str, array: np.ndarray, tile: Any) -> dict[str, str]:
    _zarr_array(path)[tile.row, tile.col] = array
    return {"file": f"tiles.zarr[{tile.row}, {tile.col}]"}


def _names(slides: Sequence[str]) -> list[str]:
    """One folder name per slide: its file name without extension, ``-2``, ``-3``, ... on repeats."""
    seen: dict[str, int] = {}
    out = []
    for s in slides:
        base = os.path.basename(os.path.normpath(s)).split(".")[0] or "slide"
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return out


def _write_csv(path: str, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)  # the manifest appears whole or not at all: it marks the slide complete


def _read_csv(path: str) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def export_tiles(slides: Sequence[str], out: str, *, tile_size: int = 256, overlap: int = 0,
                 mpp: float | None = None, magnification: float | None = None, tissue: float | None = None,
                 format: str = "png", client: Any = None, workers: int | None = None, batch: int = 64,
                 progress: bool | None = None, log: Callable[[str], None] | None = None) -> dict[str, int]:
    """Export every tile of every slide to ``out`` (see the module docstring); returns counts:
    slides done now, slides skipped as complete, tiles written. ``client``: a dask.distributed
    Client (default: a local cluster of ``workers`` processes, one per core, started only when
    there is work); ``progress``: a tqdm bar on stderr
    (default: when stderr is a terminal)."""
    import contextlib

    from . import jobs
    from . import open as open_slide
    from .progress import bar as progress_bar
    from .units import Scale

    if format not in FORMATS:
        raise InvalidRequestError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    grid = jobs.Grid(tile_size, overlap, Scale(mpp=mpp, magnification=magnification), tissue, "pad")
    settings = {"tile_size": tile_size, "overlap": overlap, "mpp": mpp, "magnification": magnification,
                "tissue": tissue, "format": format}
    os.makedirs(out, exist_ok=True)
    settings_path = os.path.join(out, "settings.json")
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            before = json.load(f)
        if before != settings:
            raise InvalidRequestError(f"{out}: holds an export with other settings ({before}); "
                                      f"use another folder for {settings}")
    else:
        with open(settings_path, "w") as f:
            json.dump(settings, f)
    names = _names(slides)
    folders = [os.path.join(out, n) for n in names]
    todo = [i for i, d in enumerate(folders) if not os.path.exists(os.path.join(d, "manifest.csv"))]
    columns = [*jobs.COLUMNS, "file"]
    counts = {"done": 0, "skipped": len(slides) - len(todo), "tiles": 0}
    if counts["skipped"]:
        log(f"{counts['skipped']} slide(s) already complete in {out}: skipped")
    with contextlib.ExitStack() as stack:
        pending: dict[Any, int] = {}  # future -> slide index
        parts: dict[int, list] = {}  # slide index -> its futures, in tile order
        total = 0
        for i in todo:
            os.makedirs(folders[i], exist_ok=True)
            with open_slide(slides[i]) as slide:
                scene = slide.scenes[0]
                tiles = grid.tiles(scene)
                (tw, th), (ox, oy) = tiles.tile_size, tiles.overlap_px
                shape = (th + 2 * oy, tw + 2 * ox, scene.image_channels)  # every tile's (edges="pad")
                if format == "zarr":
                    import zarr

                    path = os.path.join(folders[i], "tiles.zarr")
                    zarr.create_array(path, shape=(*tiles.grid[::-1], *shape), chunks=(1, 1, *shape),
                                      dtype=scene.dtype, fill_value=0, overwrite=True)
                    fn: Callable = functools.partial(_write_zarr, path)
                else:
                    if format in ("png", "jpeg"):
                        _check_image(slides[i], scene.dtype, shape, jpeg=format == "jpeg")
                    fn = functools.partial(_write_file, folders[i], format)
                if client is None:  # started only once there is work, and after the checks above
                    client = stack.enter_context(jobs.local_client(workers))
                futures = jobs.submit(fn, scene, grid, client, batch)
            parts[i] = futures
            pending.update((f, i) for f in futures)
            total += len(tiles)
        bar = stack.enter_context(progress_bar(total, "tile", progress if pending else False))
        left = {i: len(fs) for i, fs in parts.items()}
        from dask.distributed import as_completed

        try:
            for f in as_completed(list(pending)):
                rows = f.result()
                bar.update(len(rows))
                i = pending[f]
                left[i] -= 1
                if left[i] == 0:  # the slide's every tile is written: its manifest marks it complete
                    rows = [r for g in parts[i] for r in g.result()]
                    _write_csv(os.path.join(folders[i], "manifest.csv"), rows, columns)
                    counts["done"] += 1
                    counts["tiles"] += len(rows)
        except BaseException:
            for f in pending:
                f.cancel()
            raise
        for i in todo:  # slides with no tile at all (tissue found none) are complete too
            if not parts[i]:
                _write_csv(os.path.join(folders[i], "manifest.csv"), [], columns)
                counts["done"] += 1
    every = [r for d in folders if os.path.exists(m := os.path.join(d, "manifest.csv")) for r in _read_csv(m)]
    _write_csv(os.path.join(out, "manifest.csv"), every, columns)
    return counts
