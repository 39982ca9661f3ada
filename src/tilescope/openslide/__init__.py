"""A drop-in for openslide-python: change ``import openslide`` to
``from tilescope import openslide`` and existing code runs on tilescope.

The API mirrors openslide-python 1.4: ``OpenSlide``, ``ImageSlide``, ``open_slide``,
``AbstractSlide``, ``OpenSlideCache``, the errors, the ``PROPERTY_NAME_*`` constants, and
``deepzoom.DeepZoomGenerator``. Pixels equal openslide's where both decode the same tiles.

Differences, by design:
- every format tilescope reads opens (OME-TIFF too; its vendor is "ome-tiff"); scenes other than
  8-bit RGB (fluorescence, 16-bit, grey) are composited to RGB with their channel colours, each
  channel through a display window (the file's display settings where it stores them, else its
  0.1th-99.9th percentiles at low resolution: see ``tilescope.display``);
- a wrong argument (``OpenSlide(None)``, ``OpenSlideCache(-1)``) or any use of a closed slide
  (``close()`` again included) raises ``ctypes.ArgumentError`` with openslide-python's message, as
  its ctypes layer does, so ``except ctypes.ArgumentError`` clauses written for it still catch it;
  ``lowlevel`` has openslide's functions (each ``available``) over the drop-in's own objects;
- ``openslide.quickhash-1`` is given for SVS, generic TIFF, NDPI and DICOM slides (as openslide
  computes it), not for the other formats;
- a ``location`` that falls between pixels of a level (x not a multiple of the level's downsample)
  reads the nearest level pixel; openslide interpolates there.
"""

from __future__ import annotations

import copy
from abc import ABCMeta, abstractmethod
from collections.abc import Iterator, Mapping
from io import BytesIO
from typing import Self

import numpy as np
from PIL import Image, ImageCms

import tilescope
from tilescope import TileCache, TilescopeError
from tilescope.display import Display
from tilescope.formats import openslide_vendor

from . import lowlevel
from .lowlevel import OpenSlideError, OpenSlideUnsupportedFormatError, OpenSlideVersionError

__all__ = [
    "PROPERTY_NAME_BACKGROUND_COLOR", "PROPERTY_NAME_BARCODE", "PROPERTY_NAME_BOUNDS_HEIGHT",
    "PROPERTY_NAME_BOUNDS_WIDTH", "PROPERTY_NAME_BOUNDS_X", "PROPERTY_NAME_BOUNDS_Y",
    "PROPERTY_NAME_COMMENT", "PROPERTY_NAME_MPP_X", "PROPERTY_NAME_MPP_Y",
    "PROPERTY_NAME_OBJECTIVE_POWER", "PROPERTY_NAME_QUICKHASH1", "PROPERTY_NAME_VENDOR",
    "AbstractSlide", "ImageSlide", "OpenSlide", "OpenSlideCache", "OpenSlideError",
    "OpenSlideUnsupportedFormatError", "OpenSlideVersionError", "lowlevel", "open_slide",
]

__version__ = tilescope.__version__
__library_version__ = f"tilescope {tilescope.__version__}"

PROPERTY_NAME_COMMENT = "openslide.comment"
PROPERTY_NAME_VENDOR = "openslide.vendor"
PROPERTY_NAME_QUICKHASH1 = "openslide.quickhash-1"
PROPERTY_NAME_BACKGROUND_COLOR = "openslide.background-color"
PROPERTY_NAME_OBJECTIVE_POWER = "openslide.objective-power"
PROPERTY_NAME_MPP_X = "openslide.mpp-x"
PROPERTY_NAME_MPP_Y = "openslide.mpp-y"
PROPERTY_NAME_BOUNDS_X = "openslide.bounds-x"
PROPERTY_NAME_BOUNDS_Y = "openslide.bounds-y"
PROPERTY_NAME_BOUNDS_WIDTH = "openslide.bounds-width"
PROPERTY_NAME_BOUNDS_HEIGHT = "openslide.bounds-height"
PROPERTY_NAME_BARCODE = "openslide.barcode"



def _fmt(v: float) -> str:
    # openslide prints doubles with 17 significant digits, trailing zeros dropped
    return f"{v:.17g}"


