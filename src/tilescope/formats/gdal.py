"""Raster formats GDAL reads (ERDAS Imagine, JPEG 2000, ENVI, PCIDSK, NetCDF, ...), through rasterio.

Needs the ``[gdal]`` extra (rasterio's wheels carry GDAL). Asked last: TIFFs stay with the TIFF
drivers and plain images with Pillow, so only what nothing else knows reaches GDAL. Bands are the
channels (their descriptions name them); internal overviews are levels; each level is a grid of
GDAL's natural blocks. A piece is one block window read by GDAL itself: the slide's reader keeps
one dataset handle per thread and level (GDAL handles are not thread-safe) and closes them with
the slide.
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING

import numpy as np

from ..codecs import Codec
from ..engine import GridPlane, Layout
from ..model import Scene, Slide, make_levels
from ..source import Home, PieceList

if TYPE_CHECKING:
    from ..engine import Options
    from . import Probe

NAME = "GDAL"
OPENSLIDE_VENDOR = "gdal"  # openslide's name for the format (detect_format, openslide.vendor)
# the encoding of a driver's files where GDAL reports no compression
LOCAL_ONLY = True  # rasterio opens the file by path
_DRIVER_CODECS = {"JP2OpenJPEG": "jpeg2000", "JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}

def _rasterio():
    """rasterio, imported when a file first reaches this driver (GDAL costs ~20 MB and 0.2 s to
    load: nothing else should pay for it), or None without the [gdal] extra."""
    try:
        import rasterio
    except ImportError:
        return None
    return rasterio


def _open(path: str, **kw):
    rasterio = _rasterio()
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():  # microscopy rasters have no geotransform, and need none
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path, **kw)


def detect(probe: Probe) -> bool:
    rasterio = _rasterio()
    if rasterio is None:
        return False
    from rasterio.errors import RasterioIOError

    try:
        with _open(probe.path):
            return True
    except (RasterioIOError, OSError, ValueError):
        return False


class Blocks(PieceList):
    """The block windows of one overview level, read through a per-thread GDAL handle (GDAL
    datasets are not thread-safe) of that overview."""

    def __init__(self, path: str, overview: int | None, size, block, label: str):
        (w, h), (bw, bh) = size, block
        super().__init__(-(-w // bw) * -(-h // bh), label)
        self.overview, self.size, self.block = overview, size, block
        kw = {} if overview is None else {"overview_level": overview}
        self._home = Home((path, overview), functools.partial(_open, path, **kw), per_thread=True)

    def home(self, index: int) -> Home:
        return self._home

    def fetch(self, handle, index: int) -> np.ndarray:
        (w, h), (bw, bh) = self.size, self.block
        nx = -(-w // bw)
        x, y = (index % nx) * bw, (index // nx) * bh
        from rasterio.windows import Window

        a = handle.read(window=Window(x, y, min(bw, w - x), min(bh, h - y)))  # (bands, h, w)
        return np.ascontiguousarray(np.moveaxis(a, 0, -1))


def open(probe: Probe, options: Options) -> Slide:
    path = probe.path
    with _open(path) as ds:
        dtypes = set(ds.dtypes)
        count, driver = ds.count, ds.driver
        names = [d or f"B{i + 1}" for i, d in enumerate(ds.descriptions)]
        factors = ds.overviews(1) if count else []
        block = ds.block_shapes[0][::-1] if count else (256, 256)
        size = (ds.width, ds.height)
        res = ds.res
        tags = ds.tags()
        interp = [c.name for c in ds.colorinterp]
        stored = ds.compression.name.lower() if ds.compression else _DRIVER_CODECS.get(driver, "none")
    dtype = np.result_type(*[np.dtype(t) for t in dtypes])
    codec = Codec(f"gdal-{driver.lower()}", dtype, count, lambda data, h, w, out: data)
    specs = []
    for i in [None, *range(len(factors))]:
        if i is None:
            lsize, lblock = size, block
        else:
            with _open(path, overview_level=i) as ov:
                lsize, lblock = (ov.width, ov.height), ov.block_shapes[0][::-1]
        pieces = Blocks(path, i, lsize, lblock, "level 0" if i is None else f"overview {i}")
        specs.append((lsize, lblock, Layout.single(GridPlane(pieces, codec, lsize, lblock))))
    rgb = count in (3, 4) and interp[:3] == ["red", "green", "blue"]
    slide = Slide(probe.source, NAME, options, vendor=driver.lower(),
                  properties={"gdal": {"driver": driver, "pixel_size": list(res), **tags}})
    scene = Scene(slide, name="main", levels=make_levels(specs),
                  channel_names=["R", "G", "B", "A"][:count] if rgb else names, dtype=dtype,
                  compression=stored, compression_raw=f"{driver} {stored}", brightfield=rgb)
    slide.set_contents([scene], {})
    return slide
