"""Slide, Scene, Level: the format-independent object model every driver fills in."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

import numpy as np

from . import procs
from . import units as _units
from .cache import TileCache
from .color import ToSrgb
from .engine import GridPlane, Layout, Options, Reader, check_size
from .errors import CorruptDataError, InvalidRequestError, NotFoundError, SlideClosedError, TooLargeError
from .geometry import (
    LEVEL_TOLERANCE,
    Channels,
    PlaneIndex,
    RectLike,
    SizeLike,
    normalize_rect,
    plane_indices,
    resolve_size,
)
from .source import ByteSource, Detached, Source
from .tiles import LevelView, Tiles
from .tissue import TissueMask, tissue_mask
from .units import Scale, ScaleLike, Units


@dataclass(frozen=True)
class Level:
    """One resolution of a scene. ``downsample`` is openslide's: the mean of the width and height
    ratios to level 0; ``scale`` is the exact (x, y) ratio the engine maps coordinates with;
    ``mpp``, ``magnification`` (stated by the file) and ``native_magnification`` (stated or
    derived from mpp: see ``Scene.native_magnification``) are level 0's divided by ``scale``
    (None when unknown)."""

    index: int
    size: tuple[int, int]
    downsample: float
    tile_size: tuple[int, int]
    scale: tuple[float, float] = field(repr=False)
    layout: Layout = field(repr=False, compare=False)
    mpp: tuple[float, float] | None = None
    magnification: float | None = None
    native_magnification: float | None = None

    def __repr__(self) -> str:
        return (f"<Level {self.index}: {self.size[0]}x{self.size[1]}, downsample {self.downsample:g}, "
                f"tiles {self.tile_size[0]}x{self.tile_size[1]}{_optics(self.mpp, self.magnification)}>")


def _optics(mpp: tuple[float, float] | None, magnification: float | None) -> str:
    """", mpp 0.25, 40x" (what of it is known), for one-line reprs."""
    out = ""
    if mpp:
        out += f", mpp {mpp[0]:.4g}" if mpp[0] == mpp[1] else f", mpp {mpp[0]:.4g}x{mpp[1]:.4g}"
    if magnification:
        out += f", {magnification:g}x"
    return out


# what a driver says of a level: (size, tile size, layout)
LevelSpec = tuple[tuple[int, int], tuple[int, int], Layout]


def make_levels(specs: Sequence[LevelSpec]) -> list[Level]:
    """Levels from (size, tile_size, layout) tuples, finest first."""
    w0, h0 = specs[0][0]
    levels = []
    for i, ((w, h), tile, layout) in enumerate(specs):
        try:
            sx, sy = w0 / w, h0 / h
        except (TypeError, ZeroDivisionError):  # sizes from a broken file: the Scene refuses them
            sx = sy = math.nan
        levels.append(Level(i, (w, h), (sx + sy) / 2, tile, (sx, sy), layout))
    return levels


_T = TypeVar("_T")


def clone(obj: _T) -> _T:
    """A shallow copy of a plain object (its ``__dict__``): what re-opening a parsed slide copies,
    at a fifth of ``copy.copy``'s cost."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    return new


def background_for(dtype: np.typing.DTypeLike, brightfield: bool) -> int | float:
    """White for brightfield (the glass), 0 for fluorescence (no signal)."""
    if not brightfield:
        return 0
    dtype = np.dtype(dtype)
    return np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0