class OpenSlideCache:
    """A decoded-tile cache that several slides can share (``slide.set_cache(cache)``)."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._cache = TileCache(lowlevel.size_t(capacity))

    def __repr__(self) -> str:
        return f"OpenSlideCache({self._capacity!r})"


class AbstractSlide(metaclass=ABCMeta):
    """The interface OpenSlide and ImageSlide share."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    @abstractmethod
    def detect_format(cls, filename: lowlevel.Filename) -> str | None:
        """The format of ``filename`` as a string, or None if it cannot be opened."""

    @abstractmethod
    def close(self) -> None:
        """Release the file."""

    @property
    @abstractmethod
    def level_count(self) -> int: ...

    @property
    @abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]: ...

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    @property
    @abstractmethod
    def level_downsamples(self) -> tuple[float, ...]: ...

    @property
    @abstractmethod
    def properties(self) -> Mapping[str, str]: ...

    @property
    @abstractmethod
    def associated_images(self) -> Mapping[str, Image.Image]: ...

    @property
    def color_profile(self) -> ImageCms.ImageCmsProfile | None:
        """The embedded ICC profile, or None."""
        profile = self._icc()
        return ImageCms.getOpenProfile(BytesIO(profile)) if profile else None

    def _icc(self) -> bytes | None:
        return None

    @abstractmethod
    def get_best_level_for_downsample(self, downsample: float) -> int: ...

    @abstractmethod
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image: ...

    def set_cache(self, cache: OpenSlideCache) -> None:  # noqa: B027  (no-op where nothing is cached)
        """Use ``cache`` for this slide's decoded tiles."""

    def get_thumbnail(self, size: tuple[int, int]) -> Image.Image:
        """An RGB image no larger than ``size``: the best level, over the background colour,
        shrunk with Lanczos (as openslide-python does)."""
        downsample = max(d / s for d, s in zip(self.dimensions, size, strict=True))
        level = self.get_best_level_for_downsample(downsample)
        region = self.read_region((0, 0), level, self.level_dimensions[level])
        background = "#" + self.properties.get(PROPERTY_NAME_BACKGROUND_COLOR, "ffffff")
        thumb = Image.new("RGB", region.size, background)
        thumb.paste(region, None, region)
        thumb.thumbnail(size, Image.Resampling.LANCZOS)
        profile = self._icc()
        if profile:
            thumb.info["icc_profile"] = profile
        return thumb


def _rgb8(a: np.ndarray) -> np.ndarray:
    """Any scene's pixels as 8-bit RGB for openslide's RGBA images."""
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[-1] == 2:
        a = np.concatenate([a, a[..., :1]], axis=-1)
    a = a[..., :3]
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return (a >> 8).astype(np.uint8)
    if a.dtype == np.bool_:  # 1-bit images
        return a.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(a.dtype, np.floating):
        return np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)
    info = np.iinfo(a.dtype)
    return ((a.astype(np.float64) - info.min) * 255 / (info.max - info.min)).astype(np.uint8)


