"""Dask arrays and xarray DataArrays of a scene's levels (extras ``[dask]``, ``[xarray]``): a layer over
the public Scene API. Each chunk is one ``Scene.read_level`` on one thread (Dask is the
parallelism); the graph holds the scene once, which pickles as what to open (a few hundred bytes),
so it runs unchanged on dask.distributed's worker processes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidRequestError
from .geometry import Channels, PlaneIndex, plane_indices

if TYPE_CHECKING:
    import dask.array
    import xarray

    from .model import Scene

# default chunks: the stored tiles, grown (x2 per side) while a chunk is under this many bytes, so
# small tiles (240x240 SVS, 256x256 DICOM) do not make a graph of millions of tasks
_MIN_CHUNK_BYTES = 1 << 20


class LevelArray:
    """One level of a scene as an array-like ``dask.array.from_array`` slices: shape ``(h, w, c)``
    with leading ``t``, ``z`` axes for ranges; ``self[slices]`` is one engine read on one thread."""

    def __init__(self, scene: Scene, level: int, channels: Channels = None, z: PlaneIndex | None = None,
                 t: PlaneIndex | None = None):
        self.scene = scene
        self.level = scene.level_index(level)
        self.channels = scene.channel_indices(channels)
        where = scene.location
        self.zs, z_axis = plane_indices(0 if z is None else z, scene.num_z_slices, "z", where)
        self.ts, t_axis = plane_indices(0 if t is None else t, scene.num_t_frames, "t", where)
        self.lead = ("t",) * t_axis + ("z",) * z_axis
        w, h = scene.levels[self.level].size
        sizes = {"t": len(self.ts), "z": len(self.zs)}
        self.shape = (*(sizes[a] for a in self.lead), h, w, len(self.channels))
        self.dims = (*self.lead, "y", "x", "c")
        self.dtype = np.result_type(*(scene.channel_dtypes[c] for c in self.channels))
        self.ndim = len(self.shape)

    def __dask_tokenize__(self) -> tuple:
        # the same file content, level and selection: the same graph keys
        sc = self.scene
        return ("tilescope", sc.slide.path, getattr(sc.slide.source, "identity", None), sc.name,
                self.level, tuple(self.channels), tuple(self.zs), tuple(self.ts), self.lead)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        if not isinstance(key, tuple) or len(key) != self.ndim or not all(
                isinstance(k, slice) and k.step in (None, 1) for k in key):
            raise IndexError(f"{self.scene.location}: a level array takes {self.ndim} unit-step slices")
        ranges = [range(*k.indices(n)) for k, n in zip(key, self.shape, strict=True)]
        lead = dict(zip(self.lead, ranges, strict=False))
        ry, rx, rc = ranges[-3:]
        if not all(len(r) for r in ranges):
            return np.empty([len(r) for r in ranges], self.dtype)
        z = self._planes(self.zs, lead.get("z"))
        t = self._planes(self.ts, lead.get("t"))
        return self.scene.read_level(self.level, (rx.start, ry.start, len(rx), len(ry)),
                                     channels=self.channels[rc.start:rc.stop], z=z, t=t, threads=1)


    @staticmethod
    def _planes(planes: list[int], r: range | None) -> PlaneIndex:
        """The plane (no axis) or the (start, stop) of planes a chunk's slice of an axis covers."""
        return planes[0] if r is None else (planes[r.start], planes[r.start] + len(r))


def default_chunks(scene: Scene, level: int, itemsize: int, channels: int) -> tuple[int, int]:
    """(h, w) of a level's default chunk: its stored tile, doubled per side while under 1 MiB."""
    tw, th = scene.levels[level].tile_size
    w, h = scene.levels[level].size
    while th * tw * channels * itemsize < _MIN_CHUNK_BYTES and (th < h or tw < w):
        th, tw = min(2 * th, max(h, th)), min(2 * tw, max(w, tw))
    return min(th, h), min(tw, w)


def to_dask(scene: Scene, level: int = 0, *, chunks: Any = None, channels: Channels = None,
            z: PlaneIndex | None = None, t: PlaneIndex | None = None) -> dask.array.Array:
    """See :meth:`tilescope.Scene.to_dask`."""
    return _dask_of(LevelArray(scene, level, channels, z, t), chunks)


def _dask_of(arr: LevelArray, chunks: Any) -> dask.array.Array:
    import dask.array as da

    scene = arr.scene
    lead = (1,) * len(arr.lead)
    if chunks is None:
        chunks = (*lead, *default_chunks(scene, arr.level, arr.dtype.itemsize, len(arr.channels)), -1)
    elif isinstance(chunks, int) or (isinstance(chunks, Sequence) and len(chunks) == 2):
        h, w = (chunks, chunks) if isinstance(chunks, int) else chunks
        chunks = (*lead, h, w, -1)
    try:
        return da.from_array(arr, chunks=chunks, asarray=False, fancy=False, lock=False,
                             inline_array=False, meta=np.empty((0,) * arr.ndim, arr.dtype),
                             name=f"tilescope-{da.core.tokenize(arr, chunks)}")
    except ValueError as e:  # dask's own words on chunks it cannot use
        raise InvalidRequestError(f"{scene.location}: chunks {chunks!r}: {e}") from None


def to_xarray(scene: Scene, level: int = 0, *, chunks: Any = None, channels: Channels = None,
              z: PlaneIndex | None = None, t: PlaneIndex | None = None) -> xarray.DataArray:
    """See :meth:`tilescope.Scene.to_xarray`."""
    import xarray as xr

    arr = LevelArray(scene, level, channels, z, t)
    data = _dask_of(arr, chunks)
    lv = scene.levels[arr.level]
    h, w = arr.shape[-3:-1]
    coords: dict[str, Any] = {"c": [scene.channel_names[c] for c in arr.channels]}
    if lv.mpp:  # pixel centres in µm from the scene's top-left
        coords["x"] = (np.arange(w) + 0.5) * lv.mpp[0]
        coords["y"] = (np.arange(h) + 0.5) * lv.mpp[1]
    if "z" in arr.lead and scene.z_resolution:
        coords["z"] = np.asarray(arr.zs, float) * scene.z_resolution
    if "t" in arr.lead and (scene.t_offsets or scene.t_resolution):
        coords["t"] = np.asarray([scene.t_offsets[i] for i in arr.ts] if scene.t_offsets
                                 else np.asarray(arr.ts, float) * (scene.t_resolution or 0))
    attrs = {"mpp": list(lv.mpp) if lv.mpp else None, "level": arr.level, "downsample": lv.downsample,
             "source": scene.slide.path, "scene": scene.name,
             "units": {"x": "µm", "y": "µm", "z": "µm", "t": "s"}}
    return xr.DataArray(data, dims=arr.dims, coords=coords, attrs=attrs, name=scene.name)