class Scene:
    """A continuous raster: one or more channels, z-slices and time frames, with a pyramid.

    Attributes:
        slide: the Slide it belongs to; index: its place in ``slide.scenes``; name: its name.
        size: (w, h) of level 0; rect: (x, y, w, h) on the slide's canvas (its own size at (0, 0)
            unless the scenes sit on a canvas, as Leica's collections).
        levels: the pyramid, finest first (:class:`Level`: size, downsample, tile_size, mpp, ...).
        channel_names, channel_colors (``"#RRGGBB"`` or None each), channel_info (per channel, what
            the format records: dye, wavelengths, DICOM path or segment), num_channels,
            image_channels (the first ones: the image; the rest are derived layers a format adds).
        dtype: the image channels' sample type; channel_dtypes: each channel's.
        mpp: (x, y) micrometres per pixel at level 0, or None; magnification: the objective power
            the file states, or None; native_magnification (stated, else derived from mpp) and
            magnification_source say where it came from.
        num_z_slices, num_t_frames, z_resolution (µm between slices), t_resolution (s between time
            points), t_offsets (s from the first time point, where the file lists them).
        compression: one vocabulary for every format ("jpeg", "jpeg2000", "lzw", ...);
            compression_raw: the format's own value.
        background: what reads give outside the scene (white for brightfield, else 0).
    """

    def __init__(self, slide: Slide, *, name: str, levels: list[Level], channel_names: Sequence[str],
                 dtype: np.typing.DTypeLike, mpp: tuple[float, float] | None = None,
                 magnification: float | None = None,
                 compression: str = "", compression_raw: str | None = None,
                 rect: tuple[int, int, int, int] | None = None,
                 num_z_slices: int = 1, num_t_frames: int = 1, z_resolution: float | None = None,
                 t_resolution: float | None = None, brightfield: bool = False,
                 channel_colors: Sequence[str | None] | None = None, image_channels: int | None = None,
                 channel_dtypes: Sequence | None = None, channel_info: Sequence[dict] | None = None,
                 t_offsets: Sequence[float] | None = None):
        self._slide = slide
        self.name = name
        self.index = 0  # its place in ``slide.scenes`` (set by Slide.set_contents)
        self._location = f"{slide.path} [scene {name!r}]"
        levels = _checked(levels, len(channel_names), self._location)
        self.channel_names = tuple(channel_names)
        # display colours as "#RRGGBB" where the format records them (fluorescence), else None
        self.channel_colors = tuple(channel_colors) if channel_colors else (None,) * len(self.channel_names)
        self.dtype = np.dtype(dtype)
        # the first ``image_channels`` channels are the image (read by default, in ``dtype``); the
        # rest are derived layers a format adds (DICOM segments and parametric maps), each with its
        # own dtype and background 0, possibly stored at some levels only
        self.image_channels = len(self.channel_names) if image_channels is None else image_channels
        self.channel_dtypes = tuple(np.dtype(d) for d in channel_dtypes) if channel_dtypes else \
            (self.dtype,) * len(self.channel_names)
        self.mpp = mpp
        self.magnification = magnification
        self.compression = compression  # one vocabulary for every format (codecs.COMPRESSIONS)
        self.compression_raw = compression if compression_raw is None else compression_raw  # the format's own
        self.size = levels[0].size
        self.rect = rect if rect is not None else (0, 0, *self.size)
        self.num_z_slices = num_z_slices
        self.num_t_frames = num_t_frames
        self.z_resolution = z_resolution
        self.t_resolution = t_resolution  # s between time points (their mean step where irregular)
        self.t_offsets = tuple(t_offsets) if t_offsets is not None else None  # s from the first, where listed
        # per channel: what the format records of it beyond name and colour (dye, wavelengths, ...)
        self.channel_info = tuple(channel_info) if channel_info is not None else tuple(
            {"name": n, "color": c} for n, c in zip(self.channel_names, self.channel_colors, strict=True))
        self.background = background_for(self.dtype, brightfield)
        mag, self.magnification_source = _units.native_magnification(self.magnification, self.mpp)
        self.native_magnification = mag
        self.levels = tuple(
            replace(lv, mpp=(mpp[0] * lv.scale[0], mpp[1] * lv.scale[1]) if (mpp := self.mpp) else None,
                    magnification=self.magnification / lv.scale[0] if self.magnification else None,
                    native_magnification=mag / lv.scale[0] if mag else None) for lv in levels)
        self._units = _units.Geometry(self.location, self.size, self.mpp, mag,
                                      tuple(lv.scale for lv in self.levels))
        # what every read hands the engine: (scale x, scale y, layout) per level
        self._read_levels = [(lv.scale[0], lv.scale[1], lv.layout) for lv in self.levels]

    def __reduce__(self) -> tuple:
        # what to open (the slide's ticket) and which scene: no parsed structure, no handle
        slide, index = self.__dict__.get("_pending_in") or (self._slide, self.index)
        return procs.pending_scene, (procs.own_class(self), slide, index)

    def _bind(self, slide: Slide) -> Scene:
        new = clone(self)
        new._slide = slide
        new._location = f"{slide.path} [scene {self.name!r}]"
        return new

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def __repr__(self) -> str:
        names = ", ".join(self.channel_names)
        return (f"<Scene {self.name!r}: {self.size[0]}x{self.size[1]}, {len(self.levels)} level(s), "
                f"{self.num_channels} ch ({names}) {self.dtype}, z {self.num_z_slices}, t {self.num_t_frames}"
                f"{_optics(self.mpp, self.magnification)}>")

    @property
    def slide(self) -> Slide:
        """The slide this scene belongs to."""
        return self._slide

    @property
    def location(self) -> str:
        """The slide's path and this scene's name, as error messages name them."""
        return self._location

    def _reader(self) -> Reader:
        self._slide._check_open()
        return self._slide._reader

    def channel_indices(self, channels: Channels = None) -> list[int]:
        """Indices of ``channels`` (names or indices, one or a list; None: the image channels; a
        name of a channel stored as samples gives its samples); InvalidRequestError otherwise."""
        if channels is None:
            return list(range(self.image_channels))
        if isinstance(channels, int | str):
            channels = [channels]
        out = []
        for c in channels:
            if isinstance(c, str):
                if c not in self.channel_names:
                    # a channel stored as samples ("Bright:R", "Bright:G", ...) is asked for by its name
                    samples = [i for i, n in enumerate(self.channel_names) if n.rpartition(":")[0] == c]
                    if samples:
                        out += samples
                        continue
                    raise InvalidRequestError(f"{self.location}: no channel named {c!r} "
                                              f"(channels: {', '.join(self.channel_names)})")
                c = self.channel_names.index(c)
            elif isinstance(c, bool) or not isinstance(c, int | np.integer) \
                    or not 0 <= c < self.num_channels:
                raise InvalidRequestError(
                    f"{self.location}: channel {c!r} is outside 0..{self.num_channels - 1}")
            out.append(int(c))
        return out

    def level_index(self, level: int) -> int:
        """``level`` checked: an int index of ``levels``; InvalidRequestError otherwise."""
        if isinstance(level, bool) or not isinstance(level, int | np.integer) \
                or not 0 <= level < len(self.levels):
            raise InvalidRequestError(
                f"{self.location}: level {level!r} is outside 0..{len(self.levels) - 1}")
        return int(level)

    def planes(self, z: PlaneIndex = 0, t: PlaneIndex = 0) -> tuple[list[tuple[int, int]], tuple[int, ...]]:
        """The (z, t) planes ``z`` and ``t`` (an index or a (start, stop) range each) select, t
        outer, and the leading axes a read adds for the ranges; InvalidRequestError otherwise."""
        zs, zr = plane_indices(z, self.num_z_slices, "z", self.location)
        ts, tr = plane_indices(t, self.num_t_frames, "t", self.location)
        lead = (len(ts),) * tr + (len(zs),) * zr
        return [(zz, tt) for tt in ts for zz in zs], lead

    def read(self, rect: RectLike = None, size: SizeLike = None, *, channels: Channels = None,
             z: PlaneIndex = 0, t: PlaneIndex = 0, units: Units = "px", scale: ScaleLike = None,
             magnification: float | None = None, mpp: float | tuple[float, float] | None = None,
             downsample: float | None = None) -> np.ndarray:
        """Pixels of ``rect`` (x, y, w, h; default the whole scene) at output ``size`` (w, h; a 0
        keeps the aspect ratio; default the rect's size), as (h, w, c).

        ``units`` says how ``rect`` is given: "px" (level-0 pixels), "um", "mm", "fraction", or a
        :class:`Scale` (pixels at that scale, e.g. ``Scale(level=2)``, which is then also the
        default output scale). Instead of ``size`` the
        output can be asked at a ``scale`` (or the shorthands ``magnification``, ``mpp``,
        ``downsample``). Downscaled reads come from the best pyramid level, area-resampled.
        ``z`` and ``t`` take an index or a (start, stop) range; each range adds a leading axis,
        t before z. Pixels outside the scene are background (white for brightfield, 0 for
        fluorescence).
        """
        self._reader()
        rect = self.to_base(rect, units)
        out_scale = self._output_scale(scale, magnification, mpp, downsample)
        if out_scale is None and size is None and isinstance(units, Scale | dict):
            out_scale = _units.as_scale(units)  # pixels at a scale come out at that scale
        if out_scale is not None:
            if size is not None:
                raise InvalidRequestError(f"{self.location}: give an output size or a scale, not both")
            fx, fy = _units.factor(self._units, out_scale)
            size = (max(1, round(rect[2] / fx)), max(1, round(rect[3] / fy)))
        out_size = resolve_size(size, rect[2:], self.location)
        return self.read_box(rect, out_size, channels, z, t)

    def read_box(self, box: Sequence[float], out_size: tuple[int, int], channels: Channels = None,
                 z: PlaneIndex = 0, t: PlaneIndex = 0, threads: int | None = None) -> np.ndarray:
        """Pixels of ``box`` ((x, y, w, h) level-0 pixels, fractional allowed) at exactly ``out_size``
        ((w, h)), on ``threads`` decode threads (default the slide's option): what :meth:`read`
        does after its units and scales are resolved, for layers that resolve them themselves."""
        reader = self._reader()
        chans = self.channel_indices(channels)
        planes, lead = self.planes(z, t)
        if all(c < self.image_channels for c in chans):
            out = reader.read(self._read_levels, box, out_size, chans, planes, self.dtype, self.background,
                              threads)
        else:  # derived layers: the levels that hold every channel asked for
            levels = [(lv.scale[0], lv.scale[1], sel) for lv in self.levels
                      if (sel := lv.layout.select(chans)) is not None]
            if not levels:
                raise InvalidRequestError(f"{self.location}: no level holds all of channels {chans}")
            dtype, background = self._mixed(chans)
            out = reader.read(levels, box, out_size, list(range(len(chans))), planes, dtype, background,
                              threads)
        if reader.options.srgb and self.channel_names[:3] == ("R", "G", "B") and chans == [0, 1, 2]:
            self._slide._to_srgb(out)
        return out.reshape(*lead, *out.shape[1:])

    def _output_scale(self, scale: ScaleLike, magnification: float | None,
                      mpp: float | tuple[float, float] | None, downsample: float | None) -> Scale | None:
        if scale is None and magnification is None and mpp is None and downsample is None:
            return None
        named = (("magnification", magnification), ("mpp", mpp), ("downsample", downsample))
        given: dict[str, Any] = {k: v for k, v in named if v is not None}
        if (scale is not None and given) or len(given) > 1:
            raise InvalidRequestError(f"{self.location}: give one output scale, got {scale!r} and {given}")
        return _units.as_scale(scale) if scale is not None else Scale(**given) if given else None

    # -- units and scales ---------------------------------------------------------------------
    def to_base(self, rect: RectLike = None, units: Units = "px") -> tuple:
        """``rect`` in ``units`` (see :meth:`read`) as level-0 pixels: ints for "px", else floats."""
        if units in ("px", None):
            return normalize_rect(rect, self.size, self.location)
        if rect is None:
            return (0, 0, *self.size)
        box = normalize_rect(rect, self.size, self.location, integral=False)
        return _units.convert(self._units, box, units, "px")

    def convert(self, rect: RectLike, src: Units = "px", dst: Units = "px"
                ) -> tuple[float, float, float, float]:
        """A rect given in ``src`` units in ``dst`` units: "px", "um", "mm", "fraction" or a Scale.
        ``scene.convert(r, "px", Scale(magnification=5))`` gives r in pixels at 5x."""
        box = normalize_rect(rect, self.size, self.location, integral=False)
        return _units.convert(self._units, box, src, dst)

    def scale_factor(self, scale: ScaleLike) -> tuple[float, float]:
        """Level-0 pixels per pixel at ``scale`` (a Scale or dict), per axis."""
        return _units.factor(self._units, scale)

    def best_level(self, magnification: float | None = None, mpp: float | tuple[float, float] | None = None,
                   downsample: float | None = None, *, scale: ScaleLike = None, nearest: bool = False) -> int:
        """The level for a target resolution: by default the coarsest one not coarser than the
        target (what reads use); ``nearest=True`` the closest one in log scale."""
        target = self._output_scale(scale, magnification, mpp, downsample) or Scale()
        f = max(_units.factor(self._units, target))
        ds = [max(lv.scale) for lv in self.levels]
        if nearest:
            return min(range(len(ds)), key=lambda i: abs(math.log(ds[i] / f)))
        fits = [i for i, d in enumerate(ds) if d <= f * (1 + LEVEL_TOLERANCE)]
        return max(fits, key=lambda i: ds[i]) if fits else 0

    def read_level(self, level: int, rect: RectLike = None, *, channels: Channels = None,
                   z: PlaneIndex = 0, t: PlaneIndex = 0, threads: int | None = None) -> np.ndarray:
        """Pixels of ``rect`` in level ``level``'s own pixel grid, exactly as stored (no
        resampling). A fractional x or y reads the nearest level pixels. ``threads`` caps the
        decode threads of this read (default: the slide's ``threads`` option)."""
        reader = self._reader()
        lv = self.levels[self.level_index(level)]
        x, y, w, h = normalize_rect(rect, lv.size, self.location, integral=False)
        w, h = normalize_rect((0, 0, w, h), lv.size, self.location)[2:]  # sizes are whole pixels
        x, y = (int(v) if float(v).is_integer() else v for v in (x, y))
        rect = (x, y, w, h)
        planes, lead = self.planes(z, t)
        chans = self.channel_indices(channels)
        layout, dtype = lv.layout, self.dtype
        background: float | np.ndarray = self.background
        if not all(c < self.image_channels for c in chans):
            selected = lv.layout.select(chans)
            if selected is None:
                raise InvalidRequestError(f"{self.location}: level {level} does not hold all of channels "
                                          f"{chans}")
            dtype, background = self._mixed(chans)
            chans, layout = list(range(len(chans))), selected
        out = reader.read([(1.0, 1.0, layout)], rect, (int(w), int(h)), chans, planes, dtype, background,
                          threads)
        return out.reshape(*lead, *out.shape[1:])

    def encoded_tiles(self, level: int, *, z: int = 0, t: int = 0) -> EncodedTiles | None:
        """Level ``level``'s tiles as stored, still encoded, where they are one regular grid of one
        codec holding the image channels as samples in order (what a writer copies instead of
        decoding and encoding again: passthrough); None where they are not."""
        lv = self.levels[self.level_index(level)]
        (zt,), _ = self.planes(z, t)
        planes = lv.layout.planes[zt]
        n = self.image_channels
        if len(planes) != 1 or not isinstance(planes[0], GridPlane) or planes[0].codec.samples != n or \
                lv.layout.channel_map[:n] != tuple((0, c) for c in range(n)):
            return None
        plane, reader = planes[0], self._reader()
        return EncodedTiles(plane.codec.name, plane.tile, plane.grid, plane.codec.samples, plane.codec.dtype,
                            plane.codec.params, lambda i: reader.encoded(plane, i))

    def _mixed(self, chans: list[int]) -> tuple[np.dtype, np.ndarray]:
        """Output dtype and per-channel background of a read including derived layers."""
        dtype = np.result_type(*(self.channel_dtypes[c] for c in chans))
        return dtype, np.array([self.background if c < self.image_channels else 0 for c in chans], dtype)

    # -- access patterns (tiles.py) ------------------------------------------------------------
    def tiles(self, tile_size: int | Sequence[int] = 256, overlap: int | Sequence[int] = 0, *,
              region: RectLike = None, units: Units = "px", scale: ScaleLike = None,
              magnification: float | None = None, mpp: float | tuple[float, float] | None = None,
              downsample: float | None = None,
              channels: Channels = None, z: PlaneIndex = 0, t: PlaneIndex = 0, edges: str = "clip",
              tissue: float | None = None, tissue_mask: TissueMask | None = None,
              positions: Sequence[tuple[int, int]] | None = None, prefetch: int | None = None) -> Tiles:
        """Tiles of ``tile_size`` (int or (w, h), output pixels) over ``region`` (in ``units``;
        default the whole scene) at a scale (``scale`` or ``magnification``/``mpp``/``downsample``;
        default level 0), with ``overlap`` pixels of context per side and ``edges`` "clip" or
        "pad". ``tissue=0.5`` keeps tiles at least half tissue (see :meth:`tissue_mask`);
        ``positions`` keeps given (col, row) grid positions. Iterating decodes ``prefetch`` tiles
        ahead (default 2 per core; 0 = on access). Returns a :class:`tilescope.tiles.Tiles`."""
        return Tiles(self, tile_size, overlap, region=region, units=units,
                     scale=self._output_scale(scale, magnification, mpp, downsample), channels=channels,
                     z=z, t=t, edges=edges, tissue=tissue, tissue_mask=tissue_mask, positions=positions,
                     prefetch=prefetch)

    def sampler(self, size: int | Sequence[int], overlap: int | Sequence[int] = 0, *,
                region: RectLike = None, units: Units = "px", scale: ScaleLike = None,
                magnification: float | None = None, mpp: float | tuple[float, float] | None = None,
                downsample: float | None = None,
                positions: Sequence[tuple[int, int]] | None = None, channels: Channels = None,
                z: PlaneIndex = 0, t: PlaneIndex = 0,                prefetch: int | None = None) -> Tiles:
        """A grid of equal regions (dicomslide-style): cells of ``size`` output pixels, each read with
        ``overlap`` pixels from its neighbours on every side (background beyond the scene), within
        ``region`` or at the given grid ``positions``; every item is ``size + 2 * overlap``."""
        return self.tiles(size, overlap, region=region, units=units, scale=scale, magnification=magnification,
                          mpp=mpp, downsample=downsample, channels=channels, z=z, t=t, edges="pad",
                          positions=positions, prefetch=prefetch)

    def tissue_mask(self, max_size: int = 1024) -> TissueMask:
        """A :class:`tilescope.tissue.TissueMask` from a low-resolution read (Otsu threshold on
        saturation for brightfield, on the brightest channel otherwise)."""
        return tissue_mask(self, max_size)

    def view(self, level: int = 0, *, channels: Channels = None, z: PlaneIndex = 0,
             t: PlaneIndex = 0) -> LevelView:
        """A lazy numpy-style array of one level (``levels[i]`` describes it):
        ``scene.view(1)[y0:y1, x0:x1]`` reads only those tiles."""
        return LevelView(self, level, channels, z, t)

    # -- layers for parallel Python (arrays.py, zarrstore.py; extras [dask], [xarray]) --------------
    def to_dask(self, level: int = 0, *, chunks: Any = None, channels: Channels = None,
                z: PlaneIndex | None = None, t: PlaneIndex | None = None) -> Any:
        """Level ``level`` as a lazy ``dask.array.Array``: shape ``(h, w, c)``, with leading ``t``,
        ``z`` axes for ranges (as :meth:`read`; None reads plane 0). ``chunks``: (h, w), an int,
        or dask chunks for every axis; default the stored tiles, doubled per side up to >= 1 MiB.
        Each chunk is one :meth:`read_level` on one thread; the graph pickles small."""
        from .arrays import to_dask

        return to_dask(self, level, chunks=chunks, channels=channels, z=z, t=t)

    def to_xarray(self, level: int = 0, *, chunks: Any = None, channels: Channels = None,
                  z: PlaneIndex | None = None, t: PlaneIndex | None = None) -> Any:
        """:meth:`to_dask` as an ``xarray.DataArray``: dims ``("t", "z", "y", "x", "c")`` as present,
        ``x``/``y`` in µm at pixel centres (where mpp is known), ``c`` the channel names, ``z`` in
        µm and ``t`` in s where known; attrs mpp, level, downsample, source."""
        from .arrays import to_xarray

        return to_xarray(self, level, chunks=chunks, channels=channels, z=z, t=t)

    def zarr_store(self) -> Any:
        """The whole pyramid as a read-only zarr v3 store: an OME-NGFF 0.5 multiscales group with
        arrays ``"0"``, ``"1"``, ... (axes ``[t,] c, [z,] y, x``; a chunk is a stored tile, served
        uncompressed by the engine). See :class:`tilescope.zarrstore.SceneStore`."""
        from .zarrstore import SceneStore

        return SceneStore(self)

    def describe(self) -> dict[str, Any]:
        """This scene's normalized metadata (JSON-serializable)."""
        return {
            "name": self.name, "rect": list(self.rect), "size": list(self.size),
            "channels": list(self.channel_names), "channel_colors": list(self.channel_colors),
            "dtype": str(self.dtype),
            "mpp": list(self.mpp) if self.mpp else None, "magnification": self.magnification,
            "compression": self.compression, "compression_raw": self.compression_raw,
            "num_z_slices": self.num_z_slices,
            "num_t_frames": self.num_t_frames, "z_resolution": self.z_resolution,
            "t_resolution": self.t_resolution, "t_offsets": list(self.t_offsets) if self.t_offsets else None,
            "channel_info": [dict(c) for c in self.channel_info],
            "levels": [{"size": list(lv.size), "downsample": lv.downsample, "tile_size": list(lv.tile_size)}
                       for lv in self.levels],
        }