class OpenSlide(AbstractSlide):
    """An open whole-slide image, read by tilescope (any format it reads)."""

    def __init__(self, filename: lowlevel.Filename):
        self._filename = filename
        self._osr = self  # the handle openslide's lowlevel functions take
        try:
            self._slide = tilescope.open(lowlevel.filename(filename))
        except (tilescope.UnsupportedFormatError, tilescope.SourceNotFoundError) as e:
            raise OpenSlideUnsupportedFormatError(f"Unsupported or missing image file: {e}") from e
        except TilescopeError as e:
            raise OpenSlideError(str(e)) from e
        self._vendor = openslide_vendor(self._slide.driver)
        if self._vendor is None:  # as openslide: plain images are ImageSlides
            self._slide.close()
            raise OpenSlideUnsupportedFormatError(f"Unsupported or missing image file: {self._slide.path}")
        self._scene = self._slide.scenes[0]
        # scenes on a canvas (a Leica collection): openslide shows the canvas, every scene at its
        # place, the rest transparent
        canvas = self._slide.canvas
        self._regions = [(sc, sc.rect) for sc in self._slide.scenes] if canvas else [(self._scene, None)]
        sc0 = self._scene.levels[0].size
        self._dims = tuple((int(canvas[0] * lv.size[0] / sc0[0]), int(canvas[1] * lv.size[1] / sc0[1]))
                           if canvas else lv.size for lv in self._scene.levels)
        self._error: str | None = None
        self._properties = self._build_properties()
        self._displays: dict[int, Display] = {}  # per scene: its colours and windows, when first read
        self._sel: tuple[list[int] | None, int, int] = (None, 0, 0)  # channels, z, t shown (see plane())

    def __repr__(self) -> str:
        return f"OpenSlide({self._filename!r})"

    def plane(self, scene: int | str = 0, channels: tilescope.geometry.Channels = None, z: int = 0,
              t: int = 0) -> OpenSlide:
        """tilescope's extension (openslide has none): this slide showing one scene's plane (z, t)
        and ``channels`` (names or indices), composited as the drop-in shows non-RGB scenes; what
        Deep Zoom of a multi-dimensional slide is made from. Shares the file: closing either closes
        both. TilescopeError (an InvalidRequestError) for a scene, channel or plane not there."""
        self._check()
        view = copy.copy(self)
        sc = self._slide.scene(scene)
        sc.planes(z, t)  # checked now, not at the first read
        view._scene, view._regions = sc, [(sc, None)]
        view._sel = (sc.channel_indices(channels) if channels is not None else None, z, t)
        view._dims = tuple(lv.size for lv in sc.levels)
        view._displays = {}
        view._properties = view._build_properties()
        return view

    @classmethod
    def detect_format(cls, filename: lowlevel.Filename) -> str | None:
        try:
            name = tilescope.detect(lowlevel.filename(filename))
        except TilescopeError:
            return None
        return openslide_vendor(name) if name else None

    def _check(self) -> None:
        if self._slide.closed:
            raise lowlevel.argument_error(ValueError, "Passing closed slide object")
        if self._error is not None:
            raise OpenSlideError(self._error)

    def _failed(self, e: Exception) -> OpenSlideError:
        # like openslide, a read error leaves the handle in an error state for good
        self._error = str(e)
        return OpenSlideError(self._error)

    def close(self) -> None:
        if self._slide.closed:
            raise lowlevel.argument_error(ValueError, "Passing closed slide object")
        self._slide.close()

    def _icc(self) -> bytes | None:
        return self._slide.icc_profile

    @property
    def level_count(self) -> int:
        self._check()
        return len(self._scene.levels)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        self._check()
        return self._dims

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        self._check()
        return tuple(lv.downsample for lv in self._scene.levels)

    @property
    def properties(self) -> Mapping[str, str]:
        """Name -> value, in openslide's order (by name); checked when used, as openslide's map."""
        return _PropertyMap(self)

    def _build_properties(self) -> dict[str, str]:
        s, sc = self._slide, self._scene
        p: dict[str, str] = {PROPERTY_NAME_VENDOR: str(self._vendor)}
        composite = self._regions[0][1] is not None
        if s.comment:
            p[PROPERTY_NAME_COMMENT] = s.comment
        p["openslide.level-count"] = str(len(sc.levels))
        for lv, (w, h) in zip(sc.levels, self._dims, strict=True):
            p[f"openslide.level[{lv.index}].width"], p[f"openslide.level[{lv.index}].height"] = str(w), str(h)
            p[f"openslide.level[{lv.index}].downsample"] = _fmt(lv.downsample)
            if not composite:  # a composite of regions has no one tiling
                p[f"openslide.level[{lv.index}].tile-width"] = str(lv.tile_size[0])
                p[f"openslide.level[{lv.index}].tile-height"] = str(lv.tile_size[1])
        if composite:
            rects = [r for _, r in self._regions if r is not None]
            for i, (x, y, w, h) in enumerate(rects):
                for key, v in (("x", x), ("y", y), ("width", w), ("height", h)):
                    p[f"openslide.region[{i}].{key}"] = str(v)
            x0, y0 = min(r[0] for r in rects), min(r[1] for r in rects)
            x1, y1 = max(r[0] + r[2] for r in rects), max(r[1] + r[3] for r in rects)
            p[PROPERTY_NAME_BOUNDS_X], p[PROPERTY_NAME_BOUNDS_Y] = str(x0), str(y0)
            p[PROPERTY_NAME_BOUNDS_WIDTH], p[PROPERTY_NAME_BOUNDS_HEIGHT] = str(x1 - x0), str(y1 - y0)
        if s.barcode:
            p[PROPERTY_NAME_BARCODE] = s.barcode
        if sc.mpp:
            p[PROPERTY_NAME_MPP_X], p[PROPERTY_NAME_MPP_Y] = _fmt(sc.mpp[0]), _fmt(sc.mpp[1])
        if sc.magnification:
            p[PROPERTY_NAME_OBJECTIVE_POWER] = _fmt(sc.magnification)
        for name in s.associated:
            w, h = s.associated.size(name)
            p[f"openslide.associated.{name}.width"], p[f"openslide.associated.{name}.height"] = str(w), str(h)
            if icc := s.associated.icc_profile(name):
                p[f"openslide.associated.{name}.icc-size"] = str(len(icc))
        if s.icc_profile:
            p["openslide.icc-size"] = str(len(s.icc_profile))
        try:  # read at open, as openslide computes it
            quickhash = s.quickhash1()
        except TilescopeError:
            quickhash = None
        if quickhash:
            p[PROPERTY_NAME_QUICKHASH1] = quickhash
        for group, values in s.properties.items():
            for key, value in values.items():
                if value is None or isinstance(value, (list, tuple, dict)):
                    continue  # tilescope's own structure (a DICOM slide's instances), not properties
                p[f"{group}.{key}"] = _fmt(value) if isinstance(value, float) else str(value)
        return dict(sorted(p.items()))  # openslide lists its properties by name

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        """Name -> RGBA image, decoded when asked; checked when used, as openslide's map."""
        return _AssociatedImageMap(self)

    def get_best_level_for_downsample(self, downsample: float) -> int:
        # openslide's rule: the last level whose downsample does not exceed the request
        ds = self.level_downsamples
        if downsample < ds[0]:
            return 0
        for i in range(1, len(ds)):
            if downsample < ds[i]:
                return i - 1
        return len(ds) - 1

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """An RGBA image of ``size`` at ``level``, its top-left at ``location`` in level-0 pixels;
        transparent where it lies outside the slide."""
        self._check()
        x, y = location
        w, h = size
        if w < 0 or h < 0:
            raise OpenSlideError(f"negative width ({w}) or negative height ({h}) not allowed")
        out = np.zeros((h, w, 4), np.uint8)
        if w == 0 or h == 0 or not 0 <= level < len(self._scene.levels):
            return self._image(out)
        for scene, rect in self._regions:
            lv = scene.levels[level]
            ox, oy = (rect[0] / lv.downsample, rect[1] / lv.downsample) if rect else (0, 0)
            self._draw(out, scene, level, x / lv.downsample - ox, y / lv.downsample - oy)
        return self._image(out)

    def _read_opaque(self, location: tuple[int, int], level: int,
                     size: tuple[int, int]) -> Image.Image | None:
        """``read_region`` as an RGB image where every pixel of it is opaque (one scene, the region
        inside its level), else None: what Deep Zoom tiles composite onto their background is then
        the image itself, without the RGBA copy and the composite."""
        self._check()
        if len(self._regions) != 1 or not 0 <= level < len(self._scene.levels) or min(size) <= 0:
            return None
        lv = self._scene.levels[level]
        lx, ly = location[0] / lv.downsample, location[1] / lv.downsample
        # the columns and rows _draw paints: all of them when these hold
        if np.ceil(-lx - 0.5) > 0 or np.ceil(-ly - 0.5) > 0 or \
                np.ceil(lv.size[0] - lx - 0.5) < size[0] or np.ceil(lv.size[1] - ly - 0.5) < size[1]:
            return None
        channels, z, t = self._sel
        try:
            a = self._scene.read_level(level, (lx, ly, size[0], size[1]), channels=channels, z=z, t=t)
        except TilescopeError as e:
            raise self._failed(e) from e
        return self._image(np.ascontiguousarray(self._display(self._scene)(a)))

    def _draw(self, out: np.ndarray, scene: tilescope.Scene, level: int, lx: float, ly: float) -> None:
        """Paint ``scene``'s level pixels from (lx, ly) of that level into ``out`` (RGBA), opaque
        where they exist; the rest of ``out`` is left as it is."""
        if level >= len(scene.levels):
            return
        h, w = out.shape[:2]
        lw, lh = scene.levels[level].size
        # column j shows level pixel floor(lx + j + 0.5): the columns and rows whose pixel exists
        c0, c1 = (int(np.clip(np.ceil(v - lx - 0.5), 0, w)) for v in (0, lw))
        r0, r1 = (int(np.clip(np.ceil(v - ly - 0.5), 0, h)) for v in (0, lh))
        if c1 <= c0 or r1 <= r0:
            return
        channels, z, t = self._sel
        try:
            a = scene.read_level(level, (lx + c0, ly + r0, c1 - c0, r1 - r0), channels=channels, z=z, t=t)
        except TilescopeError as e:
            raise self._failed(e) from e
        out[r0:r1, c0:c1, :3] = self._display(scene)(a)
        out[r0:r1, c0:c1, 3] = 255

    def _display(self, scene: tilescope.Scene) -> Display:
        """How ``scene`` is shown: RGB as it is; other scenes composited with their channel
        colours through display windows estimated once (tilescope.display)."""
        d = self._displays.get(scene.index)
        if d is None:
            channels, z, t = self._sel
            try:
                d = self._displays[scene.index] = Display(scene, channels, z, t)
            except TilescopeError as e:
                raise self._failed(e) from e
        return d

    def _image(self, a: np.ndarray) -> Image.Image:
        """An (h, w, 4) or (h, w, 3) array as an RGBA or RGB image with the slide's profile."""
        im = Image.fromarray(a, "RGBA" if a.shape[2] == 4 else "RGB")
        profile = self._icc()
        if profile:
            im.info["icc_profile"] = profile
        return im

    def set_cache(self, cache: OpenSlideCache) -> None:
        if not isinstance(cache, OpenSlideCache):
            raise TypeError("Not a cache object")
        self._check()
        self._slide.set_cache(cache._cache)


