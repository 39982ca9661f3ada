"""Deep Zoom tiles from a slide, with openslide-python's ``DeepZoomGenerator`` interface and tile math.

Deep Zoom levels halve (rounding up) from the slide's full size down to 1x1; level ``n`` of
``level_count`` is ``2 ** (level_count - n - 1)`` times smaller than level 0. Each tile is
``tile_size`` square plus ``overlap`` pixels on every side that has a neighbour, read from the
slide level that best fits its downsample and shrunk with Lanczos when that level is larger.
"""

from __future__ import annotations

import math
from xml.etree.ElementTree import Element, SubElement, tostring

from PIL import Image

from . import (
    PROPERTY_NAME_BACKGROUND_COLOR,
    PROPERTY_NAME_BOUNDS_HEIGHT,
    PROPERTY_NAME_BOUNDS_WIDTH,
    PROPERTY_NAME_BOUNDS_X,
    PROPERTY_NAME_BOUNDS_Y,
    AbstractSlide,
)


class DeepZoomGenerator:
    """Deep Zoom tiles of ``osr`` (an OpenSlide or ImageSlide from this package, or openslide's)."""

    BOUNDS_OFFSET_PROPS = (PROPERTY_NAME_BOUNDS_X, PROPERTY_NAME_BOUNDS_Y)
    BOUNDS_SIZE_PROPS = (PROPERTY_NAME_BOUNDS_WIDTH, PROPERTY_NAME_BOUNDS_HEIGHT)

    def __init__(self, osr: AbstractSlide, tile_size: int = 254, overlap: int = 1,
                 limit_bounds: bool = False):
        self._osr = osr
        self._tile = tile_size
        self._overlap = overlap
        self._limit_bounds = limit_bounds
        props = osr.properties
        full = osr.dimensions
        if limit_bounds:
            # the non-empty area the slide declares, at every level in proportion
            self._offset = tuple(int(props.get(k, 0)) for k in self.BOUNDS_OFFSET_PROPS)
            frac = tuple(int(props.get(k, n)) / n for k, n in zip(self.BOUNDS_SIZE_PROPS, full, strict=True))
            self._slide_dims = tuple(tuple(math.ceil(n * f) for n, f in zip(d, frac, strict=True))
                                     for d in osr.level_dimensions)
        else:
            self._offset = (0, 0)
            self._slide_dims = tuple(osr.level_dimensions)
        dims = [self._slide_dims[0]]
        while dims[-1][0] > 1 or dims[-1][1] > 1:
            dims.append(tuple(max(1, math.ceil(n / 2)) for n in dims[-1]))
        self._dims: tuple[tuple[int, int], ...] = tuple((int(w), int(h)) for w, h in reversed(dims))
        self._tiles: tuple[tuple[int, int], ...] = tuple((math.ceil(w / tile_size), math.ceil(h / tile_size))
                                                         for w, h in self._dims)
        n = len(self._dims)
        ds_from_full = [2 ** (n - i - 1) for i in range(n)]
        self._slide_level = tuple(osr.get_best_level_for_downsample(d) for d in ds_from_full)
        self._slide_ds = osr.level_downsamples
        # Deep Zoom pixels per pixel of the slide level each Deep Zoom level reads
        self._dz_per_slide = tuple(ds_from_full[i] / self._slide_ds[self._slide_level[i]] for i in range(n))
        self._background = "#" + props.get(PROPERTY_NAME_BACKGROUND_COLOR, "ffffff")

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self._osr!r}, tile_size={self._tile!r}, "
                f"overlap={self._overlap!r}, limit_bounds={self._limit_bounds!r})")

    @property
    def level_count(self) -> int:
        """Number of Deep Zoom levels."""
        return len(self._dims)

    @property
    def level_tiles(self) -> tuple[tuple[int, int], ...]:
        """(columns, rows) of tiles at each Deep Zoom level."""
        return self._tiles

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of each Deep Zoom level."""
        return self._dims

    @property
    def tile_count(self) -> int:
        """Tiles in all levels together."""
        return sum(c * r for c, r in self._tiles)

    def get_tile(self, level: int, address: tuple[int, int]) -> Image.Image:
        """The RGB tile at ``address`` (col, row) of Deep Zoom ``level``."""
        (location, slide_level, size), dz_size = self._geometry(level, address)
        opaque = getattr(self._osr, "_read_opaque", None)  # this package's OpenSlide: no RGBA round trip
        tile = opaque(location, slide_level, size) if opaque else None
        if tile is None:
            region = self._osr.read_region(location, slide_level, size)
            tile = Image.composite(region, Image.new("RGB", region.size, self._background), region)
            tile.info.update(region.info)
        profile = tile.info.get("icc_profile")
        if tile.size != dz_size:
            tile.thumbnail(dz_size, Image.Resampling.LANCZOS)
        if profile is not None:
            tile.info["icc_profile"] = profile
        return tile

    def get_tile_coordinates(self, level: int, address: tuple[int, int]
                             ) -> tuple[tuple[int, int], int, tuple[int, int]]:
        """The ``read_region`` arguments (location, slide level, size) behind a tile."""
        return self._geometry(level, address)[0]

    def get_tile_dimensions(self, level: int, address: tuple[int, int]) -> tuple[int, int]:
        """(width, height) of a tile."""
        return self._geometry(level, address)[1]

    def _geometry(self, level: int, address: tuple[int, int]
                  ) -> tuple[tuple[tuple[int, int], int, tuple[int, int]], tuple[int, int]]:
        if not 0 <= level < len(self._dims):
            raise ValueError("Invalid level")
        if len(address) != 2 or not all(0 <= a < n for a, n in zip(address, self._tiles[level], strict=True)):
            raise ValueError("Invalid address")
        slide_level = self._slide_level[level]
        k = self._dz_per_slide[level]
        location, size, dz_size = [0, 0], [0, 0], [0, 0]
        for axis in range(2):
            t, ntiles = address[axis], self._tiles[level][axis]
            before = self._overlap if t > 0 else 0
            after = self._overlap if t < ntiles - 1 else 0
            start = self._tile * t  # in Deep Zoom pixels
            extent = min(self._tile, self._dims[level][axis] - start) + before + after
            in_slide_level = k * (start - before)
            location[axis] = int(self._slide_ds[slide_level] * in_slide_level + self._offset[axis])
            size[axis] = int(min(math.ceil(k * extent),
                                 self._slide_dims[slide_level][axis] - math.ceil(in_slide_level)))
            dz_size[axis] = extent
        return ((location[0], location[1]), slide_level, (size[0], size[1])), (dz_size[0], dz_size[1])

    def get_dzi(self, format: str) -> str:
        """The Deep Zoom descriptor (XML) for tiles in ``format`` ("jpeg" or "png")."""
        image = Element("Image", TileSize=str(self._tile), Overlap=str(self._overlap), Format=format,
                        xmlns="http://schemas.microsoft.com/deepzoom/2008")
        w, h = self._slide_dims[0]
        SubElement(image, "Size", Width=str(w), Height=str(h))
        return tostring(image, encoding="unicode")