def _checked(levels: list[Level], channels: int, where: str) -> list[Level]:
    """The levels with sizes as positive ints and layouts the engine can read (checked once, at
    open: every value came from the file); CorruptDataError naming ``where`` and the level."""
    if not levels:
        raise CorruptDataError(f"{where}: no levels")
    out = []
    for lv in levels:
        size = check_size(lv.size, f"{where}: level {lv.index} size")
        tile = check_size(lv.tile_size, f"{where}: level {lv.index} tile size")
        if not all(math.isfinite(v) and v > 0 for v in lv.scale):
            raise CorruptDataError(f"{where}: level {lv.index}: scale {lv.scale} to level 0")
        lv.layout.check(where)
        if len(lv.layout.channel_map) != channels:
            raise CorruptDataError(f"{where}: level {lv.index} stores {len(lv.layout.channel_map)} channels, "
                                   f"the scene {channels}")
        out.append(replace(lv, size=size, tile_size=tile) if (size, tile) != (lv.size, lv.tile_size) else lv)
    return out


@dataclass(frozen=True, eq=False)
class EncodedTiles:
    """One level's stored tiles (:meth:`Scene.encoded_tiles`): a ``grid`` of (columns, rows) tiles
    of ``tile`` (w, h) pixels, each ``samples`` x ``dtype``, encoded with ``codec`` (the
    ``Scene.compression`` vocabulary; ``params``: what copying them needs, as JPEG ``tables``).
    Edge tiles are stored whole, as TIFF does."""

    codec: str
    tile: tuple[int, int]
    grid: tuple[int, int]
    samples: int
    dtype: np.dtype
    params: Mapping[str, Any] = field(repr=False)
    _fetch: Callable[[int], bytes | None] = field(repr=False)

    def get(self, col: int, row: int) -> bytes | None:
        """Tile (col, row)'s bytes as stored; None where a sparse level has none."""
        return self._fetch(row * self.grid[0] + col)