class _OpenSlideMap(Mapping):
    """openslide-python's maps: a view of the slide, checked on each use, ``<Name {...}>``."""

    def __init__(self, osr: OpenSlide):
        self._osr = osr

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {dict(self)!r}>"

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def _keys(self) -> list[str]:
        raise NotImplementedError


class _PropertyMap(_OpenSlideMap):
    def _keys(self) -> list[str]:
        self._osr._check()
        return list(self._osr._properties)

    def __getitem__(self, name: str) -> str:
        self._osr._check()
        return self._osr._properties[name]


class _AssociatedImageMap(_OpenSlideMap):
    def _keys(self) -> list[str]:
        self._osr._check()
        return sorted(self._osr._slide.associated)  # openslide lists them by name

    def __getitem__(self, name: str) -> Image.Image:
        osr = self._osr
        osr._check()
        if name not in osr._slide.associated:
            raise KeyError(name)
        try:
            a = osr._slide.associated[name]
        except TilescopeError as e:
            raise osr._failed(e) from e
        rgba = np.full((*a.shape[:2], 4), 255, np.uint8)
        rgba[..., :3] = _rgb8(a)
        im = Image.fromarray(rgba, "RGBA")
        if icc := osr._slide.associated.icc_profile(name):  # as openslide: only an image's own profile
            im.info["icc_profile"] = icc
        return im