@dataclass(frozen=True)
class AssociatedImage:
    """A label, macro or thumbnail image: one plane, read whole."""

    size: tuple[int, int]
    layout: Layout
    dtype: np.dtype
    channels: int
    icc_profile: bytes | None = None  # its own profile, where the format gives one (DICOM)


class AssociatedImages(Mapping):
    """name -> numpy array, decoded when looked up."""

    def __init__(self, slide: Slide, images: dict[str, AssociatedImage]):
        self._slide = slide
        self._images = images

    def __getitem__(self, name: str) -> np.ndarray:
        im = self._images.get(name)
        if im is None:
            raise NotFoundError(f"{self._slide.path}: no associated image named {name!r} "
                                f"(associated images: {', '.join(self._images) or 'none'})")
        self._slide._check_open()
        broken = self._slide._broken.get(name)
        if broken is not None:
            raise broken
        w, h = im.size
        reader = self._slide._reader
        nbytes = w * h * im.channels * im.dtype.itemsize
        if nbytes > reader.options.max_read_bytes:
            raise TooLargeError(f"{self._slide.path}: associated image {name!r} is {w}x{h} pixels "
                                f"({nbytes / 2**20:.0f} MiB), above max_read_bytes")
        out = reader.read_level(im.layout, (0, 0, w, h), list(range(im.channels)), 0, 0, im.dtype, 0)
        if reader.options.srgb and im.channels == 3:
            self._slide._to_srgb(out, im.icc_profile)
        return out

    def __repr__(self) -> str:
        items = ", ".join(f"{n} {w}x{h}" for n, (w, h) in ((n, im.size) for n, im in self._images.items()))
        return f"<AssociatedImages {items or 'none'}>"

    def icc_profile(self, name: str) -> bytes | None:
        """The ICC profile of an associated image that has its own (DICOM), else None."""
        return self._images[name].icc_profile

    def __iter__(self) -> Iterator[str]:
        return iter(self._images)

    def __len__(self) -> int:
        return len(self._images)

    def size(self, name: str) -> tuple[int, int]:
        """(w, h) of an associated image without decoding it."""
        return self._images[name].size