class ImageSlide(AbstractSlide):
    """A plain image (anything Pillow opens) behind the slide interface: one level."""

    def __init__(self, file: lowlevel.Filename | Image.Image):
        self._file_arg = file
        if isinstance(file, Image.Image):
            self._close_image = False
            self._img: Image.Image | None = file
        else:  # Pillow's errors as they are: FileNotFoundError, PIL.UnidentifiedImageError (OSErrors)
            self._close_image = True
            self._img = Image.open(file)
        self._profile = self._img.info.get("icc_profile")

    def __repr__(self) -> str:
        return f"ImageSlide({self._file_arg!r})"

    @classmethod
    def detect_format(cls, filename: lowlevel.Filename) -> str | None:
        try:
            with Image.open(filename) as im:
                return im.format
        except OSError:
            return None

    def close(self) -> None:
        if self._close_image and self._img is not None:
            self._img.close()
        self._img = None

    def _image_or_raise(self) -> Image.Image:
        if self._img is None:
            raise ValueError("Cannot read from a closed slide")
        return self._img

    def _icc(self) -> bytes | None:
        return self._profile

    @property
    def level_count(self) -> int:
        return 1

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return (self._image_or_raise().size,)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return (1.0,)

    @property
    def properties(self) -> Mapping[str, str]:
        return {}

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        return {}

    def get_best_level_for_downsample(self, downsample: float) -> int:
        return 0

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        img = self._image_or_raise()
        if level != 0:
            raise OpenSlideError("Invalid level")
        if size[0] < 0 or size[1] < 0:
            raise OpenSlideError(f"Size {size} must be non-negative")
        out = Image.new("RGBA", size, (0, 0, 0, 0))
        x, y = location
        w, h = size
        iw, ih = img.size
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, iw), min(y + h, ih)
        if x1 > x0 and y1 > y0:
            out.paste(img.crop((x0, y0, x1, y1)).convert("RGBA"), (x0 - x, y0 - y))
        if self._profile:
            out.info["icc_profile"] = self._profile
        return out


def open_slide(filename: lowlevel.Filename) -> OpenSlide | ImageSlide:
    """Open a whole-slide image, or else a plain image through Pillow (whose errors a file it
    cannot open raises: FileNotFoundError, PIL.UnidentifiedImageError)."""
    try:
        return OpenSlide(filename)
    except OpenSlideUnsupportedFormatError:
        return ImageSlide(filename)