class Slide:
    """An opened image file: its scenes, associated images and metadata. Close it (or use
    ``with``) to release the file; reads after ``close()`` raise SlideClosedError.

    Attributes:
        path: what was opened (a file, a folder's file, a URL); driver: the driver that reads it
            (:func:`tilescope.drivers`); vendor: the scanner maker, where known.
        scenes: its :class:`Scene` s; scene(i or name) picks one.
        associated: label, macro, thumbnail (name -> array, decoded when asked).
        raw_metadata: the format's own text, verbatim (the SVS ImageDescription, the OME-XML);
            properties: the format's key/values by group; metadata: normalized, JSON-ready.
        icc_profile, comment, barcode: as the file records them, or None.
        canvas: (w, h) the scenes sit on at their ``rect`` s (a Leica collection), else None.
        source: where its bytes are read from; closed: whether close() was called.
    """

    def __init__(self, source: Source, driver: str, options: Options, *, raw_metadata: str = "",
                 vendor: str | None = None, properties: dict[str, Any] | None = None,
                 icc_profile: bytes | None = None, comment: str | None = None, barcode: str | None = None,
                 quickhash: Callable[[ByteSource], str | None] | None = None):
        self._source = source
        self._reader = Reader(source, options)
        self.path = source.path
        self.driver = driver
        self.raw_metadata = raw_metadata
        self.vendor = vendor
        self.properties = properties or {}
        self.icc_profile = icc_profile  # the ICC colour profile the file embeds, if any
        self.comment = comment  # the format's free-text description of the slide, if it has one
        self.barcode = barcode  # the slide label's barcode as the file records it
        self._quickhash = quickhash  # the driver's openslide quickhash-1, computed when asked
        # (w, h) level-0 pixels of the canvas the scenes sit on at their rects (a Leica collection),
        # or None: each scene stands alone
        self.canvas: tuple[int, int] | None = None
        self._srgb = ToSrgb(self.path)  # ICC profile -> sRGB transforms, built on first use
        self.scenes: tuple[Scene, ...] = ()
        self._associated: dict[str, AssociatedImage] = {}
        self._broken: dict[str, CorruptDataError] = {}
        self._ticket: procs.Ticket | None = None  # what to open, set by tilescope.open

    def set_contents(self, scenes: Sequence[Scene], associated: dict[str, AssociatedImage],
                     canvas: tuple[int, int] | None = None) -> None:
        """What a driver found (the last step of its ``open``): the scenes, the associated images
        and the canvas the scenes sit on, if they share one."""
        self.scenes = tuple(scenes)
        for i, sc in enumerate(self.scenes):
            sc.index = i
        self._associated = associated
        # associated images whose description is broken: listed, their read raises this error
        # (a damaged label does not stop the slide)
        self._broken = {}
        for name, im in associated.items():
            try:
                check_size(im.size, f"{self.path}: associated image {name!r} size")
                im.layout.check(f"{self.path}: associated image {name!r}")
            except CorruptDataError as e:
                self._broken[name] = e
        self.canvas = canvas

    @property
    def source(self) -> Source:
        """Where the slide's own bytes are read from (a local file, a server, ...)."""
        return self._source

    def quickhash1(self) -> str | None:
        """openslide's ``openslide.quickhash-1`` of the file (a SHA-256 hex digest over bytes that
        identify the slide), for the formats where tilescope computes it as openslide does (SVS,
        generic TIFF, NDPI, DICOM); None for the others, and where openslide gives none (a smallest level of
        more than 5 MiB). Reads the smallest level's pieces: computed when asked, not at open."""
        self._check_open()
        return self._quickhash(cast(ByteSource, self._source)) if self._quickhash is not None else None

    @property
    def options(self) -> Options:
        """This slide's engine settings (the process defaults with ``open()``'s overrides)."""
        return self._reader.options

    def zarr_store(self, scene: int | str = 0) -> Any:
        """A scene's pyramid as a read-only zarr v3 store (:meth:`Scene.zarr_store`)."""
        return self.scene(scene).zarr_store()

    def set_cache(self, cache: TileCache) -> None:
        """Decode this slide's tiles into ``cache`` from now on (``TileCache(0)`` disables)."""
        self._reader.cache = cache

    def __reduce__(self) -> tuple:
        # pickled as what to open; the other side re-opens on first use (module procs)
        ticket = self.__dict__.get("_pending") or self.__dict__.get("_ticket")
        if ticket is None:
            raise TypeError(f"{self.path}: only a slide from tilescope.open pickles")
        return procs.pending, (procs.own_class(self), ticket)

    def _adopt(self, opened: Slide) -> None:
        """Become ``opened`` (an unpickled slide on first use): its state, its scenes bound to us."""
        self.__dict__.update(opened.__dict__)
        self.scenes = tuple(sc._bind(self) for sc in opened.scenes)

    def _bind(self, source: Source | None, options: Options) -> Slide:
        """This parsed slide on another descriptor of the same file (re-opening skips parsing);
        ``None`` gives a detached copy that holds no file (what the parse cache keeps)."""
        new = clone(self)
        new._source = source if source is not None else Detached(self.path)
        new._reader = Reader(new._source, options)
        new.path = new._source.path
        new.scenes = tuple(sc._bind(new) for sc in self.scenes)
        return new

    def _to_srgb(self, a: np.ndarray, icc: bytes | None = None) -> None:
        """Convert uint8 RGB pixels (..., 3) from ``icc`` (default: the slide's ICC profile) to sRGB,
        in place."""
        self._srgb.apply(a, icc or self.icc_profile)

    def _check_open(self) -> None:
        if self._source.closed:
            raise SlideClosedError(f"{self.path}: slide is closed")

    @property
    def associated(self) -> AssociatedImages:
        """Associated images by name ("label", "macro", "thumbnail" where the file has them)."""
        return AssociatedImages(self, self._associated)

    @property
    def metadata(self) -> dict[str, Any]:
        """Normalized metadata: JSON-serializable, the same keys for every format."""
        s0 = self.scenes[0]
        return {
            "driver": self.driver, "vendor": self.vendor,
            "size": list(s0.size), "mpp": list(s0.mpp) if s0.mpp else None,
            "magnification": s0.magnification,
            "scenes": [s.describe() for s in self.scenes],
            "associated": {k: list(v.size) for k, v in self._associated.items()},
            "properties": self.properties,
        }

    def scene(self, key: int | str) -> Scene:
        """A scene by index or by name."""
        if isinstance(key, str):
            for s in self.scenes:
                if s.name == key:
                    return s
            raise InvalidRequestError(f"{self.path}: no scene named {key!r} (scenes: "
                                      f"{', '.join(repr(s.name) for s in self.scenes)})")
        n = len(self.scenes)
        if isinstance(key, bool) or not isinstance(key, int) or not -n <= key < n:
            raise InvalidRequestError(f"{self.path}: scene {key!r} is outside 0..{len(self.scenes) - 1}")
        return self.scenes[key]

    def close(self) -> None:
        self._reader.close()

    @property
    def closed(self) -> bool:
        return self._source.closed

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"<Slide {self.driver} {self.path!r} closed>"
        sc = self.scenes[0] if self.scenes else None
        what = f", {len(self.scenes)} scenes" if len(self.scenes) != 1 else ""
        if sc is not None:
            what += (f", {sc.size[0]}x{sc.size[1]}, {len(sc.levels)} level(s), "
                     f"{sc.num_channels} ch {sc.dtype}"
                     + (f", z {sc.num_z_slices}" if sc.num_z_slices > 1 else "")
                     + (f", t {sc.num_t_frames}" if sc.num_t_frames > 1 else "")
                     + _optics(sc.mpp, sc.magnification))
        if self._associated:
            what += f", associated: {', '.join(self._associated)}"
        return f"<Slide {self.driver} {self.path!r}{what}>"

    def _repr_html_(self) -> str:
        """A notebook's view: the thumbnail, the label and a table of the metadata."""
        from .notebook import slide_html

        return slide_html(self)
